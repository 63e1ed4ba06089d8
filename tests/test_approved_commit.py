"""The heads previewbot saw of each pull request (a real Redis), and the pure rule that picks the
commit a command on a fork's pull request approves."""

from __future__ import annotations

import pytest

from bot import state
from bot.state import HeadSeen
from worker.on_comment import approved_head, asked_at

REPO = "octo/app"
A, B, C = "a" * 40, "b" * 40, "c" * 40


def seen(conn, pr: int = 1) -> list[tuple[str, float]]:
    return [tuple(h) for h in state.heads_seen(conn, REPO, pr)]


def test_only_changes_of_the_head_are_kept_each_from_when_it_was_first_seen(redis_conn):
    for sha, at in [(A, 10.0), (A, 11.5), (B, 20.25), (B, 30.0), (A, 40.0)]:
        state.record_head(redis_conn, REPO, 1, sha, at=at)
    assert seen(redis_conn) == [(A, 10.0), (B, 20.25), (A, 40.0)]
    assert seen(redis_conn, pr=2) == []


def test_a_head_learnt_of_late_moves_back_to_when_it_was_received(redis_conn):
    """A fetch at 30 saw B; the push's delivery, received at 20, is handled after it."""
    state.record_head(redis_conn, REPO, 1, A, at=10)
    state.record_head(redis_conn, REPO, 1, B, at=30)
    state.record_head(redis_conn, REPO, 1, B, at=20)
    assert seen(redis_conn) == [(A, 10.0), (B, 20.0)]
    state.record_head(redis_conn, REPO, 1, C, at=15)  # a delivery between the two
    assert seen(redis_conn) == [(A, 10.0), (C, 15.0), (B, 20.0)]


def test_the_heads_kept_are_bounded_and_expire(redis_conn):
    for i in range(state.HEADS_KEPT + 10):
        state.record_head(redis_conn, REPO, 1, f"{i:040x}", at=1000 + i)
    heads = state.heads_seen(redis_conn, REPO, 1)
    assert len(heads) == state.HEADS_KEPT
    assert heads[0] == HeadSeen(f"{10:040x}", 1010.0) and heads[-1].at == 1000 + state.HEADS_KEPT + 9
    (key,) = redis_conn.keys("previewbot:heads:*")
    assert key == f"previewbot:heads:{REPO}#1".encode()
    assert 0 < redis_conn.ttl(key) <= state.HEADS_SECONDS


def test_a_reply_to_someone_without_write_access_is_claimed_once_per_window(redis_conn):
    assert state.claim_reply(redis_conn, REPO, 1, seconds=60)
    assert not state.claim_reply(redis_conn, REPO, 1, seconds=60)
    assert state.claim_reply(redis_conn, REPO, 2, seconds=60)
    assert 0 < redis_conn.ttl(f"previewbot:outsider-reply:{REPO}#1") <= 60


@pytest.mark.parametrize("heads, approved", [
    ([(A, 10)], A),
    ([(A, 10), (B, 20)], B),
    ([(A, 10), (B, 70)], None),  # pushed after the comment
    ([(A, 10), (B, 70), (A, 80)], None),  # pushed after the comment, even back to A: ask again
    ([(A, 60)], None),  # seen only from the comment's second on: not before it
    ([], None),
])
def test_the_approved_head_is_the_last_seen_before_the_command_if_none_came_since(heads, approved):
    assert approved_head([HeadSeen(sha, at) for sha, at in heads], asked_at=60) == approved


@pytest.mark.parametrize("created_at, received_at, expected", [
    ("2024-05-01T12:00:00Z", 1_714_565_000.0, 1_714_564_800.0),
    ("2024-05-01T12:00:00", 1_714_565_000.0, 1_714_564_800.0),  # no zone: UTC, as GitHub means
    ("2024-05-01T12:00:00Z", 1_714_564_700.0, 1_714_564_700.0),  # ahead of its receipt: the receipt
    ("not a time", 1_714_565_000.0, 0.0),
    (None, 1_714_565_000.0, 0.0),
])
def test_a_command_is_dated_by_its_comment_never_later_than_its_receipt(created_at, received_at, expected):
    assert asked_at({"created_at": created_at}, received_at) == expected
