"""Repairs deployments whose state disagrees with the queue.

Every PREVIEW_RECONCILE_SECONDS one worker process (whichever claims the period first) runs
the reconcile in a thread beside its RQ loop. It looks at every deployment still `deploying` and fails the
ones nobody is working on any more: the lease of their branch lock ran out (a worker died) or
their job left the queue without running (Redis lost it). The repair is published like any
other change, so it reaches SQLite's history, the feed and GitHub. It also removes what
provisioners made that no live deployment owns (orphaned EC2 instances).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from datetime import datetime, timezone

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from bot import previews, state
from bot.github import github_session
from bot.model import Deployment
from bot.queue import QUEUE_NAME, get_queue, job_id_for_lock

from .context import get_context, github_deadline
from .expiry import give_expiries
from .jobs import finish
from .provisioners import ProvisionError, TaggedResource, TracksResources
from .pulls import fetch_pull
from .reporting import REPORT_ERRORS

log = logging.getLogger("previewbot.reconcile")

# A live preview's pull request is looked at on GitHub every this many reconcile periods
# (10 minutes by default), which keeps API use low.
CLOSED_CHECK_PERIODS = 10
# A deployment younger than this may be between its announcement and its enqueueing.
GRACE_SECONDS = 10
LIVE_JOB_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def reconcile() -> list[Deployment]:
    """One reconcile pass: returns what it repaired."""
    ctx = get_context()
    repaired = []
    for deployment in state.active_deployments(ctx.redis):
        problem = diagnose(ctx.redis, deployment, lease_seconds=ctx.settings.lease_seconds)
        if problem is None:
            continue
        # A compare-and-set against the snapshot: a deploy that finished since it was taken
        # keeps its outcome.
        result = finish(ctx, deployment, status="failed", error=problem, message=f"reconcile: {problem}")
        if result is None:
            continue
        log.warning("reconcile: deployment %s (%s): %s", deployment.id, deployment.key, problem)
        ctx.reporter.deploy_finished(result)
        repaired.append(result)
        # What waited behind the dead job (a push, a close) still happens.
        lock = state.lock_for(ctx.redis, deployment, lease_seconds=ctx.settings.lease_seconds)
        previews.release(ctx.redis, ctx.settings, lock, deployment.id)  # also when its lease already ran out
    retry_failed_teardowns(ctx)
    give_expiries(ctx.redis, ctx.settings, now=datetime.now(timezone.utc))
    terminate_orphans(ctx)
    if ctx.settings.github_enabled:
        requeue_github_jobs_of_dead_workers(ctx.redis)
        # The pass runs in the reconciler's thread, not a job: its GitHub calls get a deadline of their own.
        with github_deadline(at_most=CLOSED_LOOKUP_SECONDS):
            repaired += asyncio.run(destroy_previews_of_closed_pull_requests(ctx))
    return repaired


# Teardowns that failed are tried again after 2, 4, 8… reconcile periods, at most hourly.
MAX_TEARDOWN_BACKOFF_SECONDS = 3600


def retry_failed_teardowns(ctx) -> list[Deployment]:
    """A teardown that failed is not forgotten: it is tried again, with backoff, until it
    succeeds (the record keeps `teardownError` meanwhile, shown on GitHub and the dashboard)."""
    retried = []
    for deployment in state.live_deployments(ctx.redis):
        if not deployment.teardown_error:
            continue
        waiting = f"{state.PREFIX}:teardown-retry:{deployment.id}"
        if ctx.redis.exists(waiting):
            continue
        attempts = ctx.redis.incr(f"{state.PREFIX}:teardown-attempts:{deployment.id}")
        ctx.redis.expire(f"{state.PREFIX}:teardown-attempts:{deployment.id}", 7 * 24 * 3600)
        wait = min(MAX_TEARDOWN_BACKOFF_SECONDS, ctx.settings.reconcile_seconds * 2 ** min(attempts, 12))
        ctx.redis.set(waiting, "1", ex=max(1, int(wait)))
        log.warning("reconcile: trying again to tear down %s (%s): %s", deployment.id, deployment.key, deployment.teardown_error)
        if previews.request_destroy(ctx.redis, ctx.settings, deployment.key, reason="reconcile: teardown retried"):
            retried.append(deployment)
    return retried


# A resource is an orphan only once it was seen without a live deployment for this many
# reconcile periods (or leases, if longer), and is at least that old: a Redis that restarted
# empty forgets every preview until the web process gives them back, within a period.
ORPHAN_GRACE_PERIODS = 3


def terminate_orphans(ctx) -> list[str]:
    """Remove what provisioners made (EC2 instances, found by their tags) that no live
    deployment owns: a deploy whose worker died mid-launch, a teardown nobody retried, an
    instance a redeploy could not terminate."""
    settings = ctx.settings
    grace = ORPHAN_GRACE_PERIODS * max(settings.reconcile_seconds, settings.lease_seconds)
    trackers = {}
    for name in settings.environments:
        try:
            provisioner = ctx.provisioner_for(name)
        except ProvisionError as exc:
            log.warning("reconcile: no provisioner for %s: %s", name, exc)
            continue
        if isinstance(provisioner, TracksResources):
            trackers.setdefault(type(provisioner), provisioner)  # one account per kind: list it once
    removed = []
    now = time.time()
    for provisioner in trackers.values():
        try:
            resources = provisioner.tagged_resources()
        except ProvisionError as exc:
            log.warning("reconcile: could not list %s resources: %s", provisioner.name, exc)
            continue
        orphans = [r for r in resources if _orphaned_long_enough(ctx.redis, r, now=now, grace=grace)]
        if not orphans:
            continue
        log.warning("reconcile: removing orphaned %s resources: %s", provisioner.name, ", ".join(f"{r.id} ({r.key})" for r in orphans))
        try:
            provisioner.remove_resources(r.id for r in orphans)
        except ProvisionError as exc:
            log.warning("reconcile: could not remove %s: %s", [r.id for r in orphans], exc)
            continue
        removed += [r.id for r in orphans]
    return removed


def _orphaned_long_enough(conn: redis.Redis, resource: TaggedResource, *, now: float, grace: float) -> bool:
    seen_key = f"{state.PREFIX}:orphan-seen:{resource.id}"
    owner = state.record(conn, resource.deployment_id) if resource.deployment_id else None
    if not is_orphan(resource, state.current(conn, resource.key), owner, now=now, grace=grace):
        conn.delete(seen_key)
        return False
    conn.set(seen_key, now, nx=True, ex=int(grace * 4) + 1)
    return now - float(conn.get(seen_key) or now) >= grace


def is_orphan(resource: TaggedResource, current: Deployment | None, owner: Deployment | None, *, now: float, grace: float) -> bool:
    """Whether a tagged resource belongs to no live deployment. Pure.

    Kept: anything younger than `grace`; what a deployment still `deploying` made (its job may
    be launching it); the environment's current deployment's, unless that deployment failed
    (a failed deploy removes what it launched, so whatever is left of it is a leftover);
    and, while the current deployment is deploying or failed, its predecessors' (the last good
    preview, which a redeploy keeps until it succeeds)."""
    if now - resource.created_at < grace or (owner is not None and owner.status == "deploying"):
        return False
    if current is None or current.state == "idle":
        return True
    if resource.deployment_id == current.id:
        return current.status == "failed"
    return current.status == "deployed"


# The jobs that talk to GitHub only (webhook handling, reports), safe to run again.
GITHUB_JOB_PREFIXES = ("webhook-", "report-")
# How long one pass may spend asking GitHub which pull requests closed.
CLOSED_LOOKUP_SECONDS = 30
# A job whose workers keep dying is left to RQ's own abandoned-job handling after this many.
MAX_REQUEUES_AFTER_DEATH = 2


def requeue_github_jobs_of_dead_workers(conn: redis.Redis) -> list[str]:
    """Queue again, at the front, the webhook and report jobs whose worker died under them.

    Their steps are safe to repeat (reactions, the one comment, check runs and deployments are
    found again; a deploy takes the branch lock). RQ would retry them too, but only once their
    execution times out (minutes); a dead worker's heartbeat key is gone within a lease."""
    registry = StartedJobRegistry(QUEUE_NAME, connection=conn, serializer=JSONSerializer)
    requeued = []
    for job_id in registry.get_job_ids(cleanup=False):
        if not job_id.startswith(GITHUB_JOB_PREFIXES):
            continue  # deploys are never run twice behind people's backs: they are failed
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        if job.get_status() != JobStatus.STARTED or not job.worker_name or conn.exists(alive_key(job.worker_name)):
            continue
        deaths = int(job.meta.get("workerDeaths", 0)) + 1
        if deaths > MAX_REQUEUES_AFTER_DEATH:
            continue
        job.meta["workerDeaths"] = deaths
        job.save_meta()
        # The dead execution goes first: RQ's clean-up would otherwise fail the job again later.
        registry.remove_executions(job)
        get_queue(conn).enqueue_job(job, at_front=True)
        log.warning("reconcile: %s was running on %s, which died; queued it again", job_id, job.worker_name)
        requeued.append(job_id)
    return requeued


async def destroy_previews_of_closed_pull_requests(ctx) -> list[Deployment]:
    """A preview whose pull request closed while its `closed` webhook was lost still costs
    money: each live preview's pull request is looked at on GitHub every CLOSED_CHECK_PERIODS
    reconcile periods."""
    destroyed = []
    for deployment in state.live_deployments(ctx.redis):
        if not deployment.installation_id:
            continue
        checked = f"{state.PREFIX}:pr-checked:{deployment.key}"
        if not ctx.redis.set(checked, "1", nx=True, ex=max(1, int(CLOSED_CHECK_PERIODS * ctx.settings.reconcile_seconds))):
            continue
        try:
            async with github_session(ctx.settings, deployment.installation_id) as session:
                pull = await fetch_pull(session, deployment.repository, deployment.pr_number)
        except REPORT_ERRORS as exc:
            log.warning("reconcile: could not look at %s: %s", deployment.key, type(exc).__name__)
            continue
        if pull is None or pull.get("state") == "closed":
            log.warning("reconcile: %s is closed but its preview is live; destroying it", deployment.key)
            previews.request_destroy(ctx.redis, ctx.settings, deployment.key, reason="reconcile: pull request closed")
            destroyed.append(deployment)
    return destroyed


WORKER_LOST = "Worker lost: the deploy stopped without finishing. Retry to deploy again."
JOB_LOST = "Job lost: the deploy left the queue without running. Retry to deploy again."
SUPERSEDED = "Superseded: another job holds this branch. Retry to deploy again."


def diagnose(conn: redis.Redis, deployment: Deployment, *, lease_seconds: float, now: float | None = None) -> str | None:
    """Why `deployment` (status deploying) is stuck, or None if someone is working on it.

    The lock is taken before `deploying` is announced and released only after the final
    status, so a deploying deployment without its lock has lost its worker."""
    lock = state.lock_for(conn, deployment, lease_seconds=lease_seconds)
    holder = lock.holder()
    # Between the announcement and the enqueueing there is no job yet: give it a moment.
    if holder == deployment.id and (now or time.time()) - _epoch(deployment.updated_at) < GRACE_SECONDS:
        return None
    job = job_state(conn, deployment.id)
    if job == "dead worker" and holder == deployment.id and conn.pttl(lock.lock_key) <= lock.lease_ms:
        # Its job had started (it shortened the queued lease), so its worker may only be cut
        # off from Redis, its provisioner running until it fences itself: the branch is free
        # when that lease has run out, not before.
        return None
    if holder is None or job == "dead worker":
        return WORKER_LOST
    if holder != deployment.id:
        return SUPERSEDED if job == "live" else WORKER_LOST
    return None if job == "live" else JOB_LOST


def job_state(conn: redis.Redis, lock_id: str) -> str:
    """"live" (queued or running on a live worker), "dead worker" or "gone"."""
    for job_id in job_id_for_lock(lock_id):
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        status = job.get_status()
        if status == JobStatus.STARTED and job.worker_name and not conn.exists(alive_key(job.worker_name)):
            return "dead worker"  # e.g. killed after it took the job, before it shortened the lease
        if status in LIVE_JOB_STATUSES:
            return "live"
    return "gone"


def alive_key(worker_name: str) -> str:
    return f"{state.PREFIX}:alive:{worker_name}"


class Heartbeat:
    """Tells the reconciler that this worker process lives, with a key that expires with the
    lease: a worker killed at any moment is known dead within PREVIEW_LEASE_SECONDS."""

    def __init__(self, conn: redis.Redis, worker_name: str, lease_seconds: float):
        self.conn = conn
        self.key = alive_key(worker_name)
        self.lease_ms = int(lease_seconds * 1000)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="previewbot-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        try:
            self.conn.delete(self.key)
        except redis.RedisError:
            pass

    def beat(self) -> None:
        try:
            self.conn.set(self.key, "1", px=self.lease_ms)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _loop(self) -> None:
        while not self.stop_event.wait(self.lease_ms / 3000):
            self.beat()


def _epoch(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).replace(tzinfo=timezone.utc).timestamp()


class ReconcileScheduler:
    """Runs `reconcile` once per period across all worker processes.

    It runs in its own thread of each worker process, not as a job on the queue: when every
    worker is busy with a long deploy, the reconciler must still run. A Redis key per period,
    taken with SET NX, lets one process do each period's work.
    """

    def __init__(self, conn: redis.Redis, settings):
        self.conn = conn
        self.period = settings.reconcile_seconds
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="previewbot-reconcile", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def _loop(self) -> None:
        while not self.stop_event.wait(self._until_next_period()):
            if self.claim():
                try:
                    reconcile()
                except (redis.RedisError, *REPORT_ERRORS) as exc:
                    log.warning("reconcile failed this period: %s", exc)
                except Exception:  # the loop must survive anything a repair runs into
                    log.exception("reconcile crashed this period")

    def _until_next_period(self) -> float:
        return self.period - (time.time() % self.period) + 0.05

    def claim(self) -> bool:
        """True for the one process that reconciles this period."""
        period = int(time.time() // self.period)
        try:
            return bool(self.conn.set(f"{state.PREFIX}:reconcile:{period}", os.getpid(), nx=True, ex=max(1, int(self.period * 2))))
        except redis.RedisError as exc:
            log.warning("could not claim the reconcile period: %s", exc)
            return False
