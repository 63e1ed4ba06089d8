"""The webhook routers in-process, as python/bedevere tests its own: real payloads dispatched to
`worker.github_events.router` with a `FakeGH` session instead of HTTP, the real reporter, the
real one door (`bot.previews`) and a real Redis. Jobs are queued, never run."""

from __future__ import annotations

import asyncio
import uuid

import gidgethub
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gidgethub import sansio
from rq.job import Job
from rq.serializers import JSONSerializer

from bot import state
from bot.config import load_settings
from bot.model import Deployment, PreviewKey
from bot.render import COMMENT_MARKER, HELP
from bot.webhooks import InvalidPayload, needs_work
from worker.context import WorkerContext
from worker.github_events import Handling, router
from worker.reporting import CHECK_RUNS, COMMENTS, GitHubReporter

from . import webhooks
from .fakesession import FakeGH, UnexpectedRequest, http_error

APP_ID = 4242
INSTALLATION = 1
REPO = "octo/app"
KEY = PreviewKey(REPO, 1)
OLD_SHA, HEAD_SHA, NEW_SHA = "1" * 40, "b" * 40, "c" * 40

PULL = f"/repos/{REPO}/pulls/1"
COMMENTS_OF_PR = f"/repos/{REPO}/issues/1/comments"
CHECK_RUNS_URL = f"/repos/{REPO}/check-runs"
FIND_CHECK_RUN = f"/repos/{REPO}/commits/{HEAD_SHA}/check-runs"
REPO_CONFIG = f"/repos/{REPO}/contents/.github/preview.yml"


def permission(login: str) -> str:
    return f"/repos/{REPO}/collaborators/{login}/permission"


def reactions(comment_id: int) -> str:
    return f"/repos/{REPO}/issues/comments/{comment_id}/reactions"


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


@pytest.fixture
def make_ctx(tmp_path, redis_url, redis_conn, private_key_pem):
    def make(**env) -> WorkerContext:
        settings = load_settings({
            "APP_ID": str(APP_ID), "PRIVATE_KEY": private_key_pem, "WEBHOOK_SECRET": "s3cret", "REDIS_URL": redis_url,
            "DATABASE_PATH": str(tmp_path / "previewbot.db"), "PREVIEW_SIMULATED_SECONDS": "0", **env,
        })
        assert settings.github_enabled
        return WorkerContext(settings, redis_conn, GitHubReporter(settings, redis_conn))

    return make


@pytest.fixture
def ctx(make_ctx) -> WorkerContext:
    return make_ctx()


def pull_answer(state: str = "open", head_repo: str = REPO) -> dict:
    """What `GET /repos/{repo}/pulls/1` answers: the real example's pull request."""
    action = "closed" if state == "closed" else "opened"
    return webhooks.pull_request(action, REPO, 1, head_ref="feature", head_sha=HEAD_SHA, head_repo=head_repo)["pull_request"]


@pytest.fixture
def gh():
    """GitHub as most tests find it: PR #1 open at HEAD_SHA, alice may write, no bot comment
    and no check run yet. Whatever else a handler asks for fails the test."""
    fake = FakeGH(installation_id=INSTALLATION)
    fake.answer("GET", PULL, pull_answer())
    fake.answer("GET", permission("alice"), {"permission": "write", "role_name": "write"})
    fake.answer("GET", permission("rita"), {"permission": "read", "role_name": "read"})
    fake.listing(COMMENTS_OF_PR, [])
    fake.answer("GET", FIND_CHECK_RUN, {"total_count": 0, "check_runs": []})
    yield fake
    assert not fake.unexpected, f"unexpected GitHub requests: {fake.unexpected}"


def deliver(ctx: WorkerContext, gh: FakeGH, event: str, payload: dict) -> None:
    event = sansio.Event(payload, event=event, delivery_id=str(uuid.uuid4()))
    asyncio.run(router.dispatch(event, Handling(ctx, gh)))


def comment(body: str = "/preview", user: str = "alice", comment_id: int = 555, **kw) -> dict:
    return webhooks.issue_comment(REPO, 1, body=body, user=user, comment_id=comment_id, installation_id=INSTALLATION, **kw)


def button(identifier: str, **kw) -> dict:
    kw.setdefault("app_id", APP_ID)
    kw.setdefault("pr_number", 1)
    return webhooks.check_run("requested_action", REPO, HEAD_SHA, identifier=identifier, head_ref="feature",
                              installation_id=INSTALLATION, **kw)


def seed(conn, *, status: str = "deployed", branch: str = "feature", head_repository: str | None = None, hold_lock: bool = False,
         repository: str = REPO, pr_number: int = 1, installation_id: int | None = INSTALLATION) -> Deployment:
    """A preview (of PR #1 unless told) already in Redis, as a finished (or, holding its lock, running) job left it."""
    deployment = Deployment.new(repository=repository, pr_number=pr_number, branch_name=branch, head_repository=head_repository or repository,
                                head_sha=OLD_SHA, installation_id=installation_id, provisioner="simulated")
    if status != "deploying":
        deployment = deployment.changed(status=status, preview_url="https://preview-1.app.example.com")
    state.publish(conn, deployment, expect=state.ABSENT, take_over=True)
    if hold_lock:
        assert state.lock_for(conn, deployment, lease_seconds=60).acquire(deployment.id).taken
    return deployment


def jobs(conn) -> list[Job]:
    """The jobs waiting on the previewbot queue, in order."""
    ids = [raw.decode() for raw in conn.lrange("rq:queue:previewbot", 0, -1)]
    return [Job.fetch(job_id, connection=conn, serializer=JSONSerializer) for job_id in ids]


def locks(conn) -> dict[str, str]:
    return {k.decode(): conn.get(k).decode() for k in conn.scan_iter("previewbot:lock:*")}


def lock_key(head_repository: str = REPO, branch: str = "feature") -> str:
    return f"previewbot:lock:{state.branch_key(REPO, head_repository, branch, 'preview')}"


def only_job(conn, func: str) -> Job:
    queued = jobs(conn)
    assert [j.func_name for j in queued] == [func]
    return queued[0]


def bot_comment(gh: FakeGH) -> str:
    (body,) = [d["body"] for d in gh.writes("POST", COMMENTS_OF_PR)]
    assert body.startswith(COMMENT_MARKER)
    return body


# -- /preview comments --------------------------------------------------------------------------


def test_preview_by_a_writer_queues_a_deploy_of_the_pull_requests_head(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview"))

    # Who asks is checked first, so a refusal costs one reaction, not two.
    assert gh.requests() == [("GET", permission("alice")), ("POST", reactions(555)), ("GET", PULL)]
    assert gh.writes("POST", reactions(555)) == [{"content": "eyes"}]
    current = state.current(redis_conn, KEY)
    assert (current.status, current.head_sha, current.branch_name) == ("deploying", HEAD_SHA, "feature")
    assert (current.trigger, current.requested_by, current.comment_id, current.installation_id) == ("comment", "alice", 555, INSTALLATION)
    job = only_job(redis_conn, "worker.jobs.deploy_preview")
    assert job.id == f"deploy-{current.id}"
    assert job.kwargs["deployment"]["headSha"] == HEAD_SHA and job.kwargs["lock_id"] == current.id
    assert locks(redis_conn) == {lock_key(): current.id}


def test_preview_by_a_reader_is_refused_and_starts_nothing(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview", user="rita"))

    assert gh.writes("POST", reactions(555)) == [{"content": "confused"}]
    assert ("GET", PULL) not in gh.requests()
    assert "@rita: only people with write access to this repository can deploy previews." in bot_comment(gh)
    assert state.current(redis_conn, KEY) is None
    assert jobs(redis_conn) == [] and locks(redis_conn) == {}


def test_preview_by_someone_who_is_no_collaborator_is_refused(ctx, gh, redis_conn):
    gh.answer("GET", permission("mallory"), http_error(404))
    deliver(ctx, gh, "issue_comment", comment("/preview", user="mallory"))

    assert "@mallory: only people with write access" in bot_comment(gh)
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == []


def test_preview_on_a_closed_pull_request_deploys_nothing(ctx, gh, redis_conn):
    gh.answer("GET", PULL, pull_answer("closed"))
    deliver(ctx, gh, "issue_comment", comment("/preview"))

    assert "This pull request is closed" in bot_comment(gh)
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == []


def test_preview_while_a_deploy_runs_is_not_started_twice(ctx, gh, redis_conn):
    running = seed(redis_conn, status="deploying", hold_lock=True)
    deliver(ctx, gh, "issue_comment", comment("/preview"))

    assert "already in progress" in bot_comment(gh)
    assert gh.writes("POST", reactions(555)) == [{"content": "eyes"}, {"content": "confused"}]
    assert state.current(redis_conn, KEY).id == running.id
    assert jobs(redis_conn) == [] and locks(redis_conn) == {lock_key(): running.id}


def test_preview_destroy_queues_a_destroy_of_the_live_preview(ctx, gh, redis_conn):
    live = seed(redis_conn)
    deliver(ctx, gh, "issue_comment", comment("/preview destroy"))

    assert gh.requests() == [("GET", permission("alice")), ("POST", reactions(555))]  # a teardown needs no open pull request
    job = only_job(redis_conn, "worker.jobs.destroy_preview")
    assert job.kwargs["deployment"]["id"] == live.id and job.kwargs["reason"] == "destroyed by @alice"
    assert locks(redis_conn) == {lock_key(): job.kwargs["lock_id"]}


def test_preview_destroy_without_a_preview_says_none_is_running(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview destroy"))

    assert "> No preview is running in preview." in bot_comment(gh)
    assert jobs(redis_conn) == [] and locks(redis_conn) == {}


def test_preview_extend_gives_the_live_preview_its_whole_ttl_and_shows_it_again(ctx, gh, redis_conn):
    live = seed(redis_conn)
    deliver(ctx, gh, "issue_comment", comment("/preview extend"))

    extended = state.current(redis_conn, live.key)
    assert extended.id == live.id and extended.status == "deployed" and extended.expires_at
    job = only_job(redis_conn, "worker.jobs.report_expiry")
    assert job.kwargs["deployment"]["expiresAt"] == extended.expires_at
    assert locks(redis_conn) == {}  # no provisioning: nothing takes the branch


def test_preview_extend_without_a_deployed_preview_says_so(ctx, gh, redis_conn):
    seed(redis_conn, status="failed")
    deliver(ctx, gh, "issue_comment", comment("/preview extend"))

    assert "so there is nothing to extend" in bot_comment(gh)
    assert jobs(redis_conn) == []


def test_extend_button_on_our_check_run_extends(ctx, gh, redis_conn):
    live = seed(redis_conn)
    deliver(ctx, gh, "check_run", button("extend"))

    assert gh.requests() == [("GET", permission("alice"))]
    assert state.current(redis_conn, live.key).expires_at
    assert only_job(redis_conn, "worker.jobs.report_expiry").kwargs["deployment"]["id"] == live.id


def test_preview_help_answers_a_reader_in_the_bot_comment(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview help", user="rita"))

    assert gh.requests() == [("GET", permission("rita")), ("POST", reactions(555)), ("GETITER", COMMENTS_OF_PR), ("POST", COMMENTS_OF_PR)]
    assert HELP in bot_comment(gh)
    assert redis_conn.hget(COMMENTS, f"{REPO}#1") == b"9001"  # the id FakeGH gave the new comment
    assert jobs(redis_conn) == []


def test_an_unknown_subcommand_gets_the_help_with_a_note(ctx, gh):
    deliver(ctx, gh, "issue_comment", comment("/preview frobnicate!"))

    body = bot_comment(gh)
    assert "is not a command I know" in body and "frobnicate" in body and HELP in body


def test_preview_status_edits_the_existing_bot_comment(ctx, gh, redis_conn):
    seed(redis_conn)
    gh.listing(COMMENTS_OF_PR, [{"id": 11, "body": "nice work"}, {"id": 12, "body": f"{COMMENT_MARKER}\nold"}])
    deliver(ctx, gh, "issue_comment", comment("/preview status", user="rita"))

    assert gh.requests() == [("GET", permission("rita")), ("POST", reactions(555)), ("GETITER", COMMENTS_OF_PR), ("PATCH", f"/repos/{REPO}/issues/comments/12")]
    (edit,) = gh.writes("PATCH", f"/repos/{REPO}/issues/comments/12")
    assert "🟢 Deployed" in edit["body"] and HELP not in edit["body"]
    assert jobs(redis_conn) == []


@pytest.mark.parametrize("body", [
    "Try `/preview` once CI passes.",
    "`/preview`",
    "```\n/preview\n```",
    "> /preview\n\nlike this?",
    "please /preview",
])
def test_a_comment_that_only_mentions_the_command_makes_no_github_call(ctx, gh, redis_conn, body):
    deliver(ctx, gh, "issue_comment", comment(body))
    assert gh.calls == [] and redis_conn.keys("*") == []


def test_comments_by_bots_are_ignored(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview", user="renovate[bot]", user_type="Bot"))
    assert gh.calls == [] and redis_conn.keys("*") == []


def test_edited_comments_are_ignored(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview", action="edited"))
    assert gh.calls == [] and redis_conn.keys("*") == []


def test_comments_on_plain_issues_are_ignored(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview", on_pull_request=False))
    assert gh.calls == [] and redis_conn.keys("*") == []


# -- check-run buttons --------------------------------------------------------------------------


def test_deploy_button_on_our_check_run_queues_a_deploy(ctx, gh, redis_conn):
    deliver(ctx, gh, "check_run", button("deploy"))

    assert gh.requests() == [("GET", permission("alice")), ("GET", PULL)]
    current = state.current(redis_conn, KEY)
    assert (current.status, current.head_sha, current.trigger, current.comment_id) == ("deploying", HEAD_SHA, "button", None)
    assert only_job(redis_conn, "worker.jobs.deploy_preview").id == f"deploy-{current.id}"


def test_destroy_button_on_our_check_run_queues_a_destroy(ctx, gh, redis_conn):
    live = seed(redis_conn)
    deliver(ctx, gh, "check_run", button("destroy"))

    assert gh.requests() == [("GET", permission("alice"))]
    assert only_job(redis_conn, "worker.jobs.destroy_preview").kwargs["deployment"]["id"] == live.id


@pytest.mark.parametrize("other", [{"app_id": 999}, {"name": "CI"}], ids=["another-app", "another-check-run"])
def test_a_button_on_a_check_run_that_is_not_ours_does_nothing(ctx, gh, redis_conn, other):
    seed(redis_conn)
    for identifier in ("deploy", "destroy"):
        deliver(ctx, gh, "check_run", button(identifier, **other))
    assert gh.calls == [] and jobs(redis_conn) == [] and locks(redis_conn) == {}


def test_a_button_clicked_by_a_reader_deploys_nothing(ctx, gh, redis_conn):
    deliver(ctx, gh, "check_run", button("deploy", sender="rita"))

    assert "@rita: only people with write access to this repository can deploy previews." in bot_comment(gh)
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == []


def test_a_button_on_a_fork_pull_requests_check_run_finds_it_by_external_id(ctx, gh, redis_conn):
    gh.answer("GET", PULL, pull_answer(head_repo="eve/app"))
    deliver(ctx, gh, "check_run", button("deploy", pr_number=None, external_id="1"))  # GitHub lists no PR for forks

    current = state.current(redis_conn, KEY)
    assert (current.head_repository, current.head_sha) == ("eve/app", HEAD_SHA)
    assert locks(redis_conn) == {lock_key("eve/app"): current.id}


def test_re_run_of_our_check_run_redeploys(ctx, gh, redis_conn):
    seed(redis_conn)
    deliver(ctx, gh, "check_run", webhooks.check_run("rerequested", REPO, HEAD_SHA, app_id=APP_ID, pr_number=1,
                                                     head_ref="feature", installation_id=INSTALLATION))
    current = state.current(redis_conn, KEY)
    assert (current.status, current.head_sha) == ("deploying", HEAD_SHA)
    only_job(redis_conn, "worker.jobs.deploy_preview")


# -- pull request life --------------------------------------------------------------------------


def test_opened_creates_the_preview_check_run_with_a_deploy_button_and_deploys_nothing(ctx, gh, redis_conn):
    deliver(ctx, gh, "pull_request", webhooks.pull_request("opened", REPO, 1, head_ref="feature", head_sha=HEAD_SHA))

    assert gh.requests() == [("GET", REPO_CONFIG), ("GET", FIND_CHECK_RUN), ("POST", CHECK_RUNS_URL)]
    assert gh.calls[0].path == f"{REPO_CONFIG}?ref={HEAD_SHA}"
    assert gh.calls[1].path == f"{FIND_CHECK_RUN}?check_name=Preview&app_id={APP_ID}"
    (created,) = gh.writes("POST", CHECK_RUNS_URL)
    assert (created["name"], created["head_sha"], created["external_id"]) == ("Preview", HEAD_SHA, "1:preview")
    assert (created["status"], created["conclusion"]) == ("completed", "neutral")
    assert [a["identifier"] for a in created["actions"]] == ["deploy"]
    assert redis_conn.hget(CHECK_RUNS, f"{REPO}@{HEAD_SHA}#preview") == b"9000"
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == []


def test_opened_with_auto_deploy_queues_a_deploy_instead(make_ctx, gh, redis_conn):
    deliver(make_ctx(PREVIEW_AUTO_DEPLOY="true"), gh, "pull_request",
            webhooks.pull_request("opened", REPO, 1, head_ref="feature", head_sha=HEAD_SHA))

    assert gh.requests() == [("GET", REPO_CONFIG)]
    assert state.current(redis_conn, KEY).trigger == "auto"
    only_job(redis_conn, "worker.jobs.deploy_preview")


def test_opened_from_a_fork_with_auto_deploy_only_creates_the_check_run(make_ctx, gh, redis_conn):
    deliver(make_ctx(PREVIEW_AUTO_DEPLOY="true"), gh, "pull_request",
            webhooks.pull_request("opened", REPO, 1, head_ref="feature", head_sha=HEAD_SHA, head_repo="eve/app"))

    assert gh.requests() == [("GET", FIND_CHECK_RUN), ("POST", CHECK_RUNS_URL)]
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == []


def test_synchronize_redeploys_a_live_preview_at_the_new_commit(ctx, gh, redis_conn):
    old = seed(redis_conn)
    deliver(ctx, gh, "pull_request", webhooks.pull_request("synchronize", REPO, 1, head_ref="feature", head_sha=NEW_SHA, sender="bob"))

    assert gh.calls == []
    current = state.current(redis_conn, KEY)
    assert current.id != old.id
    assert (current.status, current.head_sha, current.trigger, current.requested_by) == ("deploying", NEW_SHA, "push", "bob")
    assert only_job(redis_conn, "worker.jobs.deploy_preview").kwargs["deployment"]["headSha"] == NEW_SHA


def test_synchronize_during_a_deploy_queues_one_follow_up_at_the_new_commit(ctx, gh, redis_conn):
    running = seed(redis_conn, status="deploying", hold_lock=True)
    deliver(ctx, gh, "pull_request", webhooks.pull_request("synchronize", REPO, 1, head_ref="feature", head_sha=NEW_SHA))

    assert gh.calls == [] and jobs(redis_conn) == []
    assert state.current(redis_conn, KEY).id == running.id
    lock = state.lock_for(redis_conn, running, lease_seconds=60)
    assert lock.holder() == running.id
    assert [i["headSha"] for i in lock.waiting()] == [NEW_SHA]


def test_synchronize_from_a_fork_deploys_nothing_even_with_a_live_preview(ctx, gh, redis_conn):
    live = seed(redis_conn, head_repository="eve/app")
    gh.answer("GET", f"/repos/{REPO}/commits/{NEW_SHA}/check-runs", {"total_count": 0, "check_runs": []})
    deliver(ctx, gh, "pull_request", webhooks.pull_request("synchronize", REPO, 1, head_ref="feature", head_sha=NEW_SHA, head_repo="eve/app"))

    assert [m for m, _ in gh.requests()] == ["GET", "POST"]
    assert gh.writes("POST", CHECK_RUNS_URL)[0]["head_sha"] == NEW_SHA
    assert state.current(redis_conn, KEY).id == live.id
    assert jobs(redis_conn) == [] and locks(redis_conn) == {}


def test_synchronize_without_a_preview_updates_the_known_check_run(ctx, gh, redis_conn):
    redis_conn.hset(CHECK_RUNS, f"{REPO}@{NEW_SHA}#preview", "77")
    deliver(ctx, gh, "pull_request", webhooks.pull_request("synchronize", REPO, 1, head_ref="feature", head_sha=NEW_SHA))

    assert gh.requests() == [("PATCH", f"{CHECK_RUNS_URL}/77")]
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == []


@pytest.mark.parametrize("merged, reason", [(True, "pull request merged"), (False, "pull request closed")])
def test_closed_destroys_the_live_preview(ctx, gh, redis_conn, merged, reason):
    live = seed(redis_conn)
    deliver(ctx, gh, "pull_request", webhooks.pull_request("closed", REPO, 1, head_ref="feature", head_sha=HEAD_SHA, merged=merged))

    assert gh.calls == []
    job = only_job(redis_conn, "worker.jobs.destroy_preview")
    assert job.kwargs["deployment"]["id"] == live.id and job.kwargs["reason"] == reason


def test_closed_without_a_preview_does_nothing(ctx, gh, redis_conn):
    deliver(ctx, gh, "pull_request", webhooks.pull_request("closed", REPO, 1, head_ref="feature", head_sha=HEAD_SHA))
    assert gh.calls == [] and redis_conn.keys("*") == []


# -- GitHub failing its writes ------------------------------------------------------------------
# Reactions, the bot comment and the check run only inform people: a command goes on without
# them. What a command decides on (the permission, the pull request) fails the job, for RQ to retry.


def test_preview_deploys_while_github_fails_every_write(ctx, gh, redis_conn, caplog):
    gh.fail_writes(502)
    deliver(ctx, gh, "issue_comment", comment("/preview"))

    assert gh.requests() == [("GET", permission("alice")), ("POST", reactions(555)), ("GET", PULL)]
    current = state.current(redis_conn, KEY)
    assert (current.status, current.head_sha, current.comment_id) == ("deploying", HEAD_SHA, 555)
    assert only_job(redis_conn, "worker.jobs.deploy_preview").id == f"deploy-{current.id}"
    assert "GitHub answered 502" in caplog.text


@pytest.mark.parametrize("payload", [
    comment("/preview", user="rita"),
    comment("/preview help"),
    comment("/preview destroy"),
    button("deploy", sender="rita"),
], ids=["refused-comment", "help", "destroy-without-preview", "refused-button"])
def test_a_refusal_or_an_answer_that_github_cannot_show_ends_the_job_quietly(ctx, gh, redis_conn, payload):
    gh.fail_writes(502)
    deliver(ctx, gh, "check_run" if "check_run" in payload else "issue_comment", payload)

    assert gh.writes("POST", COMMENTS_OF_PR)  # tried, and failed
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == [] and locks(redis_conn) == {}


def test_preview_while_a_deploy_runs_is_refused_even_when_github_cannot_say_so(ctx, gh, redis_conn):
    running = seed(redis_conn, status="deploying", hold_lock=True)
    gh.fail_writes(502)
    deliver(ctx, gh, "issue_comment", comment("/preview"))

    assert gh.writes("POST", reactions(555)) == [{"content": "eyes"}, {"content": "confused"}]
    assert state.current(redis_conn, KEY).id == running.id and jobs(redis_conn) == []


def test_opened_while_github_fails_every_write_ends_quietly(ctx, gh, redis_conn):
    gh.fail_writes(502)
    deliver(ctx, gh, "pull_request", webhooks.pull_request("opened", REPO, 1, head_ref="feature", head_sha=HEAD_SHA))

    assert gh.requests() == [("GET", REPO_CONFIG), ("GET", FIND_CHECK_RUN), ("POST", CHECK_RUNS_URL)]
    assert redis_conn.hget(CHECK_RUNS, f"{REPO}@{HEAD_SHA}") is None


@pytest.mark.parametrize("decision", [permission("alice"), PULL], ids=["permission", "pull-request"])
def test_a_command_whose_decision_github_cannot_answer_fails_for_rq_to_retry(ctx, gh, redis_conn, decision):
    gh.answer("GET", decision, http_error(502))
    with pytest.raises(gidgethub.GitHubBroken):
        deliver(ctx, gh, "issue_comment", comment("/preview"))

    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == [] and locks(redis_conn) == {}


# -- uninstalling the App -----------------------------------------------------------------------
# GitHub refuses the installation's token once it is uninstalled, so these handlers never ask it.


def destroyed(conn) -> dict[str, str]:
    """deployment id -> reason, of the destroy jobs queued."""
    return {j.kwargs["deployment"]["id"]: j.kwargs["reason"] for j in jobs(conn) if j.func_name == "worker.jobs.destroy_preview"}


def test_uninstalling_destroys_every_preview_of_the_installation_without_asking_github(ctx, gh, redis_conn):
    first = seed(redis_conn)
    second = seed(redis_conn, pr_number=2, branch="other")
    failed = seed(redis_conn, repository="octo/site", status="failed")
    unrecorded = seed(redis_conn, repository="octo/docs", installation_id=None)  # listed in the delivery
    elsewhere = seed(redis_conn, repository="someone/else", installation_id=2)
    gone = seed(redis_conn, repository="octo/old", status="destroyed")
    deliver(ctx, gh, "installation", webhooks.installation("deleted", INSTALLATION, repos=[REPO, "octo/docs"]))

    assert gh.calls == []
    assert destroyed(redis_conn) == {d.id: "app uninstalled" for d in (first, second, failed, unrecorded)}
    assert elsewhere.id not in destroyed(redis_conn) and gone.id not in destroyed(redis_conn)


def test_uninstalling_without_a_repository_list_finds_the_previews_by_installation(ctx, gh, redis_conn):
    live = seed(redis_conn)
    payload = webhooks.installation("deleted", INSTALLATION)
    del payload["repositories"]
    deliver(ctx, gh, "installation", payload)

    assert gh.calls == [] and destroyed(redis_conn) == {live.id: "app uninstalled"}


def test_uninstalling_during_a_deploy_queues_the_destroy_behind_it(ctx, gh, redis_conn):
    running = seed(redis_conn, status="deploying", hold_lock=True)
    deliver(ctx, gh, "installation", webhooks.installation("deleted", INSTALLATION))

    assert jobs(redis_conn) == []
    [waiting] = state.lock_for(redis_conn, running, lease_seconds=60).waiting()
    assert (waiting["action"], waiting["reason"]) == ("destroy", "app uninstalled")


def test_removing_a_repository_from_the_installation_destroys_only_its_previews(ctx, gh, redis_conn):
    kept = seed(redis_conn)
    removed = [seed(redis_conn, repository="octo/site"), seed(redis_conn, repository="octo/site", pr_number=7, branch="b")]
    deliver(ctx, gh, "installation_repositories",
            webhooks.installation_repositories("removed", INSTALLATION, removed=["octo/site", "octo/empty"]))

    assert gh.calls == []
    assert destroyed(redis_conn) == {d.id: "app uninstalled" for d in removed}
    assert state.current(redis_conn, kept.key).status == "deployed" and kept.id not in destroyed(redis_conn)


def _installation_event(action: str, **changes) -> dict:
    payload = webhooks.installation(action, INSTALLATION)
    payload.update(changes)
    return payload


def _repositories_event(action: str, removed=("octo/site",), **changes) -> dict:
    payload = webhooks.installation_repositories(action, INSTALLATION, removed=removed)
    payload.update(changes)
    return payload


@pytest.mark.parametrize("event, payload, work", [
    pytest.param("installation", _installation_event("deleted"), True, id="deleted"),
    pytest.param("installation", _installation_event("created"), False, id="created"),
    pytest.param("installation", _installation_event("suspend"), False, id="suspend"),
    pytest.param("installation_repositories", _repositories_event("removed"), True, id="removed"),
    pytest.param("installation_repositories", _repositories_event("removed", removed=()), False, id="removed-none"),
    pytest.param("installation_repositories", _repositories_event("added", removed=()), False, id="added"),
])
def test_only_uninstalls_queue_work_among_installation_events(event, payload, work):
    assert needs_work(event, payload, app_id=str(APP_ID)) is work


@pytest.mark.parametrize("event, payload", [
    pytest.param("installation", _installation_event("deleted", installation={"id": "1"}), id="id-text"),
    pytest.param("installation", _installation_event("deleted", installation={"id": True}), id="id-bool"),
    pytest.param("installation", {"action": "deleted"}, id="no-installation"),
    pytest.param("installation", _installation_event("deleted", repositories="octo/app"), id="repositories-text"),
    pytest.param("installation", _installation_event("deleted", repositories=[{"full_name": 3}]), id="name-number"),
    pytest.param("installation_repositories", _repositories_event("removed", repositories_removed=None), id="removed-null"),
    pytest.param("installation_repositories", _repositories_event("removed", repositories_removed=[{"name": "site"}]), id="no-full-name"),
    pytest.param("installation_repositories", _repositories_event("removed", installation={"id": 2**64}), id="id-over-64-bits"),
])
def test_an_uninstall_that_lacks_what_its_handler_reads_is_refused(event, payload):
    with pytest.raises(InvalidPayload):
        needs_work(event, payload, app_id=str(APP_ID))


# -- the fake itself ----------------------------------------------------------------------------


def test_fake_gh_fails_loudly_on_a_request_no_test_expected():
    fake = FakeGH()

    async def ask():
        with pytest.raises(UnexpectedRequest):
            await fake.call("GET", "/repos/{+repository}/hooks", url_vars={"repository": REPO})
        with pytest.raises(UnexpectedRequest):
            await fake.call("DELETE", "/repos/{+repository}/issues/comments/{id}", url_vars={"repository": REPO, "id": 3})
        with pytest.raises(UnexpectedRequest):
            [item async for item in fake.getiter("/repos/{+repository}/pulls{?state}", {"repository": REPO, "state": "open"})]

    asyncio.run(ask())
    assert [c.path for c in fake.unexpected] == [f"/repos/{REPO}/hooks", f"/repos/{REPO}/issues/comments/3", f"/repos/{REPO}/pulls?state=open"]


# -- environments and cancel ----------------------------------------------------------------

TWO_ENVIRONMENTS = {"PREVIEW_ENVIRONMENTS": "preview,staging"}
STAGING = PreviewKey(REPO, 1, "staging")


def seed_in(conn, environment: str, *, status: str = "deployed", hold_lock: bool = False) -> Deployment:
    deployment = Deployment.new(repository=REPO, pr_number=1, environment=environment, branch_name="feature",
                                head_sha=OLD_SHA, installation_id=INSTALLATION, provisioner="simulated")
    if status != "deploying":
        deployment = deployment.changed(status=status, preview_url=f"https://{environment}-1.app.example.com")
    state.publish(conn, deployment, expect=state.ABSENT, take_over=True)
    if hold_lock:
        assert state.lock_for(conn, deployment, lease_seconds=60).acquire(deployment.id).taken
    return deployment


def test_preview_env_deploys_that_environment_only(make_ctx, gh, redis_conn):
    deliver(make_ctx(**TWO_ENVIRONMENTS), gh, "issue_comment", comment("/preview staging"))
    (job,) = jobs(redis_conn)
    assert job.kwargs["deployment"]["environment"] == "staging"
    assert state.current(redis_conn, STAGING).status == "deploying" and state.current(redis_conn, KEY) is None


def test_preview_to_an_environment_not_listed_deploys_nothing_and_says_which_are(make_ctx, gh, redis_conn):
    deliver(make_ctx(**TWO_ENVIRONMENTS), gh, "issue_comment", comment("/preview production"))
    body = bot_comment(gh)
    assert "`production` is not an environment of this installation: `preview`, `staging`" in body and HELP in body
    assert ("POST", reactions(555)) in gh.requests() and gh.writes("POST", reactions(555))[-1] == {"content": "confused"}
    assert jobs(redis_conn) == [] and locks(redis_conn) == {}


def test_preview_cancel_takes_the_queued_deploy_off_the_queue(make_ctx, gh, redis_conn):
    ctx = make_ctx(**TWO_ENVIRONMENTS)
    deliver(ctx, gh, "issue_comment", comment("/preview staging"))
    deliver(ctx, gh, "issue_comment", comment("/preview cancel staging", comment_id=556))
    assert state.current(redis_conn, STAGING).status == "cancelled"
    assert jobs(redis_conn) == [] and locks(redis_conn) == {}


def test_cancel_button_on_the_staging_check_run_cancels_staging(make_ctx, gh, redis_conn):
    ctx = make_ctx(**TWO_ENVIRONMENTS)
    running = seed_in(redis_conn, "staging", status="deploying", hold_lock=True)
    preview = seed_in(redis_conn, "preview")
    deliver(ctx, gh, "check_run", button("cancel", name="Preview (staging)", external_id="1:staging"))
    assert redis_conn.get(f"previewbot:cancel:{running.id}") == b"cancelled by @alice"
    assert state.current(redis_conn, KEY) == preview


def test_deploy_button_on_the_staging_check_run_deploys_staging(make_ctx, gh, redis_conn):
    deliver(make_ctx(**TWO_ENVIRONMENTS), gh, "check_run", button("deploy", name="Preview (staging)", external_id="1:staging"))
    (job,) = jobs(redis_conn)
    assert job.kwargs["deployment"]["environment"] == "staging"


def test_opened_creates_a_check_run_per_environment(make_ctx, gh, redis_conn):
    gh.answer("GET", FIND_CHECK_RUN, {"total_count": 0, "check_runs": []})
    deliver(make_ctx(**TWO_ENVIRONMENTS), gh, "pull_request", webhooks.pull_request("opened", REPO, 1, head_ref="feature", head_sha=HEAD_SHA, installation_id=INSTALLATION))
    created = gh.writes("POST", CHECK_RUNS_URL)
    assert [(c["name"], c["external_id"]) for c in created] == [("Preview", "1:preview"), ("Preview (staging)", "1:staging")]
    assert jobs(redis_conn) == []


def test_push_redeploys_and_close_destroys_every_live_environment(make_ctx, gh, redis_conn):
    ctx = make_ctx(**TWO_ENVIRONMENTS)
    preview, staging = seed_in(redis_conn, "preview"), seed_in(redis_conn, "staging")
    deliver(ctx, gh, "pull_request", webhooks.pull_request("synchronize", REPO, 1, head_ref="feature", head_sha=NEW_SHA, installation_id=INSTALLATION))
    assert sorted((j.kwargs["deployment"]["environment"], j.kwargs["deployment"]["headSha"]) for j in jobs(redis_conn)) == [("preview", NEW_SHA), ("staging", NEW_SHA)]
    deliver(ctx, gh, "pull_request", webhooks.pull_request("closed", REPO, 1, head_ref="feature", head_sha=NEW_SHA, installation_id=INSTALLATION))
    # The queued redeploys are cancelled (they built nothing), and the previews that still
    # run are torn down.
    destroys = [j for j in jobs(redis_conn) if j.func_name == "worker.jobs.destroy_preview"]
    assert sorted((j.kwargs["deployment"]["environment"], j.kwargs["deployment"]["id"]) for j in destroys) == sorted([("preview", preview.id), ("staging", staging.id)])
    assert [j for j in jobs(redis_conn) if j.func_name == "worker.jobs.deploy_preview"] == []


def test_the_comment_has_a_section_per_environment(make_ctx, gh, redis_conn):
    seed_in(redis_conn, "staging")
    deliver(make_ctx(**TWO_ENVIRONMENTS), gh, "issue_comment", comment("/preview status"))
    body = bot_comment(gh)
    assert body.index("#### preview") < body.index("No preview has been deployed here yet") < body.index("#### staging") < body.index("🟢 Deployed")


# -- the approved commit: what a maintainer saw is what deploys ---------------------------------
# A command on a fork's pull request deploys the head previewbot saw before the comment was
# written; a button deploys its check run's commit. Times count from T0; comments are written at
# T0 + 60 unless told.

FORK = "eve/app"
T0 = 1_700_000_000.0


def at(seconds: float) -> str:
    """GitHub's timestamp (whole seconds) of T0 + seconds."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(T0 + seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def deliver_at(ctx: WorkerContext, gh: FakeGH, event: str, payload: dict, *, received: float, now: float | None = None) -> None:
    """Deliver as the worker would a delivery received at T0 + `received`, its clock reading
    T0 + `now` (a second after receipt unless told)."""
    clock_at = T0 + (received + 1 if now is None else now)
    handling = Handling(ctx, gh, received_at=T0 + received, clock=lambda: clock_at)
    asyncio.run(router.dispatch(sansio.Event(payload, event=event, delivery_id=str(uuid.uuid4())), handling))


def written_at(payload: dict, seconds: float = 60) -> dict:
    payload["comment"]["created_at"] = payload["comment"]["updated_at"] = at(seconds)
    return payload


def fork_pull(sha: str = HEAD_SHA) -> dict:
    pull = pull_answer(head_repo=FORK)
    pull["head"]["sha"] = sha
    return pull


def fork_event(action: str, sha: str) -> dict:
    return webhooks.pull_request(action, REPO, 1, head_ref="feature", head_sha=sha, head_repo=FORK, installation_id=INSTALLATION)


@pytest.fixture
def fork_gh(gh):
    """PR #1 comes from eve's fork; check runs of OLD_SHA and NEW_SHA can be looked up too."""
    gh.answer("GET", PULL, fork_pull())
    for sha in (OLD_SHA, NEW_SHA):
        gh.answer("GET", f"/repos/{REPO}/commits/{sha}/check-runs", {"total_count": 0, "check_runs": []})
    return gh


def refused(gh: FakeGH, redis_conn) -> str:
    """The note of a refused command, after checking that nothing was deployed."""
    assert gh.writes("POST", reactions(555)) == [{"content": "eyes"}, {"content": "confused"}]
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == [] and locks(redis_conn) == {}
    return bot_comment(gh)


def test_pull_request_deliveries_and_fetches_record_the_heads_seen_with_their_time(ctx, fork_gh, redis_conn):
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", HEAD_SHA), received=10)
    deliver_at(ctx, fork_gh, "pull_request", fork_event("synchronize", NEW_SHA), received=20)
    assert state.heads_seen(redis_conn, REPO, 1) == [(HEAD_SHA, T0 + 10), (NEW_SHA, T0 + 20)]
    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment()), received=61, now=70)  # fetches HEAD_SHA
    assert state.heads_seen(redis_conn, REPO, 1) == [(HEAD_SHA, T0 + 10), (NEW_SHA, T0 + 20), (HEAD_SHA, T0 + 70)]


def test_a_command_on_a_fork_deploys_the_head_seen_before_the_comment(ctx, fork_gh, redis_conn):
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", HEAD_SHA), received=10)
    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment()), received=61)

    current = state.current(redis_conn, KEY)
    assert (current.status, current.head_sha, current.head_repository) == ("deploying", HEAD_SHA, FORK)
    assert only_job(redis_conn, "worker.jobs.deploy_preview").kwargs["deployment"]["headSha"] == HEAD_SHA


def test_a_command_on_a_fork_that_pushed_after_the_comment_deploys_nothing(ctx, fork_gh, redis_conn):
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", HEAD_SHA), received=10)
    deliver_at(ctx, fork_gh, "pull_request", fork_event("synchronize", NEW_SHA), received=62)  # handled before the command
    fork_gh.answer("GET", PULL, fork_pull(NEW_SHA))
    fork_gh.calls.clear()
    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment()), received=61, now=63)

    note = refused(fork_gh, redis_conn)
    assert f"@alice: nothing was deployed: the fork pushed after your comment. Look at its head `{NEW_SHA[:12]}`" in note
    assert "comment `/preview` again, or use the button of the **Preview** check run" in note
    # The check run on the new head, which the synchronize created, is there to click.
    assert fork_gh.requests() == [
        ("GET", permission("alice")), ("POST", reactions(555)), ("GET", PULL), ("POST", reactions(555)),
        ("GETITER", COMMENTS_OF_PR), ("POST", COMMENTS_OF_PR), ("PATCH", f"{CHECK_RUNS_URL}/9001"),
    ]
    (patched,) = fork_gh.writes("PATCH", f"{CHECK_RUNS_URL}/9001")
    assert [a["identifier"] for a in patched["actions"]] == ["deploy"]


def test_a_command_on_a_fork_whose_head_moved_before_previewbot_heard_of_it_deploys_nothing(ctx, fork_gh, redis_conn):
    """The push's delivery is still on its way (a command's job runs first): the head fetched
    is not the one seen before the comment. The check run on it is created to be clicked."""
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", HEAD_SHA), received=10)
    fork_gh.answer("GET", PULL, fork_pull(NEW_SHA))
    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment()), received=61)

    assert "the fork pushed after your comment" in refused(fork_gh, redis_conn)
    (created,) = [c for c in fork_gh.writes("POST", CHECK_RUNS_URL) if c["head_sha"] == NEW_SHA]
    assert (created["name"], created["external_id"], created["conclusion"]) == ("Preview", "1:preview", "neutral")


def test_a_command_on_a_fork_that_pushed_and_pushed_back_after_the_comment_deploys_nothing(ctx, fork_gh, redis_conn):
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", HEAD_SHA), received=10)
    deliver_at(ctx, fork_gh, "pull_request", fork_event("synchronize", NEW_SHA), received=62)
    deliver_at(ctx, fork_gh, "pull_request", fork_event("synchronize", HEAD_SHA), received=63)
    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment()), received=61, now=64)

    assert "the fork pushed after your comment" in refused(fork_gh, redis_conn)


def test_a_push_received_before_the_comment_but_handled_after_it_is_the_approved_head(ctx, fork_gh, redis_conn):
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", HEAD_SHA), received=10)
    fork_gh.answer("GET", PULL, fork_pull(NEW_SHA))
    deliver_at(ctx, fork_gh, "pull_request", fork_event("synchronize", NEW_SHA), received=59, now=62)
    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment()), received=61, now=63)

    assert state.current(redis_conn, KEY).head_sha == NEW_SHA


def test_a_command_on_a_fork_whose_head_previewbot_never_saw_deploys_nothing_until_asked_again(ctx, fork_gh, redis_conn):
    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment()), received=61)  # fetched, and seen, at 62
    note = refused(fork_gh, redis_conn)
    assert "nothing was deployed: previewbot had seen no commit of this fork before your comment" in note

    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment(comment_id=556), 120), received=121)
    assert state.current(redis_conn, KEY).head_sha == HEAD_SHA


@pytest.mark.parametrize("created_at", ["", "yesterday", None], ids=["empty", "garbage", "missing"])
def test_a_command_on_a_fork_without_a_readable_time_deploys_nothing(ctx, fork_gh, redis_conn, created_at):
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", HEAD_SHA), received=10)
    payload = comment()
    if created_at is None:
        del payload["comment"]["created_at"]
    else:
        payload["comment"]["created_at"] = created_at
    deliver_at(ctx, fork_gh, "issue_comment", payload, received=61)
    refused(fork_gh, redis_conn)


def test_a_comment_time_ahead_of_its_receipt_counts_from_the_receipt(ctx, fork_gh, redis_conn):
    """GitHub's clock ahead of ours must not make a head seen after the command look approved."""
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", HEAD_SHA), received=10)
    fork_gh.answer("GET", PULL, fork_pull(NEW_SHA))
    deliver_at(ctx, fork_gh, "issue_comment", written_at(comment(), 90), received=61, now=62)  # NEW_SHA fetched at 62
    refused(fork_gh, redis_conn)


def test_a_command_on_a_branch_of_the_repository_deploys_its_head_when_the_job_runs(ctx, gh, redis_conn):
    """Only people with write access push to the repository's branches: no pinning there."""
    gh.answer("GET", f"/repos/{REPO}/commits/{OLD_SHA}/check-runs", {"total_count": 0, "check_runs": []})
    deliver_at(ctx, gh, "pull_request", webhooks.pull_request("opened", REPO, 1, head_ref="feature", head_sha=OLD_SHA), received=10)
    # pushed at HEAD_SHA after the comment; GitHub's answer has it
    deliver_at(ctx, gh, "issue_comment", written_at(comment()), received=61)
    assert state.current(redis_conn, KEY).head_sha == HEAD_SHA


def test_a_button_on_a_check_run_the_pull_request_moved_past_deploys_nothing(ctx, gh, redis_conn):
    deliver(ctx, gh, "check_run", webhooks.check_run("requested_action", REPO, OLD_SHA, identifier="deploy", head_ref="feature",
                                                     app_id=APP_ID, pr_number=1, installation_id=INSTALLATION))

    note = bot_comment(gh)
    assert f"@alice: that check run is out of date: it is on `{OLD_SHA[:12]}`, and the head of this pull request is now `{HEAD_SHA[:12]}`" in note
    assert "Nothing was deployed; use the **Preview** check run on" in note
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == [] and locks(redis_conn) == {}
    assert gh.requests() == [("GET", permission("alice")), ("GET", PULL), ("GETITER", COMMENTS_OF_PR), ("POST", COMMENTS_OF_PR),
                             ("GET", FIND_CHECK_RUN), ("POST", CHECK_RUNS_URL)]
    assert gh.writes("POST", CHECK_RUNS_URL)[0]["head_sha"] == HEAD_SHA


@pytest.mark.parametrize("action", ["requested_action", "rerequested"])
def test_a_button_on_a_fork_deploys_its_check_runs_commit_whatever_was_seen(ctx, fork_gh, redis_conn, action):
    deliver_at(ctx, fork_gh, "pull_request", fork_event("opened", OLD_SHA), received=10)
    payload = webhooks.check_run(action, REPO, HEAD_SHA, identifier="deploy" if action == "requested_action" else None, external_id="1:preview",
                                 app_id=APP_ID, installation_id=INSTALLATION)
    deliver_at(ctx, fork_gh, "check_run", payload, received=61)
    current = state.current(redis_conn, KEY)
    assert (current.head_sha, current.head_repository, current.trigger) == (HEAD_SHA, FORK, "button")


# -- cheap requests: outsiders cost little ------------------------------------------------------
# Who asks is checked first. Someone without write access costs one reaction, the permission
# check and at most one reply a minute per pull request; writers are answered every time.


def test_a_readers_command_costs_a_reaction_the_permission_check_and_one_reply(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview", user="rita"))

    assert gh.requests() == [("GET", permission("rita")), ("POST", reactions(555)), ("GETITER", COMMENTS_OF_PR), ("POST", COMMENTS_OF_PR)]
    assert gh.writes("POST", reactions(555)) == [{"content": "confused"}]
    assert "@rita: only people with write access to this repository can deploy previews." in bot_comment(gh)
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == [] and locks(redis_conn) == {}


@pytest.mark.parametrize("body", ["/preview status", "/preview help", "/preview frobnicate", "/preview", "/preview destroy"])
def test_readers_are_answered_at_most_once_a_minute_per_pull_request(ctx, gh, redis_conn, body):
    gh.answer("GET", permission("mallory"), http_error(404))
    deliver(ctx, gh, "issue_comment", comment(body, user="rita"))
    deliver(ctx, gh, "issue_comment", comment(body, user="rita", comment_id=556))
    deliver(ctx, gh, "issue_comment", comment("/preview help", user="mallory", comment_id=557))

    replies = gh.writes("POST", COMMENTS_OF_PR) + gh.writes("PATCH", f"/repos/{REPO}/issues/comments/9001")
    assert len(replies) == 1
    assert [r for r in gh.requests() if r[0] == "GET"] == [("GET", permission("rita"))] * 2 + [("GET", permission("mallory"))]
    assert 0 < redis_conn.ttl(f"previewbot:outsider-reply:{REPO}#1") <= 60
    assert jobs(redis_conn) == []


def test_readers_of_another_pull_request_get_their_own_answer(ctx, gh, redis_conn):
    gh.listing(f"/repos/{REPO}/issues/2/comments", [])
    deliver(ctx, gh, "issue_comment", comment("/preview status", user="rita"))
    deliver(ctx, gh, "issue_comment", webhooks.issue_comment(REPO, 2, body="/preview status", user="rita", comment_id=556, installation_id=INSTALLATION))
    assert len(gh.writes("POST", COMMENTS_OF_PR)) == 1 and len(gh.writes("POST", f"/repos/{REPO}/issues/2/comments")) == 1


def test_writers_are_answered_every_time_after_the_permission_check(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview status"))
    deliver(ctx, gh, "issue_comment", comment("/preview help", comment_id=556))

    assert gh.requests() == [
        ("GET", permission("alice")), ("POST", reactions(555)), ("GETITER", COMMENTS_OF_PR), ("POST", COMMENTS_OF_PR),
        ("GET", permission("alice")), ("POST", reactions(556)), ("PATCH", f"/repos/{REPO}/issues/comments/9001"),
    ]
    assert HELP in gh.writes("PATCH", f"/repos/{REPO}/issues/comments/9001")[0]["body"]


def test_a_readers_button_is_answered_at_most_once_a_minute_too(ctx, gh, redis_conn):
    deliver(ctx, gh, "check_run", button("deploy", sender="rita"))
    deliver(ctx, gh, "check_run", button("deploy", sender="rita"))
    assert gh.requests() == [("GET", permission("rita")), ("GETITER", COMMENTS_OF_PR), ("POST", COMMENTS_OF_PR), ("GET", permission("rita"))]
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == []
