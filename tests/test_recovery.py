"""Faults: a worker killed mid-deploy, Redis gone while a webhook arrives."""

from __future__ import annotations

import json
import signal
import sys

import httpx
import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from . import webhooks
from .harness import wait_for

pytestmark = pytest.mark.slow


def test_killed_worker_ends_failed_with_retry_and_frees_the_branch(make_bot, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    bot = make_bot(
        {
            "PREVIEW_PROVISIONER": "command",
            "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}",
            "PREVIEW_LEASE_SECONDS": "2",
            "PREVIEW_CANCEL_GRACE_SECONDS": "1",
            "PREVIEW_RECONCILE_SECONDS": "2",
        }
    ).start(workers=2)
    started = bot.deploy("octo/app", 21, "feat/crash").json()
    conn = redis.Redis.from_url(bot.env["REDIS_URL"])
    job = wait_for(lambda: (j := Job.fetch(f"deploy-{started['id']}", connection=conn, serializer=JSONSerializer)).worker_name and j, message="job picked up")
    pid = int(job.worker_name.rsplit("-", 1)[1])
    victim = next(p for p in bot.workers if p.pid == pid)
    victim.send_signal(signal.SIGKILL)  # no cleanup of any kind
    victim.wait()
    failed = bot.wait_status("octo/app", 21, "failed", timeout=20)
    assert "Worker lost" in failed["error"] and "Retry" in failed["error"]
    events = bot.store.deployment_events(started["id"])
    assert any((e["message"] or "").startswith("reconcile:") for e in events)  # the repair is in the history
    assert not conn.keys("previewbot:lock:*")
    # The branch is free again: a retry deploys.
    assert bot.deploy("octo/app", 21, "feat/crash").status_code == 202


def test_webhook_while_redis_is_down_is_503_and_can_be_redelivered(tmp_path, redis_url):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from bot.app import create_app
    from bot.config import load_settings

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    env = {"DATABASE_PATH": str(tmp_path / "w.db"), "APP_ID": "1", "PRIVATE_KEY": key, "WEBHOOK_SECRET": "s"}
    down = create_app(load_settings({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}), start_feed=False).test_client()
    payload = webhooks.issue_comment("octo/app", 1, body="/preview", installation_id=1)
    body = json.dumps(payload).encode()
    headers = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": webhooks.sign(body, "s"), "Content-Type": "application/json"}
    response = down.post("/api/github/webhooks", data=body, headers=headers)
    assert response.status_code == 503 and "redeliver" in response.get_json()["error"]
    # Nothing half-written: the delivery id is not remembered, so GitHub's redelivery is accepted.
    up = create_app(load_settings({**env, "REDIS_URL": redis_url}), start_feed=False).test_client()
    again = up.post("/api/github/webhooks", data=body, headers=headers)
    assert again.status_code == 202
    assert redis.Redis.from_url(redis_url).llen("rq:queue:previewbot") == 1


def test_secrets_stay_out_of_logs_database_and_errors(make_bot, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    secret = "hook-secret-value-1234"
    # GitHub unreachable: the REST deploy's check fails and every layer logs the failure.
    bot = make_bot({"APP_ID": "5", "PRIVATE_KEY": key, "WEBHOOK_SECRET": secret, "GITHUB_API_URL": "http://127.0.0.1:9"}).start()
    response = bot.deploy("octo/app", 1, "main")
    assert response.status_code == 502
    body = json.dumps(webhooks.issue_comment("octo/app", 1, body="/preview", installation_id=1)).encode()
    httpx.post(f"{bot.url}/api/github/webhooks", content=body, headers={"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "x", "X-Hub-Signature-256": webhooks.sign(body, secret), "Content-Type": "application/json"})
    wait_for(lambda: "webhook-x" in bot.log_text() or "handle_webhook" in bot.log_text(), message="the job to run")
    text = bot.log_text() + response.text
    database = (tmp_path / "previewbot.db").read_bytes().decode(errors="replace")
    for value in (secret, bot.token, key.splitlines()[1]):
        assert value not in text and value not in database



@pytest.mark.parametrize("worker_survives", [True, False], ids=["worker-alive", "worker-dead"])
def test_deploy_lost_when_redis_restarts_without_data_ends_failed(tmp_path, make_bot, worker_survives):
    """Either the worker notices that its lock is gone and stops the provisioner, or (when the
    worker died too) the web process notices that Redis forgot a deployment SQLite still shows
    as deploying. Both end it `failed` with a reason and free the branch."""
    from bot.embedded_redis import EmbeddedRedis, free_port

    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port, persist=False).start()
    script = tmp_path / "wait.py"
    started_marker = tmp_path / "provisioning"
    script.write_text(f"import pathlib, time\npathlib.Path({str(started_marker)!r}).touch()\ntime.sleep(600)\n")
    bot = make_bot(
        {
            "REDIS_URL": server.url,
            "PREVIEW_PROVISIONER": "command",
            "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}",
            "PREVIEW_LEASE_SECONDS": "2",
            "PREVIEW_CANCEL_GRACE_SECONDS": "1",
            "PREVIEW_RECONCILE_SECONDS": "1",
        }
    ).start()
    try:
        started = bot.deploy("octo/app", 31, "feat/redis").json()
        # Redis goes away while the provisioner runs (the lease is being renewed); earlier, the
        # job itself would fail on Redis and the web's repair would be the one to end it.
        wait_for(started_marker.exists, message="the provisioner to start")
        if not worker_survives:
            bot.stop_workers(signal.SIGKILL)
        server.stop()
        server = EmbeddedRedis(tmp_path / "redis", port=port, persist=False).start()  # empty
        failed = bot.wait_status("octo/app", 31, "failed", timeout=40)
        assert failed["id"] == started["id"] and "Retry" in failed["error"]
        expected = "branch lease" if worker_survives else "Redis restarted without"
        assert expected in failed["error"]
        if not worker_survives:
            assert any((e["message"] or "").startswith("repair:") for e in bot.store.deployment_events(started["id"]))
        # Redis knows the outcome again, and the branch can be deployed anew.
        conn = redis.Redis.from_url(server.url)
        assert json.loads(conn.get("previewbot:env:octo/app#31:preview"))["status"] == "failed"
        assert bot.deploy("octo/app", 31, "feat/redis").status_code == 202
    finally:
        bot.stop()
        server.stop()


def _hanging_bot(make_bot, tmp_path, **env):
    script = tmp_path / "hang.py"
    script.write_text("import time\ntime.sleep(600)\n")
    return make_bot(
        {
            "PREVIEW_PROVISIONER": "command",
            "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}",
            "PREVIEW_LEASE_SECONDS": "2",
            "PREVIEW_CANCEL_GRACE_SECONDS": "1",
            "PREVIEW_RECONCILE_SECONDS": "2",
            **env,
        }
    )


def _kill_worker_of(bot, deployment_id: str) -> None:
    conn = redis.Redis.from_url(bot.env["REDIS_URL"])
    job = wait_for(lambda: (j := Job.fetch(f"deploy-{deployment_id}", connection=conn, serializer=JSONSerializer)).worker_name and j, message="job picked up")
    pid = int(job.worker_name.rsplit("-", 1)[1])
    victim = next(p for p in bot.workers if p.pid == pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def test_a_dead_deploy_replaced_before_the_reconcile_still_ends_failed(make_bot, tmp_path):
    bot = _hanging_bot(make_bot, tmp_path).start(workers=2)
    first = bot.deploy("octo/app", 41, "feat/a").json()
    _kill_worker_of(bot, first["id"])
    conn = redis.Redis.from_url(bot.env["REDIS_URL"])
    wait_for(lambda: not conn.keys("previewbot:lock:*"), message="the dead job's lease to run out")
    second = bot.deploy("octo/app", 41, "feat/a")
    if second.status_code == 409:  # the reconcile was quicker than us: retry once it freed the branch
        second = bot.deploy("octo/app", 41, "feat/a")
    assert second.status_code == 202
    with bot.client() as c:
        failed = wait_for(lambda: (d := c.get(f"/api/deployments/{first['id']}").json())["status"] == "failed" and d, message="the replaced deployment to fail")
    assert "Worker lost" in failed["error"]
    assert bot.deployment("octo/app", 41).json()["id"] == second.json()["id"]


def test_a_teardown_queued_behind_a_dead_deploy_still_happens(make_bot, tmp_path):
    bot = _hanging_bot(make_bot, tmp_path).start(workers=2)
    first = bot.deploy("octo/app", 42, "feat/b").json()
    with bot.client() as c:
        queued = c.delete("/api/repos/octo/app/pull-requests/42/deployment")
    assert queued.status_code == 202 and queued.json()["destroy"] == "queued"
    _kill_worker_of(bot, first["id"])
    wait_for(lambda: bot.deployment("octo/app", 42).status_code == 404, timeout=30, message="the queued teardown to run")
    events = [e["status"] for e in bot.store.deployment_events(first["id"])]
    assert events[-2:] == ["failed", "destroyed"]
    conn = redis.Redis.from_url(bot.env["REDIS_URL"])
    assert not conn.keys("previewbot:next:*") and not conn.keys("previewbot:lock:*")


def test_workers_outlive_a_redis_restart(make_bot, tmp_path):
    from bot.embedded_redis import EmbeddedRedis, free_port

    port = free_port()
    data = tmp_path / "redis"
    server = EmbeddedRedis(data, port=port, persist=True).start()
    gate, running = tmp_path / "gate", tmp_path / "running"
    script = tmp_path / "deploy.py"
    script.write_text(f"import pathlib, time\npathlib.Path({str(running)!r}).touch()\n"
                      f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.05)\nprint('https://after-redis.example.test')\n")
    bot = make_bot({"REDIS_URL": server.url, "PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}"}).start()
    try:
        started = bot.deploy("octo/app", 43, "feat/c").json()
        # Redis goes away while the provisioner runs; a job cut off before that, in RQ's own
        # bookkeeping, is failed by the reconciler instead ("Worker lost"), never re-run.
        wait_for(running.exists, message="the provisioner to start")
        server.stop()
        gate.write_text("go")  # the deploy finishes while Redis is down
        server = EmbeddedRedis(data, port=port, persist=True).start()
        deployed = bot.wait_status("octo/app", 43, "deployed", timeout=60)
        assert deployed["previewUrl"] == "https://after-redis.example.test"
        assert all(p.poll() is None for p in bot.workers), "a worker exited"
        again = bot.deploy("octo/app", 44, "feat/d")
        assert again.status_code == 202
        bot.wait_status("octo/app", 44, "deployed", timeout=30)
    finally:
        bot.stop()
        server.stop()


def _take_job(conn, queue, worker_name: str) -> Job:
    """What an RQ worker records when it starts a job, done by a worker that then vanishes."""
    from rq import SimpleWorker

    worker = SimpleWorker([queue], connection=conn, serializer=JSONSerializer, name=worker_name)
    job, _queue = worker.dequeue_job_and_maintain_ttl(timeout=1)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    return job


def test_github_jobs_of_dead_workers_are_queued_again_twice_at_most(redis_conn):
    from rq.job import JobStatus
    from rq.registry import StartedJobRegistry

    from bot.queue import get_queue
    from worker.reconcile import alive_key, requeue_github_jobs_of_dead_workers

    queue = get_queue(redis_conn)
    queue.enqueue("worker.jobs.report_deployment", deployment={"id": "d1"}, job_id="report-d1")

    redis_conn.set(alive_key("previewbot-alive-1"), "1")
    _take_job(redis_conn, queue, "previewbot-alive-1")
    assert requeue_github_jobs_of_dead_workers(redis_conn) == []  # its worker still beats

    redis_conn.delete(alive_key("previewbot-alive-1"))  # ... and now it died
    assert requeue_github_jobs_of_dead_workers(redis_conn) == ["report-d1"]
    assert queue.job_ids == ["report-d1"]
    # The dead execution is gone, so RQ's clean-up will not fail the job's next run.
    assert StartedJobRegistry(queue.name, connection=redis_conn, serializer=JSONSerializer).get_job_ids(cleanup=False) == []
    _take_job(redis_conn, queue, "previewbot-gone-2")
    assert requeue_github_jobs_of_dead_workers(redis_conn) == ["report-d1"]
    # A job whose workers keep dying is left to RQ's own abandoned-job handling.
    job = _take_job(redis_conn, queue, "previewbot-gone-3")
    assert requeue_github_jobs_of_dead_workers(redis_conn) == []
    assert job.get_status() == JobStatus.STARTED and queue.job_ids == []
