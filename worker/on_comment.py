"""`/preview` comments on pull requests: what happens on a command, from receipt to the job."""

from __future__ import annotations

import logging

import gidgethub
from gidgethub import routing

from bot import previews
from bot.commands import parse_command
from bot.github import may_deploy
from bot.model import Deployment, PreviewKey
from bot.render import text

log = logging.getLogger("previewbot.commands")

router = routing.Router()


@router.register("issue_comment", action="created")
async def preview_command(event, handling) -> None:
    data = event.data
    command = parse_command(data["comment"].get("body"))
    if command is None or "pull_request" not in data["issue"] or is_bot(data["comment"]["user"]):
        return
    ctx, session = handling.ctx, handling.session
    reporter = ctx.reporter
    key = PreviewKey(data["repository"]["full_name"], int(data["issue"]["number"]), command.environment)
    comment_id = data["comment"]["id"]
    login = data["comment"]["user"]["login"]
    await reporter.react(session, key.repository, comment_id, "eyes")

    if command.action in ("help", "status"):
        note = f"`/preview {text(command.unknown)}` is not a command I know." if command.unknown else None
        await reporter.update_comment(session, key, note=note, show_help=command.action == "help")
        return

    if not await may_deploy(session, key.repository, login):
        await reporter.react(session, key.repository, comment_id, "confused")
        await reporter.update_comment(
            session, key, note=f"@{login}: only people with write access to this repository can {command.action} previews."
        )
        return

    if command.action == "destroy":
        if previews.request_destroy(ctx.redis, ctx.settings, key, reason=f"destroyed by @{login}") is None:
            await reporter.update_comment(session, key, note=f"No preview is running in {text(key.environment)}.")
        return

    if command.action == "cancel":
        if previews.request_cancel(ctx.redis, ctx.settings, key, reason=f"cancelled by @{login}") is None:
            await reporter.update_comment(session, key, note=f"No deploy of {text(key.environment)} is in progress.")
        return

    if key.environment not in ctx.settings.environments:
        await reporter.react(session, key.repository, comment_id, "confused")
        await reporter.update_comment(session, key, note=not_an_environment(ctx.settings, key.environment), show_help=True)
        return

    pull = await fetch_pull(session, key.repository, key.pr_number)
    if pull is None or pull["state"] != "open":
        await reporter.update_comment(session, key, note="This pull request is closed, so it gets no preview.")
        return

    await start_deploy_from_github(handling, pull, key=key, trigger="comment", requested_by=login, comment_id=comment_id)


def not_an_environment(settings, name: str) -> str:
    return f"`{text(name)}` is not an environment of this installation: {', '.join(f'`{n}`' for n in settings.environments)}."


async def start_deploy_from_github(handling, pull: dict, *, key: PreviewKey, trigger: str, requested_by: str, comment_id: int | None = None, queue_if_busy: bool = False) -> bool:
    """Deploy a pull request's head as GitHub shows it now: the commit that was reviewed is pinned.

    True when the deploy started or was queued behind the current one."""
    ctx, session = handling.ctx, handling.session
    deployment = Deployment.new(
        repository=key.repository,
        pr_number=key.pr_number,
        environment=key.environment,
        branch_name=pull["head"]["ref"],
        head_repository=head_repository(pull),
        head_sha=pull["head"]["sha"],
        trigger=trigger,
        requested_by=requested_by,
        installation_id=session.installation_id,
        provisioner=ctx.settings.for_environment(key.environment).provisioner,
        comment_id=comment_id,
    )
    outcome = previews.request_deploy(ctx.redis, ctx.settings, deployment, queue_if_busy=queue_if_busy)
    if not outcome.started and not outcome.queued:
        await ctx.reporter.update_comment(
            session, key, note=f"@{requested_by}: a deploy of this branch is already in progress; it was not started twice."
        )
        if comment_id:
            await ctx.reporter.react(session, key.repository, comment_id, "confused")
    return outcome.started or outcome.queued


async def fetch_pull(session, repository: str, pr_number: int) -> dict | None:
    try:
        return await session.call("GET", "/repos/{+repository}/pulls/{number}", url_vars={"repository": repository, "number": pr_number})
    except gidgethub.BadRequest as exc:
        if exc.status_code == 404:
            return None
        raise


def head_repository(pull: dict) -> str:
    repo = pull["head"].get("repo")
    # A fork that was deleted has no head repository; it is still not ours.
    return repo["full_name"] if repo else f"(deleted fork)/{pull['head']['ref']}"


def is_fork(pull: dict, repository: str) -> bool:
    return head_repository(pull) != repository


def is_bot(user: dict) -> bool:
    return user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")
