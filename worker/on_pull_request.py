"""The pull request's life: a check run when it opens, redeploys on push, teardown on close."""

from __future__ import annotations

from gidgethub import routing

from . import previews, state
from .on_comment import is_fork, start_deploy_from_github

router = routing.Router()


@router.register("pull_request", action="opened")
@router.register("pull_request", action="reopened")
async def opened(event, handling) -> None:
    ctx, session = handling.ctx, handling.session
    pull, repository = event.data["pull_request"], event.data["repository"]["full_name"]
    if ctx.settings.auto_deploy and not is_fork(pull, repository):
        if await start_deploy_from_github(handling, pull, repository=repository, trigger="auto", requested_by=pull["user"]["login"]):
            return
    await ctx.reporter.update_check_run(session, None, repository=repository, head_sha=pull["head"]["sha"], pr_number=pull["number"])


@router.register("pull_request", action="synchronize")
async def pushed(event, handling) -> None:
    """A push redeploys a live preview at the new commit; during a deploy, one follow-up is
    queued at the newest commit. A fork's push is never deployed without a new command."""
    ctx, session = handling.ctx, handling.session
    pull, repository = event.data["pull_request"], event.data["repository"]["full_name"]
    current = state.current(ctx.redis, repository, pull["number"])
    live = current is not None and current["status"] in ("deploying", "deployed") and current["branchName"] == pull["head"]["ref"]
    if live and not is_fork(pull, repository):
        started = await start_deploy_from_github(
            handling, pull, repository=repository, trigger="push", requested_by=event.data["sender"]["login"], queue_if_busy=True
        )
        if started:
            return
    await ctx.reporter.update_check_run(session, None, repository=repository, head_sha=pull["head"]["sha"], pr_number=pull["number"])


@router.register("pull_request", action="closed")
async def closed(event, handling) -> None:
    ctx = handling.ctx
    pull, repository = event.data["pull_request"], event.data["repository"]["full_name"]
    current = state.current(ctx.redis, repository, pull["number"])
    if current is None or current["status"] == "idle":
        return
    reason = "pull request merged" if pull.get("merged") else "pull request closed"
    previews.request_destroy(ctx.redis, ctx.settings, current, reason=reason)
