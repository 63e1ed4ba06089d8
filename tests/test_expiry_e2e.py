"""Expiry and cost end to end: real web and worker processes, real TTLs of a few seconds, the
fake GitHub, the REST API and the WebSocket feed."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bot.embedded_redis import EmbeddedRedis, free_port
from bot.model import PreviewKey
from bot.times import parse_time

from . import webhooks
from .github_app import APP_ID, INSTALLATION, REPO, SHA1, SHA2
from .harness import FeedClient, wait_for
from .test_github_e2e import bot_comments, check_runs, comment, deployed_on_github, deployments, send

pytestmark = pytest.mark.slow


def expires_at(bot) -> datetime:
    return parse_time(bot.wait_status(REPO, 1, "deployed")["expiresAt"])


def click(fake, bot, identifier: str):
    run = check_runs(fake)[0]
    payload = webhooks.check_run("requested_action", REPO, SHA1, run["id"], app_id=APP_ID, identifier=identifier, pr_number=1,
                                 head_ref="feat/login", installation_id=INSTALLATION)
    return send(bot, "check_run", payload)


def test_a_preview_warns_is_extended_then_expires_and_says_so_everywhere(start_bot, fake):
    bot = start_bot({"PREVIEW_TTL": "8s", "PREVIEW_TTL_WARNING": "6s", "PREVIEW_HOURLY_COST": "0.36"})
    feed = FeedClient(bot.ws_url(repository=REPO)).ready()
    send(bot, "issue_comment", comment(fake))
    fake.wait_for(lambda: deployed_on_github(fake), message="deployed")
    first = expires_at(bot)

    # The warning: the PR comment says when, the check run offers Extend.
    fake.wait_for(lambda: "extend" in [a["identifier"] for a in check_runs(fake)[0]["actions"]], message="the Extend button")
    fake.wait_for(lambda: "expires" in bot_comments(fake)[0]["body"] and "/preview extend" in bot_comments(fake)[0]["body"], message="the warning")
    body = bot_comments(fake)[0]["body"]
    assert f"{first:%Y-%m-%d %H:%M} UTC" in body.replace("\\", "")
    assert "so far, $0.3600/h" in body.replace("\\", "")

    assert click(fake, bot, "extend").status_code == 202
    wait_for(lambda: expires_at(bot) > first, message="a later expiry")
    assert bot.deployment(REPO, 1).json()["cost"] >= 0

    # Then it expires: destroyed, outcome `expired`, on every surface.
    idle = feed.until(lambda m: m.get("status") == "idle", timeout=30)
    assert idle["outcome"] == "expired"
    wait_for(lambda: bot.deployment(REPO, 1).status_code == 404)
    record = bot.store.latest_deployment(PreviewKey(REPO, 1))
    assert record.status == "destroyed" and record.expired and record.destroyed_at
    with bot.client() as api:
        history = api.get(f"/api/repos/{REPO}/pull-requests/1/deployments").json()["deployments"]
    assert history[0]["expired"] is True and history[0]["status"] == "destroyed" and history[0]["cost"] > 0
    fake.wait_for(lambda: deployments(fake)[0]["statuses"][-1]["state"] == "inactive", message="GitHub deployment inactive")
    assert deployments(fake)[0]["statuses"][-1]["description"] == "Preview expired"
    # The warning and the Extend showed again on the check run and the comment only.
    assert [s["state"] for s in deployments(fake)[0]["statuses"]] == ["in_progress", "success", "inactive"]
    fake.wait_for(lambda: "expired" in check_runs(fake)[0]["output"]["summary"], message="check run says expired")
    assert [a["identifier"] for a in check_runs(fake)[0]["actions"]] == ["deploy"]
    fake.wait_for(lambda: "**Expired**" in bot_comments(fake)[0]["body"], message="comment says expired")
    feed.close()


def test_extend_over_rest_and_when_nothing_is_deployed(make_bot):
    bot = make_bot({"PREVIEW_TTL": "1h"}).start()
    with bot.client() as api:
        assert api.post("/api/repos/octo/app/pull-requests/3/deployment/extend").status_code == 409
        bot.deploy("octo/app", 3, "feat/x")
        before = parse_time(bot.wait_status("octo/app", 3, "deployed")["expiresAt"])
        answer = api.post("/api/repos/octo/app/pull-requests/3/deployment/extend")
        assert answer.status_code == 200 and parse_time(answer.json()["expiresAt"]) >= before
        assert bot.deployment("octo/app", 3).json()["expiresAt"] == answer.json()["expiresAt"]
        unknown = api.post("/api/repos/octo/app/pull-requests/3/deployment/extend?environment=nope")
        assert unknown.status_code == 409
        assert api.post("/api/repos/octo/app/pull-requests/3/deployment/extend?environment=BAD!").status_code == 400


def test_expiry_survives_a_restart_of_every_process(make_bot, tmp_path):
    port, data = free_port(), tmp_path / "redis"
    server = EmbeddedRedis(data, port=port, persist=True).start()
    try:
        bot = make_bot({"REDIS_URL": server.url, "PREVIEW_TTL": "4s"}).start()
        bot.deploy("octo/app", 5, "feat/y")
        ends = parse_time(bot.wait_status("octo/app", 5, "deployed")["expiresAt"])
        bot.stop()
        server.stop()
        wait_for(lambda: datetime.now(timezone.utc) > ends, timeout=10, message="the expiry to pass while everything is down")
        server = EmbeddedRedis(data, port=port, persist=True).start()
        bot.start()
        wait_for(lambda: bot.deployment("octo/app", 5).status_code == 404, timeout=30, message="the expired preview destroyed")
        record = bot.store.latest_deployment(PreviewKey("octo/app", 5))
        assert record.status == "destroyed" and record.expired
    finally:
        server.stop()


def test_the_budget_refuses_new_previews_over_rest_but_a_live_one_redeploys(make_bot):
    bot = make_bot({"PREVIEW_HOURLY_COST": "1000", "PREVIEW_MONTHLY_BUDGET": "0.01"}).start()
    assert bot.deploy("octo/app", 7, "feat/a").status_code == 202  # nothing spent yet
    bot.wait_status("octo/app", 7, "deployed")
    # $1000/h: the live preview spends the $0.01 budget in well under a second.
    wait_for(lambda: bot.deployment("octo/app", 7).json()["cost"] >= 0.01, message="the budget spent")
    refused = bot.deploy("octo/app", 8, "feat/b")
    assert refused.status_code == 403
    assert refused.json()["code"] == "budget_exceeded" and "budget" in refused.json()["error"]
    assert bot.store.latest_deployment(PreviewKey("octo/app", 8)) is None  # nothing started, nothing recorded
    assert bot.deploy("octo/docs", 8, "feat/b").status_code == 202  # another repository's month
    again = bot.deploy("octo/app", 7, "feat/a")  # a redeploy of the live preview goes on
    assert again.status_code == 202
    with bot.client() as api:
        report = api.get("/api/costs", params={"repository": "octo/app"}).json()
    [app] = report["repositories"]
    assert app["budget"] == 0.01 and app["total"] >= 0.01 and [p["prNumber"] for p in app["pullRequests"]] == [7]


def test_the_budget_refusal_is_answered_on_github(start_bot, fake):
    bot = start_bot({"PREVIEW_HOURLY_COST": "1000", "PREVIEW_MONTHLY_BUDGET": "0.01"})
    fake.add_pull(REPO, 2, "feat/other", SHA2)
    bot.deploy(REPO, 2, "feat/other")
    bot.wait_status(REPO, 2, "deployed")
    wait_for(lambda: bot.deployment(REPO, 2).json()["cost"] >= 0.01, message="the budget spent")
    payload = comment(fake)
    send(bot, "issue_comment", payload)
    fake.wait_for(lambda: "confused" in fake.reactions.get(payload["comment"]["id"], []), message="confused reaction")
    fake.wait_for(lambda: "budget" in bot_comments(fake)[0]["body"], message="the refusal in the comment")
    assert bot.deployment(REPO, 1).status_code == 404


def test_costs_answer_only_what_the_token_may_see_and_refuse_bad_months(make_bot):
    bot = make_bot({"PREVIEW_HOURLY_COST": "0.5"}).start()
    bot.deploy("octo/app", 1, "feat/a")
    bot.deploy("octo/docs", 1, "feat/a")
    bot.wait_status("octo/app", 1, "deployed")
    bot.wait_status("octo/docs", 1, "deployed")
    scoped = bot.store.create_token("docs-only", repositories=["octo/docs"])
    with bot.client(scoped) as api:
        assert [r["repository"] for r in api.get("/api/costs").json()["repositories"]] == ["octo/docs"]
        assert api.get("/api/costs", params={"repository": "octo/app"}).status_code == 403
    with bot.client() as api:
        month = datetime.now(timezone.utc).strftime("%Y-%m")
        report = api.get("/api/costs", params={"month": month}).json()
        assert report["month"] == month and {r["repository"] for r in report["repositories"]} == {"octo/app", "octo/docs"}
        assert api.get("/api/costs", params={"month": "2026-13"}).status_code == 400
        assert api.get("/api/costs", params={"month": "1999-01"}).json()["repositories"] == []
    with bot.client("not-a-token") as api:
        assert api.get("/api/costs").status_code == 401
