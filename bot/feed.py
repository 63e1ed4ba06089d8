"""From the event stream to SQLite and to WebSocket clients.

Loops per web process, reading the Redis streams the workers write to:

- the recorder reads through a consumer group shared by all web processes, so each event is
  written to SQLite once, and acknowledges it only after the write: an event published while
  no web process runs waits in Redis and is recorded when one starts. Every few seconds it
  also claims the entries a dead consumer (a restarted gunicorn worker) read and never
  acknowledged;
- the log recorder copies each deployment's log stream to SQLite. Its cursor is the last seq
  SQLite holds, so a line is recorded when a web process next runs, as long as Redis still
  keeps it; a short lock per stream keeps two web processes from doing the same work;
- the broadcaster reads the event stream on its own, so every web process sees every event
  and passes it to its own WebSocket clients;
- the log follower reads the log streams of the deployments this process's WebSocket clients
  follow (`bot.livelogs`), apart from the broadcaster, so log traffic never delays an update.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from datetime import datetime, timezone

import redis

from . import costs
from . import queue as job_queue
from .livelogs import LogFollowers, log_entries, read_followed_logs
from .model import Deployment
from .redis_io import script, text, text_fields
from .state import (
    ABSENT, ACTIVE, DELIVERIES_STREAM, EVENTS_STREAM, LOG_RECORDED, LOG_SEQ, LOG_STREAM, LOG_STREAMS, LOG_TTL_SECONDS, PREFIX,
    publish, restore,
)
from .store import Store
from .times import timestamp

log = logging.getLogger("previewbot.feed")

RECORDER_GROUP = "recorders"
# Deployment events from workers (and log lines, from workers older than the log streams);
# accepted webhook deliveries from the receivers.
RECORDED_STREAMS = (EVENTS_STREAM, DELIVERIES_STREAM)
# A pending entry idle this long belonged to a web process that died before acknowledging it.
CLAIM_IDLE_MS = 30_000
# How often a recorder takes over what a dead one left: pending entries idle CLAIM_IDLE_MS,
# log lines behind a lock that ran out.
RECLAIM_SECONDS = 5.0

# Held (SET NX PX) by the web process writing a batch of a deployment's log; a dead one's runs out.
LOG_LOCK = PREFIX + ":log-lock:{}"
LOG_LOCK_MS = 10_000
LOG_BATCH = 1000
# A log stream fully recorded and quiet this long leaves LOG_STREAMS; its next line brings it back.
LOG_IDLE_MS = 60_000

# KEYS[1] LOG_STREAMS, KEYS[2] the stream; ARGV[1] deployment id, ARGV[2] the last seq recorded.
# In one step with publish_log's, so a line written meanwhile keeps its stream listed.
_FORGET_LOG = """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last and tonumber(string.match(last[1], '^%d+')) > tonumber(ARGV[2]) then
  return 0
end
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# KEYS[1] a lock; ARGV[1] its holder. Frees it only if still held by that holder.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Put on a subscriber's queue instead of a message: its connection ended (wakes the sender), its
# token is no longer accepted (the sender closes the connection with 4401), or lines of a log it
# follows wait (the sender takes them, see `bot.livelogs`).
CLOSED = object()
REVOKED = object()
LOGS_READY = object()
# How often each web process looks for revoked or expired tokens among its clients'.
TOKEN_CHECK_SECONDS = 2.0


@dataclass(eq=False)
class Subscriber:
    """One WebSocket client: what it asked to see and what its token may see."""

    repository: str | None = None
    pr_number: str | None = None
    environment: str | None = None
    allowed: list[str] | None = None  # None: every repository
    token_name: str | None = None
    # What the sender writes: updates as framed bytes (Hub.publish), other messages as text, or
    # CLOSED / REVOKED / LOGS_READY / a log request.
    messages: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1000))
    overflowed: bool = False
    # Writes what the client's socket takes at once, never waiting (set by the /ws handler).
    write_now: Callable[[bytes], int] | None = None
    # Messages queued or in the sender's hands; an update is written at once only when none is.
    unsent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Deployment id -> the last seq of its log sent, for each log the client follows.
    log_cursors: dict[str, int] = field(default_factory=dict)
    logs_pending: bool = False  # LOGS_READY is on the queue
    # Cuts the client's connection: a client that cannot keep up is dropped (its sender may be
    # stuck writing to it) and reconnects to a fresh list, as the dashboard does.
    drop: Callable[[], None] = lambda: None

    def offer(self, message, *, now: bool = False) -> bool:
        """Give the sender `message`; False when its queue is full. With `now` (an update, framed),
        when nothing waits before it, the update is written to the socket at once instead, and
        only what the socket does not take is queued: a client that keeps up costs the publisher
        one write, not a wake-up of its sender. Under the lock, so the stream keeps its order."""
        with self.lock:
            if now and self.unsent == 0 and self.write_now is not None:
                try:
                    written = self.write_now(message)
                except OSError:
                    return True  # the connection is gone; its reader ends it
                if written == len(message):
                    return True
                message = message[written:]
            try:
                self.messages.put_nowait(message)
            except queue.Full:
                return False
            self.unsent += 1
            return True

    def sent(self) -> None:
        """The sender is done with a message it took."""
        with self.lock:
            self.unsent -= 1

    def may_see(self, repository: str) -> bool:
        return self.allowed is None or repository in self.allowed

    def wants(self, message: dict) -> bool:
        repository = message["repository"]
        if not self.may_see(repository):
            return False
        if self.repository and repository != self.repository:
            return False
        if self.environment and message.get("environment") != self.environment:
            return False
        return not self.pr_number or message["prNumber"] == self.pr_number


def text_frame(message: str) -> bytes:
    """A WebSocket text frame as a server sends it (RFC 6455 §5.2, the bytes wsproto writes):
    unmasked and, with permessage-deflate declined, the same bytes for every client, so an update
    is framed once and each client's sender only writes it."""
    payload = message.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Hub:
    """The WebSocket clients of this process."""

    def __init__(self):
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self.logs = LogFollowers(lambda subscriber: self._put(subscriber, LOGS_READY))

    def subscribe(self, subscriber: Subscriber) -> Subscriber:
        with self._lock:
            self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)
        self.logs.unfollow(subscriber)

    def publish(self, *messages: dict) -> None:
        """Send updates to the clients that want them: each is encoded and framed once, and each
        client gets the frames it wants in one write, made here when its socket takes them at
        once (see Subscriber.offer), so a burst of updates costs a client one write, not one per
        update, and a fan-out to a thousand clients wakes none of their greenlets."""
        with self._lock:
            subscribers = list(self._subscribers)
        frames: list[bytes | None] = [None] * len(messages)  # framed for the first client that wants each
        for subscriber in subscribers:
            wanted = []
            for index, message in enumerate(messages):
                if subscriber.wants(message):
                    frames[index] = frames[index] or text_frame(json.dumps(message))
                    wanted.append(frames[index])
            if wanted:
                self._put(subscriber, wanted[0] if len(wanted) == 1 else b"".join(wanted))

    def close_refused(self, accepted: Callable[[set[str]], set[str]]) -> None:
        """Close the connections whose token `accepted` (names in, names still valid out) no
        longer accepts: revoked or expired."""
        with self._lock:
            subscribers = list(self._subscribers)
        names = {s.token_name for s in subscribers if s.token_name}
        if not names:
            return
        still = accepted(names)
        for subscriber in subscribers:
            if subscriber.token_name in names and subscriber.token_name not in still:
                self.unsubscribe(subscriber)
                self._put(subscriber, REVOKED)

    @staticmethod
    def _put(subscriber: Subscriber, message) -> None:
        if not subscriber.offer(message, now=isinstance(message, bytes)):
            # A client that reads nothing must not hold memory forever; it reconnects.
            if not subscriber.overflowed:
                subscriber.overflowed = True
                subscriber.drop()

    def __len__(self) -> int:
        return len(self._subscribers)


def record(store: Store, event_id: str, fields: dict) -> None:
    """Write one stream entry to SQLite; safe to repeat."""
    kind = fields.get("kind")
    data = json.loads(fields["data"])
    if kind == "deployment":
        store.record_deployment(Deployment.model_validate(data), event_id, message=fields.get("message"), current=fields.get("current") != "0")
    elif kind == "log":
        store.record_log(event_id, data["deploymentId"], data["line"], data["at"])
    elif kind == "delivery":
        store.record_delivery(data["deliveryId"], data["event"], data.get("action"), received_at=data.get("receivedAt") or stream_time(event_id))
        remember(store, data["event"], data.get("memo") or {})


def _deployments_in(items) -> set[str]:
    """The deployments that the deployment events among stream entries are about."""
    found = set()
    for _entry_id, fields in items:
        fields = text_fields(fields)
        if fields.get("kind") == "deployment":
            try:
                found.add(json.loads(fields["data"])["id"])
            except (KeyError, ValueError, TypeError):
                pass  # recorded (and reported) as malformed with the rest of the batch
    return found


def remember(store, event: str, payload: dict) -> None:
    """What the web process keeps from deliveries: pull requests for the dashboard and which
    installation serves which repository. A payload without those parts is simply not kept."""
    try:
        _remember(store, event, payload)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
        log.info("delivery of %s carried nothing to remember", event)


def _remember(store, event: str, payload: dict) -> None:
    if event == "pull_request" and isinstance(payload.get("pull_request"), dict):
        pull = payload["pull_request"]
        head = pull.get("head") or {}
        store.upsert_pull_request(
            {
                "repository": payload["repository"]["full_name"],
                "number": pull["number"],
                "title": pull.get("title"),
                "branch_name": head.get("ref"),
                "head_repository": (head.get("repo") or {}).get("full_name"),
                "head_sha": head.get("sha"),
                "author": (pull.get("user") or {}).get("login"),
                "state": "open" if pull.get("state") == "open" else "closed",
                "installation_id": (payload.get("installation") or {}).get("id"),
            }
        )
    installation = payload.get("installation") or {}
    if event == "installation" and isinstance(installation.get("id"), int):
        if payload.get("action") == "deleted":
            store.delete_installation(installation["id"])
        else:
            names = [r["full_name"] for r in payload.get("repositories") or [] if isinstance(r, dict) and "full_name" in r]
            store.upsert_installation(installation["id"], (installation.get("account") or {}).get("login"), names)
    elif event == "installation_repositories" and isinstance(installation.get("id"), int):
        store.add_installation_repositories(installation["id"], [r["full_name"] for r in payload.get("repositories_added") or []])
        store.remove_installation_repositories([r["full_name"] for r in payload.get("repositories_removed") or []])
    elif isinstance(installation.get("id"), int) and isinstance(payload.get("repository"), dict):
        store.add_installation_repositories(installation["id"], [payload["repository"]["full_name"]])


def stream_time(event_id: str) -> str:
    """When Redis added a stream entry (its id starts with Redis's clock in ms), as utcnow()."""
    ms = int(event_id.partition("-")[0])
    return timestamp(datetime.fromtimestamp(ms / 1000, timezone.utc))


LOST_IN_REDIS = "Lost: Redis restarted without this deployment's state. Retry to deploy again."
# A deploying row younger than this may still be on its way through the stream.
REPAIR_GRACE_SECONDS = 10


def repair_lost_deployments(conn: redis.Redis, store: Store, *, now: float | None = None) -> list[Deployment]:
    """Fail the deployments SQLite still shows as deploying but Redis no longer knows of.

    That happens when Redis restarts without its data (no persistence): the jobs, locks and
    current state are gone, and nothing would ever finish those deployments. The repair is
    published like any change, so it is recorded, broadcast, restored in Redis and (through a
    report job) shown on GitHub.
    """
    if not recorder_caught_up(conn):
        return []  # an outcome may still be on its way through the stream
    repaired = []
    cutoff = (now or time.time()) - REPAIR_GRACE_SECONDS
    for deployment in store.deployments_with_status("deploying"):
        if _epoch(deployment.updated_at) > cutoff or conn.hexists(ACTIVE, deployment.id):
            continue  # Redis knows it is deploying: the worker side (reconcile) is in charge
        # A compare-and-set on "Redis holds no record": a worker's outcome that lands first wins.
        failed = publish(conn, deployment.changed(status="failed", error=LOST_IN_REDIS), expect=ABSENT, message=f"repair: {LOST_IN_REDIS}")
        if failed is None:
            continue
        job_queue.enqueue_report(conn, deployment=failed)
        log.warning("repaired deployment %s (%s): lost in Redis", deployment.id, deployment.key)
        repaired.append(failed)
    restore_current_state(conn, store)
    restore_spend(conn, store)
    return repaired


def recorder_caught_up(conn: redis.Redis) -> bool:
    """Every stream entry has been delivered to a recorder and acknowledged."""
    try:
        stream = conn.xinfo_stream(EVENTS_STREAM)
        groups = {text(g["name"]): g for g in conn.xinfo_groups(EVENTS_STREAM)}
    except redis.ResponseError:  # no stream yet: nothing in flight
        return True
    group = groups.get(RECORDER_GROUP)
    if group is None:
        return stream["length"] == 0
    return group["pending"] == 0 and text(group["last-delivered-id"]) == text(stream["last-generated-id"])


def restore_current_state(conn: redis.Redis, store: Store) -> int:
    """Give Redis back each live preview it forgot, so that a close or a push still finds the
    environment to destroy or redeploy. Never overwrites what Redis knows."""
    restored = 0
    for deployment in store.live_deployments():
        if restore(conn, deployment):
            log.warning("restored the state of %s in Redis from SQLite", deployment.key)
            restored += 1
    return restored


def restore_spend(conn: redis.Redis, store: Store) -> bool:
    """Give a Redis that restarted empty (or never had it) the spend of the records that ended,
    from SQLite, once: the budget's month-to-date (bot.costs) must not start again at zero."""
    if conn.exists(costs.SPEND_RESTORED):
        return False
    return costs.restore_spend(conn, costs.ended_spend(store.costing_deployments()))


def keep_log_counters(conn: redis.Redis, store: Store) -> None:
    """Keep the log counter of each live deployment, restoring it from SQLite if Redis lost it.

    A preview deployed weeks ago logs its destroy under the same id: its numbering must go on
    after the lines SQLite holds, not start again at 1 (those would be taken for repeats).
    Counters of other deployments go away with their streams (LOG_TTL_SECONDS)."""
    live = [deployment.id for deployment in store.live_deployments()]
    last = store.last_log_seqs(live)
    with conn.pipeline(transaction=False) as pipe:
        for deployment_id in live:
            key = LOG_SEQ.format(deployment_id)
            if last.get(deployment_id):
                pipe.set(key, last[deployment_id], nx=True)
            pipe.expire(key, LOG_TTL_SECONDS)
        pipe.execute()


def _epoch(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


class FeedThreads:
    """The recorder, log recorder, broadcaster, log follower and repair loops of one web process."""

    def __init__(self, conn: redis.Redis, store: Store, hub: Hub, *, repair_seconds: float = 60.0):
        self.conn = conn
        self.store = store
        self.hub = hub
        self.repair_seconds = repair_seconds
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for target in (self._record_loop, self._log_loop, self._broadcast_loop, self._follow_loop, self._repair_loop, self._token_loop):
            thread = threading.Thread(target=target, name=f"previewbot-{target.__name__.strip('_')}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)

    # -- recorder ----------------------------------------------------------------------------

    def _record_loop(self) -> None:
        backlog = True  # first our own unacknowledged entries, then claimed ones, then new ones
        claim_at = 0.0
        while not self.stop.is_set():
            try:
                self._ensure_groups()
                if backlog:
                    for stream in RECORDED_STREAMS:
                        self._record_pending(stream)
                    backlog = False
                if time.monotonic() >= claim_at:
                    # Consumers die while others run (a gunicorn worker restarted): not only
                    # a starting recorder must look for what they left.
                    for stream in RECORDED_STREAMS:
                        self._claim_abandoned(stream)
                    claim_at = time.monotonic() + RECLAIM_SECONDS
                entries = self.conn.xreadgroup(
                    RECORDER_GROUP, self.consumer, {stream: ">" for stream in RECORDED_STREAMS}, count=200, block=1000
                )
                for stream, items in entries or []:
                    self._record_entries(text(stream), items)
            except (redis.RedisError, sqlite3.Error, OSError) as exc:
                log.warning("event recorder paused: %s", exc)
                backlog, claim_at = True, 0.0
                self.stop.wait(1.0)

    def _ensure_groups(self) -> None:
        for stream in RECORDED_STREAMS:
            try:
                self.conn.xgroup_create(stream, RECORDER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _record_pending(self, stream: str) -> None:
        while True:
            entries = self.conn.xreadgroup(RECORDER_GROUP, self.consumer, {stream: "0"}, count=200)
            items = entries[0][1] if entries else []
            if not items:
                break
            self._record_entries(stream, items)

    def _claim_abandoned(self, stream: str) -> None:
        start = "0-0"
        while True:
            start, items, *_ = self.conn.xautoclaim(
                stream, RECORDER_GROUP, self.consumer, min_idle_time=CLAIM_IDLE_MS, start_id=start, count=200
            )
            self._record_entries(stream, items)
            if start in (b"0-0", "0-0"):
                break

    def _record_entries(self, stream: str, items) -> None:
        """Write a batch in one transaction (one commit, not one per entry), then acknowledge it."""
        for deployment_id in _deployments_in(items):
            # Lines are recorded before the status they led to, so that a reader who sees a
            # deployment `failed` also finds the lines that tell why.
            self._record_log_backlog(deployment_id)
        done = []
        with self.store.write():
            for entry_id, fields in items:
                entry_id = text(entry_id)
                if fields:  # a trimmed entry comes back empty
                    try:
                        record(self.store, entry_id, text_fields(fields))
                    except (KeyError, ValueError, TypeError) as exc:
                        log.error("dropping malformed event %s: %s", entry_id, exc)
                done.append(entry_id)
        if done:
            self.conn.xack(stream, RECORDER_GROUP, *done)

    # -- log recorder ------------------------------------------------------------------------

    def _log_loop(self) -> None:
        cursors: dict[str, int] = {}  # deployment id -> the last seq recorded, as last seen here
        reread_at = keep_at = 0.0
        while not self.stop.is_set():
            try:
                if time.monotonic() >= keep_at:
                    keep_log_counters(self.conn, self.store)
                    keep_at = time.monotonic() + self.repair_seconds
                if time.monotonic() >= reread_at:
                    # From SQLite again: lines skipped here for another recorder's lock, which
                    # died before writing them, are read again.
                    self._forget_recorded_logs()
                    cursors = {}
                    reread_at = time.monotonic() + RECLAIM_SECONDS
                listed = [text(i) for i in self.conn.zrange(LOG_STREAMS, 0, -1)]
                cursors = {i: cursors[i] for i in listed if i in cursors}
                unknown = [i for i in listed if i not in cursors]
                cursors.update(dict.fromkeys(unknown, 0) | self.store.last_log_seqs(unknown))
                if not cursors:
                    self.stop.wait(0.5)
                    continue
                streams = {LOG_STREAM.format(i): i for i in cursors}
                # Entry ids are `{seq}-0`: each stream is read after the last seq recorded.
                entries = self.conn.xread({key: f"{cursors[i]}-0" for key, i in streams.items()}, count=LOG_BATCH, block=500)
                for stream, items in entries or []:
                    deployment_id = streams[text(stream)]
                    cursors[deployment_id] = self._record_log_entries(deployment_id, items)
            except (redis.RedisError, sqlite3.Error, OSError) as exc:
                log.warning("log recorder paused: %s", exc)
                reread_at = 0.0
                self.stop.wait(1.0)

    def _record_log_entries(self, deployment_id: str, items) -> int:
        """Write a batch of a deployment's log lines unless another recorder is writing that log;
        returns the seq to read after."""
        lines = log_entries(items)
        lock = LOG_LOCK.format(deployment_id)
        if not self.conn.set(lock, self.consumer, nx=True, px=LOG_LOCK_MS):
            return lines[-1][0]
        try:
            after = self.store.log_counts(deployment_id)["last_seq"]
            if lines[0][0] > after + 1:
                # This process skipped lines while another held the lock, and that one has not
                # recorded them (yet, or ever): a gap is recorded only when Redis lost the lines.
                lines = log_entries(self.conn.xrange(LOG_STREAM.format(deployment_id), min=f"({after}-0", count=LOG_BATCH)) or lines
            recorded = self.store.record_logs(deployment_id, lines)
            self.conn.set(LOG_RECORDED.format(deployment_id), recorded, ex=LOG_TTL_SECONDS)
            return recorded
        finally:
            script(self.conn, _UNLOCK)(keys=[lock], args=[self.consumer])

    def _record_log_backlog(self, deployment_id: str) -> None:
        """Record the lines of the deployment's log stream, up to its last one now, not yet in
        SQLite, lock or not (another recorder's writes and ours are harmless repeats)."""
        key = LOG_STREAM.format(deployment_id)
        newest = self.conn.xrevrange(key, count=1)
        if not newest:
            return
        top = text(newest[0][0])
        after = self.store.log_counts(deployment_id)["last_seq"]
        while after < int(top.partition("-")[0]):
            items = self.conn.xrange(key, min=f"({after}-0", max=top, count=LOG_BATCH)
            if not items:
                return
            after = self.store.record_logs(deployment_id, log_entries(items))
            self.conn.set(LOG_RECORDED.format(deployment_id), after, ex=LOG_TTL_SECONDS)

    def _forget_recorded_logs(self) -> None:
        """Unlist the log streams fully recorded and quiet for LOG_IDLE_MS."""
        seconds, micros = self.conn.time()
        quiet = [text(i) for i in self.conn.zrangebyscore(LOG_STREAMS, "-inf", seconds * 1000 + micros // 1000 - LOG_IDLE_MS)]
        recorded = self.store.last_log_seqs(quiet)
        for deployment_id in quiet:
            script(self.conn, _FORGET_LOG)(
                keys=[LOG_STREAMS, LOG_STREAM.format(deployment_id)], args=[deployment_id, recorded.get(deployment_id, 0)]
            )

    # -- repair ------------------------------------------------------------------------------

    def _repair_loop(self) -> None:
        while not self.stop.wait(self.repair_seconds):
            try:
                # One web process repairs per period; the others skip.
                if self.conn.set(f"{PREFIX}:web-repair", self.consumer, nx=True, ex=max(1, int(self.repair_seconds))):
                    repair_lost_deployments(self.conn, self.store)
            except (redis.RedisError, sqlite3.Error) as exc:
                log.warning("repair skipped: %s", exc)

    # -- broadcaster -------------------------------------------------------------------------

    def _token_loop(self) -> None:
        while not self.stop.wait(TOKEN_CHECK_SECONDS):
            try:
                self.hub.close_refused(self.store.active_token_names)
            except sqlite3.Error as exc:
                log.warning("token check skipped: %s", exc)

    def _follow_loop(self) -> None:
        read_followed_logs(self.conn, self.hub.logs, self.stop)

    def _broadcast_loop(self) -> None:
        last_id = "$"
        while not self.stop.is_set():
            try:
                if last_id == "$":
                    info = self.conn.xinfo_stream(EVENTS_STREAM) if self.conn.exists(EVENTS_STREAM) else None
                    last_id = (info["last-generated-id"] if info else "0-0")
                    last_id = last_id.decode() if isinstance(last_id, bytes) else last_id
                entries = self.conn.xread({EVENTS_STREAM: last_id}, count=500, block=1000)
                updates = []
                for _stream, items in entries or []:
                    for entry_id, fields in items:
                        last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        fields = text_fields(fields)
                        # A record that is not its environment's current one changes no state.
                        if fields.get("kind") == "deployment" and fields.get("current") != "0":
                            updates.append(Deployment.from_json(fields["data"]).ws_message())
                # What one read brought goes out together: under load, reads bring more at once.
                if updates:
                    self.hub.publish(*updates)
            except (redis.RedisError, OSError, ValueError, KeyError) as exc:
                log.warning("event broadcaster paused: %s", exc)
                self.stop.wait(1.0)
