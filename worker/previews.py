"""Starting and stopping a branch's preview: the one place that takes the branch lock,
announces the new state and queues the job. The REST API, comment commands, buttons and
pushes all come through here, so they all obey the one-deployment-per-branch rule alike."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from . import queue, state


@dataclass
class DeployOutcome:
    started: bool
    deployment: dict | None = None  # the new deployment, when started
    holder: str | None = None  # the deployment id holding the branch, when not started
    queued: bool = False  # a follow-up was queued behind the holder


def new_deployment(
    *,
    repository: str,
    pr_number: int,
    branch: str,
    head_repository: str | None = None,
    sha: str | None = None,
    trigger: str,
    requested_by: str | None = None,
    installation_id: int | None = None,
    provisioner: str,
    deployment_id: str | None = None,
) -> dict:
    now = state.utcnow()
    return {
        "id": deployment_id or state.new_deployment_id(),
        "repository": repository,
        "headRepository": head_repository or repository,
        "prNumber": int(pr_number),
        "branchName": branch,
        "headSha": sha,
        "status": "deploying",
        "previewUrl": None,
        "error": None,
        "provisioner": provisioner,
        "trigger": trigger,
        "requestedBy": requested_by,
        "installationId": installation_id,
        "createdAt": now,
        "updatedAt": now,
    }


def request_deploy(conn: redis.Redis, settings, deployment: dict, *, queue_if_busy: bool = False) -> DeployOutcome:
    """Deploy `deployment` (built by `new_deployment`) unless its branch is busy.

    When busy and `queue_if_busy`, one follow-up deploy is remembered and runs at the newest
    commit once the current job ends (a push during a deploy).
    """
    lock = state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds)
    follow_up = None
    if queue_if_busy:
        follow_up = {
            "action": "deploy",
            **{k: deployment.get(k) for k in ("repository", "prNumber", "headSha", "trigger", "requestedBy")},
        }
    acquired = lock.acquire(deployment["id"], lease_ms=queued_lease_ms(settings), follow_up=follow_up)
    if not acquired.taken:
        return DeployOutcome(False, holder=acquired.holder, queued=follow_up is not None)
    start_deploy(conn, settings, deployment, lock_id=deployment["id"])
    return DeployOutcome(True, deployment=deployment)


def start_deploy(conn: redis.Redis, settings, deployment: dict, *, lock_id: str) -> None:
    """Announce `deploying` and queue the job; the caller holds the branch lock as `lock_id`.

    The announcement comes first so the job's own updates can never be overtaken by it.
    """
    state.publish(conn, deployment)
    try:
        queue.enqueue_deploy(conn, settings, deployment=deployment, lock_id=lock_id)
    except redis.RedisError:
        failed = {**deployment, "status": "failed", "error": "Could not queue the deploy; try again.", "updatedAt": None}
        try:
            state.publish(conn, failed)
            state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds).release(lock_id)
        except redis.RedisError:
            pass  # Redis is gone; the reconciler repairs the state when it is back
        raise


def request_destroy(conn: redis.Redis, settings, deployment: dict, *, reason: str) -> DeployOutcome:
    """Tear down the preview of `deployment` (the pull request's current one).

    If a job holds the branch, the teardown is queued behind it and replaces any queued deploy.
    """
    lock = state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds)
    lock_id = state.new_deployment_id()
    acquired = lock.acquire(
        lock_id,
        lease_ms=queued_lease_ms(settings),
        follow_up={
            "action": "destroy",
            "repository": deployment["repository"],
            "prNumber": deployment["prNumber"],
            "reason": reason,
        },
    )
    if not acquired.taken:
        return DeployOutcome(False, holder=acquired.holder, queued=True)
    queue.enqueue_destroy(conn, settings, deployment=deployment, lock_id=lock_id, reason=reason)
    return DeployOutcome(True, deployment=deployment)


def queued_lease_ms(settings) -> int:
    """A queued job cannot renew its lease, so the lock starts long enough to wait in the queue;
    the worker shortens it to PREVIEW_LEASE_SECONDS when it starts, and the reconciler frees the
    lock of a job that left the queue without running."""
    return int(max(settings.lease_seconds, 3600) * 1000)
