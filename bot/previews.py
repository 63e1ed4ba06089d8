"""The one door through which every surface starts and stops previews.

The REST API, `/preview` comments, check-run buttons, pushes, closes and the reconciler all
come through here, so they all obey the one-deployment-per-branch rule alike: this module takes
the branch lock, announces the new state and queues the job (by name: the web never imports
the worker).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from . import queue, state
from .model import DEFAULT_ENVIRONMENT, Deployment, PreviewKey, new_deployment_id


@dataclass
class Outcome:
    started: bool
    deployment: Deployment | None = None  # the deployment acted on
    holder: str | None = None  # the deployment id holding the branch, when not started
    queued: bool = False  # a follow-up was queued behind the holder


def request_deploy(conn: redis.Redis, settings, deployment: Deployment, *, queue_if_busy: bool = False) -> Outcome:
    """Deploy `deployment` (made with `Deployment.new`) unless its branch is busy.

    When busy and `queue_if_busy`, one follow-up deploy is remembered and runs at the newest
    commit once the current job ends (a push during a deploy).
    """
    lock = state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds)
    follow_up = None
    if queue_if_busy:
        follow_up = {
            "action": "deploy",
            **_key_json(deployment.key),
            "headSha": deployment.head_sha,
            "trigger": deployment.trigger,
            "requestedBy": deployment.requested_by,
        }
    acquired = lock.acquire(deployment.id, lease_ms=queued_lease_ms(settings), follow_up=follow_up)
    if not acquired.taken:
        return Outcome(False, holder=acquired.holder, queued=follow_up is not None)
    start_deploy(conn, settings, deployment, lock_id=deployment.id)
    return Outcome(True, deployment=deployment)


def start_deploy(conn: redis.Redis, settings, deployment: Deployment, *, lock_id: str) -> None:
    """Announce `deploying` and queue the job; the caller holds the branch lock as `lock_id`.

    The announcement comes first so the job's own updates can never be overtaken by it.
    """
    state.publish(conn, deployment, take_over=True)
    try:
        queue.enqueue_deploy(conn, settings, deployment=deployment, lock_id=lock_id)
    except redis.RedisError:
        failed = deployment.changed(status="failed", error="Could not queue the deploy; try again.")
        try:
            state.publish(conn, failed)
            state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds).release(lock_id)
        except redis.RedisError:
            pass  # Redis is gone; the reconciler repairs the state when it is back
        raise


def request_destroy(conn: redis.Redis, settings, key: PreviewKey, *, reason: str) -> Outcome | None:
    """Tear down the environment `key`; None when it has no live deployment.

    If a job holds the branch, the teardown is queued behind it and replaces any queued deploy.
    """
    deployment = state.current(conn, key)
    if deployment is None or deployment.state == "idle":
        return None
    lock = state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds)
    lock_id = new_deployment_id()
    acquired = lock.acquire(
        lock_id,
        lease_ms=queued_lease_ms(settings),
        follow_up={"action": "destroy", **_key_json(key), "reason": reason},
    )
    if not acquired.taken:
        return Outcome(False, deployment=deployment, holder=acquired.holder, queued=True)
    queue.enqueue_destroy(conn, settings, deployment=deployment, lock_id=lock_id, reason=reason)
    return Outcome(True, deployment=deployment)


def follow_up_key(follow: dict) -> PreviewKey:
    """The environment a queued follow-up acts on."""
    return PreviewKey(follow["repository"], int(follow["prNumber"]), follow.get("environment") or DEFAULT_ENVIRONMENT)


def _key_json(key: PreviewKey) -> dict:
    return {"repository": key.repository, "prNumber": key.pr_number, "environment": key.environment}


def queued_lease_ms(settings) -> int:
    """A queued job cannot renew its lease, so the lock starts long enough to wait in the queue;
    the worker shortens it to PREVIEW_LEASE_SECONDS when it starts, and the reconciler frees the
    lock of a job that left the queue without running."""
    return int(max(settings.lease_seconds, 3600) * 1000)
