"""Deploying only what a maintainer approved, end to end: the real web and worker processes, a
real Redis and the fake GitHub over HTTP. Only the approved commit deploys (a fork's head as of
the maintainer's comment, a check run's own commit, a REST deploy's `headSha` only if it is the
head), and a command from someone without write access costs GitHub little."""

from __future__ import annotations

import math
import time

import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot import state

from . import webhooks
from .github_app import APP_ID, INSTALLATION, REPO, SECRET, SHA1, SHA2, SHA3
from .harness import wait_for

pytestmark = pytest.mark.slow

FORK = "eve/app"


@pytest.fixture
def bot(make_bot, fake, private_key_pem):
    """previewbot as a GitHub App, its web process running; start its worker when needed."""
    bot = make_bot({"APP_ID": str(APP_ID), "PRIVATE_KEY": private_key_pem, "WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": fake.url})
    return bot.start_web()


def send(bot, event: str, payload: dict, delivery_id: str | None = None) -> str:
    """Deliver like GitHub; the delivery id."""
    delivery_id = delivery_id or f"d-{time.monotonic_ns()}"
    assert webhooks.deliver(bot.url, event, payload, SECRET, delivery_id=delivery_id).status_code == 202
    return delivery_id


def handled(redis_conn, delivery_id: str) -> None:
    """Wait until the worker has handled the delivery."""
    job = Job.fetch(f"webhook-{delivery_id}", connection=redis_conn, serializer=JSONSerializer)
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, message=f"delivery {delivery_id} handled")


def comment(fake, body: str = "/preview", user: str = "alice", pr: int = 1) -> dict:
    """A comment written now on GitHub, and its delivery, dated as GitHub dates it."""
    seeded = fake.add_comment(REPO, pr, body, user=user)
    payload = webhooks.issue_comment(REPO, pr, body=body, user=user, comment_id=seeded["id"], installation_id=INSTALLATION)
    payload["comment"]["created_at"] = payload["comment"]["updated_at"] = seeded["created_at"]
    return payload


def pull_event(action: str, pr: int, branch: str, sha: str, head_repo: str | None = None) -> dict:
    return webhooks.pull_request(action, REPO, pr, branch, sha, head_repo=head_repo, installation_id=INSTALLATION)


def check_run(fake, sha: str) -> dict | None:
    with fake.lock:
        runs = [dict(r) for r in fake.check_runs.values() if r["head_sha"] == sha and r["name"] == "Preview"]
    return runs[-1] if runs else None


def bot_comment(fake, pr: int = 1) -> str:
    with fake.lock:
        bodies = [c["body"] for c in fake.comments.get(REPO, {}).get(pr, []) if "previewbot:status" in (c.get("body") or "")]
    return bodies[-1] if bodies else ""


def github_deployments(fake) -> list:
    with fake.lock:
        return list(fake.deployments.values())


def after_the_second_of(at: float) -> None:
    """GitHub dates comments to the second: wait until a comment written now is dated after `at`."""
    wait_for(lambda: time.time() >= math.floor(at) + 1, timeout=3, message="the next second")


def calls(fake) -> list[tuple[str, str]]:
    with fake.lock:
        return [(c.method, c.path) for c in fake.calls]


def test_a_fork_that_pushes_between_the_maintainers_comment_and_its_job_gets_nothing_deployed(bot, fake, redis_conn):
    fake.add_pull(REPO, 2, "main", SHA2, head_repo=FORK, user="eve")
    bot.start_worker()
    handled(redis_conn, send(bot, "pull_request", pull_event("opened", 2, "main", SHA2, FORK)))
    [(_, seen_at)] = state.heads_seen(redis_conn, REPO, 2)
    bot.stop_workers()

    # mona looks at SHA2 and comments; eve pushes SHA3 before a worker takes the command.
    after_the_second_of(seen_at)
    command = comment(fake, user="mona", pr=2)
    send(bot, "issue_comment", command)
    fake.update_pull(REPO, 2, head_sha=SHA3)
    push = send(bot, "pull_request", pull_event("synchronize", 2, "main", SHA3, FORK))
    bot.start_worker()
    handled(redis_conn, push)

    fake.wait_for(lambda: "nothing was deployed" in bot_comment(fake, 2), message="the reply")
    assert f"@mona: nothing was deployed: the fork pushed after your comment. Look at its head `{SHA3[:12]}`" in bot_comment(fake, 2)
    # The eyes come from the acknowledger, beside the job: either may reach GitHub first.
    fake.wait_for(lambda: sorted(fake.reactions.get(command["comment"]["id"], [])) == ["confused", "eyes"], message="the confused reaction")
    assert github_deployments(fake) == [] and bot.deployment(REPO, 2).status_code == 404
    assert not redis_conn.keys("previewbot:lock:*")
    assert [a["identifier"] for a in check_run(fake, SHA3)["actions"]] == ["deploy"]  # the button the reply points to

    # A new command, now that SHA3 has been seen, deploys SHA3.
    after_the_second_of(state.heads_seen(redis_conn, REPO, 2)[-1].at)
    send(bot, "issue_comment", comment(fake, user="mona", pr=2))
    deployed = bot.wait_status(REPO, 2, "deployed")
    assert (deployed["headSha"], deployed["headRepository"]) == (SHA3, FORK)


def test_the_button_of_a_check_run_the_pull_request_moved_past_deploys_nothing(bot, fake, redis_conn):
    bot.start_worker()
    handled(redis_conn, send(bot, "pull_request", pull_event("opened", 1, "feat/login", SHA1)))
    old = check_run(fake, SHA1)
    fake.update_pull(REPO, 1, head_sha=SHA2)
    handled(redis_conn, send(bot, "pull_request", pull_event("synchronize", 1, "feat/login", SHA2)))

    click = webhooks.check_run("requested_action", REPO, SHA1, old["id"], app_id=APP_ID, identifier="deploy", pr_number=1,
                               head_ref="feat/login", installation_id=INSTALLATION)
    handled(redis_conn, send(bot, "check_run", click))
    assert f"@alice: that check run is out of date: it is on `{SHA1[:12]}`, and the head of this pull request is now `{SHA2[:12]}`" in bot_comment(fake)
    assert github_deployments(fake) == [] and bot.deployment(REPO, 1).status_code == 404

    current = check_run(fake, SHA2)
    click = webhooks.check_run("requested_action", REPO, SHA2, current["id"], app_id=APP_ID, identifier="deploy", pr_number=1,
                               head_ref="feat/login", installation_id=INSTALLATION)
    send(bot, "check_run", click)
    assert bot.wait_status(REPO, 1, "deployed")["headSha"] == SHA2


def test_a_rest_deploy_of_a_commit_that_is_not_the_head_is_refused_and_changes_nothing(bot, fake, redis_conn):
    stale = bot.deploy(REPO, 1, "feat/login", headSha=SHA2)
    assert stale.status_code == 422
    assert stale.json() == {"error": f"headSha {SHA2} is not the head commit of {REPO}#1 (it is {SHA1}); nothing was deployed"}
    assert bot.deployment(REPO, 1).status_code == 404 and bot.store.get_pull_request(REPO, 1) is None
    assert not redis_conn.keys("previewbot:lock:*") and not redis_conn.keys("previewbot:env:*") and not redis_conn.keys("rq:queue:*")
    assert [c for c in calls(fake) if c[0] != "GET" and not c[1].startswith("/app/")] == []

    right = bot.deploy(REPO, 1, "feat/login", headSha=SHA1)
    assert right.status_code == 202 and right.json()["headSha"] == SHA1


def test_a_command_from_someone_without_write_access_costs_a_reaction_a_permission_check_and_one_reply(bot, fake, redis_conn):
    bot.start_worker()
    command = comment(fake, "/preview", user="eve")
    handled(redis_conn, send(bot, "issue_comment", command))

    assert calls(fake) == [
        ("POST", f"/app/installations/{INSTALLATION}/access_tokens"),
        ("GET", f"/repos/{REPO}/collaborators/eve/permission"),
        ("POST", f"/repos/{REPO}/issues/comments/{command['comment']['id']}/reactions"),
        ("GET", f"/repos/{REPO}/issues/1/comments"),
        ("POST", f"/repos/{REPO}/issues/1/comments"),
    ]
    assert fake.reactions[command["comment"]["id"]] == ["confused"]
    assert "@eve: only people with write access to this repository can deploy previews." in bot_comment(fake)
    assert bot.deployment(REPO, 1).status_code == 404


def test_status_from_someone_without_write_access_is_answered_once_a_minute(bot, fake, redis_conn):
    bot.start_worker()
    first, second = comment(fake, "/preview status", user="eve"), comment(fake, "/preview status", user="eve")
    handled(redis_conn, send(bot, "issue_comment", first))
    handled(redis_conn, send(bot, "issue_comment", second))

    assert calls(fake) == [
        ("POST", f"/app/installations/{INSTALLATION}/access_tokens"),
        ("GET", f"/repos/{REPO}/collaborators/eve/permission"),
        ("POST", f"/repos/{REPO}/issues/comments/{first['comment']['id']}/reactions"),
        ("GET", f"/repos/{REPO}/issues/1/comments"),
        ("POST", f"/repos/{REPO}/issues/1/comments"),
        ("GET", f"/repos/{REPO}/collaborators/eve/permission"),
        ("POST", f"/repos/{REPO}/issues/comments/{second['comment']['id']}/reactions"),
    ]
    # Writers are answered every time.
    handled(redis_conn, send(bot, "issue_comment", comment(fake, "/preview status", user="alice")))
    assert calls(fake)[-1][0] == "PATCH"
