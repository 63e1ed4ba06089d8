"""Expiry as pure functions of given times, and its schedule in Redis driven by a given clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot import expiry, previews, state
from bot.config import load_settings
from bot.model import Deployment, PreviewKey
from bot.times import timestamp
from worker.expiry import give_expiries, run_due

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def deployed(expires: datetime | None, *, ttl: float | None = None, pr: int = 1) -> Deployment:
    d = Deployment.new(repository="octo/app", pr_number=pr, branch_name="feat", installation_id=5, ttl_seconds=ttl)
    return d.changed(status="deployed", preview_url="https://p.example.com", expires_at=timestamp(expires) if expires else None)


@pytest.fixture
def ttl_settings(tmp_path, redis_url):
    return load_settings(
        {"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "db"), "PREVIEW_TTL": "3h", "PREVIEW_TTL_WARNING": "30m"}, dotenv=None
    )


def test_expiry_warning_and_time_left_are_functions_of_the_times_given():
    assert expiry.expires_at(3600, start=NOW) == "2026-12-02T13:00:00.000Z"
    assert expiry.expires_at(0, start=NOW) is None  # 0: never
    preview = deployed(NOW + timedelta(hours=2))
    assert not expiry.warning_due(preview, now=NOW, warning_seconds=3600)
    assert expiry.warning_due(preview, now=NOW + timedelta(hours=1), warning_seconds=3600)
    assert not expiry.warning_due(preview.changed(status="failed"), now=NOW + timedelta(hours=3), warning_seconds=3600)
    assert expiry.seconds_left(preview, now=NOW) == 7200
    assert expiry.seconds_left(preview, now=NOW + timedelta(hours=5)) == 0
    assert expiry.seconds_left(deployed(None), now=NOW) is None
    assert [expiry.describe_left(s) for s in (30, 45 * 60, 7140, 3 * 86400 + 3600)] == ["30 s", "45 min", "1 h 59 min", "3 d 1 h"]


def test_the_repository_ttl_overrides_the_operators(ttl_settings):
    assert expiry.ttl_for(deployed(None), ttl_settings) == 3 * 3600
    assert expiry.ttl_for(deployed(None, ttl=600), ttl_settings) == 600
    assert expiry.ttl_for(deployed(None, ttl=0), ttl_settings) == 0


def test_the_schedule_follows_the_records_and_claims_each_expiry_and_warning_once(redis_conn, ttl_settings):
    preview = state.publish(redis_conn, deployed(NOW + timedelta(hours=1)), expect=state.ABSENT, take_over=True)
    assert redis_conn.zscore(expiry.EXPIRIES, preview.id) == int((NOW + timedelta(hours=1)).timestamp() * 1000)

    assert run_due(redis_conn, ttl_settings, now=NOW) == ([], [])
    _, warned = run_due(redis_conn, ttl_settings, now=NOW + timedelta(minutes=31))
    assert [d.id for d in warned] == [preview.id]
    assert run_due(redis_conn, ttl_settings, now=NOW + timedelta(minutes=32)) == ([], [])  # warned once

    # Extend: the whole TTL again from now, and a warning again before the new end.
    extended = previews.request_extend(redis_conn, ttl_settings, preview.key, reason="extended by test", now=NOW + timedelta(minutes=40))
    assert extended.expires_at == timestamp(NOW + timedelta(minutes=40, hours=3))
    assert run_due(redis_conn, ttl_settings, now=NOW + timedelta(hours=1, minutes=1)) == ([], [])  # the old end passed: nothing
    _, warned = run_due(redis_conn, ttl_settings, now=NOW + timedelta(hours=3, minutes=11))
    assert [d.id for d in warned] == [preview.id]

    destroyed, _ = run_due(redis_conn, ttl_settings, now=NOW + timedelta(hours=3, minutes=41))
    assert [d.id for d in destroyed] == [preview.id]
    # Its teardown is under way: too late to extend it.
    assert previews.request_extend(redis_conn, ttl_settings, preview.key, reason="late", now=NOW + timedelta(hours=3, minutes=41)) is None
    assert run_due(redis_conn, ttl_settings, now=NOW + timedelta(hours=3, minutes=41, seconds=1)) == ([], [])  # claimed
    # The destroy was queued for a worker; the record ends `destroyed`, expired, and leaves the schedule.
    ended = state.publish(redis_conn, extended.changed(status="destroyed", expired=True), expect="deployed")
    assert ended.outcome == "expired" and ended.ws_message()["outcome"] == "expired"
    assert redis_conn.zcard(expiry.EXPIRIES) == 0 and redis_conn.zcard(expiry.EXPIRING) == 0


def test_a_destroy_that_never_ended_the_record_is_asked_for_again(redis_conn, ttl_settings):
    preview = state.publish(redis_conn, deployed(NOW), expect=state.ABSENT, take_over=True)
    assert [d.id for d in run_due(redis_conn, ttl_settings, now=NOW)[0]] == [preview.id]
    assert run_due(redis_conn, ttl_settings, now=NOW + timedelta(seconds=30))[0] == []
    assert [d.id for d in run_due(redis_conn, ttl_settings, now=NOW + timedelta(seconds=61))[0]] == [preview.id]


def test_extend_needs_a_deployed_preview(redis_conn, ttl_settings):
    assert previews.request_extend(redis_conn, ttl_settings, PreviewKey("octo/app", 9), reason="x", now=NOW) is None
    failed = state.publish(redis_conn, deployed(None).changed(status="failed", error="boom"), expect=state.ABSENT, take_over=True)
    assert previews.request_extend(redis_conn, ttl_settings, failed.key, reason="x", now=NOW) is None


def test_previews_live_before_expiry_existed_get_now_plus_ttl_never_an_instant_expiry(redis_conn, ttl_settings):
    old = state.publish(redis_conn, deployed(None), expect=state.ABSENT, take_over=True)
    forever = state.publish(redis_conn, deployed(None, ttl=0, pr=2), expect=state.ABSENT, take_over=True)
    assert [d.id for d in give_expiries(redis_conn, ttl_settings, now=NOW)] == [old.id]
    assert state.record(redis_conn, old.id).expires_at == timestamp(NOW + timedelta(hours=3))
    assert state.record(redis_conn, forever.id).expires_at is None
    assert run_due(redis_conn, ttl_settings, now=NOW) == ([], [])


def test_a_restored_preview_goes_back_on_the_schedule(redis_conn):
    preview = deployed(NOW + timedelta(hours=1))
    assert state.restore(redis_conn, preview)
    assert redis_conn.zscore(expiry.EXPIRIES, preview.id) is not None
