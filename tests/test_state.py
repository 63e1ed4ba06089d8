"""Branch locks and the current-state publication, against a real Redis."""

import json
import time

from worker import state


def lock(conn, lease=60):
    return state.BranchLock(conn, state.branch_key("octo/app", None, "feat"), lease_seconds=lease)


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
    ours = state.BranchLock(redis_conn, state.branch_key("octo/app", "octo/app", "main"), lease_seconds=60)
    fork = state.BranchLock(redis_conn, state.branch_key("octo/app", "eve/app", "main"), lease_seconds=60)
    assert ours.acquire("a").taken and fork.acquire("b").taken


def test_publish_keeps_current_state_and_active_set_in_step(redis_conn):
    deployment = {"id": "d1", "repository": "octo/app", "prNumber": 3, "branchName": "x", "status": "deploying"}
    first = state.publish(redis_conn, deployment)
    assert [d["id"] for d in state.active_deployments(redis_conn)] == ["d1"]
    second = state.publish(redis_conn, {**deployment, "status": "deployed", "updatedAt": None})
    assert state.active_deployments(redis_conn) == []
    assert state.current(redis_conn, "octo/app", 3)["status"] == "deployed"
    entries = redis_conn.xrange(state.EVENTS_STREAM)
    assert [e[0].decode() for e in entries] == [first, second]
    assert json.loads(entries[1][1][b"data"])["status"] == "deployed"
