"""The RQ queue and how jobs are put on it, by name: job ids derived from what they act on,
JSON arguments, and a failure callback so a crashing job still reports its deployment.

The web process enqueues `worker.…` functions by their dotted names and never imports them."""

from __future__ import annotations

import re

import redis
from rq import Queue, Retry
from rq.callbacks import Callback
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from .model import Deployment

QUEUE_NAME = "previewbot"
# Jobs that handle webhooks or report to GitHub stay short; provisioning may take long.
GITHUB_JOB_TIMEOUT = 120


def get_queue(conn: redis.Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=conn, serializer=JSONSerializer)


def enqueue_webhook(queue: Queue, *, event: str, delivery_id: str, payload: dict, pipeline) -> None:
    """Queue the handling of one webhook delivery, as GitHub sent it, inside `pipeline`."""
    queue.enqueue_call(
        "worker.github_events.handle_webhook",
        kwargs={"event": event, "delivery_id": delivery_id, "payload": payload},
        job_id=f"webhook-{delivery_id}",
        # A handler that failed (GitHub still down after the client's own retries) or whose
        # worker died runs again; its steps are safe to repeat.
        retry=Retry(max=2),
        timeout=GITHUB_JOB_TIMEOUT,
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
        description=f"webhook {event}.{payload.get('action')} {delivery_id}",
        pipeline=pipeline,
    )


def enqueue_deploy(conn: redis.Redis, settings, *, deployment: Deployment, lock_id: str) -> None:
    """Queue the provisioning of `deployment`, which already holds its branch lock."""
    _enqueue_provisioning(conn, settings, "worker.jobs.deploy_preview", f"deploy-{deployment.id}", "deploy", deployment=deployment, lock_id=lock_id)


def enqueue_destroy(conn: redis.Redis, settings, *, deployment: Deployment, lock_id: str, reason: str) -> None:
    """Queue the teardown of `deployment`; `lock_id` holds the branch lock meanwhile."""
    _enqueue_provisioning(conn, settings, "worker.jobs.destroy_preview", f"destroy-{lock_id}", "destroy", deployment=deployment, lock_id=lock_id, reason=reason)


def _enqueue_provisioning(conn: redis.Redis, settings, func: str, job_id: str, verb: str, *, deployment: Deployment, **kwargs) -> None:
    get_queue(conn).enqueue(
        func,
        deployment=deployment.to_json(),
        **kwargs,
        job_id=job_id,
        # The provisioner, then the health check, each within its own limit; then the report.
        job_timeout=int(settings.command_timeout + settings.health_timeout) + 120,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        on_failure=Callback("worker.jobs.job_crashed"),
        description=f"{verb} {deployment.key} {deployment.branch_name}",
    )


def job_id_for_lock(lock_id: str) -> list[str]:
    """The job ids that may hold `lock_id`: a deploy of that id, or a destroy run under it."""
    return [f"deploy-{lock_id}", f"destroy-{lock_id}"]


def enqueue_report(conn: redis.Redis, *, deployment: Deployment) -> None:
    """Queue a report of `deployment`'s state to GitHub (for changes made outside a job)."""
    _enqueue_github_report(conn, "worker.jobs.report_deployment", f"report-{deployment.id}-{deployment.status}", deployment)


def enqueue_expiry_report(conn: redis.Redis, *, deployment: Deployment, why: str) -> None:
    """Queue the check run and the PR comment of a deployed preview shown again: its expiry
    warning is due (`why` = "warned") or it was extended ("extended")."""
    stamp = re.sub(r"\D", "", deployment.expires_at or "never")
    _enqueue_github_report(conn, "worker.jobs.report_expiry", f"expiry-{deployment.id}-{why}-{stamp}", deployment)


def _enqueue_github_report(conn: redis.Redis, func: str, job_id: str, deployment: Deployment) -> None:
    """A job that only tells GitHub, once per `job_id`; a failed one is kept a week to look at."""
    get_queue(conn).enqueue(
        func,
        deployment=deployment.to_json(),
        job_id=job_id,
        job_timeout=GITHUB_JOB_TIMEOUT,
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
    )


def cancel_queued_deploy(conn: redis.Redis, deployment_id: str) -> bool:
    """Take a deploy job off the queue with RQ's own cancel; False when it is not waiting there
    (already running, finished, or gone)."""
    try:
        job = Job.fetch(f"deploy-{deployment_id}", connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    if job.get_status() != JobStatus.QUEUED:
        return False
    job.cancel()
    return True
