"""RQ jobs. Each is an importable function with keyword-only, JSON-safe arguments, and each
builds what it needs (settings, Redis, provisioner, GitHub client) from the worker's context.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

import redis

from bot import previews, queue, state
from bot.model import Deployment, utcnow

from .context import WorkerContext, get_context
from .provisioners import ProvisionError, ProvisionRequest

log = logging.getLogger("previewbot.worker")


def deploy_preview(*, deployment: dict, lock_id: str) -> dict:
    """Provision `deployment` and report the outcome everywhere."""
    ctx = get_context()
    deployment = Deployment.from_json(deployment)
    lock = state.lock_for(ctx.redis, deployment, lease_seconds=ctx.settings.lease_seconds)
    with held_lease(ctx, lock, lock_id) as lost:
        if lost is None:
            return _superseded(ctx, deployment)
        ctx.reporter.deploy_started(deployment)
        request = _provision_request(ctx, deployment, lost)
        try:
            url = ctx.provisioner.deploy(request)
        except ProvisionError as exc:
            result = finish(ctx, deployment, status="failed", error=str(exc))
        except Exception as exc:  # a provisioner bug must still end the deployment
            log.exception("provisioner crashed for deployment %s", deployment.id)
            result = finish(ctx, deployment, status="failed", error=f"Provisioner error: {type(exc).__name__}")
        else:
            result = finish(ctx, deployment, status="deployed", preview_url=url)
        ctx.reporter.deploy_finished(result)
        return result.to_json()


def destroy_preview(*, deployment: dict, lock_id: str, reason: str) -> dict:
    """Tear down the branch's environment; the deployment record stays, as history, `destroyed`."""
    ctx = get_context()
    deployment = Deployment.from_json(deployment)
    lock = state.lock_for(ctx.redis, deployment, lease_seconds=ctx.settings.lease_seconds)
    with held_lease(ctx, lock, lock_id) as lost:
        if lost is None:
            return deployment.to_json()
        # The caller's snapshot may be older than a deploy that finished meanwhile.
        latest = state.current(ctx.redis, deployment.key) or deployment
        if latest.id != deployment.id and latest.branch_name == deployment.branch_name:
            deployment = latest
        request = _provision_request(ctx, deployment, lost)
        try:
            ctx.provisioner.destroy(request)
        except ProvisionError as exc:
            result = finish(ctx, deployment, status="failed", error=f"Destroy failed: {exc}")
            ctx.reporter.deploy_finished(result)
            return result.to_json()
        result = finish(ctx, deployment, status="destroyed", destroyed_at=utcnow(), message=reason)
        ctx.reporter.destroyed(result, reason=reason)
        return result.to_json()


def report_deployment(*, deployment: dict) -> None:
    """Report a deployment's state on GitHub (used by repairs made in the web process)."""
    get_context().reporter.deploy_finished(Deployment.from_json(deployment))


def job_crashed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ's failure callback: a job that raised (or timed out) still ends its deployment."""
    ctx = get_context()
    kwargs = job.kwargs or {}
    if not kwargs.get("deployment"):
        return
    deployment = Deployment.from_json(kwargs["deployment"])
    current = state.current(ctx.redis, deployment.key)
    if current and current.id == deployment.id and current.status == "deploying":
        error = "The deploy timed out." if exc_type and exc_type.__name__ == "JobTimeoutException" else "The deploy job crashed."
        result = finish(ctx, current, status="failed", error=error)
        ctx.reporter.deploy_finished(result)
    _release(ctx, state.lock_for(ctx.redis, deployment, lease_seconds=ctx.settings.lease_seconds), kwargs.get("lock_id"))


@contextmanager
def held_lease(ctx: WorkerContext, lock: state.BranchLock, lock_id: str):
    """Hold the branch lock for the job: shorten the queued lease to the running lease, renew
    it in the background, and on the way out release it or hand it to a queued follow-up.

    Yields None when the lock is not ours, else an event set if the lock is lost meanwhile
    (its lease ran out, or Redis restarted empty): the provisioner then stops, so that a branch
    never has two deploys running."""
    if not lock.renew(lock_id):
        yield None
        return
    stop, lost = threading.Event(), threading.Event()
    renewer = threading.Thread(target=_renew_until, args=(lock, lock_id, stop, lost, ctx.settings.lease_seconds / 3), daemon=True)
    renewer.start()
    try:
        yield lost
    finally:
        stop.set()
        renewer.join()
        _while_redis_returns(lambda: _release(ctx, lock, lock_id))


def _renew_until(lock: state.BranchLock, lock_id: str, stop: threading.Event, lost: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            if not lock.renew(lock_id):
                log.warning("lost the branch lock %s; stopping the provisioner", lock.key)
                lost.set()
                return
        except redis.RedisError:
            log.warning("could not renew the branch lock %s; retrying", lock.key)


def _release(ctx: WorkerContext, lock: state.BranchLock, lock_id: str | None) -> None:
    """Release the lock; if a push or a close queued work behind us, start it now."""
    if not lock_id:
        return
    handed = lock.release(lock_id)
    if handed is None:
        return
    follow_id, follow = handed
    start_follow_up(ctx, lock, follow_id, follow)


def start_follow_up(ctx: WorkerContext, lock: state.BranchLock, follow_id: str, follow: dict) -> None:
    """Run what a push or a close queued behind a job; the lock is already `follow_id`'s."""
    current = state.current(ctx.redis, previews.follow_up_key(follow))
    if current is None:  # Redis lost the environment's state: nothing to follow up on
        _release(ctx, lock, follow_id)
        return
    if follow["action"] == "destroy":
        queue.enqueue_destroy(ctx.redis, ctx.settings, deployment=current, lock_id=follow_id, reason=follow.get("reason") or "destroy")
        return
    deployment = Deployment.new(
        id=follow_id,
        repository=current.repository,
        pr_number=current.pr_number,
        environment=current.environment,
        branch_name=current.branch_name,
        head_repository=current.head_repository,
        head_sha=follow.get("headSha") or current.head_sha,
        trigger=follow.get("trigger") or "push",
        requested_by=follow.get("requestedBy"),
        installation_id=current.installation_id,
        provisioner=ctx.provisioner.name,
    )
    previews.start_deploy(ctx.redis, ctx.settings, deployment, lock_id=follow_id)


def finish(ctx: WorkerContext, deployment: Deployment, *, status: str, message: str | None = None, **changes) -> Deployment:
    """End (or change) `deployment` and announce it, waiting through a short Redis outage.
    Returns it as recorded: `superseded` when a newer deployment took its environment meanwhile."""
    result = deployment.changed(status=status, **changes)
    return _while_redis_returns(lambda: state.publish(ctx.redis, result, message=message))


# How long a finished job waits for Redis to come back before giving its outcome up (the
# reconciler then reports the deployment as lost).
OUTCOME_PATIENCE_SECONDS = 60


def _while_redis_returns(action) -> None:
    """Run `action`, retrying through a short Redis outage: an outcome is worth waiting for."""
    deadline = time.monotonic() + OUTCOME_PATIENCE_SECONDS
    delay = 0.2
    while True:
        try:
            return action()
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable; retrying in %.1fs to record the outcome", delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _superseded(ctx: WorkerContext, deployment: Deployment) -> dict:
    log.info("deployment %s lost its branch lock while queued; not running it", deployment.id)
    return finish(ctx, deployment, status="failed", error="Superseded by a newer deployment of this branch.").to_json()


def _log_line(ctx: WorkerContext, deployment_id: str, line: str) -> None:
    # Log lines are best effort: a Redis hiccup must not fail the deploy that prints them.
    try:
        state.publish_log(ctx.redis, deployment_id, line)
    except redis.RedisError:
        pass


def _provision_request(ctx: WorkerContext, deployment: Deployment, cancelled: threading.Event) -> ProvisionRequest:
    return ProvisionRequest(
        repository=deployment.repository,
        pr_number=deployment.pr_number,
        environment=deployment.environment,
        branch=deployment.branch_name,
        sha=deployment.head_sha,
        deployment_id=deployment.id,
        preview_url=deployment.preview_url,
        log=lambda line: _log_line(ctx, deployment.id, line),
        cancelled=cancelled,
    )
