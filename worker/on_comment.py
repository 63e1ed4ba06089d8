"""`/preview` comments on pull requests."""

from __future__ import annotations

import logging

import gidgethub
from gidgethub import routing

from bot.commands import parse_command

from . import previews, state
from .github import may_deploy
from .render import text

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
    repository = data["repository"]["full_name"]
    pr_number = int(data["issue"]["number"])
    comment_id = data["comment"]["id"]
    login = data["comment"]["user"]["login"]
    await reporter.react(session, repository, comment_id, "eyes")
    current = state.current(ctx.redis, repository, pr_number)

    if command.action in ("help", "status"):
        note = f"`/preview {text(command.unknown)}` is not a command I know." if command.unknown else None
        await reporter.update_comment(session, current, repository=repository, pr_number=pr_number, note=note, show_help=command.action == "help")
        return

    if not await may_deploy(session, repository, login):
        await reporter.react(session, repository, comment_id, "confused")
        await reporter.update_comment(
            session, current, repository=repository, pr_number=pr_number,
            note=f"@{login}: only people with write access to this repository can {command.action} previews.",
        )
        return

    pull = await fetch_pull(session, repository, pr_number)
    if pull is None or pull["state"] != "open":
        await reporter.update_comment(session, current, repository=repository, pr_number=pr_number, note="This pull request is closed, so it gets no preview.")
        return

    if command.action == "destroy":
        if current is None or current["status"] == "idle":
            await reporter.update_comment(session, current, repository=repository, pr_number=pr_number, note="No preview is running.")
            return
        previews.request_destroy(ctx.redis, ctx.settings, current, reason=f"destroyed by @{login}")
        return

    await start_deploy_from_github(handling, pull, repository=repository, trigger="comment", requested_by=login, comment_id=comment_id)


async def start_deploy_from_github(handling, pull: dict, *, repository: str, trigger: str, requested_by: str, comment_id: int | None = None, queue_if_busy: bool = False) -> bool:
    """Deploy a pull request's head as GitHub shows it now: the commit that was reviewed is pinned.

    True when the deploy started or was queued behind the current one."""
    ctx, session = handling.ctx, handling.session
    deployment = previews.new_deployment(
        repository=repository,
        pr_number=pull["number"],
        branch=pull["head"]["ref"],
        head_repository=head_repository(pull, repository),
        sha=pull["head"]["sha"],
        trigger=trigger,
        requested_by=requested_by,
        installation_id=session.installation_id,
        provisioner=ctx.provisioner.name,
    )
    if comment_id:
        deployment["commentId"] = comment_id
    outcome = previews.request_deploy(ctx.redis, ctx.settings, deployment, queue_if_busy=queue_if_busy)
    if not outcome.started and not outcome.queued:
        current = state.current(ctx.redis, repository, pull["number"])
        await ctx.reporter.update_comment(
            session, current, repository=repository, pr_number=pull["number"],
            note=f"@{requested_by}: a deploy of this branch is already in progress; it was not started twice.",
        )
        if comment_id:
            await ctx.reporter.react(session, repository, comment_id, "confused")
    return outcome.started or outcome.queued


async def fetch_pull(session, repository: str, pr_number: int) -> dict | None:
    try:
        return await session.call("GET", "/repos/{+repository}/pulls/{number}", url_vars={"repository": repository, "number": pr_number})
    except gidgethub.BadRequest as exc:
        if exc.status_code == 404:
            return None
        raise


def head_repository(pull: dict, repository: str) -> str:
    repo = pull["head"].get("repo")
    # A fork that was deleted has no head repository; it is still not ours.
    return repo["full_name"] if repo else f"(deleted fork)/{pull['head']['ref']}"


def is_fork(pull: dict, repository: str) -> bool:
    return head_repository(pull, repository) != repository


def is_bot(user: dict) -> bool:
    return user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")
