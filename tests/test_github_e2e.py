"""previewbot as a GitHub App, end to end: real web and worker processes, real webhook
payloads, and a fake GitHub over HTTP that checks every request against GitHub's OpenAPI
description and authenticates like GitHub."""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot import state
from bot.model import PreviewKey

from . import webhooks
from .github_app import APP_ID, INSTALLATION, REPO, SECRET, SHA1, SHA2, SHA3
from .harness import wait_for

pytestmark = pytest.mark.slow

OTHER = "octo/docs"


def send(bot, event, payload, delivery_id=None, secret=SECRET):
    return webhooks.deliver(bot.url, event, payload, secret, delivery_id=delivery_id)


def comment(fake, body="/preview", user="alice", pr=1):
    """A comment as GitHub would deliver it: its id, time and the author's association with the
    repository (COLLABORATOR for people given write access) are the fake GitHub's."""
    seeded = fake.add_comment(REPO, pr, body, user=user)
    payload = webhooks.issue_comment(REPO, pr, body=body, user=user, comment_id=seeded["id"], installation_id=INSTALLATION,
                                     author_association=seeded["author_association"])
    payload["comment"]["created_at"] = payload["comment"]["updated_at"] = seeded["created_at"]
    return payload


def check_runs(fake, sha=SHA1):
    with fake.lock:
        return [dict(r) for r in fake.check_runs.values() if r["head_sha"] == sha and r["name"] == "Preview"]


def bot_comments(fake, pr=1):
    with fake.lock:
        return [dict(c) for c in fake.comments.get(REPO, {}).get(pr, []) if "previewbot:status" in (c.get("body") or "")]


def deployments(fake):
    with fake.lock:
        return [{**d, "statuses": list(d["statuses"])} for d in fake.deployments.values()]


def deployed_on_github(fake, sha=SHA1):
    runs = check_runs(fake, sha)
    return runs and runs[0]["status"] == "completed" and runs[0]["conclusion"] == "success"


def test_preview_comment_deploys_and_reports_everywhere(start_bot, fake):
    bot = start_bot()
    payload = comment(fake)
    response = send(bot, "issue_comment", payload)
    assert response.status_code == 202
    comment_id = payload["comment"]["id"]
    fake.wait_for(lambda: "eyes" in fake.reactions.get(comment_id, []), message="eyes reaction")
    fake.wait_for(lambda: deployed_on_github(fake), message="check run success")
    run = check_runs(fake)[0]
    assert [a["identifier"] for a in run["actions"]] == ["redeploy", "destroy"]
    assert "https://preview-1.app.example.com" in run["output"]["summary"]
    fake.wait_for(lambda: "rocket" in fake.reactions.get(comment_id, []), message="rocket reaction")
    [github_deployment] = deployments(fake)
    assert github_deployment["transient_environment"] is True and github_deployment["production_environment"] is False
    assert github_deployment["sha"] == SHA1
    assert [s["state"] for s in github_deployment["statuses"]] == ["in_progress", "success"]
    assert github_deployment["statuses"][-1]["environment_url"] == "https://preview-1.app.example.com"
    [status_comment] = bot_comments(fake)
    assert "Deployed" in status_comment["body"] and "https://preview-1.app.example.com" in status_comment["body"]
    assert "feat/login" in status_comment["body"] and SHA1[:12] in status_comment["body"]
    assert bot.wait_status(REPO, 1, "deployed")["headSha"] == SHA1
    # The receiver itself never called GitHub: every call came after the job was queued.
    assert fake.calls_to("POST", r"/app/installations/\d+/access_tokens")


def test_redeploy_edits_the_same_comment(start_bot, fake):
    bot = start_bot()
    send(bot, "issue_comment", comment(fake))
    fake.wait_for(lambda: deployed_on_github(fake))
    first = bot.wait_status(REPO, 1, "deployed")
    send(bot, "issue_comment", comment(fake, "/preview redeploy"))
    wait_for(lambda: bot.deployment(REPO, 1).json()["id"] != first["id"] and bot.deployment(REPO, 1).json()["status"] == "deployed")
    fake.wait_for(lambda: len([d for d in deployments(fake) if d["statuses"] and d["statuses"][-1]["state"] == "success"]) == 2)
    assert len(bot_comments(fake)) == 1
    assert len(fake.calls_to("PATCH", r"/repos/octo/app/issues/comments/\d+")) >= 2


def test_refused_commenter_gets_a_reply_and_nothing_deploys(start_bot, fake):
    bot = start_bot()
    payload = comment(fake, user="eve")
    send(bot, "issue_comment", payload)
    fake.wait_for(lambda: "confused" in fake.reactions.get(payload["comment"]["id"], []), message="confused reaction")
    fake.wait_for(lambda: bot_comments(fake), message="reply")
    assert "@eve" in bot_comments(fake)[0]["body"] and "write access" in bot_comments(fake)[0]["body"]
    assert deployments(fake) == [] and check_runs(fake) == []
    assert bot.deployment(REPO, 1).status_code == 404


def test_bot_and_edited_comments_and_plain_chatter_queue_nothing(start_bot, fake, redis_conn):
    bot = start_bot()
    bot_comment = webhooks.issue_comment(REPO, 1, body="/preview", user="previewbot[bot]", user_type="Bot", installation_id=INSTALLATION)
    edited = webhooks.issue_comment(REPO, 1, body="/preview", user="alice", action="edited", installation_id=INSTALLATION)
    chatter = webhooks.issue_comment(REPO, 1, body="looks good, deploy it later", user="alice", installation_id=INSTALLATION)
    for payload in (bot_comment, edited, chatter):
        response = send(bot, "issue_comment", payload)
        assert response.status_code == 200 and response.json()["status"] == "acknowledged"
    assert redis_conn.llen("rq:queue:previewbot") == 0
    # A comment that mentions the command without giving it is left to the handler, which
    # parses it, finds no command and calls nothing.
    mention = webhooks.issue_comment(REPO, 1, body="looks good, but `/preview` later", user="alice", installation_id=INSTALLATION)
    assert send(bot, "issue_comment", mention, delivery_id="mention").status_code == 202
    job = Job.fetch("webhook-mention", connection=redis_conn, serializer=JSONSerializer)
    wait_for(lambda: job.get_status() == JobStatus.FINISHED)
    assert not fake.calls_to("*", r".*")


def test_help_and_status_answer_in_the_bot_comment(start_bot, fake):
    bot = start_bot()
    send(bot, "issue_comment", comment(fake, "/preview frobnicate"))
    fake.wait_for(lambda: bot_comments(fake) and "/preview destroy" in bot_comments(fake)[0]["body"])
    assert "frobnicate" in bot_comments(fake)[0]["body"]
    assert deployments(fake) == []


def test_buttons_deploy_destroy_and_ignore_other_apps(start_bot, fake):
    bot = start_bot()
    send(bot, "pull_request", webhooks.pull_request("opened", REPO, 1, "feat/login", SHA1, installation_id=INSTALLATION))
    fake.wait_for(lambda: check_runs(fake), message="check run on open")
    idle = check_runs(fake)[0]
    assert idle["conclusion"] == "neutral" and [a["identifier"] for a in idle["actions"]] == ["deploy"]
    assert deployments(fake) == []  # nothing deploys until asked

    other_app = webhooks.check_run("requested_action", REPO, SHA1, idle["id"], app_id=999, identifier="deploy", pr_number=1, head_ref="feat/login", installation_id=INSTALLATION)
    assert send(bot, "check_run", other_app).json()["status"] == "acknowledged"

    click = webhooks.check_run("requested_action", REPO, SHA1, idle["id"], app_id=APP_ID, identifier="deploy", pr_number=1, head_ref="feat/login", installation_id=INSTALLATION)
    assert send(bot, "check_run", click).status_code == 202
    fake.wait_for(lambda: deployed_on_github(fake), message="deployed by button")
    assert bot.wait_status(REPO, 1, "deployed")["trigger"] == "button"

    destroy = webhooks.check_run("requested_action", REPO, SHA1, idle["id"], app_id=APP_ID, identifier="destroy", pr_number=1, head_ref="feat/login", sender="mona", installation_id=INSTALLATION)
    send(bot, "check_run", destroy)
    fake.wait_for(lambda: deployments(fake)[0]["statuses"][-1]["state"] == "inactive", message="inactive")
    fake.wait_for(lambda: check_runs(fake)[0]["conclusion"] == "neutral")
    wait_for(lambda: bot.deployment(REPO, 1).status_code == 404)


def test_failed_deploy_then_retry_button(start_bot, fake, tmp_path):
    marker = tmp_path / "attempted"
    script = tmp_path / "deploy.py"
    script.write_text(
        "import pathlib, sys\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n    m.write_text('1')\n    sys.stderr.write('image build failed\\n')\n    sys.exit(1)\n"
        "print('https://fixed.example.test')\n"
    )
    bot = start_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}"})
    send(bot, "issue_comment", comment(fake))
    fake.wait_for(lambda: check_runs(fake) and check_runs(fake)[0].get("conclusion") == "failure", message="failure")
    run = check_runs(fake)[0]
    assert "image build failed" in run["output"]["summary"]
    assert [a["identifier"] for a in run["actions"]] == ["retry"]
    fake.wait_for(lambda: deployments(fake)[0]["statuses"][-1]["state"] == "failure", message="deployment failure status")
    fake.wait_for(lambda: "Failed" in bot_comments(fake)[0]["body"] and "image build failed" in bot_comments(fake)[0]["body"])

    retry = webhooks.check_run("requested_action", REPO, SHA1, run["id"], app_id=APP_ID, identifier="retry", pr_number=1, head_ref="feat/login", installation_id=INSTALLATION)
    send(bot, "check_run", retry)
    fake.wait_for(lambda: deployed_on_github(fake), message="retry succeeded")
    assert bot.wait_status(REPO, 1, "deployed")["previewUrl"] == "https://fixed.example.test"


def test_push_redeploys_and_a_push_during_a_deploy_queues_one_follow_up(start_bot, fake, tmp_path):
    gate = tmp_path / "gate"
    runs = tmp_path / "runs.txt"
    script = tmp_path / "deploy.py"
    script.write_text(
        "import os, pathlib, time\n"
        f"pathlib.Path({str(runs)!r}).open('a').write(os.environ['PREVIEW_SHA'] + '\\n')\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\n"
        "print('https://p.example.test')\n"
    )
    bot = start_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}"}, workers=2)
    send(bot, "issue_comment", comment(fake))
    wait_for(lambda: runs.exists() and runs.read_text().split() == [SHA1], message="first deploy running")
    # Two pushes while the first deploy runs: one follow-up, at the newest commit.
    for sha in (SHA2, SHA3):
        fake.update_pull(REPO, 1, head_sha=sha)
        assert send(bot, "pull_request", webhooks.pull_request("synchronize", REPO, 1, "feat/login", sha, installation_id=INSTALLATION)).status_code == 202
    wait_for(lambda: bot_follow_up_queued(bot), message="follow-up queued")
    gate.write_text("go")
    deployed = wait_for(lambda: (d := bot.deployment(REPO, 1).json()).get("status") == "deployed" and d["headSha"] == SHA3 and d, message="redeployed at the newest commit")
    assert deployed["trigger"] == "push"
    assert runs.read_text().split() == [SHA1, SHA3]
    fake.wait_for(lambda: deployed_on_github(fake, SHA3), message="check run on the new head")


def bot_follow_up_queued(bot) -> bool:
    import redis

    conn = redis.Redis.from_url(bot.env["REDIS_URL"])
    return bool(conn.keys("previewbot:intents:*"))


def test_close_destroys_and_marks_inactive(start_bot, fake):
    bot = start_bot()
    send(bot, "issue_comment", comment(fake))
    fake.wait_for(lambda: deployed_on_github(fake))
    fake.update_pull(REPO, 1, state="closed")
    send(bot, "pull_request", webhooks.pull_request("closed", REPO, 1, "feat/login", SHA1, merged=True, installation_id=INSTALLATION))
    fake.wait_for(lambda: deployments(fake)[0]["statuses"][-1]["state"] == "inactive", message="inactive")
    fake.wait_for(lambda: "No preview running" in bot_comments(fake)[0]["body"], message="comment updated")
    wait_for(lambda: bot.deployment(REPO, 1).status_code == 404)
    latest = bot.store.latest_deployment(PreviewKey(REPO, 1))
    assert latest.status == "destroyed" and latest.destroyed_at
    assert bot.store.get_pull_request(REPO, 1)["state"] == "closed"


def test_redelivered_webhook_is_acknowledged_and_ignored(start_bot, fake):
    bot = start_bot()
    payload = comment(fake)
    first = send(bot, "issue_comment", payload, delivery_id="delivery-1")
    again = send(bot, "issue_comment", payload, delivery_id="delivery-1")
    assert first.status_code == 202 and again.status_code == 200 and "duplicate" in again.json()["status"]
    fake.wait_for(lambda: deployed_on_github(fake))
    assert len(deployments(fake)) == 1
    assert fake.reactions[payload["comment"]["id"]].count("eyes") == 1
    # The delivery is kept in SQLite's history once (written by the recorder).
    wait_for(lambda: bot.store.db["webhook_deliveries"].count == 1, message="the delivery recorded")
    assert bot.store.db.execute("SELECT id FROM webhook_deliveries").fetchall() == [("delivery-1",)]


def test_the_webhook_endpoint_speaks_http_like_a_server(start_bot, fake, redis_conn):
    """Through the real gunicorn: a chunked delivery is read to its end, other methods get 405
    with Allow, an oversize body 413 before it is read; the received time is the acceptance's."""
    import json
    from datetime import datetime, timedelta, timezone

    import httpx

    bot = start_bot()
    url = f"{bot.url}/api/github/webhooks"
    body = json.dumps(comment(fake)).encode()
    headers = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "chunked-1",
               "X-Hub-Signature-256": webhooks.sign(body, SECRET), "Content-Type": "application/json"}
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    chunked = httpx.post(url, content=iter([body[:100], body[100:]]), headers=headers)  # no Content-Length
    assert chunked.status_code == 202 and chunked.json() == {"status": "queued"}
    fake.wait_for(lambda: deployed_on_github(fake), message="the chunked command deployed")

    for method in ("GET", "PUT", "DELETE"):
        answer = httpx.request(method, url, headers=headers)
        assert answer.status_code == 405 and answer.headers["Allow"] == "POST" and answer.json()["error"]
    big = b"x" * (5 * 1024 * 1024 + 1)
    oversize = httpx.post(url, content=big, headers={**headers, "X-Hub-Signature-256": webhooks.sign(big, SECRET), "X-GitHub-Delivery": "big"})
    assert oversize.status_code == 413 and oversize.json() == {"error": "The request body is too large"}
    assert not redis_conn.exists("previewbot:delivery:big")
    assert httpx.get(f"{bot.url}/api/github/webhooks/", headers=headers).status_code == 404  # other paths go on to Flask

    wait_for(lambda: bot.store.db["webhook_deliveries"].count == 1, message="the delivery recorded")
    [(received_at,)] = bot.store.db.execute("SELECT received_at FROM webhook_deliveries").fetchall()
    assert received_at.endswith("Z") and before <= datetime.fromisoformat(received_at.replace("Z", "+00:00")) <= datetime.now(timezone.utc)


def test_a_command_whose_worker_dies_is_taken_up_by_another_within_seconds(make_bot, fake, private_key_pem):
    """RQ would retry the job only once its execution times out (minutes); the reconciler
    queues it again as soon as the dead worker's heartbeat key has expired."""
    import re
    import signal
    import threading

    asked, release = threading.Event(), threading.Event()
    handle = fake._handle

    def holding(request, raw_path):  # the first permission check hangs until the test says
        if re.search(r"/collaborators/alice/permission$", raw_path) and not release.is_set():
            asked.set()
            release.wait(30)
        return handle(request, raw_path)

    fake._handle = holding
    bot = make_bot({"APP_ID": str(APP_ID), "PRIVATE_KEY": private_key_pem, "WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": fake.url,
                    "PREVIEW_LEASE_SECONDS": "2", "PREVIEW_CANCEL_GRACE_SECONDS": "1", "PREVIEW_RECONCILE_SECONDS": "1"})
    bot.start_worker().start_web()
    victim = bot.workers[0]
    send(bot, "issue_comment", comment(fake))
    wait_for(asked.is_set, message="the command's job asking GitHub for the permission")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    release.set()
    bot.start_worker()
    fake.wait_for(lambda: deployed_on_github(fake), timeout=30, message="deployed after the new worker took the command")
    assert len(deployments(fake)) == 1
    assert "webhook" in bot.log_text() and "which died; queued it again" in bot.log_text()


def test_three_simultaneous_comments_deploy_once(start_bot, fake):
    bot = start_bot({"PREVIEW_SIMULATED_SECONDS": "1"}, workers=3)
    payloads = [comment(fake) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda p: send(bot, "issue_comment", p).status_code, payloads))
    assert codes == [202, 202, 202]
    fake.wait_for(lambda: deployed_on_github(fake), message="deployed")
    ids = [p["comment"]["id"] for p in payloads]
    # The two that lost the race are told so: a confused reaction and a note in the comment.
    fake.wait_for(lambda: sum("confused" in fake.reactions.get(i, []) for i in ids) == 2, message="two refusals")
    assert "already in progress" in bot_comments(fake)[0]["body"] or fake.calls_to("PATCH", r".*/issues/comments/\d+")
    assert len(deployments(fake)) == 1
    assert len(bot.store.deployment_history(PreviewKey(REPO, 1))[0]) == 1


def test_signature_ping_malformed_and_unhandled_events(start_bot, fake, redis_conn):
    bot = start_bot()
    payload = comment(fake)
    assert send(bot, "issue_comment", payload, secret="wrong").status_code == 401
    assert send(bot, "issue_comment", payload, secret=None).status_code == 401
    assert send(bot, "ping", webhooks.ping(app_id=APP_ID)).status_code == 200
    import httpx

    body = b"{not json"
    headers = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "bad-json", "X-Hub-Signature-256": webhooks.sign(body, SECRET), "Content-Type": "application/json"}
    assert httpx.post(f"{bot.url}/api/github/webhooks", content=body, headers=headers).status_code == 400
    empty = b"{}"
    headers.update({"X-Hub-Signature-256": webhooks.sign(empty, SECRET), "X-GitHub-Delivery": "empty"})
    assert httpx.post(f"{bot.url}/api/github/webhooks", content=empty, headers=headers).status_code == 400
    assert send(bot, "star", {"action": "created", "repository": {"full_name": REPO}}).status_code == 200
    assert redis_conn.llen("rq:queue:previewbot") == 0
    assert not fake.calls_to("*", r".*")


def test_rest_deploy_checks_the_head_branch_and_reports_on_github(start_bot, fake):
    bot = start_bot()
    send(bot, "installation", webhooks.installation("created", INSTALLATION, repos=[REPO]))
    wrong = bot.deploy(REPO, 1, "not-the-head")
    assert wrong.status_code == 422 and "head branch" in wrong.json()["error"]
    assert bot.deploy(REPO, 404, "feat/login").status_code == 422
    right = bot.deploy(REPO, 1, "feat/login")
    assert right.status_code == 202 and right.json()["headSha"] == SHA1
    fake.wait_for(lambda: deployed_on_github(fake), message="REST deploy reported on GitHub")
    fake.wait_for(lambda: bot_comments(fake) and "Deployed" in bot_comments(fake)[0]["body"])
    fake.wait_for(lambda: deployments(fake)[0]["statuses"][-1]["state"] == "success")


def test_github_errors_and_rate_limits_are_retried(start_bot, fake):
    bot = start_bot()
    fake.fail("POST", r"/repos/octo/app/check-runs", 502, times=2)
    fake.fail("POST", r"/repos/octo/app/deployments", 429, times=1, headers={"Retry-After": "1"})
    fake.fail("POST", r"/repos/octo/app/issues/\d+/comments", 403, times=1, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "0"})
    send(bot, "issue_comment", comment(fake))
    fake.wait_for(lambda: deployed_on_github(fake), timeout=30, message="deployed despite GitHub errors")
    assert len(fake.calls_to("POST", r"/repos/octo/app/check-runs")) == 3
    fake.wait_for(lambda: deployments(fake) and deployments(fake)[0]["statuses"][-1]["state"] == "success")


def test_github_outage_never_leaves_a_deployment_deploying(start_bot, fake, tmp_path):
    gate = tmp_path / "gate"
    script = tmp_path / "deploy.py"
    script.write_text(f"import pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)\nprint('https://during-outage.example.test')\n")
    bot = start_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {script}"})
    send(bot, "issue_comment", comment(fake))
    fake.wait_for(lambda: check_runs(fake) and check_runs(fake)[0]["status"] == "in_progress", message="deploy started")
    fake.down = True  # GitHub answers 503 to everything from now on
    gate.write_text("go")
    deployed = bot.wait_status(REPO, 1, "deployed", timeout=60)
    assert deployed["previewUrl"] == "https://during-outage.example.test"
    # A REST deploy cannot check the pull request while GitHub is down: a clear 502, nothing starts.
    response = bot.deploy(REPO, 1, "feat/login")
    assert response.status_code == 502 and "GitHub" in response.json()["error"]
    assert bot.deployment(REPO, 1).json()["id"] == deployed["id"]
    fake.down = False


def test_a_command_deploys_while_github_fails_every_write(start_bot, fake):
    """Reactions, the bot comment and the check run only inform people: a `/preview` that
    comes while GitHub answers 502 to every write (reads still work) deploys all the same."""
    bot = start_bot(workers=2)
    outage = [fake.fail(method, r"/repos/.+", 502, times=10**6) for method in ("POST", "PATCH")]
    payload = comment(fake)
    assert send(bot, "issue_comment", payload).status_code == 202
    deployed = bot.wait_status(REPO, 1, "deployed", timeout=45)
    assert (deployed["headSha"], deployed["trigger"], deployed["requestedBy"]) == (SHA1, "comment", "alice")
    assert fake.calls_to("POST", rf"/repos/octo/app/issues/comments/{payload['comment']['id']}/reactions")  # tried
    assert fake.reactions == {} and bot_comments(fake) == [] and deployments(fake) == []
    # The reaction is retried with backoff apart from the deploy (reactions are idempotent).
    wait_for(lambda: "could not react on GitHub: GitHub answered 502" in bot.log_text(), timeout=60, message="the reaction given up")

    with fake.lock:  # GitHub recovers: the next command is answered as usual
        for fault in outage:
            fault.remaining = 0
    status = comment(fake, "/preview status")
    send(bot, "issue_comment", status)
    fake.wait_for(lambda: "eyes" in fake.reactions.get(status["comment"]["id"], []), timeout=20, message="eyes reaction")
    fake.wait_for(lambda: bot_comments(fake) and "Deployed" in bot_comments(fake)[0]["body"], timeout=20, message="status comment")
    assert len(bot_comments(fake)) == 1


def uninstall(fake, installation_id=INSTALLATION):
    """What GitHub does on an uninstall: it forgets the installation and refuses its tokens,
    the one the bot holds too (the fake answers 401 to it, and 404 to a request for a new one)."""
    with fake.lock:
        del fake.installations[installation_id]
    fake.expire_tokens()


def test_uninstalling_the_app_destroys_its_previews_though_github_refuses_its_token(start_bot, fake):
    bot = start_bot()
    send(bot, "issue_comment", comment(fake))
    fake.wait_for(lambda: deployed_on_github(fake), message="deployed")
    live = bot.wait_status(REPO, 1, "deployed")
    uninstall(fake)
    token_requests = len(fake.calls_to("POST", rf"/app/installations/{INSTALLATION}/access_tokens"))

    assert send(bot, "installation", webhooks.installation("deleted", INSTALLATION, repos=[REPO])).status_code == 202
    wait_for(lambda: bot.deployment(REPO, 1).status_code == 404, message="destroyed")
    assert bot.deployment(REPO, 1).json()["status"] == "idle"
    record = wait_for(lambda: (d := bot.store.latest_deployment(PreviewKey(REPO, 1))).status == "destroyed" and d, message="recorded")
    assert record.id == live["id"] and record.destroyed_at
    # The destroy job's reports asked GitHub for a token, were refused, and ended there.
    fake.wait_for(lambda: [c for c in fake.calls_to("POST", rf"/app/installations/{INSTALLATION}/access_tokens")[token_requests:] if c.status == 404],
                  message="a refused token request")
    wait_for(lambda: "could not report deployment" in bot.log_text(), message="the refusal logged")


def test_removing_a_repository_from_the_app_destroys_only_its_previews(start_bot, fake, redis_conn):
    from rq.registry import StartedJobRegistry

    fake.add_repo(OTHER, INSTALLATION)
    fake.add_pull(OTHER, 1, "feat/docs", SHA2)
    fake.set_permission(OTHER, "alice", "write")
    bot = start_bot()
    send(bot, "issue_comment", comment(fake))
    seeded = fake.add_comment(OTHER, 1, "/preview", user="alice")
    send(bot, "issue_comment", webhooks.issue_comment(OTHER, 1, body="/preview", user="alice", comment_id=seeded["id"], installation_id=INSTALLATION))
    kept = bot.wait_status(REPO, 1, "deployed")
    removed = bot.wait_status(OTHER, 1, "deployed")

    delivery = webhooks.installation_repositories("removed", INSTALLATION, removed=[OTHER])
    assert send(bot, "installation_repositories", delivery).status_code == 202
    wait_for(lambda: bot.deployment(OTHER, 1).status_code == 404, message="the removed repository's preview destroyed")
    record = wait_for(lambda: (d := bot.store.latest_deployment(PreviewKey(OTHER, 1))).status == "destroyed" and d, message="recorded")
    assert record.id == removed["id"]
    started = StartedJobRegistry("previewbot", connection=redis_conn)
    wait_for(lambda: redis_conn.llen("rq:queue:previewbot") == 0 and started.count == 0, message="every job done")
    current = bot.deployment(REPO, 1).json()
    assert (current["id"], current["status"]) == (kept["id"], "deployed")


def test_fork_pull_requests_deploy_only_on_a_maintainers_command(start_bot, fake):
    fake.add_pull(REPO, 2, "main", SHA2, head_repo="eve/app")
    bot = start_bot({"PREVIEW_AUTO_DEPLOY": "true"})
    send(bot, "pull_request", webhooks.pull_request("opened", REPO, 2, "main", SHA2, head_repo="eve/app", user="eve", installation_id=INSTALLATION))
    fake.wait_for(lambda: check_runs(fake, SHA2), message="idle check run")
    assert check_runs(fake, SHA2)[0]["conclusion"] == "neutral" and deployments(fake) == []
    # GitHub dates comments to the second; the head must have been seen before the comment's second.
    [(_, seen_at)] = state.heads_seen(redis.Redis.from_url(bot.env["REDIS_URL"]), REPO, 2)
    wait_for(lambda: time.time() >= math.floor(seen_at) + 1, message="the next second")
    send(bot, "issue_comment", comment(fake, pr=2, user="mona"))
    deployed = bot.wait_status(REPO, 2, "deployed")
    assert deployed["headSha"] == SHA2 and deployed["headRepository"] == "eve/app"
    # A later push to the fork is not deployed without a new command.
    fake.update_pull(REPO, 2, head_sha=SHA3)
    send(bot, "pull_request", webhooks.pull_request("synchronize", REPO, 2, "main", SHA3, head_repo="eve/app", user="eve", installation_id=INSTALLATION))
    fake.wait_for(lambda: check_runs(fake, SHA3), message="idle check run on the fork's new head")
    assert bot.deployment(REPO, 2).json()["headSha"] == SHA2
    assert len(deployments(fake)) == 1


def test_auto_deploy_on_open_for_branches_of_the_repository(start_bot, fake):
    bot = start_bot({"PREVIEW_AUTO_DEPLOY": "true"})
    send(bot, "pull_request", webhooks.pull_request("opened", REPO, 1, "feat/login", SHA1, installation_id=INSTALLATION))
    assert bot.wait_status(REPO, 1, "deployed")["trigger"] == "auto"
    fake.wait_for(lambda: deployed_on_github(fake))


def test_reconcile_destroys_the_preview_of_a_pull_request_closed_without_a_webhook(start_bot, fake):
    bot = start_bot({"PREVIEW_RECONCILE_SECONDS": "1"})
    send(bot, "issue_comment", comment(fake))
    fake.wait_for(lambda: deployed_on_github(fake))
    fake.update_pull(REPO, 1, state="closed")  # the `closed` delivery never arrives
    # Looked at every ten periods (10 s here); it may have been looked at just before the close.
    fake.wait_for(lambda: deployments(fake)[0]["statuses"][-1]["state"] == "inactive", timeout=40, message="inactive")
    wait_for(lambda: bot.deployment(REPO, 1).status_code == 404, message="destroyed")
    events = bot.store.deployment_events(bot.store.latest_deployment(PreviewKey(REPO, 1)).id)
    assert any("reconcile: pull request closed" in (e["message"] or "") for e in events)


def named_check_run(fake, name, sha=SHA1):
    with fake.lock:
        runs = [dict(r) for r in fake.check_runs.values() if r["head_sha"] == sha and r["name"] == name]
    return runs[-1] if runs else None


def test_two_environments_on_every_github_surface(start_bot, fake):
    bot = start_bot({"PREVIEW_ENVIRONMENTS": "preview,staging"})
    send(bot, "pull_request", webhooks.pull_request("opened", REPO, 1, "feat/login", SHA1, installation_id=INSTALLATION))
    fake.wait_for(lambda: named_check_run(fake, "Preview") and named_check_run(fake, "Preview (staging)"), message="a check run per environment")
    assert named_check_run(fake, "Preview (staging)")["external_id"] == "1:staging"

    send(bot, "issue_comment", comment(fake, "/preview"))
    send(bot, "issue_comment", comment(fake, "/preview staging"))
    for environment in ("preview", "staging"):
        wait_for(lambda e=environment: bot.deployment(REPO, 1).status_code == 200 and _state(bot, e) == "deployed", message=f"{environment} deployed")
    fake.wait_for(lambda: all((named_check_run(fake, n) or {}).get("conclusion") == "success" for n in ("Preview", "Preview (staging)")))
    assert sorted(d["environment"] for d in deployments(fake)) == ["preview-pr-1", "staging-pr-1"]
    [status_comment] = bot_comments(fake)  # one comment, a section per environment
    fake.wait_for(lambda: bot_comments(fake)[0]["body"].count("🟢 Deployed") == 2, message="both sections deployed")
    assert "#### preview" in bot_comments(fake)[0]["body"] and "#### staging" in bot_comments(fake)[0]["body"]

    # The staging check run's Destroy button tears down staging only.
    staging_run = named_check_run(fake, "Preview (staging)")
    destroy = webhooks.check_run("requested_action", REPO, SHA1, staging_run["id"], app_id=APP_ID, identifier="destroy", name="Preview (staging)",
                                 external_id="1:staging", pr_number=1, head_ref="feat/login", installation_id=INSTALLATION)
    send(bot, "check_run", destroy)
    wait_for(lambda: _state(bot, "staging") == "idle", message="staging destroyed")
    by_environment = {d["environment"]: d for d in deployments(fake)}
    fake.wait_for(lambda: {d["environment"]: d for d in deployments(fake)}["staging-pr-1"]["statuses"][-1]["state"] == "inactive")
    assert by_environment["preview-pr-1"]["statuses"][-1]["state"] == "success"
    assert _state(bot, "preview") == "deployed"

    # Closing the pull request tears down every environment still live.
    fake.update_pull(REPO, 1, state="closed")
    send(bot, "pull_request", webhooks.pull_request("closed", REPO, 1, "feat/login", SHA1, installation_id=INSTALLATION))
    wait_for(lambda: _state(bot, "preview") == "idle", message="preview destroyed on close")
    assert len(bot_comments(fake)) == 1


def _state(bot, environment: str) -> str:
    with bot.client() as c:
        return c.get(f"/api/repos/{REPO}/pull-requests/1/deployment", params={"environment": environment}).json()["status"]


def test_a_push_after_destroy_never_replaces_the_teardown_and_cancel_stops_a_deploy(start_bot, fake, tmp_path):
    journal, hold = tmp_path / "journal", tmp_path / "hold"
    script = tmp_path / "provision.py"
    script.write_text(
        "import os, pathlib, time\n"
        f"open({str(journal)!r}, 'a').write(os.environ['PREVIEW_ACTION'] + ' ' + os.environ['PREVIEW_SHA'] + '\\n')\n"
        f"while os.environ['PREVIEW_ACTION'] == 'deploy' and pathlib.Path({str(hold)!r}).exists():\n"
        "    time.sleep(0.05)\n"
    )
    command = f"{sys.executable} {script}"
    hold.touch()
    # Two workers: a command is handled while the other worker provisions.
    bot = start_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": command, "PREVIEW_DESTROY_COMMAND": command,
                     "PREVIEW_CANCEL_GRACE_SECONDS": "2", "PREVIEW_LEASE_SECONDS": "10"}, workers=2)
    send(bot, "issue_comment", comment(fake, "/preview"))
    wait_for(lambda: journal.exists() and journal.read_text().startswith("deploy"), message="the deploy to run")
    # While it runs: a teardown is asked for, then a push arrives.
    send(bot, "issue_comment", comment(fake, "/preview destroy"))
    fake.update_pull(REPO, 1, head_sha=SHA2)
    send(bot, "pull_request", webhooks.pull_request("synchronize", REPO, 1, "feat/login", SHA2, installation_id=INSTALLATION))
    wait_for(lambda: _history(bot) == ["cancelled"], message="the deploy to end cancelled")
    wait_for(lambda: journal.read_text().splitlines() == [f"deploy {SHA1}", f"destroy {SHA1}"], message="the cancelled deploy's teardown")
    assert bot.deployment(REPO, 1).status_code == 404
    conn = redis.Redis.from_url(bot.env["REDIS_URL"])
    wait_for(lambda: not conn.keys("previewbot:lock:*") and not conn.keys("previewbot:intents:*"), message="the branch to be free")
    assert SHA2 not in journal.read_text()  # the push did not deploy over the teardown

    # /preview cancel stops a deploy in progress; its check run offered the Cancel button.
    send(bot, "issue_comment", comment(fake, "/preview"))
    fake.wait_for(lambda: (named_check_run(fake, "Preview", SHA2) or {}).get("status") == "in_progress", message="in progress")
    assert [a["identifier"] for a in named_check_run(fake, "Preview", SHA2)["actions"]] == ["cancel"]
    send(bot, "issue_comment", comment(fake, "/preview cancel"))
    wait_for(lambda: _history(bot)[:1] == ["cancelled"] and len(_history(bot)) == 2, message="the second deploy cancelled")
    fake.wait_for(lambda: named_check_run(fake, "Preview", SHA2)["conclusion"] == "neutral", message="the check run idle again")


def _history(bot) -> list[str]:
    with bot.client() as c:
        return [d["status"] for d in c.get(f"/api/repos/{REPO}/pull-requests/1/deployments").json()["deployments"]]
