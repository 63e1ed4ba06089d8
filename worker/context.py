"""What every job needs, built once per worker process from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from bot.config import Settings, load_settings
from bot.model import Deployment

from .provisioners import Provisioner, make_provisioner

log = logging.getLogger("previewbot.worker")


class NullReporter:
    """Local mode: no GitHub App, so nothing is reported outside the API and the feed."""

    def deploy_started(self, deployment: Deployment) -> None:
        pass

    def deploy_finished(self, deployment: Deployment) -> None:
        pass

    def destroyed(self, deployment: Deployment, *, reason: str) -> None:
        pass


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    provisioner: Provisioner
    reporter: object


_context: WorkerContext | None = None


def build_context(settings: Settings) -> WorkerContext:
    conn = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    if settings.github_enabled:
        from .reporting import GitHubReporter

        reporter = GitHubReporter(settings, conn)
    else:
        reporter = NullReporter()
    return WorkerContext(settings, conn, make_provisioner(settings), reporter)


def set_context(context: WorkerContext | None) -> None:
    global _context
    _context = context


def get_context() -> WorkerContext:
    """The worker's context; a job run outside `previewbot worker` builds it from the environment."""
    global _context
    if _context is None:
        _context = build_context(load_settings())
    return _context
