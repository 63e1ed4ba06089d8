"""Previews that end on their own (see `bot.expiry`): every second a thread in each worker
process claims from Redis the previews whose time is up, asks for their destroy (outcome
`expired`), and has GitHub told of those about to expire (the warning and the Extend button).

The claims are atomic, so with several worker processes each expiry and each warning is acted
on once; a destroy that never ends its record is asked for again after a minute.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Callable

import redis

from bot import expiry, previews, queue, state
from bot.model import Deployment

log = logging.getLogger("previewbot.expiry")

TICK_SECONDS = 1.0


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def run_due(conn: redis.Redis, settings, *, now: datetime) -> tuple[list[Deployment], list[Deployment]]:
    """One look at the schedule: (previews whose destroy was asked for, previews warned)."""
    expired_ids, warn_ids = expiry.due(conn, now=now, warning_seconds=settings.ttl_warning_seconds)
    destroyed, warned = [], []
    for deployment_id in expired_ids:
        deployment = state.record(conn, deployment_id)
        if deployment is None or deployment.status != "deployed":
            conn.zrem(expiry.EXPIRING, deployment_id)  # it ended some other way
            continue
        current = state.current(conn, deployment.key)
        if current is None or current.id != deployment.id:
            continue  # a redeploy is taking over; it supersedes this one, or it is asked again
        log.info("preview %s (%s) expired at %s; destroying it", deployment.id, deployment.key, deployment.expires_at)
        previews.request_destroy(conn, settings, deployment.key, reason=expiry.EXPIRED_REASON)
        destroyed.append(deployment)
    for deployment_id in warn_ids:
        deployment = state.record(conn, deployment_id)
        if deployment is None or deployment.status != "deployed" or not deployment.installation_id:
            continue
        queue.enqueue_expiry_report(conn, deployment=deployment, why="warned")
        warned.append(deployment)
    return destroyed, warned


def give_expiries(conn: redis.Redis, settings, *, now: datetime) -> list[Deployment]:
    """Previews deployed without an expiry (before expiry existed, or while PREVIEW_TTL was 0)
    get now + TTL: never an instant expiry."""
    given = []
    for deployment in state.live_deployments(conn):
        if deployment.status != "deployed" or deployment.expires_at:
            continue
        expires = expiry.expires_at(expiry.ttl_for(deployment, settings), start=now)
        if expires and state.publish(conn, deployment.changed(expires_at=expires), expect="deployed", message="expiry set"):
            given.append(deployment)
    return given


class ExpiryScheduler:
    """The thread that runs `run_due` every TICK_SECONDS, with an injectable clock."""

    def __init__(self, conn: redis.Redis, settings, *, clock: Callable[[], datetime] = utc_now):
        self.conn = conn
        self.settings = settings
        self.clock = clock
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="previewbot-expiry", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def _loop(self) -> None:
        while not self.stop_event.wait(TICK_SECONDS):
            try:
                run_due(self.conn, self.settings, now=self.clock())
            except redis.RedisError as exc:
                log.warning("expiry check skipped: %s", exc)
            except Exception:  # the loop must survive anything
                log.exception("expiry check crashed")
