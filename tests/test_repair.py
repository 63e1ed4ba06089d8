"""The web process's repair of what a restarted, empty Redis forgot (real Redis and SQLite)."""

from bot import state
from bot.feed import LOST_IN_REDIS, record, repair_lost_deployments
from bot.model import Deployment, PreviewKey
from bot.store import Store


def deployment(id_, status, created, pr=2):
    return Deployment(id=id_, repository="octo/app", pr_number=pr, branch_name="feat", status=status, created_at=created, updated_at=created)


def _record_last(store, redis_conn):
    entry_id, fields = redis_conn.xrange(state.EVENTS_STREAM)[-1]
    record(store, entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})


def test_a_deploying_row_redis_forgot_is_failed_without_touching_the_newer_current(tmp_path, redis_conn):
    store = Store(str(tmp_path / "r.db"))
    store.migrate()
    store.record_deployment(deployment("old", "deploying", "2026-01-01T00:00:00.000Z"), None)
    # Redis restarted empty, then a newer deployment of the same pull request was published.
    state.publish(redis_conn, deployment("new", "deployed", "2026-01-01T00:01:00.000Z"), expect=state.ABSENT)
    _record_last(store, redis_conn)
    redis_conn.xgroup_create(state.EVENTS_STREAM, "recorders", id="$")  # everything recorded

    repaired = repair_lost_deployments(redis_conn, store)

    assert [d.id for d in repaired] == ["old"]
    assert state.current(redis_conn, PreviewKey("octo/app", 2)).id == "new"
    _record_last(store, redis_conn)
    assert store.get_deployment("old")["status"] == "failed"
    assert store.get_deployment("old")["error_message"] == LOST_IN_REDIS
    assert redis_conn.llen("rq:queue:previewbot") == 1  # a report job, for GitHub


def test_nothing_is_repaired_while_the_recorder_has_a_backlog(tmp_path, redis_conn):
    store = Store(str(tmp_path / "r.db"))
    store.migrate()
    store.record_deployment(deployment("old", "deploying", "2026-01-01T00:00:00.000Z"), None)
    redis_conn.xgroup_create(state.EVENTS_STREAM, "recorders", id="$", mkstream=True)
    state.publish(redis_conn, deployment("old", "deployed", "2026-01-01T00:00:05.000Z"), expect=state.ABSENT)  # not yet recorded
    assert repair_lost_deployments(redis_conn, store) == []


def test_a_repair_racing_a_workers_outcome_changes_nothing(tmp_path, redis_conn):
    store = Store(str(tmp_path / "r.db"))
    store.migrate()
    store.record_deployment(deployment("raced", "deploying", "2026-01-01T00:00:00.000Z"), None)
    redis_conn.xgroup_create(state.EVENTS_STREAM, "recorders", id="$", mkstream=True)
    # The worker's outcome reaches Redis after the repair's look at SQLite but before its write:
    # recorded and acknowledged, the repair sees a caught-up recorder and an inactive deployment.
    state.publish(redis_conn, deployment("raced", "deployed", "2026-01-01T00:00:05.000Z"), expect=state.ABSENT)
    redis_conn.xgroup_setid(state.EVENTS_STREAM, "recorders", id="$")
    assert repair_lost_deployments(redis_conn, store) == []
    assert state.record(redis_conn, "raced").status == "deployed"


def test_live_previews_redis_forgot_are_given_back(tmp_path, redis_conn):
    store = Store(str(tmp_path / "r.db"))
    store.migrate()
    store.record_deployment(deployment("live", "deployed", "2026-01-01T00:00:00.000Z", pr=5), None)
    repair_lost_deployments(redis_conn, store)
    assert state.current(redis_conn, PreviewKey("octo/app", 5)).id == "live"
    # A close finds it among the pull request's environments.
    assert list(state.environments_of(redis_conn, "octo/app", 5)) == ["preview"]
