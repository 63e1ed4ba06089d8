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
    """Every environment's check run appears with its Deploy button; environments the operator
    set to deploy automatically deploy (never a fork's code)."""
    ctx, session = handling.ctx, handling.session
    pull = event.data["pull_request"]
    record_head(event.data, handling)
    for environment in ctx.settings.environments:
        key = _key(event.data, environment)
        if ctx.settings.for_environment(environment).auto_deploy and not is_fork(pull, key.repository):
            if await start_deploy_from_github(handling, pull, key=key, trigger="auto", requested_by=pull["user"]["login"]):
                continue
        await ctx.reporter.update_check_run(session, None, key=key, head_sha=pull["head"]["sha"])


@router.register("pull_request", action="synchronize")
async def pushed(event, handling) -> None:
    """A push redeploys every live environment of the pull request at the new commit; during a
    deploy, one follow-up is queued at the newest commit. A fork's push is never deployed
    without a new command."""
    ctx, session = handling.ctx, handling.session
    pull = event.data["pull_request"]
    record_head(event.data, handling)
    live = state.environments_of(ctx.redis, event.data["repository"]["full_name"], int(pull["number"]))
    for environment in dict.fromkeys([*ctx.settings.environments, *live]):
        key = _key(event.data, environment)
        current = live.get(environment)
        if current is not None and current.status in ("deploying", "deployed") and current.branch_name == pull["head"]["ref"] and not is_fork(pull, key.repository):
            if await start_deploy_from_github(handling, pull, key=key, trigger="push", requested_by=event.data["sender"]["login"], queue_if_busy=True):
                continue
        if environment in ctx.settings.environments:
            await ctx.reporter.update_check_run(session, None, key=key, head_sha=pull["head"]["sha"])


@router.register("pull_request", action="closed")
async def closed(event, handling) -> None:
    """Every environment of the pull request is torn down."""
    ctx, pull = handling.ctx, event.data["pull_request"]
    reason = "pull request merged" if pull.get("merged") else "pull request closed"
    for environment in state.environments_of(ctx.redis, event.data["repository"]["full_name"], int(pull["number"])):
        previews.request_destroy(ctx.redis, ctx.settings, _key(event.data, environment), reason=reason)


def record_head(data: dict, handling) -> None:
    """The head as of the delivery's receipt: what a later command on a fork's pull request may
    deploy (see `worker.on_comment`)."""
    pull = data["pull_request"]
    state.record_head(handling.ctx.redis, data["repository"]["full_name"], int(pull["number"]), pull["head"]["sha"], at=handling.received_at)


def _key(data: dict, environment: str) -> PreviewKey:
    return PreviewKey(data["repository"]["full_name"], int(data["pull_request"]["number"]), environment)
