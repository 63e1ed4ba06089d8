"""The RQ queues and how jobs are put on them: job ids derived from what they act on, JSON
arguments, and a failure callback so a crashing job still reports its deployment.

Two queues, so a command is never stuck behind provisioning: `github` holds webhook handling
and reports to GitHub (seconds each), `deploy` holds deploys and teardowns (minutes). Every
worker takes `github` jobs first; a worker started with `--queues github` takes nothing else,
so commands are answered even while every other worker is provisioning."""

from __future__ import annotations

import redis
from rq import Queue
from rq.callbacks import Callback
from rq.serializers import JSONSerializer

QUEUE_NAME = "previewbot"
GITHUB_QUEUE_NAME = "previewbot-github"
# What `previewbot worker --queues` accepts, in the order a worker takes them.
LANES = {"github": GITHUB_QUEUE_NAME, "deploy": QUEUE_NAME}
# Jobs that handle webhooks or report to GitHub stay short; provisioning may take long.
GITHUB_JOB_TIMEOUT = 120


def get_queue(conn: redis.Redis, name: str = QUEUE_NAME) -> Queue:
    return Queue(name, connection=conn, serializer=JSONSerializer)


def get_github_queue(conn: redis.Redis) -> Queue:
    return get_queue(conn, GITHUB_QUEUE_NAME)


def lane_queues(conn: redis.Redis, lanes: list[str]) -> list[Queue]:
    """The queues of `lanes`, GitHub's first whatever order they were named in."""
    return [get_queue(conn, name) for lane, name in LANES.items() if lane in lanes]


def enqueue_deploy(conn: redis.Redis, settings, *, deployment: dict, lock_id: str) -> None:
    """Queue the provisioning of `deployment`, which already holds its branch lock."""
    _enqueue_provisioning(conn, settings, "worker.jobs.deploy_preview", f"deploy-{deployment['id']}", "deploy", deployment=deployment, lock_id=lock_id)


def enqueue_destroy(conn: redis.Redis, settings, *, deployment: dict, lock_id: str, reason: str) -> None:
    """Queue the teardown of `deployment`; `lock_id` holds the branch lock meanwhile."""
    _enqueue_provisioning(conn, settings, "worker.jobs.destroy_preview", f"destroy-{lock_id}", "destroy", deployment=deployment, lock_id=lock_id, reason=reason)


def _enqueue_provisioning(conn: redis.Redis, settings, func: str, job_id: str, verb: str, *, deployment: dict, **kwargs) -> None:
    get_queue(conn).enqueue(
        func,
        deployment=deployment,
        **kwargs,
        job_id=job_id,
        job_timeout=int(settings.command_timeout) + 120,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        on_failure=Callback("worker.jobs.job_crashed"),
        description=f"{verb} {deployment['repository']}#{deployment['prNumber']} {deployment['branchName']}",
    )


def job_id_for_lock(lock_id: str) -> list[str]:
    """The job ids that may hold `lock_id`: a deploy of that id, or a destroy run under it."""
    return [f"deploy-{lock_id}", f"destroy-{lock_id}"]


def enqueue_report(conn: redis.Redis, *, deployment: dict) -> None:
    """Queue a report of `deployment`'s state to GitHub (for changes made outside a job)."""
    get_github_queue(conn).enqueue(
        "worker.jobs.report_deployment",
        deployment=deployment,
        job_id=f"report-{deployment['id']}-{deployment['status']}",
        job_timeout=GITHUB_JOB_TIMEOUT,
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
    )
