"""What every job needs, built once per worker process from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from bot import state
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
    reporter: object
    provisioners: dict[str, Provisioner] = field(default_factory=dict)

    def provisioner_for(self, environment: str) -> Provisioner:
        """The provisioner of a named environment, made from its settings the first time."""
        if environment not in self.provisioners:
            self.provisioners[environment] = make_provisioner(self.settings.for_environment(environment))
        return self.provisioners[environment]


_context: WorkerContext | None = None


def build_context(settings: Settings) -> WorkerContext:
    # A call that hangs must fail well before the lease needs renewing again.
    conn = state.connect(settings.redis_url, timeout=min(5.0, settings.lease_seconds / 4))
    if settings.github_enabled:
        from .reporting import GitHubReporter

        reporter = GitHubReporter(settings, conn)
    else:
        reporter = NullReporter()
    return WorkerContext(settings, conn, reporter)


def set_context(context: WorkerContext | None) -> None:
    global _context
    _context = context


def get_context() -> WorkerContext:
    """The worker's context; a job run outside `previewbot worker` builds it from the environment."""
    global _context
    if _context is None:
        _context = build_context(load_settings())
    return _context
