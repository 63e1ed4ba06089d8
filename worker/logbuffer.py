"""Log lines on their way from provisioners to Redis, in batches.

A build can print far faster than one Redis call a line. Lines are buffered per deployment and a
thread of the worker process writes whatever has gathered in one call per deployment
(`bot.state.publish_logs`): while a call is under way the next batch fills, so a quiet deploy
still sends each line at once and a chatty one sends thousands per call. A provisioner that
prints faster than Redis takes its lines waits when the buffer is full, instead of growing it
without bound; and the stream, capped at LOG_STREAM_MAXLEN lines, takes a batch only when that
trims no line a web process has not recorded in SQLite yet, so a flood slows to the recorder's
pace rather than losing lines. Lines are best effort: a Redis error drops a batch, never the deploy.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from bot import state
from bot.model import utcnow

log = logging.getLogger("previewbot.worker")

# Lines one call writes at most, and lines buffered before a provisioner's output waits.
BATCH_LINES = 1000
MAX_BUFFERED_LINES = 1_000
# A stream full of lines not yet recorded waits for a web process's recorder, this long without
# progress at most, looking this often.
RECORDER_PATIENCE_SECONDS = 5.0
RECORDER_POLL_SECONDS = 0.002


class LogBuffer:
    def __init__(self, conn: redis.Redis, *, patience: float = RECORDER_PATIENCE_SECONDS):
        self.conn = conn
        self.patience = patience
        self._pending: dict[str, list[tuple[str, str]]] = {}
        self._count = 0
        self._writing = False
        self._stamped_ms, self._stamp = 0, ""
        self._patient: dict[str, bool] = {}  # deployment id -> False once no recorder kept up
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="previewbot-logs", daemon=True)
        self._thread.start()

    def add(self, deployment_id: str, line: str) -> None:
        """Queue a line (already masked) of a deployment's log, stamped now."""
        with self._changed:
            while self._count >= MAX_BUFFERED_LINES:
                self._changed.wait()
            self._pending.setdefault(deployment_id, []).append((self._now(), line))
            self._count += 1
            self._changed.notify_all()

    def _now(self) -> str:
        """`utcnow()`, written once per millisecond: a flood stamps thousands of lines in one."""
        millisecond = int(time.time() * 1000)
        if millisecond != self._stamped_ms:
            self._stamped_ms, self._stamp = millisecond, utcnow()
        return self._stamp

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every line queued so far is written (or dropped): a deployment's outcome is
        published after its last line. False when it took longer than `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending and not self._writing, timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending)
                batches, self._pending, self._writing = self._pending, {}, True
            try:
                self._write(batches)
            finally:
                with self._changed:
                    self._count -= sum(len(lines) for lines in batches.values())
                    self._writing = False
                    self._changed.notify_all()

    def _write(self, batches: dict[str, list[tuple[str, str]]]) -> None:
        for deployment_id, lines in batches.items():
            for start in range(0, len(lines), BATCH_LINES):
                batch = lines[start : start + BATCH_LINES]
                try:
                    self._publish(deployment_id, batch)
                except redis.RedisError as exc:
                    log.warning("dropped %d log lines of %s: %s", len(batch), deployment_id, type(exc).__name__)

    def _publish(self, deployment_id: str, batch: list[tuple[str, str]]) -> None:
        """Write a batch as the stream has room for it without trimming lines no web process
        recorded yet; when no recorder makes progress for `patience` seconds (no web process
        runs), the oldest lines are trimmed as before."""
        waiting_since = progress = None
        while batch:
            written = state.publish_logs(self.conn, deployment_id, batch, wait_for_recorder=self._patient.get(deployment_id, True))
            batch = batch[written:]
            if not batch:
                return
            recorded = self.conn.get(state.LOG_RECORDED.format(deployment_id))
            now = time.monotonic()
            if written or recorded != progress or waiting_since is None:
                waiting_since, progress = now, recorded
            elif now - waiting_since > self.patience:
                log.warning("no web process records the log of %s; its oldest lines are trimmed unrecorded", deployment_id)
                self._patient[deployment_id] = False
            time.sleep(RECORDER_POLL_SECONDS)
