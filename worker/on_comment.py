"""`/preview` comments on pull requests: what happens on a command, from receipt to the job.

Who asks is checked first: a command from someone without write access costs one reaction, the
permission check and at most one reply a minute per pull request, and nothing else.

A command on a pull request from a fork deploys only the head previewbot recorded before the
comment was written (`issue_comment` names no commit, and a fork can push after the maintainer
looked): if the head moved since, nothing deploys and the reply asks for a new command or the
button of the check run on the new head, which deploys that commit only. Pull requests from the
repository itself deploy their head as the job finds it: only people with write access can push
to their branches, and a push redeploys a live preview anyway.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from gidgethub import routing

from bot import acks, previews, state
from bot.commands import Command, command_in
from bot.github import github_session, may_deploy
from bot.model import Deployment, PreviewKey
from bot.render import check_name, text

from .pulls import fetch_pull, head_repository, is_fork

log = logging.getLogger("previewbot.commands")

router = routing.Router()

# Someone without write access gets at most one reply this often per pull request.
OUTSIDER_REPLY_SECONDS = 60


async def acknowledge(ctx, comments: list[acks.Comment]) -> None:
    """`eyes` on members' commands (see bot.acks), all at once: one session per installation."""
    by_installation: dict[int, list[acks.Comment]] = {}
    for comment in comments:
        by_installation.setdefault(comment.installation_id, []).append(comment)

    async def react_all(installation_id: int, some: list[acks.Comment]) -> None:
        async with github_session(ctx.settings, installation_id) as session:
            await asyncio.gather(*(ctx.reporter.react(session, c.repository, c.comment_id, "eyes") for c in some))

    await asyncio.gather(*(react_all(i, some) for i, some in by_installation.items()))


@router.register("issue_comment", action="created")
async def preview_command(event, handling) -> None:
    data = event.data
    command = command_in(data)
    if command is None:
        return
    ctx, session = handling.ctx, handling.session
    reporter = ctx.reporter
    key = PreviewKey(data["repository"]["full_name"], int(data["issue"]["number"]), command.environment)
    comment_id = data["comment"]["id"]
    login = data["comment"]["user"]["login"]

    acknowledged = acks.acknowledged_apart(event.event, data)
    if not await may_deploy(session, key.repository, login):
        await answer_outsider(handling, key, command, comment_id=comment_id, login=login, acknowledged=acknowledged)
        return

    if not acknowledged:
        await reporter.react(session, key.repository, comment_id, "eyes")
    if command.action in ("help", "status"):
        await reporter.update_comment(session, key, note=unknown_note(command), show_help=command.action == "help")
        return

    if command.action == "destroy":
        if previews.request_destroy(ctx.redis, ctx.settings, key, reason=f"destroyed by @{login}") is None:
            await reporter.update_comment(session, key, note=f"No preview is running in {text(key.environment)}.")
        return

    if command.action == "cancel":
        if previews.request_cancel(ctx.redis, ctx.settings, key, reason=f"cancelled by @{login}") is None:
            await reporter.update_comment(session, key, note=f"No deploy of {text(key.environment)} is in progress.")
        return

    if command.action == "extend":
        if previews.request_extend(ctx.redis, ctx.settings, key, reason=f"extended by @{login}") is None:
            await reporter.update_comment(session, key, note=nothing_to_extend(key.environment))
        return

    if key.environment not in ctx.settings.environments:
        await reporter.react(session, key.repository, comment_id, "confused")
        await reporter.update_comment(session, key, note=not_an_environment(ctx.settings, key.environment), show_help=True)
        return

    pull = await fetch_pull_for_deploy(handling, key)
    if pull is None or pull["state"] != "open":
        await reporter.update_comment(session, key, note="This pull request is closed, so it gets no preview.")
        return

    if is_fork(pull, key.repository) and await refused_unapproved_head(handling, key, pull, data["comment"]):
        return

    await start_deploy_from_github(handling, pull, key=key, trigger="comment", requested_by=login, comment_id=comment_id)


async def answer_outsider(handling, key: PreviewKey, command: Command, *, comment_id: int, login: str, acknowledged: bool = False) -> None:
    """Someone without write access: one reaction (none more for an answer to a comment already
    acknowledged) and, at most once a minute per pull request, the answer or the refusal. No pull
    request is fetched, nothing is queued."""
    answered = command.action in ("help", "status")
    if not (answered and acknowledged):
        await handling.ctx.reporter.react(handling.session, key.repository, comment_id, "eyes" if answered else "confused")
    if answered:
        await reply_to_outsider(handling, key, note=unknown_note(command), show_help=command.action == "help")
    else:
        await reply_to_outsider(handling, key, note=refusal(login, command.action))


async def refused_unapproved_head(handling, key: PreviewKey, pull: dict, comment: dict) -> bool:
    """Refuse to deploy a fork's head that is not the one approved by `comment` (see the module's
    docstring): a note, a `confused` reaction and the check run on the head to click. True when refused."""
    ctx, session, head = handling.ctx, handling.session, pull["head"]["sha"]
    seen = state.heads_seen(ctx.redis, key.repository, key.pr_number)
    asked = asked_at(comment, handling.received_at)
    if approved_head(seen, asked_at=asked) == head:
        return False
    login = comment["user"]["login"]
    await ctx.reporter.react(session, key.repository, comment["id"], "confused")
    await ctx.reporter.update_comment(session, key, note=moved_head_note(login, head, key.environment, seen_before=any(h.at < asked for h in seen)))
    await show_check_run(handling, key, head)
    return True


def unknown_note(command: Command) -> str | None:
    return f"`/preview {text(command.unknown)}` is not a command I know." if command.unknown else None


def refusal(login: str, action: str) -> str:
    return f"@{login}: only people with write access to this repository can {action} previews."


async def reply_to_outsider(handling, key: PreviewKey, *, note: str | None, show_help: bool = False) -> None:
    """Answer someone without write access in the bot's comment, at most once a minute per pull
    request: their comments cost GitHub one edit a minute, however many they write."""
    if state.claim_reply(handling.ctx.redis, key.repository, key.pr_number, seconds=OUTSIDER_REPLY_SECONDS):
        await handling.ctx.reporter.update_comment(handling.session, key, note=note, show_help=show_help)


def asked_at(comment: dict, received_at: float) -> float:
    """When a command was given (epoch seconds): the comment's `created_at`, never later than
    previewbot received it, so a GitHub clock ahead of ours cannot make a later head look
    approved. A time that does not parse approves nothing."""
    try:
        created = datetime.fromisoformat(str(comment.get("created_at")))
    except ValueError:
        return 0.0
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return min(created.timestamp(), received_at)


def approved_head(seen: list[state.HeadSeen], *, asked_at: float) -> str | None:
    """The commit a command on a fork's pull request approves: the head previewbot last saw
    before the command, provided it saw no other since. None when it saw none before, or the
    fork pushed after the command (even back to the same commit: ask again). Pure."""
    before = [h.sha for h in seen if h.at < asked_at]
    if not before or any(h.sha != before[-1] for h in seen if h.at >= asked_at):
        return None
    return before[-1]


def moved_head_note(login: str, head: str, environment: str, *, seen_before: bool) -> str:
    why = "the fork pushed after your comment" if seen_before else "previewbot had seen no commit of this fork before your comment"
    return (
        f"@{login}: nothing was deployed: {why}. Look at its head `{short_sha(head)}`, then comment `/preview` again, "
        f"or use the button of the **{text(check_name(environment))}** check run on `{short_sha(head)}`, which deploys that commit only."
    )


def nothing_to_extend(environment: str) -> str:
    return f"No preview is deployed in {text(environment)}, so there is nothing to extend."


def short_sha(sha: str | None) -> str:
    return text(str(sha or "unknown")[:12])


async def show_check_run(handling, key: PreviewKey, head_sha: str) -> None:
    """Make sure the environment's check run on `head_sha` is there to click: its button deploys
    that commit (a refusal points people to it)."""
    current = state.current(handling.ctx.redis, key)
    shown = current if current is not None and current.head_sha == head_sha else None
    await handling.ctx.reporter.update_check_run(handling.session, shown, key=key, head_sha=head_sha)


def not_an_environment(settings, name: str) -> str:
    return f"`{text(name)}` is not an environment of this installation: {', '.join(f'`{n}`' for n in settings.environments)}."


async def start_deploy_from_github(handling, pull: dict, *, key: PreviewKey, trigger: str, requested_by: str, comment_id: int | None = None, queue_if_busy: bool = False) -> bool:
    """Deploy the head of `pull`, which the caller approved: the deployment is pinned to that commit.

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
    if outcome.refused:
        await ctx.reporter.update_comment(session, key, note=f"@{requested_by}: nothing was deployed. {outcome.refused}")
        if comment_id:
            await ctx.reporter.react(session, key.repository, comment_id, "confused")
        return False
    if not outcome.started and not outcome.queued:
        await ctx.reporter.update_comment(
            session, key, note=f"@{requested_by}: a deploy of this branch is already in progress; it was not started twice."
        )
        if comment_id:
            await ctx.reporter.react(session, key.repository, comment_id, "confused")
    return outcome.started or outcome.queued


async def fetch_pull_for_deploy(handling, key: PreviewKey) -> dict | None:
    """The pull request as GitHub has it now, its head recorded as seen now."""
    pull = await fetch_pull(handling.session, key.repository, key.pr_number)
    if pull is not None:
        state.record_head(handling.ctx.redis, key.repository, key.pr_number, pull["head"]["sha"], at=handling.clock())
    return pull
