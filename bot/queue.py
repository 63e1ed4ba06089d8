"""The RQ queue and how jobs are put on it, by name: job ids derived from what they act on,
JSON arguments, and a failure callback so a crashing job still reports its deployment.

The web process enqueues `worker.…` functions by their dotted names and never imports them."""

from __future__ import annotations

import redis
from rq import Queue, Retry
from rq.callbacks import Callback
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from .model import Deployment

QUEUE_NAME = "previewbot"
# People waiting on a command they gave: comments by the repository's owner, members and
# collaborators, and check-run buttons (GitHub shows those only to people who may write). Workers
# take these jobs first, in the order they came; anyone else's comment waits in line with the
# rest, so a flood of strangers' comments cannot delay a maintainer's command. The association
# only chooses the line: the handler still asks GitHub for the commenter's permission.
COMMANDS_QUEUE = "previewbot-commands"
COMMANDERS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
# Jobs that handle webhooks or report to GitHub stay short; provisioning may take long.
GITHUB_JOB_TIMEOUT = 120


def get_queue(conn: redis.Redis, name: str = QUEUE_NAME) -> Queue:
    return Queue(name, connection=conn, serializer=JSONSerializer)


def queues(conn: redis.Redis) -> dict[str, Queue]:
    """Every queue by name, in the order workers take their jobs. Made once per process: a
    Queue caches what it learns of the Redis server."""
    return {name: get_queue(conn, name) for name in (COMMANDS_QUEUE, QUEUE_NAME)}


def webhook_queue(event: str, payload: dict) -> str:
    """The queue of a delivery's job: people's commands first (see COMMANDS_QUEUE)."""
    if event == "check_run":
        return COMMANDS_QUEUE
    comment = payload.get("comment")
    if event == "issue_comment" and isinstance(comment, dict) and comment.get("author_association") in COMMANDERS:
        return COMMANDS_QUEUE
    return QUEUE_NAME


def enqueue_webhook(queues: dict[str, Queue], *, event: str, delivery_id: str, payload: dict, pipeline) -> None:
    """Queue the handling of one webhook delivery, as GitHub sent it, inside `pipeline`."""
    queues[webhook_queue(event, payload)].enqueue_call(
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
        job_timeout=int(settings.command_timeout) + 120,
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
    get_queue(conn).enqueue(
        "worker.jobs.report_deployment",
        deployment=deployment.to_json(),
        job_id=f"report-{deployment.id}-{deployment.status}",
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
