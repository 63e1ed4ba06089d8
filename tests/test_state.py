"""Branch locks and the current-state publication, against a real Redis."""

import json
import time

import pytest

from bot import state
from bot.model import Deployment, PreviewKey


def lock(conn, lease=60):
    return state.BranchLock(conn, state.branch_key("octo/app", None, "feat", "preview"), lease_seconds=lease)


def test_one_holder_at_a_time(redis_conn):
    first, second = lock(redis_conn), lock(redis_conn)
    assert first.acquire("a").taken
    result = second.acquire("b")
    assert not result.taken and result.holder == "a"


def test_lease_expires_when_not_renewed(redis_conn):
    held = lock(redis_conn, lease=0.2)
    assert held.acquire("a").taken
    ttl = redis_conn.pttl(held.lock_key)
    assert 0 < ttl <= 200
    deadline = time.monotonic() + 5
    while redis_conn.exists(held.lock_key) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock(redis_conn).acquire("b").taken


def test_only_the_holder_renews_and_releases(redis_conn):
    held = lock(redis_conn)
    held.acquire("a")
    assert not held.renew("b")
    assert held.release("b") is None and held.holder() == "a"
    assert held.renew("a")
    assert held.release("a") is None and held.holder() is None


def intent(action, pr=1, **fields):
    return {"action": action, "target": f"octo/app#{pr}:preview", "repository": "octo/app", "prNumber": pr, "environment": "preview", **fields}


def test_an_intent_is_handed_the_lock_atomically(redis_conn):
    held = lock(redis_conn)
    held.acquire("a")
    assert not held.acquire("b", intent=intent("deploy", headSha="1" * 40, trigger="push")).taken
    assert not held.acquire("c", intent=intent("deploy", headSha="2" * 40, trigger="push")).taken  # newest commit wins
    next_id, waiting = held.release("a")
    assert waiting["headSha"] == "2" * 40
    assert held.holder() == next_id
    assert held.waiting() == []


def test_the_lock_handed_to_an_intent_lasts_while_its_job_waits_in_the_queue(redis_conn):
    held = lock(redis_conn, lease=3)
    held.acquire("a")
    held.acquire("b", intent=intent("destroy"))
    next_id, _ = held.release("a", handover_ms=3_600_000)
    assert held.holder() == next_id and redis_conn.pttl(held.lock_key) > 3_000


def test_a_push_never_replaces_a_waiting_destroy(redis_conn):
    held = lock(redis_conn)
    held.acquire("a")
    held.acquire("b", intent=intent("destroy", reason="destroyed by @alice"))
    held.acquire("c", intent=intent("deploy", headSha="3" * 40, trigger="push"))
    assert [i["action"] for i in held.waiting()] == ["destroy"]
    # A deploy asked for by a command after the destroy waits behind it, in order.
    held.acquire("d", intent=intent("deploy", headSha="4" * 40, trigger="comment"))
    assert [i["action"] for i in held.waiting()] == ["destroy", "deploy"]


def test_a_destroy_drops_the_deploys_waiting_before_it(redis_conn):
    held = lock(redis_conn)
    held.acquire("a")
    held.acquire("b", intent=intent("deploy", headSha="1" * 40, trigger="push"))
    held.acquire("c", intent=intent("destroy"))
    held.acquire("d", intent=intent("destroy"))
    assert [i["action"] for i in held.waiting()] == ["destroy"]


def test_pull_requests_sharing_a_branch_keep_their_own_intents(redis_conn):
    held = lock(redis_conn)
    held.acquire("a")
    held.acquire("b", intent=intent("destroy", pr=1))
    held.acquire("c", intent=intent("deploy", pr=2, headSha="5" * 40, trigger="push"))
    assert [(i["prNumber"], i["action"]) for i in held.waiting()] == [(1, "destroy"), (2, "deploy")]
    first = held.release("a")
    assert first[1]["prNumber"] == 1
    second = held.release(first[0])
    assert second[1]["prNumber"] == 2 and held.holder() == second[0]


def test_renewing_reads_the_cancel_flag_in_the_same_call(redis_conn):
    held = lock(redis_conn)
    held.acquire("a")
    assert held.renew_and_check("a", "previewbot:cancel:a") == (True, None)
    redis_conn.set("previewbot:cancel:a", "cancelled by @alice")
    assert held.renew_and_check("a", "previewbot:cancel:a") == (True, "cancelled by @alice")
    assert held.renew_and_check("b", "previewbot:cancel:a") == (False, "cancelled by @alice")


def test_locks_are_per_head_repository(redis_conn):
    ours = state.BranchLock(redis_conn, state.branch_key("octo/app", "octo/app", "main", "preview"), lease_seconds=60)
    fork = state.BranchLock(redis_conn, state.branch_key("octo/app", "eve/app", "main", "preview"), lease_seconds=60)
    assert ours.acquire("a").taken and fork.acquire("b").taken


def test_publish_keeps_current_state_and_active_set_in_step(redis_conn):
    deployment = Deployment.new(id="d1", repository="octo/app", pr_number=3, branch_name="x")
    state.publish(redis_conn, deployment, expect=state.ABSENT, take_over=True)
    assert [d.id for d in state.active_deployments(redis_conn)] == ["d1"]
    state.publish(redis_conn, deployment.changed(status="deployed"), expect="deploying")
    assert state.active_deployments(redis_conn) == []
    assert state.current(redis_conn, PreviewKey("octo/app", 3)).status == "deployed"
    entries = redis_conn.xrange(state.EVENTS_STREAM)
    assert [json.loads(e[1][b"data"])["status"] for e in entries] == ["deploying", "deployed"]


def deployed(redis_conn, id_, branch="x", environment="preview"):
    new = Deployment.new(id=id_, repository="octo/app", pr_number=3, branch_name=branch, environment=environment)
    state.publish(redis_conn, new, expect=state.ABSENT, take_over=True)
    return state.publish(redis_conn, new.changed(status="deployed"), expect="deploying")


def test_a_change_applies_only_to_the_status_its_writer_saw(redis_conn):
    deployment = Deployment.new(id="d2", repository="octo/app", pr_number=3, branch_name="x")
    state.publish(redis_conn, deployment, expect=state.ABSENT, take_over=True)
    done = state.publish(redis_conn, deployment.changed(status="deployed"), expect="deploying")
    # The reconciler's snapshot said deploying; the deploy finished since: nothing changes.
    assert state.publish(redis_conn, deployment.changed(status="failed", error="Worker lost"), expect="deploying") is None
    assert state.record(redis_conn, "d2") == done and state.current(redis_conn, PreviewKey("octo/app", 3)) == done
    # A repair that saw no record in Redis changes nothing once a record is there.
    assert state.publish(redis_conn, deployment.changed(status="failed"), expect=state.ABSENT) is None
    assert [json.loads(e[1][b"data"])["status"] for e in redis_conn.xrange(state.EVENTS_STREAM)] == ["deploying", "deployed"]


def test_a_new_deployment_supersedes_the_live_one_when_its_job_starts(redis_conn):
    old = deployed(redis_conn, "old")
    new = state.publish(redis_conn, Deployment.new(id="new", repository="octo/app", pr_number=3, branch_name="y"), expect=state.ABSENT, take_over=True)
    assert new.replaces == "old" and state.record(redis_conn, "old").status == "deployed"
    state.supersede(redis_conn, new)
    statuses = [(json.loads(e[1][b"data"])["id"], json.loads(e[1][b"data"])["status"], e[1][b"current"]) for e in redis_conn.xrange(state.EVENTS_STREAM)]
    assert statuses[-2:] == [("new", "deploying", b"1"), ("old", "superseded", b"0")]
    # The old deploy's late outcome cannot change it again, nor make it current.
    assert state.publish(redis_conn, old.changed(status="failed"), expect="deployed") is None
    assert state.current(redis_conn, PreviewKey("octo/app", 3)).id == "new"


def test_a_deploy_cancelled_in_the_queue_gives_the_environment_back(redis_conn):
    old = deployed(redis_conn, "old")
    new = state.publish(redis_conn, Deployment.new(id="new", repository="octo/app", pr_number=3, branch_name="x"), expect=state.ABSENT, take_over=True)
    cancelled = state.publish(redis_conn, new.changed(status="cancelled"), expect="deploying")
    state.give_back(redis_conn, cancelled)
    assert state.current(redis_conn, PreviewKey("octo/app", 3)).id == old.id
    assert state.record(redis_conn, "old").status == "deployed"


def test_one_deploy_per_environment_at_a_time(redis_conn):
    first = Deployment.new(id="first", repository="octo/app", pr_number=3, branch_name="x")
    assert state.lock_for(redis_conn, first, lease_seconds=60).acquire("first").taken
    state.publish(redis_conn, first, expect=state.ABSENT, take_over=True)
    other_branch = Deployment.new(id="other", repository="octo/app", pr_number=3, branch_name="y")
    with pytest.raises(state.EnvironmentBusy) as busy:
        state.publish(redis_conn, other_branch, expect=state.ABSENT, take_over=True)
    assert busy.value.args[0] == "first"
    assert state.current(redis_conn, PreviewKey("octo/app", 3)).id == "first"
    assert state.record(redis_conn, "other") is None


def test_another_environment_is_left_alone(redis_conn):
    deployed(redis_conn, "a")
    state.publish(redis_conn, Deployment.new(id="b", repository="octo/app", pr_number=3, branch_name="x", environment="staging"), expect=state.ABSENT, take_over=True)
    assert state.current(redis_conn, PreviewKey("octo/app", 3)).status == "deployed"


def test_a_dead_deploy_holds_its_environment_no_longer_than_its_lease(redis_conn):
    dead = Deployment.new(id="dead", repository="octo/app", pr_number=4, branch_name="x")
    state.publish(redis_conn, dead, expect=state.ABSENT, take_over=True)  # its lock's lease ran out
    taken = state.publish(redis_conn, Deployment.new(id="next", repository="octo/app", pr_number=4, branch_name="y"), expect=state.ABSENT, take_over=True)
    assert taken.id == "next" and state.current(redis_conn, PreviewKey("octo/app", 4)).id == "next"


def test_a_job_finishing_hands_its_lock_to_the_waiting_destroy_for_as_long_as_it_may_queue(redis_conn, redis_url, tmp_path):
    from bot import previews
    from bot.config import load_settings

    settings = load_settings({"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "p.db"), "PREVIEW_LEASE_SECONDS": "3",
                              "PREVIEW_CANCEL_GRACE_SECONDS": "1"})
    deployment = Deployment.new(repository="octo/app", pr_number=5, branch_name="x")
    assert previews.request_deploy(redis_conn, settings, deployment).started
    state.publish(redis_conn, deployment.changed(status="deployed"), expect="deploying")
    assert previews.request_destroy(redis_conn, settings, deployment.key, reason="closed").queued
    lock = state.lock_for(redis_conn, deployment, lease_seconds=3)
    previews.release(redis_conn, settings, lock, deployment.id)
    assert lock.holder() not in (None, deployment.id)
    assert redis_conn.pttl(lock.lock_key) > 3_000  # the queued lease, not the 3 s running one
