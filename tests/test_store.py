"""The SQLite store: migrations keep the history, and the history pages (real SQLite files)."""

import sqlite_utils

from bot.model import Deployment, PreviewKey
from bot.store import Store, migrations


def old_row(id_, status, created, pr=1, destroyed=None):
    """A deployment row as the first schema kept it (status `idle` once torn down)."""
    return {
        "id": id_, "pr_id": pr, "branch_name": "feat", "status": status, "preview_url": None, "error_message": None,
        "created_at": created, "updated_at": created, "repository": "octo/app", "head_repository": "octo/app",
        "head_sha": None, "provisioner": "simulated", "trigger": "api", "requested_by": None, "installation_id": None,
        "destroyed_at": destroyed, "last_event_id": None,
    }


def test_migration_keeps_history_and_maps_old_statuses(tmp_path):
    path = str(tmp_path / "old.db")
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="m002_environments_and_record_statuses")
    db["deployments"].insert_all(
        [
            old_row("a", "deployed", "2026-01-01T00:00:00.000Z"),  # replaced by b
            old_row("b", "idle", "2026-01-01T00:01:00.000Z", destroyed="2026-01-01T00:02:00.000Z"),
            old_row("c", "deployed", "2026-01-01T00:03:00.000Z"),  # the live one
            old_row("d", "failed", "2026-01-01T00:00:00.000Z", pr=2),
            old_row("e", "deployed", "2026-01-01T00:00:00.000Z", pr=3),
        ]
    )
    db.conn.close()

    store = Store(path)
    store.migrate()

    statuses = {r["id"]: (r["status"], r["environment"]) for r in store.db["deployments"].rows}
    assert statuses == {
        "a": ("superseded", "preview"),
        "b": ("destroyed", "preview"),
        "c": ("deployed", "preview"),
        "d": ("failed", "preview"),
        "e": ("deployed", "preview"),
    }
    assert store.latest_deployment(PreviewKey("octo/app", 1)).id == "c"
    assert {d.id for d in store.live_deployments()} == {"c", "d", "e"}


def test_history_pages_follow_the_cursor_to_the_end(tmp_path):
    store = Store(str(tmp_path / "h.db"))
    store.migrate()
    key = PreviewKey("octo/app", 4)
    made = []
    for n in range(5):
        deployment = Deployment.new(repository=key.repository, pr_number=key.pr_number, branch_name="feat")
        # Two with the same creation time: the cursor must still neither skip nor repeat one.
        deployment = deployment.model_copy(update={"created_at": f"2026-01-01T00:00:0{min(n, 3)}.000Z"})
        store.record_deployment(deployment, None)
        made.append(deployment.id)
    store.record_deployment(Deployment.new(repository=key.repository, pr_number=key.pr_number, branch_name="feat", environment="staging"), None)

    seen, cursor = [], None
    while True:
        page, cursor = store.deployment_history(key, limit=2, before=cursor)
        seen += [d.id for d in page]
        if cursor is None:
            break
    assert seen == made[::-1]
    assert store.deployment_history(key, limit=2, before="no-such-id") == ([], None)


def test_the_current_deployment_is_the_one_events_name_not_the_newest(tmp_path):
    store = Store(str(tmp_path / "c.db"))
    store.migrate()
    key = PreviewKey("octo/app", 6)
    live = Deployment.new(repository=key.repository, pr_number=key.pr_number, branch_name="feat").changed(status="deployed")
    store.record_deployment(live, "1-0")
    # A redeploy starts, then is cancelled in the queue: Redis gives the environment back to `live`.
    redeploy = Deployment.new(repository=key.repository, pr_number=key.pr_number, branch_name="feat")
    store.record_deployment(redeploy, None)
    assert store.latest_deployment(key).id == redeploy.id
    store.record_deployment(redeploy.changed(status="cancelled"), "2-0", current=True)
    store.record_deployment(live, "3-0", message="given back", current=True)
    assert store.latest_deployment(key).id == live.id
    assert [d.id for d in store.live_deployments()] == [live.id]
    # An older event recorded late does not move it back.
    store.record_deployment(redeploy.changed(status="cancelled", error="late"), "2-5", current=True)
    assert store.latest_deployment(key).id == live.id
