"""Buttons on the Preview check run, and "Re-run" on it."""

from __future__ import annotations

from gidgethub import routing

from bot import previews
from bot.github import may_deploy
from bot.model import PreviewKey
from bot.render import check_run_environment

from .on_comment import fetch_pull, not_an_environment, start_deploy_from_github

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
    if environment is None or pr_number is None or identifier not in DEPLOY_ACTIONS | {"destroy", "cancel"}:
        return
    key = PreviewKey(data["repository"]["full_name"], pr_number, environment)
    login = data["sender"]["login"]
    if not await may_deploy(session, key.repository, login):
        await ctx.reporter.update_comment(
            session, key, note=f"@{login}: only people with write access to this repository can {identifier} previews."
        )
        return
    if identifier == "destroy":
        previews.request_destroy(ctx.redis, ctx.settings, key, reason=f"destroyed by @{login}")
        return
    if identifier == "cancel":
        previews.request_cancel(ctx.redis, ctx.settings, key, reason=f"cancelled by @{login}")
        return
    if environment not in ctx.settings.environments:
        await ctx.reporter.update_comment(session, key, note=not_an_environment(ctx.settings, environment))
        return
    pull = await fetch_pull(session, key.repository, key.pr_number)
    if pull is None or pull["state"] != "open":
        return
    await start_deploy_from_github(handling, pull, key=key, trigger="button", requested_by=login)


def pull_request_number(check_run: dict) -> int | None:
    """GitHub lists the pull requests of a check run, except those from forks; for those, the
    bot wrote the number into the check run's external_id (`"<pr>:<environment>"`)."""
    pulls = check_run.get("pull_requests") or []
    if pulls:
        return int(pulls[0]["number"])
    external = str(check_run.get("external_id") or "").partition(":")[0]
    return int(external) if external.isdigit() else None
