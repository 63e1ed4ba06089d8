"""Buttons on the Preview check run, and "Re-run" on it.

A deploy button deploys its check run's own commit (`head_sha`), and only while that is still
the pull request's head: a click approves the commit the check run shows, so a check run the
pull request has moved past deploys nothing and says it is out of date. This holds for every
pull request, from a fork or not.
"""

from __future__ import annotations

from gidgethub import routing

from bot import previews
from bot.github import may_deploy
from bot.model import PreviewKey
from bot.render import check_name, check_run_environment, text

from .on_comment import fetch_pull_for_deploy, not_an_environment, nothing_to_extend, refusal, reply_to_outsider, short_sha, show_check_run, start_deploy_from_github

router = routing.Router()

DEPLOY_ACTIONS = {"deploy", "redeploy", "retry"}


@router.register("check_run", action="requested_action")
async def button_clicked(event, handling) -> None:
    identifier = (event.data.get("requested_action") or {}).get("identifier")
    await run_action(event.data, handling, identifier)


@router.register("check_run", action="rerequested")
async def rerun_requested(event, handling) -> None:
    await run_action(event.data, handling, "redeploy")


async def run_action(data: dict, handling, identifier: str | None) -> None:
    ctx, session = handling.ctx, handling.session
    check_run = data["check_run"]
    if str((check_run.get("app") or {}).get("id")) != str(ctx.settings.app_id):
        return  # only our own check runs
    environment = check_run_environment(check_run.get("name"), check_run.get("external_id"))
    pr_number = pull_request_number(check_run)
    if environment is None or pr_number is None or identifier not in DEPLOY_ACTIONS | {"destroy", "cancel", "extend"}:
        return
    key = PreviewKey(data["repository"]["full_name"], pr_number, environment)
    login = data["sender"]["login"]
    if not await may_deploy(session, key.repository, login):
        await reply_to_outsider(handling, key, note=refusal(login, identifier))
        return
    if identifier == "destroy":
        previews.request_destroy(ctx.redis, ctx.settings, key, reason=f"destroyed by @{login}")
        return
    if identifier == "cancel":
        previews.request_cancel(ctx.redis, ctx.settings, key, reason=f"cancelled by @{login}")
        return
    if identifier == "extend":
        if previews.request_extend(ctx.redis, ctx.settings, key, reason=f"extended by @{login}") is None:
            await ctx.reporter.update_comment(session, key, note=nothing_to_extend(environment))
        return
    if environment not in ctx.settings.environments:
        await ctx.reporter.update_comment(session, key, note=not_an_environment(ctx.settings, environment))
        return
    pull = await fetch_pull_for_deploy(handling, key)
    if pull is None or pull["state"] != "open":
        return
    head = pull["head"]["sha"]
    if check_run.get("head_sha") != head:
        await ctx.reporter.update_comment(session, key, note=out_of_date_note(login, check_run.get("head_sha"), head, environment))
        await show_check_run(handling, key, head)
        return
    await start_deploy_from_github(handling, pull, key=key, trigger="button", requested_by=login)


def out_of_date_note(login: str, clicked: str | None, head: str, environment: str) -> str:
    return (
        f"@{login}: that check run is out of date: it is on `{short_sha(clicked)}`, and the head of this pull request is now "
        f"`{short_sha(head)}`. Nothing was deployed; use the **{text(check_name(environment))}** check run on `{short_sha(head)}`."
    )


def pull_request_number(check_run: dict) -> int | None:
    """GitHub lists the pull requests of a check run, except those from forks; for those, the
    bot wrote the number into the check run's external_id (`"<pr>:<environment>"`)."""
    pulls = check_run.get("pull_requests") or []
    if pulls:
        return int(pulls[0]["number"])
    external = str(check_run.get("external_id") or "").partition(":")[0]
    return int(external) if external.isdigit() else None
