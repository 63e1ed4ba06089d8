"""Cancelling, replacing and tearing down, end to end with the real web and worker processes:
nothing keeps running after its deployment ended."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot import state
from bot.config import load_settings
from bot.model import Deployment, PreviewKey
from worker import context
from worker.reconcile import reconcile

from .harness import process_alive, wait_for

pytestmark = pytest.mark.slow

# A provisioner command that notes each call (action, branch, pid) in a journal, then, on
# deploy, runs as long as the test asks (a `hold` file's presence).
SCRIPT = """\
import os, pathlib, sys, time
journal = pathlib.Path(sys.argv[1])
with journal.open("a") as f:
    f.write(f"{os.environ['PREVIEW_ACTION']} {os.environ['PREVIEW_BRANCH']} {os.getpid()}\\n")
if os.environ["PREVIEW_ACTION"] == "deploy":
    while pathlib.Path(sys.argv[2]).exists():
        time.sleep(0.05)
"""


@pytest.fixture
def provisioner(tmp_path):
    script = tmp_path / "provision.py"
    script.write_text(SCRIPT)
    journal, hold = tmp_path / "journal", tmp_path / "hold"
    command = f"{sys.executable} {script} {journal} {hold}"
    env = {
        "PREVIEW_PROVISIONER": "command",
        "PREVIEW_DEPLOY_COMMAND": command,
        "PREVIEW_DESTROY_COMMAND": command,
        "PREVIEW_CANCEL_GRACE_SECONDS": "2",
        "PREVIEW_LEASE_SECONDS": "10",
    }
    return env, journal, hold


def calls(journal: Path) -> list[tuple[str, str, int]]:
    if not journal.exists():
        return []
    return [(a, b, int(p)) for a, b, p in (line.split() for line in journal.read_text().splitlines())]


def api(bot, method: str, path: str):
    with bot.client() as c:
        return c.request(method, f"/api/repos/octo/app/pull-requests/{path}")


def history(bot, pr: int) -> list[tuple[str, str]]:
    return [(d["branchName"], d["status"]) for d in api(bot, "GET", f"{pr}/deployments").json()["deployments"]]


def test_cancel_stops_a_running_provisioner_tears_down_and_frees_the_branch(make_bot, provisioner):
    env, journal, hold = provisioner
    hold.touch()
    bot = make_bot(env).start()
    started = bot.deploy("octo/app", 1, "feat/a").json()
    wait_for(lambda: calls(journal), message="the provisioner to start")
    deploy_pid = calls(journal)[0][2]

    response = api(bot, "POST", "1/deployment/cancel")
    assert response.status_code == 202 and response.json()["id"] == started["id"]

    wait_for(lambda: not process_alive(deploy_pid), message="the provisioner to be stopped")
    wait_for(lambda: bot.deployment("octo/app", 1).status_code == 404, message="the environment to be idle")
    assert [c[:2] for c in calls(journal)] == [("deploy", "feat/a"), ("destroy", "feat/a")]
    assert wait_for(lambda: history(bot, 1) == [("feat/a", "cancelled")])
    # The branch is free again.
    hold.unlink()
    assert bot.deploy("octo/app", 1, "feat/a").status_code == 202
    bot.wait_status("octo/app", 1, "deployed")


def test_cancel_takes_a_queued_deploy_off_the_queue(make_bot, provisioner, redis_conn):
    env, journal, _hold = provisioner
    bot = make_bot(env).start_web()  # no worker: the deploy waits in the queue
    started = bot.deploy("octo/app", 2, "feat/b").json()
    assert api(bot, "POST", "2/deployment/cancel").status_code == 202
    wait_for(lambda: history(bot, 2) == [("feat/b", "cancelled")])
    job = Job.fetch(f"deploy-{started['id']}", connection=redis_conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.CANCELED and redis_conn.llen("rq:queue:previewbot") == 0
    assert not redis_conn.keys("previewbot:lock:*")
    bot.start_worker()
    assert bot.deploy("octo/app", 2, "feat/b").status_code == 202
    bot.wait_status("octo/app", 2, "deployed")
    assert [c[:2] for c in calls(journal)] == [("deploy", "feat/b")]  # the cancelled one never ran


def test_cancel_without_a_deploy_in_progress_is_409(make_bot):
    bot = make_bot().start()
    assert api(bot, "POST", "3/deployment/cancel").status_code == 409
    bot.deploy("octo/app", 3, "feat/c")
    bot.wait_status("octo/app", 3, "deployed")
    response = api(bot, "POST", "3/deployment/cancel")
    assert response.status_code == 409 and response.json()["error"]


def test_delete_while_deploying_cancels_then_leaves_nothing(make_bot, provisioner):
    env, journal, hold = provisioner
    hold.touch()
    bot = make_bot(env).start()
    bot.deploy("octo/app", 4, "feat/d")
    wait_for(lambda: calls(journal), message="the provisioner to start")
    assert api(bot, "DELETE", "4/deployment").status_code == 202
    wait_for(lambda: history(bot, 4) == [("feat/d", "cancelled")])
    wait_for(lambda: not process_alive(calls(journal)[0][2]))
    assert [c[:2] for c in calls(journal)] == [("deploy", "feat/d"), ("destroy", "feat/d")]
    assert bot.deployment("octo/app", 4).status_code == 404


def test_another_branch_to_the_same_environment_tears_the_old_one_down(make_bot, provisioner):
    env, journal, _hold = provisioner
    bot = make_bot(env).start()
    bot.deploy("octo/app", 5, "feat/old")
    bot.wait_status("octo/app", 5, "deployed")
    new = bot.deploy("octo/app", 5, "feat/new").json()
    assert bot.wait_status("octo/app", 5, "deployed")["id"] == new["id"]
    assert [c[:2] for c in calls(journal)] == [("deploy", "feat/old"), ("destroy", "feat/old"), ("deploy", "feat/new")]
    assert wait_for(lambda: history(bot, 5) == [("feat/new", "deployed"), ("feat/old", "superseded")])
    # DELETE tears down what runs now; nothing of either branch is left.
    assert api(bot, "DELETE", "5/deployment").status_code == 202
    wait_for(lambda: history(bot, 5) == [("feat/new", "destroyed"), ("feat/old", "superseded")])
    assert [c[:2] for c in calls(journal)][-1] == ("destroy", "feat/new")


def test_the_reconciler_never_fails_a_deploy_that_finished_during_its_pass(tmp_path, redis_url, redis_conn):
    settings = load_settings({"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "r.db"), "PREVIEW_SIMULATED_SECONDS": "0"})
    context.set_context(context.WorkerContext(settings, redis_conn, context.NullReporter()))
    try:
        deployment = Deployment.new(repository="octo/app", pr_number=6, branch_name="feat/e")
        state.publish(redis_conn, deployment, expect=state.ABSENT, take_over=True)
        finished = state.publish(redis_conn, deployment.changed(status="deployed"), expect="deploying")
        # The pass's snapshot was taken before the deploy finished: it still says deploying,
        # and no lock or job is left, so the diagnosis is "Worker lost".
        redis_conn.hset(state.ACTIVE, deployment.id, deployment.dumps())
        assert reconcile() == []
        recorded = state.record(redis_conn, deployment.id)
        # The pass gives the preview its expiry (it had none) and changes nothing else.
        assert recorded.expires_at and recorded == finished.model_copy(update={"expires_at": recorded.expires_at, "updated_at": recorded.updated_at})
        assert state.current(redis_conn, PreviewKey("octo/app", 6)).status == "deployed"
    finally:
        context.set_context(None)


def test_a_second_branch_waits_for_the_deploy_of_the_environment_in_progress(make_bot, provisioner):
    env, journal, hold = provisioner
    hold.touch()
    bot = make_bot(env).start()
    first = bot.deploy("octo/app", 7, "feat/one").json()
    wait_for(lambda: calls(journal), message="the provisioner to start")
    refused = bot.deploy("octo/app", 7, "feat/two")
    assert refused.status_code == 409 and refused.json()["deploymentId"] == first["id"]
    hold.unlink()
    bot.wait_status("octo/app", 7, "deployed")
    assert [c[:2] for c in calls(journal)] == [("deploy", "feat/one")]


def test_a_failed_teardown_is_shown_and_retried_until_it_succeeds(make_bot, tmp_path):
    journal, fixed = tmp_path / "journal", tmp_path / "fixed"
    script = tmp_path / "provision.py"
    script.write_text(
        "import os, pathlib, sys\n"
        f"open({str(journal)!r}, 'a').write(os.environ['PREVIEW_ACTION'] + '\\n')\n"
        f"if os.environ['PREVIEW_ACTION'] == 'destroy' and not pathlib.Path({str(fixed)!r}).exists():\n"
        "    sys.exit('the cloud said no')\n"
    )
    command = f"{sys.executable} {script}"
    bot = make_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": command, "PREVIEW_DESTROY_COMMAND": command,
                    "PREVIEW_RECONCILE_SECONDS": "1"}).start()
    bot.deploy("octo/app", 8, "feat/t")
    bot.wait_status("octo/app", 8, "deployed")
    assert api(bot, "DELETE", "8/deployment").status_code == 202
    shown = wait_for(lambda: (d := bot.deployment("octo/app", 8).json()).get("teardownError") and d, message="the teardown error")
    assert shown["status"] == "deployed" and "the cloud said no" in shown["teardownError"]
    # The reconciler tries again (after 2 periods, then 4…) until the teardown succeeds.
    wait_for(lambda: journal.read_text().count("destroy") >= 2, timeout=20, message="a retried teardown")
    fixed.touch()
    wait_for(lambda: bot.deployment("octo/app", 8).status_code == 404, timeout=30, message="the retry to succeed")
    assert history(bot, 8) == [("feat/t", "destroyed")]


def test_a_redeploy_cancelled_in_the_queue_leaves_the_live_preview_current(make_bot):
    bot = make_bot().start()
    live = bot.deploy("octo/app", 9, "feat/g").json()
    bot.wait_status("octo/app", 9, "deployed")
    bot.stop_workers()
    bot.deploy("octo/app", 9, "feat/g")  # waits in the queue: no worker
    assert api(bot, "POST", "9/deployment/cancel").status_code == 202
    wait_for(lambda: history(bot, 9) == [("feat/g", "cancelled"), ("feat/g", "deployed")])
    current = wait_for(lambda: (d := bot.deployment("octo/app", 9).json()).get("id") == live["id"] and d)
    assert current["status"] == "deployed"
