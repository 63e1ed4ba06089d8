"""Members' commands acknowledged apart from the job queue (bot.acks, worker.acknowledger): the
claims on a real Redis, the thread's batches against the fake GitHub, and, end to end, an
`eyes` that does not wait for the one worker's long deploy."""

from __future__ import annotations

import pytest

from bot import acks
from bot.config import load_settings
from bot.queue import get_queue
from worker.acknowledger import BATCH, Acknowledger
from worker.context import WorkerContext
from worker.reporting import GitHubReporter

from . import webhooks
from .github_app import APP_ID, INSTALLATION, REPO, SECRET, SHA2
from .test_github_e2e import comment, send


def member_command(comment_id: int, repository: str = REPO) -> dict:
    return webhooks.issue_comment(repository, 1, body="/preview", user="alice", comment_id=comment_id,
                                  installation_id=INSTALLATION, author_association="COLLABORATOR")


def add(conn, *comment_ids: int, received_ms: int = 1_000) -> None:
    pipe = conn.pipeline()
    for comment_id in comment_ids:
        acks.add(pipe, member_command(comment_id), now_ms=received_ms)
    pipe.execute()


def test_comments_are_claimed_oldest_first_a_batch_at_a_time(redis_conn):
    add(redis_conn, *range(1, 8))
    first = acks.claim(redis_conn, now_ms=2_000, limit=3)
    assert [c.comment_id for c in first] == [1, 2, 3]
    assert [c.comment_id for c in acks.claim(redis_conn, now_ms=2_000, limit=3)] == [4, 5, 6]
    assert first[0].repository == REPO and first[0].installation_id == INSTALLATION and first[0].received_ms == 1_000


def test_a_claim_is_leased_and_taken_again_only_once_its_worker_is_gone(redis_conn):
    add(redis_conn, 1, 2)
    taken = acks.claim(redis_conn, now_ms=2_000, limit=10)
    assert acks.claim(redis_conn, now_ms=2_000 + acks.LEASE_MS - 1, limit=10) == []
    # Its worker died before `done`: the lease ends and another worker takes both.
    again = acks.claim(redis_conn, now_ms=2_000 + acks.LEASE_MS, limit=10)
    assert [c.comment_id for c in again] == [1, 2]
    acks.done(redis_conn, taken)
    assert acks.claim(redis_conn, now_ms=10**12, limit=10) == []
    assert not redis_conn.exists(acks.WAITING, acks.SENDING)


def test_an_entry_not_written_by_the_receiver_is_dropped_not_claimed_again_and_again(redis_conn):
    redis_conn.rpush(acks.WAITING, "not json", '{"repository": "octo/app"}')
    add(redis_conn, 1)
    assert [c.comment_id for c in acks.claim(redis_conn, now_ms=2_000, limit=10)] == [1]
    assert acks.claim(redis_conn, now_ms=2_000 + acks.LEASE_MS, limit=10)[0].comment_id == 1
    assert redis_conn.zcard(acks.SENDING) == 1


@pytest.mark.parametrize("payload, apart", [
    (member_command(1), True),
    ({**member_command(1), "action": "edited"}, False),
    ({**member_command(1), "comment": {**member_command(1)["comment"], "author_association": "CONTRIBUTOR"}}, False),
    ({**member_command(1), "comment": {**member_command(1)["comment"], "body": "thanks!"}}, False),
    ({key: value for key, value in member_command(1).items() if key != "installation"}, False),
])
def test_which_comments_are_acknowledged_apart(payload, apart):
    assert acks.acknowledged_apart("issue_comment", payload) is apart
    assert acks.acknowledged_apart("pull_request_review_comment", payload) is False


@pytest.fixture
def acknowledger(fake, redis_conn, redis_url, tmp_path, private_key_pem):
    settings = load_settings({
        "APP_ID": str(APP_ID), "PRIVATE_KEY": private_key_pem, "WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": fake.url,
        "REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "previewbot.db"),
    })
    now = [1_000]
    return Acknowledger(WorkerContext(settings, redis_conn, GitHubReporter(settings, redis_conn)), clock=lambda: now[0]), now


def test_a_burst_of_commands_is_acknowledged_in_batches_and_nothing_is_left(fake, redis_conn, acknowledger):
    thread, now = acknowledger
    acks_count = 2 * BATCH + 20
    ids = [fake.add_comment(REPO, 1, "/preview", user="alice")["id"] for _ in range(acks_count)]
    add(redis_conn, *ids, received_ms=now[0])
    assert thread.run_once() == acks_count
    assert all(fake.reactions.get(i) == ["eyes"] for i in ids)
    assert len(fake.calls_to("POST", rf"/repos/{REPO}/issues/comments/\d+/reactions")) == acks_count
    assert not redis_conn.exists(acks.WAITING, acks.SENDING)
    assert get_queue(redis_conn).count == 0  # no job was involved


def test_a_comment_waiting_too_long_is_given_up(fake, redis_conn, acknowledger):
    thread, now = acknowledger
    stale, fresh = (fake.add_comment(REPO, 1, "/preview", user="alice")["id"] for _ in range(2))
    add(redis_conn, stale, received_ms=now[0])
    now[0] += acks.GIVE_UP_MS + 1
    add(redis_conn, fresh, received_ms=now[0])
    assert thread.run_once() == 1
    assert stale not in fake.reactions and fake.reactions[fresh] == ["eyes"]
    assert not redis_conn.exists(acks.WAITING, acks.SENDING)


@pytest.mark.slow
def test_a_members_command_is_acknowledged_while_the_only_worker_is_deploying(start_bot, fake):
    """The `eyes` does not wait for a job: the one worker is busy with a minute-long deploy."""
    bot = start_bot({"PREVIEW_SIMULATED_SECONDS": "60"})
    fake.add_pull(REPO, 2, "feat/signup", SHA2)
    send(bot, "issue_comment", comment(fake, pr=1))
    fake.wait_for(lambda: bot.deployment(REPO, 1).json().get("status") == "deploying", message="the first deploy running")

    second = comment(fake, pr=2)
    assert send(bot, "issue_comment", second).status_code == 202
    fake.wait_for(lambda: fake.reactions.get(second["comment"]["id"]) == ["eyes"], message="the second command's eyes")
    assert bot.deployment(REPO, 1).json()["status"] == "deploying"
    assert bot.deployment(REPO, 2).status_code == 404  # its job still waits for the worker
