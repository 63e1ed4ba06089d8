"""The one door through which every surface starts, stops and changes previews.

The REST API, `/preview` comments, check-run buttons, pushes, closes, the reconciler and the
jobs' follow-ups all come through here, so they all obey the same rules: one deploy at a time
per branch (the lock), intents queued behind a busy branch in order, and every change of a
record a compare-and-set (`state.publish`). Jobs are queued by name: the web never imports
the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import redis

from . import costs, expiry, queue, state
from .model import DEFAULT_ENVIRONMENT, Deployment, PreviewKey, new_deployment_id

# A cancel request outlives the job it stops by far; it only needs to be seen once.
CANCEL_FLAG_SECONDS = 24 * 3600


@dataclass
class Outcome:
    started: bool
    deployment: Deployment | None = None  # the deployment acted on
    holder: str | None = None  # the deployment id holding the branch, when not started
    queued: bool = False  # an intent was queued behind the holder
    refused: str | None = None  # why it may not start at all (the monthly budget is spent)


def request_deploy(conn: redis.Redis, settings, deployment: Deployment, *, queue_if_busy: bool = False, now: datetime | None = None) -> Outcome:
    """Deploy `deployment` (made with `Deployment.new`) unless its branch or environment is busy,
    or it would be a new preview of a repository whose monthly budget is spent.

    When busy and `queue_if_busy`, a deploy intent waits behind the running job and runs at
    the newest commit once it ends (a push during a deploy).
    """
    refused = budget_refusal(conn, settings, deployment.key, now=now or datetime.now(timezone.utc))
    if refused:
        return Outcome(False, refused=refused)
    lock = state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds)
    intent = None
    if queue_if_busy:
        intent = _intent("deploy", deployment.key, headSha=deployment.head_sha, trigger=deployment.trigger, requestedBy=deployment.requested_by)
    acquired = lock.acquire(deployment.id, lease_ms=queued_lease_ms(settings), intent=intent)
    if not acquired.taken:
        return Outcome(False, holder=acquired.holder, queued=intent is not None)
    try:
        start_deploy(conn, settings, deployment, lock_id=deployment.id)
    except state.EnvironmentBusy as busy:
        release(conn, settings, lock, deployment.id)
        return Outcome(False, holder=busy.args[0])
    return Outcome(True, deployment=deployment)


def start_deploy(conn: redis.Redis, settings, deployment: Deployment, *, lock_id: str) -> None:
    """Announce `deploying` and queue the job; the caller holds the branch lock as `lock_id`.
    Raises `state.EnvironmentBusy` when a deploy of another branch holds the environment.

    The announcement comes first so the job's own updates can never be overtaken by it.
    """
    deployment = state.publish(conn, deployment, expect=state.ABSENT, take_over=True)
    try:
        queue.enqueue_deploy(conn, settings, deployment=deployment, lock_id=lock_id)
    except redis.RedisError:
        try:
            state.publish(conn, deployment.changed(status="failed", error="Could not queue the deploy; try again."), expect="deploying")
            release(conn, settings, state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds), lock_id)
        except redis.RedisError:
            pass  # Redis is gone; the reconciler repairs the state when it is back
        raise


def request_destroy(conn: redis.Redis, settings, key: PreviewKey, *, reason: str) -> Outcome | None:
    """Tear down the environment `key`; None when it has no live deployment.

    If a job holds the branch, the teardown waits behind it (dropping deploys waiting there);
    a deploy in progress is cancelled first.
    """
    deployment = state.current(conn, key)
    if deployment is None or deployment.state == "idle":
        return None
    lock = state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds)
    lock_id = new_deployment_id()
    acquired = lock.acquire(lock_id, lease_ms=queued_lease_ms(settings), intent=_intent("destroy", key, reason=reason))
    if not acquired.taken:
        if deployment.status == "deploying":
            request_cancel(conn, settings, key, reason=reason)
        return Outcome(False, deployment=deployment, holder=acquired.holder, queued=True)
    queue.enqueue_destroy(conn, settings, deployment=deployment, lock_id=lock_id, reason=reason)
    return Outcome(True, deployment=deployment)


def request_cancel(conn: redis.Redis, settings, key: PreviewKey, *, reason: str) -> Deployment | None:
    """Cancel the deploy of environment `key` in progress; None when none is.

    A queued deploy leaves the queue (RQ's own cancel) and ends `cancelled` here. A running
    one learns of the request within a moment from its lease (see `worker.jobs`): it stops
    its provisioner, tears down what was built and ends `cancelled` itself.
    """
    deployment = state.current(conn, key)
    if deployment is None or deployment.status != "deploying":
        return None
    conn.set(cancel_key(deployment.id), reason, ex=CANCEL_FLAG_SECONDS)
    if queue.cancel_queued_deploy(conn, deployment.id):
        # The job may have been taken just before; it sees the flag and yields (see above),
        # and whichever of the two writes `cancelled` first wins the compare-and-set.
        cancelled = state.publish(conn, deployment.changed(status="cancelled"), expect="deploying", message=reason)
        if cancelled:
            state.give_back(conn, cancelled)
            release(conn, settings, state.lock_for(conn, deployment, lease_seconds=settings.lease_seconds), deployment.id)
    return deployment


def request_extend(conn: redis.Redis, settings, key: PreviewKey, *, reason: str, now: datetime | None = None) -> Deployment | None:
    """Give the deployed preview of `key` its whole TTL again from now (`expiresAt = now + TTL`);
    None when nothing is deployed there, or it expired and its teardown is under way. GitHub is
    told again (the warning goes away)."""
    deployment = state.current(conn, key)
    if deployment is None or deployment.status != "deployed" or expiry.is_expiring(conn, deployment.id):
        return None  # nothing deployed, or its teardown is under way
    ttl = expiry.ttl_for(deployment, settings)
    extended = deployment.changed(expires_at=expiry.expires_at(ttl, start=now or datetime.now(timezone.utc)))
    recorded = state.publish(conn, extended, expect="deployed", message=reason)
    if recorded is not None:
        queue.enqueue_expiry_report(conn, deployment=recorded, why="extended")
    return recorded


def budget_refusal(conn: redis.Redis, settings, key: PreviewKey, *, now: datetime) -> str | None:
    """Why a deploy to `key` may not start: PREVIEW_MONTHLY_BUDGET is spent for its repository
    this month and it would be a new preview (a redeploy of a live one goes on)."""
    budget = settings.monthly_budget
    if budget is None:
        return None
    current = state.current(conn, key)
    if current is not None and current.state in costs.RUNNING_STATUSES:
        return None
    live = {d.id: d for d in state.live_deployments(conn) + state.active_deployments(conn)}
    spent = costs.month_to_date(conn, key.repository, live.values(), now=now)
    if not costs.over_budget(spent, budget):
        return None
    return (
        f"The monthly preview budget of {key.repository} is spent (${spent:,.2f} of ${budget:,.2f} in {costs.month_of(now)}), "
        "so no new preview starts until next month; redeploys of live previews go on."
    )


def cancel_key(deployment_id: str) -> str:
    return f"{state.PREFIX}:cancel:{deployment_id}"


def release(conn: redis.Redis, settings, lock: state.BranchLock, lock_id: str) -> None:
    """Release a branch lock held as `lock_id`; the intents waiting for it start in order."""
    while handed := lock.release(lock_id, handover_ms=queued_lease_ms(settings)):
        lock_id, intent = handed
        if _start_intent(conn, settings, lock_id, intent):
            return


def _start_intent(conn: redis.Redis, settings, lock_id: str, intent: dict) -> bool:
    """Start what waited behind a job; the lock is already `lock_id`'s. False when there is
    nothing to do any more (the lock is then released for the next intent)."""
    key = intent_key(intent)
    current = state.current(conn, key)
    if intent["action"] == "destroy":
        if current is None or current.state == "idle":
            return False
        queue.enqueue_destroy(conn, settings, deployment=current, lock_id=lock_id, reason=intent.get("reason") or "destroy")
        return True
    if current is None or (intent.get("trigger") == "push" and current.state == "idle"):
        return False  # a push redeploys only a live preview
    deployment = Deployment.new(
        id=lock_id,
        repository=key.repository,
        pr_number=key.pr_number,
        environment=key.environment,
        branch_name=current.branch_name,
        head_repository=current.head_repository,
        head_sha=intent.get("headSha") or current.head_sha,
        trigger=intent.get("trigger") or "push",
        requested_by=intent.get("requestedBy"),
        installation_id=current.installation_id,
        provisioner=settings.for_environment(key.environment).provisioner,
    )
    try:
        start_deploy(conn, settings, deployment, lock_id=lock_id)
    except state.EnvironmentBusy:
        return False  # another branch deploys to the environment now; the push is moot
    return True


def intent_key(intent: dict) -> PreviewKey:
    """The environment an intent acts on."""
    return PreviewKey(intent["repository"], int(intent["prNumber"]), intent.get("environment") or DEFAULT_ENVIRONMENT)


def _intent(action: str, key: PreviewKey, **fields) -> dict:
    return {
        "action": action,
        "target": str(key),
        "repository": key.repository,
        "prNumber": key.pr_number,
        "environment": key.environment,
        **fields,
    }


def queued_lease_ms(settings) -> int:
    """A queued job cannot renew its lease, so the lock starts long enough to wait in the queue;
    the worker shortens it to PREVIEW_LEASE_SECONDS when it starts, and the reconciler frees the
    lock of a job that left the queue without running."""
    return int(max(settings.lease_seconds, 3600) * 1000)
