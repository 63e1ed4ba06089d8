"""What every job needs, built once per worker process from the settings."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

import gidgethub
import httpx
import redis
from rq import Queue, get_current_job

from bot import github, state
from bot.config import Settings, load_settings
from bot.model import Deployment

from .logbuffer import LogBuffer
from .provisioners import ProvisionError, Provisioner, make_provisioner

log = logging.getLogger("previewbot.worker")


class NullReporter:
    """Local mode: no GitHub App, so nothing is reported outside the API and the feed."""

    def deploy_started(self, deployment: Deployment) -> None:
        pass

    def deploy_finished(self, deployment: Deployment) -> None:
        pass

    def destroyed(self, deployment: Deployment, *, reason: str) -> None:
        pass

    def expiry_changed(self, deployment: Deployment) -> None:
        pass


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    reporter: object
    provisioners: dict[str, Provisioner] = field(default_factory=dict)
    logs: LogBuffer = field(init=False)

    def __post_init__(self) -> None:
        self.logs = LogBuffer(self.redis)

    def provisioner_for(self, environment: str) -> Provisioner:
        """The provisioner of a named environment, made from its settings the first time."""
        if environment not in self.provisioners:
            self.provisioners[environment] = make_provisioner(self.settings.for_environment(environment))
        return self.provisioners[environment]


_context: WorkerContext | None = None

# A job's GitHub calls stop this long before RQ stops the job, so that the job ends with an
# error of its own (logged, and retried by RQ where it is a webhook's) rather than killed mid-call.
DEADLINE_MARGIN_SECONDS = 5.0


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


def job_seconds_left() -> float | None:
    """Seconds until RQ stops the job running now (its timeout counts from its start), or None
    outside a job (a failure callback, the reconciler's thread)."""
    job = get_current_job()
    if job is None or job.started_at is None:
        return None
    timeout = job.timeout or Queue.DEFAULT_TIMEOUT  # what RQ applies
    if timeout <= 0:  # -1: no timeout
        return None
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=timezone.utc)
    return timeout - (datetime.now(timezone.utc) - started).total_seconds()


def github_deadline(*, at_most: float | None = None) -> AbstractContextManager[None]:
    """The deadline of the GitHub calls made inside: at most `at_most` seconds, and never past
    the running job's timeout (less a margin)."""
    left = job_seconds_left()
    limits = [s for s in (at_most, None if left is None else left - DEADLINE_MARGIN_SECONDS) if s is not None]
    return github.deadline(max(0.0, min(limits))) if limits else nullcontext()


# Asking GitHub for a source archive's link gives up after this long.
SOURCE_LINK_SECONDS = 30.0


def source_archive_link(settings: Settings, deployment: Deployment) -> str | None:
    """A short-lived download link of the commit's source archive (GitHub answers the tarball
    endpoint with a redirect to it), asked for with the installation token so that the link,
    never the token, is what a preview VM gets (a fork's commits are the base repository's too).
    None in local mode."""
    if not (settings.github_enabled and deployment.installation_id and deployment.head_sha):
        return None

    async def ask() -> str:
        async with github.github_session(settings, deployment.installation_id) as session:
            try:
                await session.call("GET", "/repos/{+repository}/tarball/{sha}", url_vars={"repository": deployment.repository, "sha": deployment.head_sha})
            except gidgethub.RedirectionException as exc:
                if "location" in exc.headers:
                    return exc.headers["location"]
                raise
        raise ProvisionError("GitHub answered the source archive request without a download link.")

    try:
        with github_deadline(at_most=SOURCE_LINK_SECONDS):
            return asyncio.run(ask())
    except (gidgethub.GitHubException, httpx.HTTPError) as exc:
        why = f"GitHub answered {int(exc.status_code)}" if isinstance(exc, gidgethub.HTTPException) else type(exc).__name__
        raise ProvisionError(f"Could not get the commit's source archive ({why}). Retry to deploy again.") from None
