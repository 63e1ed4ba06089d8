"""The thread of each worker process that acknowledges members' commands (see `bot.acks`) as
they arrive, apart from the job queue: it wakes when the receiver adds a comment, claims the
oldest waiting comments, up to BATCH, and sends their `eyes` reactions together, until none is
waiting. A burst of commands is acknowledged in the order it came, at the pace GitHub answers
concurrent calls rather than one job at a time, and never behind the jobs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable

import redis

from bot import acks, github, state

from .on_comment import acknowledge

log = logging.getLogger("previewbot.acknowledger")

BATCH = 50
# How long a wait for a comment lasts; leases that ended are looked at this often.
IDLE_SECONDS = 1.0
# The GitHub calls of one batch, their retries included, end within this.
BATCH_SECONDS = 30.0


class Acknowledger:
    def __init__(self, ctx, *, clock: Callable[[], int] = acks.now_ms):
        self.ctx = ctx
        self.clock = clock
        # Its own client: its wait blocks a connection for IDLE_SECONDS.
        self.conn = state.connect(ctx.settings.redis_url, timeout=IDLE_SECONDS + 5.0)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="previewbot-acknowledger", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=IDLE_SECONDS + BATCH_SECONDS)

    def run_once(self) -> int:
        """Acknowledge every comment waiting (and those whose lease ended); how many were sent."""
        sent = 0
        while comments := acks.claim(self.conn, now_ms=self.clock(), limit=BATCH):
            now = self.clock()
            fresh = [c for c in comments if now - c.received_ms <= acks.GIVE_UP_MS]
            if len(fresh) < len(comments):
                log.warning("gave up the eyes reaction of %d comments received over %d minutes ago", len(comments) - len(fresh), acks.GIVE_UP_MS // 60_000)
            if fresh:
                with github.deadline(BATCH_SECONDS):
                    asyncio.run(acknowledge(self.ctx, fresh))
            acks.done(self.conn, comments)
            sent += len(fresh)
        return sent

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                acks.wait_for_work(self.conn, IDLE_SECONDS)
                self.run_once()
            except redis.RedisError as exc:
                log.warning("acknowledgements paused: %s", exc)
                self.stop_event.wait(IDLE_SECONDS)
            except Exception:  # the loop must survive anything
                log.exception("acknowledging comments crashed")
                self.stop_event.wait(IDLE_SECONDS)
