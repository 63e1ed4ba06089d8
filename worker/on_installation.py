"""The App uninstalled, from an account or from some of its repositories: their previews go.

GitHub refuses the installation's token from then on, so nothing here asks GitHub; the destroy
jobs' own reports to GitHub fail and are best effort (see `worker.reporting`).
"""

from __future__ import annotations

import logging

from gidgethub import routing

from bot import previews, state

log = logging.getLogger("previewbot.installations")

router = routing.Router()

REASON = "app uninstalled"


@router.register("installation", action="deleted")
async def uninstalled(event, handling) -> None:
    """Every preview the installation served: recorded as its own, or in a repository the
    delivery lists (a preview started without an installation id is found by its repository)."""
    installation_id = event.data["installation"]["id"]
    repositories = _names(event.data.get("repositories") or [])
    destroy_previews(handling.ctx, lambda d: d.installation_id == installation_id or d.repository.lower() in repositories)


@router.register("installation_repositories", action="removed")
async def repositories_removed(event, handling) -> None:
    repositories = _names(event.data["repositories_removed"])
    destroy_previews(handling.ctx, lambda d: d.repository.lower() in repositories)


def destroy_previews(ctx, belongs) -> None:
    for deployment in state.live_deployments(ctx.redis):
        if belongs(deployment):
            log.info("destroying %s: %s", deployment.key, REASON)
            previews.request_destroy(ctx.redis, ctx.settings, deployment.key, reason=REASON)


def _names(repositories: list) -> set[str]:
    # GitHub's names are case-insensitive; a preview started through the REST API carries
    # the name as typed.
    return {r["full_name"].lower() for r in repositories}
