"""Cost per preview as pure functions of given times, and the monthly spend kept in Redis."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bot import costs, previews, state
from bot.config import load_settings
from bot.model import Deployment, PreviewKey


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def deployment(created: str, *, status: str = "deployed", ended: str | None = None, hourly: float | None = 0.5, repository="octo/app", pr=1, environment="preview") -> Deployment:
    d = Deployment.new(repository=repository, pr_number=pr, branch_name="feat", environment=environment)
    fields = {"created_at": created, "updated_at": ended or created, "status": status, "hourly_cost": hourly}
    if status == "destroyed":
        fields["destroyed_at"] = ended
    return Deployment.model_validate({**d.model_dump(), **fields})


def test_a_record_costs_its_hourly_cost_for_every_hour_until_it_ends_or_now():
    running = deployment("2026-12-02T10:00:00.000Z")
    assert costs.cost_of(running, now=at("2026-12-02T13:30:00")) == pytest.approx(1.75)
    ended = deployment("2026-12-02T10:00:00.000Z", status="destroyed", ended="2026-12-02T12:00:00.000Z")
    assert costs.cost_of(ended, now=at("2026-12-09T00:00:00")) == pytest.approx(1.0)  # now no longer counts
    superseded = deployment("2026-12-02T10:00:00.000Z", status="superseded", ended="2026-12-02T10:30:00.000Z")
    assert costs.cost_of(superseded, now=at("2026-12-03T00:00:00")) == pytest.approx(0.25)
    assert costs.cost_of(deployment("2026-12-02T10:00:00.000Z", hourly=None), now=at("2026-12-03T00:00:00")) is None


def test_a_record_is_split_at_month_ends_in_utc_across_a_year_end():
    spans = costs.split_by_month(1.0, at("2026-11-30T22:00:00"), at("2027-01-01T01:00:00"))
    assert spans == pytest.approx({"2026-11": 2.0, "2026-12": 31 * 24.0, "2027-01": 1.0})
    assert costs.split_by_month(1.0, at("2026-12-02T10:00:00"), at("2026-12-02T10:00:00")) == {}
    assert costs.split_by_month(None, at("2026-12-02T10:00:00"), at("2026-12-02T11:00:00")) == {}
    assert costs.month_bounds("2026-12") == (at("2026-12-01T00:00:00"), at("2027-01-01T00:00:00"))


def test_totals_per_repository_and_pull_request_count_only_the_month_asked_for():
    now = at("2026-12-15T00:00:00")
    records = [
        deployment("2026-11-30T23:00:00.000Z", status="destroyed", ended="2026-12-01T01:00:00.000Z", hourly=1.0, pr=1),
        deployment("2026-12-10T00:00:00.000Z", status="destroyed", ended="2026-12-10T02:00:00.000Z", hourly=0.25, pr=2),
        deployment("2026-12-14T00:00:00.000Z", hourly=0.1, pr=2),  # running: until now
        deployment("2026-12-14T00:00:00.000Z", hourly=1.0, repository="octo/docs", pr=7),
    ]
    report = costs.totals(records, month="2026-12", now=now)
    app = next(r for r in report["repositories"] if r["repository"] == "octo/app")
    assert app["pullRequests"] == [{"prNumber": 1, "total": 1.0}, {"prNumber": 2, "total": pytest.approx(0.5 + 2.4)}]
    assert report["total"] == pytest.approx(1.0 + 2.9 + 24.0)
    november = costs.totals(records, month="2026-11", now=now)
    assert november["repositories"] == [{"repository": "octo/app", "total": 1.0, "pullRequests": [{"prNumber": 1, "total": 1.0}]}]


def test_a_record_that_stops_costing_adds_its_cost_to_its_months_once(redis_conn):
    live = state.publish(redis_conn, deployment("2026-11-30T23:00:00.000Z", hourly=1.0), expect=state.ABSENT, take_over=True)
    ended = live.changed(status="destroyed", destroyed_at="2026-12-01T02:00:00.000Z")
    assert state.publish(redis_conn, ended, expect="deployed")
    # A destroyed record changed again (a teardown error cleared, a late writer) is not counted twice.
    state.publish(redis_conn, ended.changed(teardown_error=None), expect="destroyed")
    assert float(redis_conn.hget(costs.SPEND.format("2026-11"), "octo/app")) == pytest.approx(1.0)
    assert float(redis_conn.hget(costs.SPEND.format("2026-12"), "octo/app")) == pytest.approx(2.0)
    running = deployment("2026-12-02T00:00:00.000Z", hourly=0.5, pr=2)
    spent = costs.month_to_date(redis_conn, "octo/app", [running], now=at("2026-12-02T04:00:00"))
    assert spent == pytest.approx(2.0 + 2.0)


def test_the_budget_refuses_a_new_preview_and_lets_a_live_one_redeploy(redis_conn, tmp_path, redis_url):
    settings = load_settings({"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "db"), "PREVIEW_MONTHLY_BUDGET": "3"}, dotenv=None)
    now = at("2026-12-02T04:00:00")
    live = state.publish(redis_conn, deployment("2026-12-02T00:00:00.000Z", hourly=0.5, pr=1), expect=state.ABSENT, take_over=True)
    assert previews.budget_refusal(redis_conn, settings, PreviewKey("octo/app", 2), now=now) is None  # $2 of $3
    redis_conn.hincrbyfloat(costs.SPEND.format("2026-12"), "octo/app", 1.0)
    refusal = previews.budget_refusal(redis_conn, settings, PreviewKey("octo/app", 2), now=now)
    assert "budget" in refusal and "$3.00 of $3.00" in refusal
    assert previews.budget_refusal(redis_conn, settings, live.key, now=now) is None  # a redeploy of a live preview
    assert previews.budget_refusal(redis_conn, settings, PreviewKey("octo/docs", 2), now=now) is None  # another repository
    outcome = previews.request_deploy(redis_conn, settings, Deployment.new(repository="octo/app", pr_number=2, branch_name="b"), now=now)
    assert not outcome.started and outcome.refused == refusal
    assert state.current(redis_conn, PreviewKey("octo/app", 2)) is None  # nothing was started


def test_the_spend_comes_back_from_history_after_redis_lost_it(redis_conn):
    ended = {"2026-12": {"octo/app": 4.5}}
    assert costs.restore_spend(redis_conn, ended)
    assert not costs.restore_spend(redis_conn, {"2026-12": {"octo/app": 99.0}})  # once per Redis lifetime
    assert float(redis_conn.hget(costs.SPEND.format("2026-12"), "octo/app")) == 4.5
