"""Members' commands acknowledged at once, apart from the job queue.

A command in a comment by the repository's owner, a member or a collaborator (COMMANDERS) gets
its `eyes` reaction as soon as a worker can send it, however long the queue of jobs is: the
webhook receiver adds the comment to WAITING (a list, oldest first) in the same atomic write that
queues the command's job, and wakes the workers; a thread in each worker process
(`worker.acknowledger`) claims the oldest waiting comments, up to a batch, and sends their
reactions together. The command itself waits its turn in the queue like every other job, and
its handler sends no second `eyes`. Anyone else's comment is acknowledged by its handler, in
line, so a flood of strangers' comments pushes ahead of no one. The association only chooses
this: the handler still asks GitHub for the commenter's permission.

A claim moves the comments to SENDING with a lease: if their worker dies before it is done, the
next claim once the lease is over takes them again (GitHub answers a reaction sent twice with
the one it has). A comment claimed after GIVE_UP_MS is dropped: its command has been answered.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from .commands import command_in
from .redis_io import PREFIX, script, text

COMMANDERS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})

WAITING = f"{PREFIX}:acks"
SENDING = f"{PREFIX}:acks-sending"
# One entry per comment received, trimmed: a worker that wakes drains every waiting comment.
WAKE = f"{PREFIX}:acks-wake"
WAKE_MAX = 16

LEASE_MS = 60_000
GIVE_UP_MS = 10 * 60_000


@dataclass(frozen=True)
class Comment:
    """A comment to acknowledge, as claimed (`entry` is its text in Redis)."""

    repository: str
    installation_id: int
    comment_id: int
    received_ms: int
    entry: str


def now_ms() -> int:
    """The clock of receipts and leases, in ms."""
    return int(time.time() * 1000)


def acknowledged_apart(event: str, payload: dict) -> bool:
    """Whether a delivery's command is acknowledged apart from its job (see COMMANDERS)."""
    return (
        event == "issue_comment"
        and payload.get("action") == "created"
        and (payload.get("comment") or {}).get("author_association") in COMMANDERS
        and bool((payload.get("installation") or {}).get("id"))
        and command_in(payload) is not None
    )


def add(pipe, payload: dict, *, now_ms: int) -> None:
    """Add the comment of `payload` (see `acknowledged_apart`) to WAITING, inside `pipe`."""
    entry = json.dumps(
        {
            "repository": payload["repository"]["full_name"],
            "installationId": payload["installation"]["id"],
            "commentId": payload["comment"]["id"],
            "receivedMs": now_ms,
        },
        separators=(",", ":"),
    )
    pipe.rpush(WAITING, entry)
    pipe.rpush(WAKE, 1)
    pipe.ltrim(WAKE, -WAKE_MAX, -1)


# KEYS[1] WAITING, KEYS[2] SENDING; ARGV[1] now (ms), ARGV[2] lease (ms), ARGV[3] at most.
# Comments whose lease ended (their worker died) first, then the oldest waiting ones.
_CLAIM = """
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
local taken = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
while #taken < limit do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  taken[#taken + 1] = entry
end
for _, entry in ipairs(taken) do
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), entry)
end
return taken
"""


def claim(conn: redis.Redis, *, now_ms: int, limit: int) -> list[Comment]:
    """Up to `limit` comments to acknowledge now, each leased to the caller for LEASE_MS."""
    entries = script(conn, _CLAIM)(keys=[WAITING, SENDING], args=[now_ms, LEASE_MS, limit])
    comments, unreadable = [], []
    for raw in entries:
        entry = text(raw)
        try:
            data = json.loads(entry)
            comments.append(Comment(str(data["repository"]), int(data["installationId"]), int(data["commentId"]), int(data["receivedMs"]), entry))
        except (ValueError, TypeError, KeyError):
            unreadable.append(entry)  # not written by `add`: dropped, or it would come back each lease
    if unreadable:
        conn.zrem(SENDING, *unreadable)
    return comments


def done(conn: redis.Redis, comments: list[Comment]) -> None:
    if comments:
        conn.zrem(SENDING, *(c.entry for c in comments))


def wait_for_work(conn: redis.Redis, timeout: float) -> None:
    """Until a comment arrives, or `timeout` seconds (leases that ended are looked at then)."""
    conn.blpop([WAKE], timeout=timeout)
