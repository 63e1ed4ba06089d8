"""From the event stream to SQLite and to WebSocket clients.

Two loops per web process, both reading the Redis stream the workers write to:

- the recorder reads through a consumer group shared by all web processes, so each event is
  written to SQLite once, and acknowledges it only after the write: an event published while
  no web process runs waits in Redis and is recorded when one starts;
- the broadcaster reads the stream on its own, so every web process sees every event and
  passes it to its own WebSocket clients.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import redis

from . import queue as job_queue
from .model import Deployment
from .state import ACTIVE, DELIVERIES_STREAM, EVENTS_STREAM, PREFIX, env_key, publish
from .store import Store

log = logging.getLogger("previewbot.feed")

RECORDER_GROUP = "recorders"
# Deployment events and logs from workers; accepted webhook deliveries from the receivers.
RECORDED_STREAMS = (EVENTS_STREAM, DELIVERIES_STREAM)
# A pending entry idle this long belonged to a web process that died before acknowledging it.
CLAIM_IDLE_MS = 30_000


@dataclass(eq=False)
class Subscriber:
    """One WebSocket client: what it asked to see and what its token may see."""

    repository: str | None = None
    pr_number: str | None = None
    allowed: list[str] | None = None  # None: every repository
    messages: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1000))
    overflowed: bool = False

    def wants(self, message: dict) -> bool:
        repository = message["repository"]
        if self.allowed is not None and repository not in self.allowed:
            return False
        if self.repository and repository != self.repository:
            return False
        return not self.pr_number or message["prNumber"] == self.pr_number


class Hub:
    """The WebSocket clients of this process."""

    def __init__(self):
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Subscriber:
        with self._lock:
            self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)

    def publish(self, message: dict) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            if subscriber.wants(message):
                try:
                    subscriber.messages.put_nowait(message)
                except queue.Full:
                    # A client that reads nothing must not hold memory forever; it reconnects.
                    subscriber.overflowed = True

    def __len__(self) -> int:
        return len(self._subscribers)


def record(store: Store, event_id: str, fields: dict) -> None:
    """Write one stream entry to SQLite; safe to repeat."""
    kind = fields.get("kind")
    data = json.loads(fields["data"])
    if kind == "deployment":
        store.record_deployment(Deployment.model_validate(data), event_id, message=fields.get("message"))
    elif kind == "log":
        store.record_log(event_id, data["deploymentId"], data["line"], data["at"])
    elif kind == "delivery":
        from .webhooks import remember

        store.record_delivery(data["deliveryId"], data["event"], data.get("action"), received_at=data.get("receivedAt") or stream_time(event_id))
        remember(store, data["event"], data.get("memo") or {})


def stream_time(event_id: str) -> str:
    """When Redis added a stream entry (its id starts with Redis's clock in ms), as utcnow()."""
    ms = int(event_id.partition("-")[0])
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decode(fields: dict) -> dict:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}


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
        failed = publish(conn, deployment.changed(status="failed", error=LOST_IN_REDIS), message=f"repair: {LOST_IN_REDIS}")
        job_queue.enqueue_report(conn, deployment=failed)
        log.warning("repaired deployment %s (%s): lost in Redis", deployment.id, deployment.key)
        repaired.append(failed)
    restore_current_state(conn, store)
    return repaired


def recorder_caught_up(conn: redis.Redis) -> bool:
    """Every stream entry has been delivered to a recorder and acknowledged."""
    try:
        stream = conn.xinfo_stream(EVENTS_STREAM)
        groups = {_text(g["name"]): g for g in conn.xinfo_groups(EVENTS_STREAM)}
    except redis.ResponseError:  # no stream yet: nothing in flight
        return True
    group = groups.get(RECORDER_GROUP)
    if group is None:
        return stream["length"] == 0
    return group["pending"] == 0 and _text(group["last-delivered-id"]) == _text(stream["last-generated-id"])


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def restore_current_state(conn: redis.Redis, store: Store) -> int:
    """Give Redis back each live preview it forgot, so that a close or a push still finds the
    environment to destroy or redeploy. Never overwrites what Redis knows."""
    restored = 0
    for deployment in store.live_deployments():
        if conn.set(env_key(deployment.key), deployment.dumps(), nx=True):
            log.warning("restored the state of %s in Redis from SQLite", deployment.key)
            restored += 1
    return restored


def _epoch(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


class FeedThreads:
    """The recorder, broadcaster and repair loops of one web process."""

    def __init__(self, conn: redis.Redis, store: Store, hub: Hub, *, repair_seconds: float = 60.0):
        self.conn = conn
        self.store = store
        self.hub = hub
        self.repair_seconds = repair_seconds
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for target in (self._record_loop, self._broadcast_loop, self._repair_loop):
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
        while not self.stop.is_set():
            try:
                self._ensure_groups()
                if backlog:
                    for stream in RECORDED_STREAMS:
                        self._record_pending(stream)
                    backlog = False
                entries = self.conn.xreadgroup(
                    RECORDER_GROUP, self.consumer, {stream: ">" for stream in RECORDED_STREAMS}, count=200, block=1000
                )
                for stream, items in entries or []:
                    self._record_entries(_text(stream), items)
            except (redis.RedisError, sqlite3.Error, OSError) as exc:
                log.warning("event recorder paused: %s", exc)
                backlog = True
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
        done = []
        with self.store.write():
            for entry_id, fields in items:
                entry_id = _text(entry_id)
                if fields:  # a trimmed entry comes back empty
                    try:
                        record(self.store, entry_id, _decode(fields))
                    except (KeyError, ValueError, TypeError) as exc:
                        log.error("dropping malformed event %s: %s", entry_id, exc)
                done.append(entry_id)
        if done:
            self.conn.xack(stream, RECORDER_GROUP, *done)

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

    def _broadcast_loop(self) -> None:
        last_id = "$"
        while not self.stop.is_set():
            try:
                if last_id == "$":
                    info = self.conn.xinfo_stream(EVENTS_STREAM) if self.conn.exists(EVENTS_STREAM) else None
                    last_id = (info["last-generated-id"] if info else "0-0")
                    last_id = last_id.decode() if isinstance(last_id, bytes) else last_id
                entries = self.conn.xread({EVENTS_STREAM: last_id}, count=500, block=1000)
                for _stream, items in entries or []:
                    for entry_id, fields in items:
                        last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        fields = _decode(fields)
                        # A record that is not its environment's current one changes no state.
                        if fields.get("kind") == "deployment" and fields.get("current") != "0":
                            self.hub.publish(Deployment.from_json(fields["data"]).ws_message())
            except (redis.RedisError, OSError, ValueError, KeyError) as exc:
                log.warning("event broadcaster paused: %s", exc)
                self.stop.wait(1.0)
