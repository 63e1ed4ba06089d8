"""RQ jobs. Each is an importable function with keyword-only, JSON-safe arguments, and each
builds what it needs (settings, Redis, provisioner, GitHub client) from the worker's context.

A provisioning job holds its branch lock for as long as it runs (`held_lease`): the lease is
renewed, a cancel request is noticed, and a job that cannot reach Redis stops its provisioner
by its own clock before the lease can run out, so a branch never has two provisioners.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import gidgethub
import httpx
import redis

from bot import expiry, previews, state
from bot.github import GitHubGaveUp, github_session
from bot.masking import Masker
from bot.model import Deployment, utcnow
from bot.repo_config import CONFIG_PATH, RepoConfig, RepoConfigError

from . import health
from .context import WorkerContext, get_context, github_deadline, job_seconds_left, source_archive_link
from .pulls import config_ref, fetch_pull, read_repo_config
from .provisioners import KeepsPrevious, ProvisionError, ProvisionRequest, ProvisionResult

log = logging.getLogger("previewbot.worker")

# Reading `.github/preview.yml` gives up on GitHub after this long.
REPO_CONFIG_SECONDS = 30.0
# The health check ends this long before RQ would stop the job, leaving time to tear down and report.
HEALTH_MARGIN_SECONDS = 90.0
LOST_WHILE_QUEUED = "Superseded: the branch lock was lost while the deploy waited in the queue."
LEASE_LOST = "Stopped: this worker could not renew the branch lease in time. Retry to deploy again."
# What a provisioner's output reaches in a recorded outcome (a secret in them is masked).
PROVISIONER_TEXT = ("error", "teardown_error", "preview_url")


def deploy_preview(*, deployment: dict, lock_id: str) -> dict:
    """Provision `deployment` and report the outcome everywhere."""
    ctx = get_context()
    deployment = Deployment.from_json(deployment)
    lock = state.lock_for(ctx.redis, deployment, lease_seconds=ctx.settings.lease_seconds)
    with held_lease(ctx, lock, lock_id, cancel_key=previews.cancel_key(deployment.id)) as lease:
        if lease is None:
            log.info("deployment %s lost its branch lock while queued; not running it", deployment.id)
            return _report(ctx, _ended_unbuilt(ctx, deployment, status="failed", error=LOST_WHILE_QUEUED))
        if lease.reason == "cancelled":
            return _report(ctx, _ended_unbuilt(ctx, deployment, status="cancelled", message=lease.cancel_reason))
        deployment, config_error = _with_repo_config(ctx, deployment)
        if config_error:
            return _report(ctx, _ended_unbuilt(ctx, deployment, status="failed", error=config_error))
        keeps_previous = _keeps_previous(ctx, deployment)
        if not keeps_previous:
            state.supersede(ctx.redis, deployment)
        ctx.reporter.deploy_started(deployment)
        if deployment.replaces:
            _tear_down_replaced(ctx, deployment)
        provisioned, error = _provision(ctx, deployment, lease)
        unhealthy = None
        if not error and lease.reason is None:
            error = unhealthy = _check_health(ctx, deployment, provisioned.url, lease)
        if lease.reason == "cancelled" or unhealthy:
            _tear_down_built(ctx, deployment, provisioned, keeps_previous=keeps_previous)
        if lease.reason == "cancelled":
            result = finish(ctx, deployment, status="cancelled", message=lease.cancel_reason)
        elif lease.reason == "lost":
            result = finish(ctx, deployment, status="failed", error=LEASE_LOST)
        elif error:
            result = finish(ctx, deployment, status="failed", error=error)
        else:
            if keeps_previous:
                ctx.provisioner_for(deployment.environment).retire(_provision_request(ctx, deployment, threading.Event()), provisioned)
                state.supersede(ctx.redis, deployment)
            result = finish(ctx, deployment, status="deployed", **_provisioned_fields(ctx, deployment, provisioned))
        if keeps_previous and result is not None and result.status != "deployed":
            state.give_back(ctx.redis, result)  # the last good preview is the environment's again
        return _report(ctx, result)


def destroy_preview(*, deployment: dict, lock_id: str, reason: str) -> dict | None:
    """Tear down the branch's environment; the deployment record stays, as history, `destroyed`.
    A teardown that fails leaves the record as it was, with `teardownError`: the reconciler
    tries again."""
    ctx = get_context()
    deployment = Deployment.from_json(deployment)
    lock = state.lock_for(ctx.redis, deployment, lease_seconds=ctx.settings.lease_seconds)
    with held_lease(ctx, lock, lock_id) as lease:
        if lease is None:
            return None
        # The caller's snapshot may be older than a deploy that finished meanwhile.
        latest = state.current(ctx.redis, deployment.key) or deployment
        if latest.branch_name == deployment.branch_name:
            deployment = latest
        if deployment.state == "idle":
            return None  # cancelled or destroyed meanwhile: nothing is left to tear down
        try:
            ctx.provisioner_for(deployment.environment).destroy(_provision_request(ctx, deployment, lease.stop))
        except ProvisionError as exc:
            result = finish(ctx, deployment, status=deployment.status, teardown_error=f"Destroy failed: {exc}", message=reason)
            return _report(ctx, result)
        result = finish(
            ctx, deployment, status="destroyed", destroyed_at=utcnow(), teardown_error=None, expired=reason == expiry.EXPIRED_REASON, message=reason
        )
        if result is not None:
            ctx.reporter.destroyed(result, reason=reason)
        return result.to_json() if result else None


def report_deployment(*, deployment: dict) -> None:
    """Report a deployment's state on GitHub (used by repairs made in the web process)."""
    get_context().reporter.deploy_finished(Deployment.from_json(deployment))


def report_expiry(*, deployment: dict) -> None:
    """Show a deployed preview's check run and PR comment again: its expiry warning is due, or
    it was extended (the warning and the Extend button go)."""
    get_context().reporter.expiry_changed(Deployment.from_json(deployment))


def job_crashed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ's failure callback: a job that raised (or timed out) still ends its deployment."""
    ctx = get_context()
    kwargs = job.kwargs or {}
    if not kwargs.get("deployment"):
        return
    deployment = Deployment.from_json(kwargs["deployment"])
    if deployment.status == "deploying":
        error = "The deploy timed out." if exc_type and exc_type.__name__ == "JobTimeoutException" else "The deploy job crashed."
        _report(ctx, finish(ctx, deployment, status="failed", error=error))
    lock = state.lock_for(ctx.redis, deployment, lease_seconds=ctx.settings.lease_seconds)
    previews.release(ctx.redis, ctx.settings, lock, kwargs["lock_id"])


def finish(ctx: WorkerContext, deployment: Deployment, *, status: str, message: str | None = None, **changes) -> Deployment | None:
    """Change `deployment` from the status this job saw to `status`, waiting through a short
    Redis outage. Returns it as recorded (`superseded` when a newer deployment took its
    environment meanwhile), or None when someone else changed it first (a cancel, the
    reconciler): a stale outcome changes nothing. Errors and the URL are masked here, where every
    outcome is recorded, whatever provisioner they came from."""
    mask = Masker.from_settings(ctx.settings)
    changes = {name: mask(value) if name in PROVISIONER_TEXT and value else value for name, value in changes.items()}
    result = deployment.changed(status=status, **changes)
    ctx.logs.flush()  # the outcome comes after the deployment's last log line
    recorded = _while_redis_returns(lambda: state.publish(ctx.redis, result, expect=deployment.status, message=message))
    if recorded is None:
        log.info("deployment %s changed meanwhile; not recording it %s", deployment.id, status)
    return recorded


class Lease:
    """A branch lock as held by a running job.

    Every tick it renews the lease and looks for a cancel request, in one Redis call. `stop`
    tells the provisioner to stop; `reason` says why: `cancelled` (someone asked) or `lost`
    (the lock is someone else's, or this worker could not renew it for so long that the lease
    would run out before a provisioner given its grace is surely stopped). The deadline is
    watched by a thread of its own: a renewal that hangs on a cut-off connection must not delay
    it.
    """

    def __init__(self, ctx: WorkerContext, lock: state.BranchLock, lock_id: str, cancel_key: str | None):
        self.lock = lock
        self.lock_id = lock_id
        self.cancel_key = cancel_key
        settings = ctx.settings
        self.tick = min(0.5, settings.lease_seconds / 10)
        # Counted from the moment the last successful renewal was sent, by this process's clock;
        # the fence notices within a tick, and the provisioner then gets its grace.
        self.give_up_after = settings.lease_seconds - settings.cancel_grace_seconds - self.tick - min(1.0, settings.lease_seconds / 10)
        self.stop = threading.Event()
        self.reason: str | None = None
        self.cancel_reason: str | None = None
        self._done = threading.Event()
        self._renewed_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._hold, name="previewbot-lease", daemon=True),
            threading.Thread(target=self._fence, name="previewbot-fence", daemon=True),
        ]

    def take(self) -> bool:
        """Shorten the queued lease to the running one; False when the lock is not ours."""
        sent = time.monotonic()
        held, cancel = self.lock.renew_and_check(self.lock_id, self.cancel_key)
        if not held:
            return False
        self._renewed_at = sent
        if cancel:
            self._give_up("cancelled", cancel)
        for thread in self._threads:
            thread.start()
        return True

    def release(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join()

    def _hold(self) -> None:
        while not self._done.wait(self.tick):
            sent = time.monotonic()
            try:
                held, cancel = self.lock.renew_and_check(self.lock_id, self.cancel_key)
            except redis.RedisError as exc:
                log.warning("could not renew the branch lock %s: %s", self.lock.key, type(exc).__name__)
            else:
                if not held:
                    self._give_up("lost")
                    continue
                self._renewed_at = sent
                if cancel:
                    self._give_up("cancelled", cancel)

    def _fence(self) -> None:
        while not self._done.wait(self.tick):
            if time.monotonic() - self._renewed_at > self.give_up_after:
                self._give_up("lost")

    def _give_up(self, reason: str, cancel_reason: str | None = None) -> None:
        if self.reason is None:
            log.warning("branch lock %s: %s; stopping the provisioner", self.lock.key, reason)
            self.reason, self.cancel_reason = reason, cancel_reason
        self.stop.set()


@contextmanager
def held_lease(ctx: WorkerContext, lock: state.BranchLock, lock_id: str, *, cancel_key: str | None = None):
    """Hold the branch lock for the job, and on the way out release it to the intents waiting
    for it. Yields None when the lock is not ours (it was lost while the job waited)."""
    lease = Lease(ctx, lock, lock_id, cancel_key)
    if not lease.take():
        yield None
        return
    try:
        yield lease
    finally:
        lease.release()
        _while_redis_returns(lambda: previews.release(ctx.redis, ctx.settings, lock, lock_id))


def _ended_unbuilt(ctx: WorkerContext, deployment: Deployment, **outcome) -> Deployment | None:
    """A deploy that ends before it built anything gives its environment back to the one it was
    to replace."""
    ended = finish(ctx, deployment, **outcome)
    if ended is not None:
        state.give_back(ctx.redis, ended)
    return ended


def _provision(ctx: WorkerContext, deployment: Deployment, lease: Lease) -> tuple[ProvisionResult | None, str | None]:
    """Run the provisioner's deploy: (result, None) or (None, error)."""
    try:
        return ctx.provisioner_for(deployment.environment).deploy(_provision_request(ctx, deployment, lease.stop)), None
    except ProvisionError as exc:
        return None, str(exc)
    except Exception as exc:  # a provisioner bug must still end the deployment
        log.exception("provisioner crashed for deployment %s", deployment.id)
        return None, f"Provisioner error: {type(exc).__name__}"


def _provisioned_fields(ctx: WorkerContext, deployment: Deployment, provisioned: ProvisionResult) -> dict:
    """What a deployed record keeps of the provisioner's result. The hourly cost is the
    provisioner's (the EC2 price), else the repository's `hourly_cost`, else PREVIEW_HOURLY_COST.
    Its expiry is counted from now, when it is deployed."""
    costs = (provisioned.hourly_cost, deployment.hourly_cost, ctx.settings.for_environment(deployment.environment).hourly_cost)
    return {
        "preview_url": provisioned.url,
        "resources": provisioned.resources,
        "hourly_cost": next((cost for cost in costs if cost is not None), None),
        "expires_at": expiry.expires_at(expiry.ttl_for(deployment, ctx.settings), start=datetime.now(timezone.utc)),
    }


def _with_repo_config(ctx: WorkerContext, deployment: Deployment) -> tuple[Deployment, str | None]:
    """The deployment with what its repository's `.github/preview.yml` says of its environment,
    read at the commit deployed (a fork's at its base branch), or the error that stops it before
    anything is built. Local mode has no repository to read."""
    if not deployment.installation_id:
        return deployment, None

    async def read() -> RepoConfig:
        async with github_session(ctx.settings, deployment.installation_id) as session:
            ref = deployment.head_sha
            if deployment.head_repository != deployment.repository or not ref:
                pull = await fetch_pull(session, deployment.repository, deployment.pr_number)
                if pull is None:
                    raise RepoConfigError([f"{CONFIG_PATH}: the pull request was not found, so its configuration cannot be read"])
                ref = config_ref(pull, deployment.repository)
            return await read_repo_config(ctx, session, deployment.repository, ref)

    try:
        with github_deadline(at_most=REPO_CONFIG_SECONDS):
            config = asyncio.run(read())
    except RepoConfigError as exc:
        return deployment, str(exc)
    except (gidgethub.GitHubException, httpx.HTTPError, GitHubGaveUp) as exc:
        why = f"GitHub answered {int(exc.status_code)}" if isinstance(exc, gidgethub.HTTPException) else type(exc).__name__
        return deployment, f"Could not read {CONFIG_PATH} ({why}). Retry to deploy again."
    return deployment.changed(**config.for_environment(deployment.environment).deployment_fields()), None


def _check_health(ctx: WorkerContext, deployment: Deployment, url: str, lease: Lease) -> str | None:
    """The health check, part of the deploy: the error when the preview never answered (the
    caller tears down what was built). A cancel or a lost lease stops it; the caller handles those."""
    mask = Masker.from_settings(ctx.settings)

    def log_attempt(line: str) -> None:
        log.info("deployment %s: %s", deployment.id, line)
        _log_line(ctx, deployment.id, mask(line))

    left = job_seconds_left()
    error = health.check_preview(
        ctx.settings.for_environment(deployment.environment),
        deployment,
        url,
        stop=lease.stop,
        log=log_attempt,
        at_most=None if left is None else left - HEALTH_MARGIN_SECONDS,
    )
    return error


def _keeps_previous(ctx: WorkerContext, deployment: Deployment) -> bool:
    """Whether this deploy is a redeploy of a live preview of the same branch by a provisioner
    that builds the new one beside it (`KeepsPrevious`): the last good preview then stays the
    environment's until the new one is deployed, and stays so if it never is."""
    replaced = state.record(ctx.redis, deployment.replaces) if deployment.replaces else None
    return (
        replaced is not None
        and replaced.status == "deployed"
        and (replaced.head_repository, replaced.branch_name) == (deployment.head_repository, deployment.branch_name)
        and isinstance(ctx.provisioner_for(deployment.environment), KeepsPrevious)
    )


def _tear_down_built(ctx: WorkerContext, deployment: Deployment, provisioned: ProvisionResult | None, *, keeps_previous: bool) -> None:
    """Tear down what a cancelled or unhealthy deploy built: only the new part of a redeploy that
    keeps the last good preview, else the environment."""
    if not keeps_previous:
        _destroy_quietly(ctx, deployment.changed(preview_url=provisioned.url if provisioned else deployment.preview_url))
    elif provisioned is not None:
        ctx.provisioner_for(deployment.environment).discard(_provision_request(ctx, deployment, threading.Event()), provisioned)


def _tear_down_replaced(ctx: WorkerContext, deployment: Deployment) -> None:
    """A deployment of another branch to the same environment replaces the old branch's
    environment: it is torn down first, so no environment outlives its deployment."""
    replaced = state.record(ctx.redis, deployment.replaces)
    if replaced is not None and (replaced.head_repository, replaced.branch_name) != (deployment.head_repository, deployment.branch_name):
        _destroy_quietly(ctx, replaced)


def _destroy_quietly(ctx: WorkerContext, deployment: Deployment) -> None:
    """Tear down what `deployment` built, as part of another outcome; a failure is logged."""
    try:
        ctx.provisioner_for(deployment.environment).destroy(_provision_request(ctx, deployment, threading.Event()))
    except ProvisionError as exc:
        log.error("could not tear down deployment %s: %s", deployment.id, exc)


def _report(ctx: WorkerContext, result: Deployment | None) -> dict | None:
    if result is None:
        return None
    ctx.reporter.deploy_finished(result)
    return result.to_json()


# How long a finished job waits for Redis to come back before giving its outcome up (the
# reconciler then reports the deployment as lost).
OUTCOME_PATIENCE_SECONDS = 60


def _while_redis_returns(action):
    """Run `action`, retrying through a short Redis outage: an outcome is worth waiting for."""
    deadline = time.monotonic() + OUTCOME_PATIENCE_SECONDS
    delay = 0.2
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable; retrying in %.1fs to record the outcome", delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _log_line(ctx: WorkerContext, deployment_id: str, line: str) -> None:
    # Log lines are best effort: a Redis hiccup must not fail the deploy that prints them.
    ctx.logs.add(deployment_id, line)


def _provision_request(ctx: WorkerContext, deployment: Deployment, stop: threading.Event) -> ProvisionRequest:
    """What the provisioner is told; each line it logs is masked before it is published."""
    mask = Masker.from_settings(ctx.settings)
    return ProvisionRequest(
        repository=deployment.repository,
        pr_number=deployment.pr_number,
        environment=deployment.environment,
        branch=deployment.branch_name,
        sha=deployment.head_sha,
        deployment_id=deployment.id,
        preview_url=deployment.preview_url,
        log=lambda line: _log_line(ctx, deployment.id, mask(line)),
        cancelled=stop,
        start=deployment.start,
        vars=dict(deployment.vars),
        source_archive=lambda: source_archive_link(ctx.settings, deployment),
    )
