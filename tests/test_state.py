"""Branch locks and the current-state publication, against a real Redis."""

import json
import time

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


def test_follow_up_is_handed_the_lock_atomically(redis_conn):
    held = lock(redis_conn)
    held.acquire("a")
    assert not held.acquire("b", follow_up={"action": "deploy", "headSha": "1" * 40}).taken
    assert not held.acquire("c", follow_up={"action": "deploy", "headSha": "2" * 40}).taken  # newest wins
    follow_id, follow = held.release("a")
    assert follow["headSha"] == "2" * 40
    assert held.holder() == follow_id
    assert held.pending_follow_up() is None


def test_locks_are_per_head_repository(redis_conn):
    ours = state.BranchLock(redis_conn, state.branch_key("octo/app", "octo/app", "main", "preview"), lease_seconds=60)
    fork = state.BranchLock(redis_conn, state.branch_key("octo/app", "eve/app", "main", "preview"), lease_seconds=60)
    assert ours.acquire("a").taken and fork.acquire("b").taken


def test_publish_keeps_current_state_and_active_set_in_step(redis_conn):
    deployment = Deployment.new(id="d1", repository="octo/app", pr_number=3, branch_name="x")
    state.publish(redis_conn, deployment, take_over=True)
    assert [d.id for d in state.active_deployments(redis_conn)] == ["d1"]
    state.publish(redis_conn, deployment.changed(status="deployed"))
    assert state.active_deployments(redis_conn) == []
    assert state.current(redis_conn, PreviewKey("octo/app", 3)).status == "deployed"
    entries = redis_conn.xrange(state.EVENTS_STREAM)
    assert [json.loads(e[1][b"data"])["status"] for e in entries] == ["deploying", "deployed"]


def test_a_new_deployment_supersedes_the_live_one_of_its_environment(redis_conn):
    old = state.publish(redis_conn, Deployment.new(id="old", repository="octo/app", pr_number=3, branch_name="x").changed(status="deployed"))
    state.publish(redis_conn, Deployment.new(id="new", repository="octo/app", pr_number=3, branch_name="x"), take_over=True)
    statuses = [(json.loads(e[1][b"data"])["id"], json.loads(e[1][b"data"])["status"], e[1][b"current"]) for e in redis_conn.xrange(state.EVENTS_STREAM)]
    assert statuses[-2:] == [("old", "superseded", b"0"), ("new", "deploying", b"1")]
    # The old deploy's late outcome cannot make it `deployed` again, nor current.
    late = state.publish(redis_conn, old.changed(status="deployed"))
    assert late.status == "superseded"
    assert state.current(redis_conn, PreviewKey("octo/app", 3)).id == "new"


def test_another_environment_is_left_alone(redis_conn):
    state.publish(redis_conn, Deployment.new(id="a", repository="octo/app", pr_number=3, branch_name="x").changed(status="deployed"))
    state.publish(redis_conn, Deployment.new(id="b", repository="octo/app", pr_number=3, branch_name="x", environment="staging"), take_over=True)
    assert state.current(redis_conn, PreviewKey("octo/app", 3)).status == "deployed"
