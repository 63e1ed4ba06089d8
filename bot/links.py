"""Addresses of previewbot's own pages, for what it writes elsewhere (the PR comment, check
runs). Pure: no Flask, so the renderers and workers can import it."""

from __future__ import annotations

from urllib.parse import quote

# The dashboard's route of a deployment's log page (bot.dashboard serves it).
LOG_PAGE_PATH = "/deployments/<deployment_id>/logs"


def log_page_url(settings, deployment_id: str) -> str:
    """Where people read a deployment's log, live: `settings.base_url` (PUBLIC_URL, else
    http://HOST:PORT) + `/deployments/<id>/logs`."""
    path = LOG_PAGE_PATH.replace("<deployment_id>", quote(deployment_id, safe=""))
    return settings.base_url.rstrip("/") + path
