"""The job that handles a GitHub webhook delivery: each feature module registers its handlers
on its own gidgethub router, and this module merges them (as bedevere does)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import rq
from gidgethub import routing, sansio

from bot.github import GitHubSession, github_session

from . import on_check_run, on_comment, on_installation, on_pull_request
from .context import WorkerContext, get_context, github_deadline

log = logging.getLogger("previewbot.webhooks")

router = routing.Router(on_comment.router, on_check_run.router, on_pull_request.router, on_installation.router)


@dataclass
class Handling:
    """What a handler gets besides the event: the worker's context, a GitHub session, when the
    delivery was received, and the clock for what handlers learn later (a fetched head)."""

    ctx: WorkerContext
    session: GitHubSession
    received_at: float = field(default_factory=time.time)
    clock: Callable[[], float] = time.time


def handle_webhook(*, event: str, delivery_id: str, payload: dict) -> None:
    """Run the handlers for one delivery (queued by the web process's webhook receiver)."""
    ctx = get_context()
    installation_id = (payload.get("installation") or {}).get("id")
    if not installation_id or not ctx.settings.github_enabled:
        log.info("delivery %s (%s) has no installation; nothing to do", delivery_id, event)
        return

    received_at = received_time()

    async def go():
        # The session asks GitHub for a token only at its first call, so a handler that needs
        # no GitHub (an uninstall, whose token GitHub refuses) runs without one.
        async with github_session(ctx.settings, installation_id) as session:
            await router.dispatch(sansio.Event(payload, event=event, delivery_id=delivery_id), Handling(ctx, session, received_at))

    # Retries and waits on GitHub end before RQ would stop the job: it fails on its own, and RQ
    # retries it.
    with github_deadline():
        asyncio.run(go())


def received_time() -> float:
    """When the web process accepted the delivery: its job's enqueue time (a retried job's is
    later, which only makes a head look newer), else now."""
    job = rq.get_current_job()
    return job.enqueued_at.timestamp() if job is not None and job.enqueued_at else time.time()
