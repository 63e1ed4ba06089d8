"""The job that handles a GitHub webhook delivery: each feature module registers its handlers
on its own gidgethub router, and this module merges them (as bedevere does)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gidgethub import routing, sansio

from bot.github import GitHubSession, github_session

from . import on_check_run, on_comment, on_installation, on_pull_request
from .context import WorkerContext, get_context

log = logging.getLogger("previewbot.webhooks")

router = routing.Router(on_comment.router, on_check_run.router, on_pull_request.router, on_installation.router)


@dataclass
class Handling:
    """What a handler gets besides the event: the worker's context and a GitHub session."""

    ctx: WorkerContext
    session: GitHubSession


def handle_webhook(*, event: str, delivery_id: str, payload: dict) -> None:
    """Run the handlers for one delivery (queued by the web process's webhook receiver)."""
    ctx = get_context()
    installation_id = (payload.get("installation") or {}).get("id")
    if not installation_id or not ctx.settings.github_enabled:
        log.info("delivery %s (%s) has no installation; nothing to do", delivery_id, event)
        return

    async def go():
        # The session asks GitHub for a token only at its first call, so a handler that needs
        # no GitHub (an uninstall, whose token GitHub refuses) runs without one.
        async with github_session(ctx.settings, installation_id) as session:
            await router.dispatch(sansio.Event(payload, event=event, delivery_id=delivery_id), Handling(ctx, session))

    asyncio.run(go())
