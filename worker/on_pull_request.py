"""The pull request's life: a check run when it opens, redeploys on push, teardown on close."""

from __future__ import annotations

from gidgethub import routing

from bot import previews, state
from bot.model import PreviewKey

from .on_comment import is_fork, start_deploy_from_github

router = routing.Router()


@router.register("pull_request", action="opened")
@router.register("pull_request", action="reopened")
async def opened(event, handling) -> None:
    ctx, session = handling.ctx, handling.session
    pull, key = event.data["pull_request"], _key(event.data)
    if ctx.settings.auto_deploy and not is_fork(pull, key.repository):
        if await start_deploy_from_github(handling, pull, key=key, trigger="auto", requested_by=pull["user"]["login"]):
            return
    await ctx.reporter.update_check_run(session, None, key=key, head_sha=pull["head"]["sha"])


@router.register("pull_request", action="synchronize")
async def pushed(event, handling) -> None:
    """A push redeploys a live preview at the new commit; during a deploy, one follow-up is
    queued at the newest commit. A fork's push is never deployed without a new command."""
    ctx, session = handling.ctx, handling.session
    pull, key = event.data["pull_request"], _key(event.data)
    current = state.current(ctx.redis, key)
    live = current is not None and current.status in ("deploying", "deployed") and current.branch_name == pull["head"]["ref"]
    if live and not is_fork(pull, key.repository):
        started = await start_deploy_from_github(
            handling, pull, key=key, trigger="push", requested_by=event.data["sender"]["login"], queue_if_busy=True
        )
        if started:
            return
    await ctx.reporter.update_check_run(session, None, key=key, head_sha=pull["head"]["sha"])


@router.register("pull_request", action="closed")
async def closed(event, handling) -> None:
    pull = event.data["pull_request"]
    reason = "pull request merged" if pull.get("merged") else "pull request closed"
    previews.request_destroy(handling.ctx.redis, handling.ctx.settings, _key(event.data), reason=reason)


def _key(data: dict) -> PreviewKey:
    return PreviewKey(data["repository"]["full_name"], int(data["pull_request"]["number"]))
