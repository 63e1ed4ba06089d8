"""GitHub retries are safe: a creating POST is never performed twice, and a job's GitHub calls
end by its deadline.

The retry loop is tested in-process against the fake GitHub over HTTP, with a clock that moves
only when the client sleeps (no real waiting); the jobs run under a real RQ worker on a real
Redis; end to end, the real web and worker processes meet a GitHub that performs a POST and then
answers 502 or drops the connection.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from contextlib import asynccontextmanager, nullcontext

import gidgethub
import httpx
import pytest
from rq import SimpleWorker
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from bot.config import load_settings
from bot.embedded_redis import free_port
from bot.github import (
    MAX_ATTEMPTS,
    USER_AGENT,
    Backoff,
    GitHubGaveUp,
    GitHubSession,
    InstallationTokens,
    RetryingGitHubAPI,
    deadline,
    seconds_left,
)
from bot.model import Deployment
from bot.queue import get_queue
from worker import context
from worker.reporting import CHECK_RUNS, COMMENTS, GH_DEPLOYMENTS, GitHubReporter

from . import webhooks
from .fakegithub import DROPPED, FakeGitHub
from .github_app import APP_ID, INSTALLATION, REPO, SECRET, SHA1
from .test_github_e2e import bot_comments, check_runs, comment, deployed_on_github, deployments, send

COMMENTS_OF_PR = f"/repos/{REPO}/issues/1/comments"


class Clock:
    """A monotonic clock that moves only when the code under test sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@asynccontextmanager
async def github(fake: FakeGitHub, private_key_pem: str, clock: Clock, base_url: str | None = None):
    """The production client and session, sleeping on `clock`."""
    async with httpx.AsyncClient(timeout=10) as client:
        gh = RetryingGitHubAPI(client, USER_AGENT, base_url=base_url or fake.url, backoff=Backoff(sleep=clock.sleep))
        yield GitHubSession(gh, InstallationTokens(str(APP_ID), private_key_pem, fake.url), INSTALLATION)


def run(fake, private_key_pem, clock, action, *, seconds: float | None = None, base_url: str | None = None):
    """Run `action(session)` on a fresh event loop, within a deadline of `seconds` on `clock`."""

    async def go():
        async with github(fake, private_key_pem, clock, base_url) as session:
            return await action(session)

    with nullcontext() if seconds is None else deadline(seconds, clock=clock):
        return asyncio.run(go())


def get_pull(session):
    return session.call("GET", "/repos/{+repository}/pulls/{number}", url_vars={"repository": REPO, "number": 1})


# -- waits end by the deadline ------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["secondary", "primary"])
def test_a_rate_limit_that_outlasts_the_deadline_gives_up_at_once(fake, private_key_pem, clock, limit):
    if limit == "secondary":
        fake.fail("GET", rf"/repos/{REPO}/pulls/1", 429, times=10, headers={"Retry-After": "40"})
    else:
        reset = str(int(time.time()) + 40)
        fake.fail("GET", rf"/repos/{REPO}/pulls/1", 403, times=10, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset})
    with pytest.raises(GitHubGaveUp, match=r"would pass the deadline \(30\.0s left\)"):
        run(fake, private_key_pem, clock, get_pull, seconds=30)
    assert clock.slept == []  # no sleeping into the deadline, nor up to it
    assert len(fake.calls_to("GET", rf"/repos/{REPO}/pulls/1")) == 1


def test_a_rate_limit_within_the_deadline_is_waited_out(fake, private_key_pem, clock):
    fake.fail("GET", rf"/repos/{REPO}/pulls/1", 429, headers={"Retry-After": "20"})
    assert run(fake, private_key_pem, clock, get_pull, seconds=30)["number"] == 1
    assert clock.slept == [20.0]


def test_a_retry_after_longer_than_any_retry_waits_gives_up_without_a_deadline(fake, private_key_pem, clock):
    fake.fail("GET", rf"/repos/{REPO}/pulls/1", 429, headers={"Retry-After": "3600"})
    with pytest.raises(GitHubGaveUp, match="asks to wait 3600s"):
        run(fake, private_key_pem, clock, get_pull)
    assert clock.slept == []


def test_backoff_after_5xx_stops_at_the_deadline(fake, private_key_pem, clock):
    fake.fail("GET", rf"/repos/{REPO}/pulls/1", 502, times=10)
    with pytest.raises(GitHubGaveUp, match="answered 502: retrying in"):
        run(fake, private_key_pem, clock, get_pull, seconds=2)
    # 0.5 s and 1 s (plus jitter) fit in 2 s; the next wait (2 s) would not.
    assert len(clock.slept) == 2 and sum(clock.slept) < 2
    assert len(fake.calls_to("GET", rf"/repos/{REPO}/pulls/1")) == 3


def test_a_request_that_hangs_is_cut_off_at_the_deadline(fake, private_key_pem, clock):
    release = threading.Event()
    handle = fake._handle

    def hanging(request, raw_path):
        if raw_path.endswith("/pulls/1"):
            release.wait(30)
        return handle(request, raw_path)

    fake._handle = hanging
    try:
        with pytest.raises(GitHubGaveUp, match="no answer before the deadline"):
            run(fake, private_key_pem, clock, get_pull, seconds=0.5)  # the event loop's 0.5 s
    finally:
        release.set()


def test_a_deadline_inside_another_keeps_the_nearer_one(clock):
    with deadline(10, clock=clock):
        with deadline(60, clock=clock):
            assert seconds_left() == 10
        with deadline(3, clock=clock):
            assert seconds_left() == 3
    assert seconds_left() is None


# -- what the client retries by itself ----------------------------------------------------------


async def _post(session: GitHubSession, path: str, data: dict):
    """A POST through the HTTP layer alone (the session's look-ups left out)."""
    token = await session.tokens.get(session.gh, session.installation_id)
    return await session.gh.post(path, data=data, oauth_token=token)


def test_the_http_layer_never_repeats_a_creating_post_after_a_5xx(fake, private_key_pem, clock):
    fake.fail("POST", COMMENTS_OF_PR, 502, times=10)
    with pytest.raises(gidgethub.GitHubBroken):
        run(fake, private_key_pem, clock, lambda s: _post(s, COMMENTS_OF_PR, {"body": "hi"}))
    assert len(fake.calls_to("POST", COMMENTS_OF_PR)) == 1 and clock.slept == []


def test_idempotent_writes_are_retried_after_a_5xx(fake, private_key_pem, clock):
    seeded = fake.add_comment(REPO, 1, "/preview")
    reactions = f"/repos/{REPO}/issues/comments/{seeded['id']}/reactions"
    fake.fail("POST", reactions, 502)
    fake.fail("PATCH", rf"/repos/{REPO}/check-runs/\d+", 503)
    run_id = fake.add_check_run(REPO, SHA1, "Preview")["id"]

    async def write(session):
        await _post(session, reactions, {"content": "eyes"})
        await session.call("PATCH", "/repos/{+repository}/check-runs/{id}", url_vars={"repository": REPO, "id": run_id}, data={"status": "in_progress"})

    run(fake, private_key_pem, clock, write)
    assert fake.reactions[seeded["id"]] == ["eyes"]
    assert [c.status for c in fake.calls_to("PATCH", rf"/repos/{REPO}/check-runs/\d+")] == [503, 200]
    assert len(clock.slept) == 2


def test_a_post_that_never_reached_github_is_sent_again(fake, private_key_pem, clock):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: every attempt fails to connect
    with pytest.raises(httpx.ConnectError):
        run(fake, private_key_pem, clock, lambda s: s.gh.post(COMMENTS_OF_PR, data={"body": "hi"}, oauth_token="t"), base_url=closed)
    assert len(clock.slept) == MAX_ATTEMPTS - 1


# -- creating POSTs: looked up before they are sent again ---------------------------------------


def _create_comment(session):
    return session.call("POST", "/repos/{+repository}/issues/{number}/comments", url_vars={"repository": REPO, "number": 1}, data={"body": "<!-- m -->\nhello"})


def _create_check_run(session):
    data = {"name": "Preview", "head_sha": SHA1, "external_id": "1:preview", "status": "in_progress"}
    return session.call("POST", "/repos/{+repository}/check-runs", url_vars={"repository": REPO}, data=data)


def _create_deployment(session):
    data = {"ref": SHA1, "environment": "preview-pr-1", "payload": {"previewbotDeploymentId": "d1"}, "required_contexts": []}
    return session.call("POST", "/repos/{+repository}/deployments", url_vars={"repository": REPO}, data=data)


def _create_deployment_status(fake):
    def create(session):
        [github_id] = fake.deployments
        return session.call(
            "POST", "/repos/{+repository}/deployments/{id}/statuses", url_vars={"repository": REPO, "id": github_id},
            data={"state": "success", "description": "Preview deployed"},
        )

    return create


def _created(fake, kind: str) -> list:
    with fake.lock:
        return {
            "comment": [c for c in fake.comments[REPO].get(1, []) if c["user"]["type"] == "Bot"],
            "check-run": list(fake.check_runs.values()),
            "deployment": list(fake.deployments.values()),
            "deployment-status": [s for d in fake.deployments.values() for s in d["statuses"]],
        }[kind]


CREATES = {
    "comment": (rf"/repos/{REPO}/issues/1/comments", lambda fake: _create_comment),
    "check-run": (rf"/repos/{REPO}/check-runs", lambda fake: _create_check_run),
    "deployment": (rf"/repos/{REPO}/deployments", lambda fake: _create_deployment),
    "deployment-status": (rf"/repos/{REPO}/deployments/\d+/statuses", _create_deployment_status),
}


@pytest.fixture(params=list(CREATES))
def creation(request, fake):
    kind = request.param
    if kind == "deployment-status":  # a deployment to add the status to
        asyncio.run(_seed_deployment(fake, request.getfixturevalue("private_key_pem")))
    path, make = CREATES[kind]
    return kind, path, make(fake)


async def _seed_deployment(fake, private_key_pem):
    async with github(fake, private_key_pem, Clock()) as session:
        await _create_deployment(session)


@pytest.mark.parametrize("drop", [False, True], ids=["502", "dropped"])
def test_a_creating_post_github_performed_is_found_not_sent_again(fake, private_key_pem, clock, creation, drop):
    kind, path, create = creation
    fake.fail_after_performing("POST", path, drop_connection=drop)
    answer = run(fake, private_key_pem, clock, create)
    [made] = _created(fake, kind)
    assert answer["id"] == made["id"]
    [post] = fake.calls_to("POST", path)
    assert post.status == (DROPPED if drop else 502)
    assert len(clock.slept) == 1


def test_a_creating_post_github_did_not_perform_is_sent_again(fake, private_key_pem, clock, creation):
    kind, path, create = creation
    fake.fail("POST", path, 502, times=2)
    answer = run(fake, private_key_pem, clock, create)
    [made] = _created(fake, kind)
    assert answer["id"] == made["id"]
    assert [c.status for c in fake.calls_to("POST", path)] == [502, 502, 201]


# -- reports and jobs ---------------------------------------------------------------------------


@pytest.fixture
def github_settings(tmp_path, redis_url, fake, private_key_pem):
    return load_settings({
        "APP_ID": str(APP_ID), "PRIVATE_KEY": private_key_pem, "WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": fake.url,
        "REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "previewbot.db"), "PREVIEW_SIMULATED_SECONDS": "0",
    })


def test_a_report_run_again_finds_what_the_first_run_created(fake, github_settings, redis_conn):
    """The first run created the check run, the GitHub deployment and the comment, and its
    worker died before it recorded their ids: the run after it creates none of them again."""
    reporter = GitHubReporter(github_settings, redis_conn)
    deployment = Deployment.new(repository=REPO, pr_number=1, branch_name="feat/login", head_sha=SHA1, installation_id=INSTALLATION)
    reporter.deploy_started(deployment)
    assert len(deployments(fake)) == 1
    redis_conn.delete(CHECK_RUNS, COMMENTS, GH_DEPLOYMENTS)

    reporter.deploy_finished(deployment.changed(status="deployed", preview_url="https://preview-1.app.example.com"))
    [github_deployment] = deployments(fake)
    assert [s["state"] for s in github_deployment["statuses"]] == ["in_progress", "success"]
    [run_] = check_runs(fake)
    assert run_["conclusion"] == "success"
    assert len(bot_comments(fake)) == 1


@pytest.fixture
def rq_worker(redis_conn, github_settings):
    """A real RQ worker in this process (as `previewbot worker` runs jobs), with a GitHub App
    context; the signal handlers it installs are put back."""
    context.set_context(context.WorkerContext(github_settings, redis_conn, GitHubReporter(github_settings, redis_conn)))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield SimpleWorker([get_queue(redis_conn)], connection=redis_conn, serializer=JSONSerializer)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    context.set_context(None)


def test_a_webhook_job_gives_up_on_a_retry_after_beyond_its_timeout(fake, redis_conn, rq_worker):
    """Its deadline comes from the job's own timeout: GitHub asking to wait 30 s (which a retry
    may) when the job has 10 s ends the job at once, with a clear error, before RQ kills it."""
    fake.fail("GET", rf"/repos/{REPO}/collaborators/alice/permission", 429, times=10, headers={"Retry-After": "30"})
    seeded = fake.add_comment(REPO, 1, "/preview", user="alice")
    payload = webhooks.issue_comment(REPO, 1, body="/preview", user="alice", comment_id=seeded["id"], installation_id=INSTALLATION)
    job = get_queue(redis_conn).enqueue_call(
        "worker.github_events.handle_webhook", kwargs={"event": "issue_comment", "delivery_id": "d-1", "payload": payload}, timeout=10
    )
    rq_worker.work(burst=True, with_scheduler=False)
    assert job.get_status() == JobStatus.FAILED
    error = job.latest_result().exc_string
    assert "GitHubGaveUp" in error and "would pass the deadline" in error and "JobTimeoutException" not in error
    assert len(fake.calls_to("GET", rf"/repos/{REPO}/collaborators/alice/permission")) == 1


# -- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("path, drop", [
    (rf"/repos/{REPO}/issues/\d+/comments", False),
    (rf"/repos/{REPO}/issues/\d+/comments", True),
    (rf"/repos/{REPO}/check-runs", False),
    (rf"/repos/{REPO}/deployments", False),
    (rf"/repos/{REPO}/deployments/\d+/statuses", False),
], ids=["comment-502", "comment-dropped", "check-run-502", "deployment-502", "deployment-status-502"])
def test_a_deploy_whose_post_github_performed_but_failed_shows_everything_once(start_bot, fake, path, drop):
    fake.fail_after_performing("POST", path, drop_connection=drop)
    bot = start_bot()
    payload = comment(fake)
    send(bot, "issue_comment", payload)
    # The rocket is the last thing the deploy's final report does.
    fake.wait_for(lambda: "rocket" in fake.reactions.get(payload["comment"]["id"], []), timeout=30, message="the deploy reported")
    assert fake.calls_to("POST", path)[0].status == (DROPPED if drop else 502)
    assert deployed_on_github(fake) and len(check_runs(fake)) == 1
    [status_comment] = bot_comments(fake)
    assert "Deployed" in status_comment["body"]
    [github_deployment] = deployments(fake)
    assert [s["state"] for s in github_deployment["statuses"]] == ["in_progress", "success"]
