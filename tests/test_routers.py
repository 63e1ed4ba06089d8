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

    assert gh.requests() == [("POST", reactions(555)), ("GET", permission("alice")), ("GET", PULL)]
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

    assert gh.writes("POST", reactions(555)) == [{"content": "eyes"}, {"content": "confused"}]
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

    assert gh.requests() == [("POST", reactions(555)), ("GET", permission("alice"))]  # a teardown needs no open pull request
    job = only_job(redis_conn, "worker.jobs.destroy_preview")
    assert job.kwargs["deployment"]["id"] == live.id and job.kwargs["reason"] == "destroyed by @alice"
    assert locks(redis_conn) == {lock_key(): job.kwargs["lock_id"]}


def test_preview_destroy_without_a_preview_says_none_is_running(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview destroy"))

    assert "> No preview is running in preview." in bot_comment(gh)
    assert jobs(redis_conn) == [] and locks(redis_conn) == {}


def test_preview_help_answers_in_the_bot_comment_without_a_permission_check(ctx, gh, redis_conn):
    deliver(ctx, gh, "issue_comment", comment("/preview help", user="rita"))

    assert gh.requests() == [("POST", reactions(555)), ("GETITER", COMMENTS_OF_PR), ("POST", COMMENTS_OF_PR)]
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

    assert gh.requests() == [("POST", reactions(555)), ("GETITER", COMMENTS_OF_PR), ("PATCH", f"/repos/{REPO}/issues/comments/12")]
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

    assert gh.requests() == [("GET", FIND_CHECK_RUN), ("POST", CHECK_RUNS_URL)]
    assert gh.calls[0].path == f"{FIND_CHECK_RUN}?check_name=Preview&app_id={APP_ID}"
    (created,) = gh.writes("POST", CHECK_RUNS_URL)
    assert (created["name"], created["head_sha"], created["external_id"]) == ("Preview", HEAD_SHA, "1:preview")
    assert (created["status"], created["conclusion"]) == ("completed", "neutral")
    assert [a["identifier"] for a in created["actions"]] == ["deploy"]
    assert redis_conn.hget(CHECK_RUNS, f"{REPO}@{HEAD_SHA}#preview") == b"9000"
    assert state.current(redis_conn, KEY) is None and jobs(redis_conn) == []


def test_opened_with_auto_deploy_queues_a_deploy_instead(make_ctx, gh, redis_conn):
    deliver(make_ctx(PREVIEW_AUTO_DEPLOY="true"), gh, "pull_request",
            webhooks.pull_request("opened", REPO, 1, head_ref="feature", head_sha=HEAD_SHA))

    assert gh.calls == []
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

    assert gh.requests() == [("POST", reactions(555)), ("GET", permission("alice")), ("GET", PULL)]
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

    assert gh.requests() == [("GET", FIND_CHECK_RUN), ("POST", CHECK_RUNS_URL)]
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
