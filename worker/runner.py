"""The `previewbot worker` process: an RQ worker that outlives Redis outages.

RQ's worker loop ends when Redis disappears in the middle of a job (its own bookkeeping
needs Redis). This process then waits for Redis and starts the loop again, so a Redis restart
never takes the workers with it. The heartbeat, the reconcile scheduler, the expiry scheduler
and the acknowledger of members' commands run beside it.
"""

from __future__ import annotations

import logging
import os
import time

import redis
from rq import SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot import state
from bot.queue import get_queue

from . import context
from .acknowledger import Acknowledger
from .expiry import ExpiryScheduler
from .reaper import share_nice_with_session
from .reconcile import Heartbeat, ReconcileScheduler

log = logging.getLogger("previewbot.worker")

MAINTENANCE_SECONDS = 60


def run_worker_process(settings, *, burst: bool = False) -> int:
    # Deploys are throughput, the web process is latency (GitHub's webhooks, WebSocket clients):
    # on a machine that runs both, the web process gets the CPU first.
    os.nice(settings.worker_nice)
    share_nice_with_session()
    ctx = context.build_context(settings)
    context.set_context(ctx)
    # The heartbeat and the reconciler must learn of a lost Redis within a lease; RQ's loop
    # blocks on the queue and sets its own, longer timeout on the connection it is given.
    conn = state.connect(settings.redis_url, timeout=min(5.0, settings.lease_seconds / 4))
    rq_conn = redis.Redis.from_url(settings.redis_url)
    name = f"previewbot-{os.uname().nodename}-{os.getpid()}"
    heartbeat = Heartbeat(conn, name, settings.lease_seconds)
    heartbeat.start()
    scheduler = ReconcileScheduler(conn, settings)
    scheduler.start()
    expiries = ExpiryScheduler(conn, settings)
    expiries.start()
    acknowledger = Acknowledger(ctx)
    acknowledger.start()
    try:
        while True:
            # Jobs run in this process (no fork per job): installation tokens stay cached
            # between jobs and a job starts in well under a millisecond. A job that dies takes
            # the process with it; the branch lease and the reconciler recover its deployment.
            worker = PreviewWorker(
                [get_queue(rq_conn)],
                connection=rq_conn,
                serializer=JSONSerializer,
                name=name,
                # Abandoned jobs (their worker died) are retried or failed by RQ's registry
                # clean-up, which runs this often.
                maintenance_interval=MAINTENANCE_SECONDS,
            )
            _forget_stale_registration(conn, worker)
            try:
                worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("lost Redis while starting the worker loop: %s", exc)
            if burst or worker.asked_to_stop:
                if burst:  # the comments received meanwhile are acknowledged before the end
                    acknowledger.stop()
                    acknowledger.run_once()
                return 0
            interrupted = _current_job_id(worker)
            log.warning("the worker loop stopped (Redis went away?); starting it again when Redis answers")
            _wait_for_redis(conn)
            _run_again(conn, interrupted)
    finally:
        acknowledger.stop()
        expiries.stop()
        scheduler.stop()
        heartbeat.stop()


class PreviewWorker(SimpleWorker):
    """RQ's in-process worker, remembering a stop request: RQ records one only when it comes
    during a job, and a loop that ended without it is restarted (it lost Redis)."""

    asked_to_stop = False

    def request_stop(self, signum, frame):
        self.asked_to_stop = True
        super().request_stop(signum, frame)


def _forget_stale_registration(conn: redis.Redis, worker: SimpleWorker) -> None:
    """A loop that ended without Redis could not record its death; the name is ours (same pid)."""
    try:
        conn.delete(worker.key)
    except redis.RedisError:
        pass


def _current_job_id(worker: SimpleWorker) -> str | None:
    try:
        return worker.get_current_job_id()
    except (redis.RedisError, AttributeError):
        return None


def _run_again(conn: redis.Redis, job_id: str | None) -> None:
    """A webhook job cut off by the outage is queued again (its steps are safe to repeat); a
    deploy is not: the reconciler fails it and people retry, so nothing deploys twice."""
    if not job_id or not job_id.startswith("webhook-"):
        return
    try:
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        if job.get_status() == JobStatus.STARTED:
            get_queue(conn).enqueue_job(job, at_front=True)
            log.warning("queued %s again after the outage", job_id)
    except (NoSuchJobError, redis.RedisError) as exc:
        log.warning("could not queue %s again: %s", job_id, exc)


def _wait_for_redis(conn: redis.Redis) -> None:
    delay = 0.2
    while True:
        try:
            if conn.ping():
                return
        except redis.RedisError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
