"""A deployment's log as people read it: the REST tail and the WebSocket's live lines.

A log lives in two places (see `bot.state.publish_log` and `bot.feed`): SQLite keeps a
deployment's first `Store.max_log_lines` lines once the web process recorded them, and the
deployment's Redis stream keeps its newest `state.LOG_STREAM_MAXLEN` lines, recorded or not.
`read_log` reads both by seq, so the newest lines are there before SQLite has them.

For WebSocket clients, each web process has one reader (`read_followed_logs`, a thread of
`bot.feed.FeedThreads`, apart from the broadcaster) that XREADs the streams of the deployments
its clients follow into a short in-memory buffer per deployment, and wakes those clients. A
client's sender then takes the lines after the last seq it sent, from the buffer or, when the
buffer no longer (or not yet) holds them, from `read_log`: whatever the timing, a client gets
every line once, in order. A burst of lines costs a client one wake-up, not a queue entry per
line, so a 10 MB build log neither fills the clients' queues nor slows the event broadcaster.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import redis

from . import state
from .model import Deployment
from .redis_io import text, text_fields
from .store import Store

log = logging.getLogger("previewbot.livelogs")

# The REST answer's and a WebSocket subscription's default: the last lines of the log.
TAIL_LINES = 1000
MAX_PAGE_LINES = 5000
# Lines kept in memory per followed deployment, for its clients that keep up; a client
# further behind reads Redis or SQLite.
BUFFER_LINES = 2000
# Lines the reader takes from each stream per XREAD, and how long an XREAD waits for lines.
# A deployment followed meanwhile joins the next XREAD, within FOLLOW_BLOCK_MS.
FOLLOW_BATCH = 1000
FOLLOW_BLOCK_MS = 200


class LogEntry(NamedTuple):
    seq: int
    at: str | None
    line: str


def log_entries(items) -> list[LogEntry]:
    """Log stream entries as LogEntry; an entry's id is `{seq}-0`."""
    entries = []
    for entry_id, fields in items:
        fields = text_fields(fields)
        entries.append(LogEntry(int(text(entry_id).partition("-")[0]), fields.get("at"), fields.get("line", "")))
    return entries


def read_log(conn: redis.Redis, store: Store, deployment_id: str, *, after: int | None = None, limit: int = TAIL_LINES) -> list[LogEntry]:
    """Up to `limit` lines of a deployment's log in seq order: those after seq `after`, or
    without it the last ones. SQLite's lines come first, then Redis's newer ones."""
    stream = state.LOG_STREAM.format(deployment_id)
    if after is None:
        newest = log_entries(conn.xrevrange(stream, count=limit))[::-1]
        if len(newest) == limit:
            return newest
        older = store.last_deployment_logs(deployment_id, before=newest[0].seq if newest else None, limit=limit - len(newest))
        return [LogEntry(r["seq"], r["created_at"], r["line"]) for r in older] + newest
    entries: list[LogEntry] = []
    while len(entries) < limit:
        last = entries[-1].seq if entries else after
        rows = store.deployment_logs(deployment_id, after=last, limit=limit - len(entries))
        entries += [LogEntry(r["seq"], r["created_at"], r["line"]) for r in rows]
        if len(entries) == limit:
            break
        last = entries[-1].seq if entries else after
        newer = log_entries(conn.xrange(stream, min=f"({last}-0", count=limit - len(entries)))
        if newer and newer[0].seq > last + 1 and store.deployment_logs(deployment_id, after=last, limit=1):
            continue  # recorded, then trimmed from Redis, between the two reads: SQLite has them now
        entries += newer
        break
    return entries


def find_deployment(conn: redis.Redis, store: Store, deployment_id: str) -> Deployment | None:
    """The deployment from SQLite, or from Redis while the web process has not recorded it yet
    (a deploy a worker just started)."""
    row = store.get_deployment(deployment_id)
    if row is not None:
        return Deployment.from_row(row)
    return state.record(conn, deployment_id)


def log_message(deployment: Deployment, entry: LogEntry) -> str:
    """A `deployment:log` WebSocket message, encoded: what every line of the deployment shares is
    encoded once (`_message_head`), each line adds its own fields."""
    head = _message_head(deployment.id, deployment.repository, deployment.pr_number, deployment.environment)
    return f'{head}, "seq": {int(entry.seq)}, "at": {json.dumps(entry.at)}, "line": {json.dumps(entry.line)}}}'


@functools.lru_cache(maxsize=256)
def _message_head(deployment_id: str, repository: str, pr_number: int, environment: str) -> str:
    head = {"type": "deployment:log", "deploymentId": deployment_id, "repository": repository, "prNumber": str(pr_number), "environment": environment}
    return json.dumps(head)[:-1]


@dataclass(eq=False)
class FollowedLog:
    """A deployment whose log this process's clients follow."""

    deployment: Deployment
    subscribers: set = field(default_factory=set)
    # The last seq the reader took from the stream; None until it starts reading it.
    position: int | None = None
    # (seq, encoded message) of the newest lines read, in seq order.
    lines: deque = field(default_factory=lambda: deque(maxlen=BUFFER_LINES))


class LogFollowers:
    """Which of this process's WebSocket clients follow which deployments' logs, and the
    newest lines of each, shared by its clients."""

    def __init__(self, wake: Callable[[object], None]):
        # Puts a wake-up on a client's queue (`bot.feed.Hub`: a client that cannot take it is dropped).
        self._wake = wake
        self._followed: dict[str, FollowedLog] = {}
        self._lock = threading.Lock()
        self.changed = threading.Event()

    def follow(self, subscriber, deployment: Deployment) -> None:
        with self._lock:
            followed = self._followed.get(deployment.id)
            if followed is None:
                followed = self._followed[deployment.id] = FollowedLog(deployment)
                self.changed.set()
            followed.subscribers.add(subscriber)

    def unfollow(self, subscriber, deployment_id: str | None = None) -> None:
        """Stop following one deployment's log, or (None) every one."""
        with self._lock:
            for key in [deployment_id] if deployment_id else list(self._followed):
                followed = self._followed.get(key)
                if followed is None:
                    continue
                followed.subscribers.discard(subscriber)
                if not followed.subscribers:
                    del self._followed[key]

    def positions(self) -> dict[str, int | None]:
        with self._lock:
            return {key: followed.position for key, followed in self._followed.items()}

    def deployment(self, deployment_id: str) -> Deployment | None:
        followed = self._followed.get(deployment_id)
        return followed.deployment if followed else None

    def start(self, deployment_id: str, position: int) -> None:
        """The reader reads the stream from after `position` on. Its clients look once for the
        lines up to there that they have not sent."""
        with self._lock:
            followed = self._followed.get(deployment_id)
            if followed is None:
                return
            followed.position = position
            subscribers = list(followed.subscribers)
        for subscriber in subscribers:
            self.wake(subscriber)

    def add(self, deployment_id: str, entries: list[LogEntry]) -> None:
        """Lines the reader took from the stream, in order."""
        with self._lock:
            followed = self._followed.get(deployment_id)
            if followed is None or not entries:
                return
            followed.lines.extend((entry.seq, log_message(followed.deployment, entry)) for entry in entries)
            followed.position = entries[-1].seq
            subscribers = list(followed.subscribers)
        for subscriber in subscribers:
            self.wake(subscriber)

    def after(self, deployment_id: str, seq: int, limit: int) -> list[tuple[int, str]] | None:
        """Up to `limit` (seq, message) after `seq` from the buffer: [] when the reader has
        read nothing newer, None when the buffer does not hold the next line (read storage)."""
        with self._lock:
            followed = self._followed.get(deployment_id)
            if followed is None or followed.position is None:
                return None
            if seq >= followed.position:
                return []
            lines = followed.lines
            index = bisect.bisect_left(lines, seq + 1, key=lambda item: item[0])
            if index == len(lines) or lines[index][0] != seq + 1:
                return None
            taken = []
            for item in itertools.islice(lines, index, index + limit):
                if item[0] != seq + 1 + len(taken):
                    break  # a gap Redis trimmed before the reader got there: storage may hold it
                taken.append(item)
            return taken

    def wake(self, subscriber) -> None:
        """Tell a client's sender that lines wait; once until it looks."""
        if not subscriber.logs_pending:
            subscriber.logs_pending = True
            self._wake(subscriber)

    def __len__(self) -> int:
        return len(self._followed)


def read_followed_logs(conn: redis.Redis, followers: LogFollowers, stop: threading.Event) -> None:
    """The reader of a web process: XREAD the streams of the followed deployments, hand the
    lines to `followers`. Idle (no Redis call) while nobody follows a log."""
    while not stop.is_set():
        try:
            positions = followers.positions()
            if not positions:
                followers.changed.wait(0.5)
                followers.changed.clear()
                continue
            for deployment_id, position in positions.items():
                if position is None:
                    top = conn.xrevrange(state.LOG_STREAM.format(deployment_id), count=1)
                    positions[deployment_id] = log_entries(top)[0].seq if top else 0
                    followers.start(deployment_id, positions[deployment_id])
            streams = {state.LOG_STREAM.format(key): key for key in positions}
            found = conn.xread(
                {stream: f"{positions[key]}-0" for stream, key in streams.items()}, count=FOLLOW_BATCH, block=FOLLOW_BLOCK_MS
            )
            for stream, items in found or []:
                followers.add(streams[text(stream)], log_entries(items))
        except (redis.RedisError, OSError) as exc:
            log.warning("log follower paused: %s", exc)
            stop.wait(1.0)

