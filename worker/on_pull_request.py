"""The pull request's life: a check run when it opens, redeploys on push, teardown on close."""

from __future__ import annotations

from gidgethub import routing

from bot import previews, state
from bot.model import PreviewKey
from bot.render import text
from bot.repo_config import CONFIG_PATH, NO_CONFIG, RepoConfig, RepoConfigError

from .on_comment import start_deploy_from_github
from .pulls import config_ref, is_fork, read_repo_config

router = routing.Router()


@router.register("pull_request", action="opened")
@router.register("pull_request", action="reopened")
async def opened(event, handling) -> None:
    """Every environment's check run appears with its Deploy button; environments set to deploy
    automatically (by the operator, or the repository's `auto_deploy`) deploy, never a fork's
    code. A `.github/preview.yml` with errors fails the check runs and deploys nothing."""
    ctx, session = handling.ctx, handling.session
    pull = event.data["pull_request"]
    record_head(event.data, handling)
    # A fork is never deployed on its own, so its base branch's file is read when it is asked to.
    config, config_error = (NO_CONFIG, None) if is_fork(pull, event.data["repository"]["full_name"]) else await repo_config(handling, event.data)
    for environment in ctx.settings.environments:
        key = _key(event.data, environment)
        auto_deploy = config.for_environment(environment).auto_deploy
        if auto_deploy is None:
            auto_deploy = ctx.settings.for_environment(environment).auto_deploy
        if auto_deploy and not config_error and not is_fork(pull, key.repository):
            if await start_deploy_from_github(handling, pull, key=key, trigger="auto", requested_by=pull["user"]["login"]):
                continue
        await ctx.reporter.update_check_run(session, None, key=key, head_sha=pull["head"]["sha"], config_error=config_error)
    await note_config_error(handling, event.data, config_error)


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


async def repo_config(handling, data: dict) -> tuple[RepoConfig, str | None]:
    """The pull request's `.github/preview.yml` (see `worker.pulls.config_ref`), or no
    configuration and the file's errors."""
    repository, pull = data["repository"]["full_name"], data["pull_request"]
    try:
        return await read_repo_config(handling.ctx, handling.session, repository, config_ref(pull, repository)), None
    except RepoConfigError as exc:
        return NO_CONFIG, str(exc)


async def note_config_error(handling, data: dict, config_error: str | None) -> None:
    """The PR comment says that the file has errors; the check runs show them."""
    if config_error:
        first = config_error.splitlines()[0]
        note = f"`{CONFIG_PATH}` has errors, so nothing deploys until they are fixed (the check run lists them): {text(first)}"
        await handling.ctx.reporter.update_comment(handling.session, _key(data, handling.ctx.settings.environments[0]), note=note)


def record_head(data: dict, handling) -> None:
    """The head as of the delivery's receipt: what a later command on a fork's pull request may
    deploy (see `worker.on_comment`)."""
    pull = data["pull_request"]
    state.record_head(handling.ctx.redis, data["repository"]["full_name"], int(pull["number"]), pull["head"]["sha"], at=handling.received_at)


def _key(data: dict, environment: str) -> PreviewKey:
    return PreviewKey(data["repository"]["full_name"], int(data["pull_request"]["number"]), environment)
