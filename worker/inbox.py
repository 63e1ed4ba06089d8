"""The webhook inbox: how an accepted delivery gets from the web process to an RQ job.

The receiver makes one atomic Redis call per delivery (`accept_delivery`): it remembers the
delivery id (a redelivery is then acknowledged and ignored), announces the delivery on the
deliveries stream (the web's recorder writes it to SQLite), and, when there is work, appends it to
the inbox stream. A dispatcher thread in every worker process turns inbox entries into RQ jobs
and acknowledges them only once queued, so a worker that dies mid-way leaves the entry for
another one to claim. No SQLite write and no RQ bookkeeping sit on the receiver's hot path.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading

import orjson
import redis
from rq import Retry
from rq.exceptions import DuplicateJobError

from . import state
from .queue import GITHUB_JOB_TIMEOUT, get_queue

log = logging.getLogger("previewbot.inbox")

INBOX_STREAM = f"{state.PREFIX}:inbox"
DISPATCHERS = "dispatchers"
# GitHub lets people redeliver a delivery of the past 3 days; remember ids a little longer.
DELIVERY_MEMORY_SECONDS = 7 * 24 * 3600
CLAIM_IDLE_MS = 30_000

# KEYS[1] delivery id key, KEYS[2] deliveries stream, KEYS[3] inbox; ARGV[1] memory seconds,
# ARGV[2] the delivery record (JSON), ARGV[3] the job (JSON, or "" when there is no work),
# ARGV[4] stream max length. 0 for a redelivery, 1 when accepted.
_ACCEPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'delivery', 'data', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'data', ARGV[3])
end
return 1
"""


def accept_delivery(conn: redis.Redis, *, delivery_id: str, record: dict, job: dict | None) -> bool:
    """Remember, announce and (with work) queue a delivery in one step; False for a redelivery."""
    accepted = _accept_script(conn)(
        keys=[f"{state.PREFIX}:delivery:{delivery_id}", state.DELIVERIES_STREAM, INBOX_STREAM],
        args=[
            DELIVERY_MEMORY_SECONDS,
            orjson.dumps(record),
            orjson.dumps({"deliveryId": delivery_id, "event": record["event"], "payload": job}) if job else b"",
            state.EVENTS_MAXLEN,
        ],
    )
    return bool(accepted)


_scripts: dict[int, object] = {}


def _accept_script(conn: redis.Redis):
    """The script registered once per client, so each call sends its SHA, not its text."""
    script = _scripts.get(id(conn))
    if script is None:
        script = _scripts[id(conn)] = conn.register_script(_ACCEPT)
    return script


def dispatch(conn: redis.Redis, entries) -> list[str]:
    """Queue an RQ job per inbox entry; returns the entry ids to acknowledge."""
    queue = get_queue(conn)
    done = []
    for entry_id, fields in entries:
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        raw = fields.get(b"data") or fields.get("data") if fields else None
        if raw:
            item = json.loads(raw)
            try:
                _enqueue(queue, item)
            except DuplicateJobError:
                pass  # queued before, by a dispatcher that died before acknowledging
        done.append(entry_id)
    return done


def _enqueue(queue, item: dict) -> None:
    queue.enqueue(
        "worker.github_events.handle_webhook",
        event=item["event"],
        delivery_id=item["deliveryId"],
        payload=item["payload"],
        job_id=f"webhook-{item['deliveryId']}",
        unique=True,
        # A handler that failed (GitHub still down after the client's own retries) or whose
        # worker died runs again; its steps are safe to repeat.
        retry=Retry(max=2),
        job_timeout=GITHUB_JOB_TIMEOUT,
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
        at_front=item["event"] == "issue_comment",  # people wait on commands
        description=f"webhook {item['event']}.{item['payload'].get('action')} {item['deliveryId']}",
    )


class Dispatcher:
    """The inbox reader of one worker process (a thread beside the RQ loop)."""

    def __init__(self, conn: redis.Redis):
        self.conn = conn
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="previewbot-dispatcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def _loop(self) -> None:
        backlog = True
        while not self.stop_event.is_set():
            try:
                self._ensure_group()
                if backlog:
                    self._claim_backlog()
                    backlog = False
                entries = self.conn.xreadgroup(DISPATCHERS, self.consumer, {INBOX_STREAM: ">"}, count=100, block=1000)
                for _stream, items in entries or []:
                    self._ack(dispatch(self.conn, items))
            except (redis.RedisError, ValueError, KeyError) as exc:
                log.warning("dispatcher paused: %s", exc)
                backlog = True
                self.stop_event.wait(1.0)

    def _ensure_group(self) -> None:
        try:
            self.conn.xgroup_create(INBOX_STREAM, DISPATCHERS, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim_backlog(self) -> None:
        """Our own unacknowledged entries, then those of dispatchers that died."""
        entries = self.conn.xreadgroup(DISPATCHERS, self.consumer, {INBOX_STREAM: "0"}, count=1000)
        for _stream, items in entries or []:
            self._ack(dispatch(self.conn, items))
        start = "0-0"
        while True:
            start, items, *_ = self.conn.xautoclaim(
                INBOX_STREAM, DISPATCHERS, self.consumer, min_idle_time=CLAIM_IDLE_MS, start_id=start, count=100
            )
            self._ack(dispatch(self.conn, items))
            if start in (b"0-0", "0-0"):
                break

    def _ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            pipe = self.conn.pipeline()
            pipe.xack(INBOX_STREAM, DISPATCHERS, *entry_ids)
            pipe.xdel(INBOX_STREAM, *entry_ids)  # dispatched: the inbox keeps only what waits
            pipe.execute()
