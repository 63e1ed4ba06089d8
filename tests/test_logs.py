"""Deployment log lines: numbered per deployment, carried on their own Redis streams (capped),
recorded in SQLite by the web process (capped), at least once and safe to repeat; and stream
entries a dead recorder left behind are taken over while the live ones keep running."""

from __future__ import annotations

import pytest
import redis

from bot import feed as feed_module
from bot import state
from bot.app import create_app
from bot.feed import FeedThreads, Hub
from bot.model import Deployment, new_deployment_id
from bot.store import Store, migrations
from worker.logbuffer import LogBuffer

from .harness import wait_for


@pytest.fixture
def web(settings):
    """Start the feed threads of a web process (the app's store unless one is given); every
    one started is stopped afterwards. Returns (app, feed)."""
    started: list[FeedThreads] = []

    def start(store: Store | None = None):
        app = create_app(settings, start_feed=False)
        svc = app.extensions["previewbot"]
        feed = FeedThreads(svc.redis, store or svc.store, Hub())
        feed.start()
        started.append(feed)
        return app, feed

    yield start
    for feed in started:
        feed.close()


def new_deployment(pr_number: int = 1) -> Deployment:
    return Deployment.new(
        repository="octo/app", pr_number=pr_number, branch_name="feat/x", trigger="api", requested_by="token:t",
        provisioner="simulated",
    )


def publish_lines(conn, deployment_id: str, lines, batch: int = 1000) -> None:
    """publish_log, pipelined: a flood in seconds instead of one round trip per line."""
    with conn.pipeline(transaction=False) as pipe:
        for n, line in enumerate(lines, 1):
            state.publish_log(pipe, deployment_id, line)
            if n % batch == 0:
                pipe.execute()
        pipe.execute()


def stream_seqs(conn, deployment_id: str) -> list[int]:
    return [int(fields[b"seq"]) for _id, fields in conn.xrange(state.LOG_STREAM.format(deployment_id))]


def recorded(store: Store, deployment_id: str) -> list[tuple[int, str]]:
    return [(r["seq"], r["line"]) for r in store.deployment_logs(deployment_id, limit=1_000_000)]


def test_lines_are_numbered_per_deployment_in_order_and_shown_with_their_seq(web, redis_conn):
    app, feed = web()
    store = feed.store
    one, two = new_deployment(1), new_deployment(2)
    for d in (one, two):
        state.publish(redis_conn, d, expect=state.ABSENT, message="deploy requested", take_over=True)
    for n in range(1, 6):
        state.publish_log(redis_conn, one.id, f"one {n}")
        if n <= 3:
            state.publish_log(redis_conn, two.id, f"two {n}")
    state.publish_log(redis_conn, one.id, "x" * 5000)

    assert stream_seqs(redis_conn, one.id) == [1, 2, 3, 4, 5, 6]
    assert stream_seqs(redis_conn, two.id) == [1, 2, 3]
    wait_for(lambda: len(recorded(store, one.id)) == 6 and len(recorded(store, two.id)) == 3, timeout=10, message="the lines recorded")
    assert recorded(store, one.id) == [(n, f"one {n}") for n in range(1, 6)] + [(6, "x" * 4000)]
    assert recorded(store, two.id) == [(1, "two 1"), (2, "two 2"), (3, "two 3")]
    assert [r["seq"] for r in store.deployment_logs(one.id, after=2, limit=2)] == [3, 4]

    wait_for(lambda: store.get_deployment(one.id), message="the deployment recorded")
    token = store.create_token("reader")
    answer = app.test_client().get(f"/api/deployments/{one.id}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.json
    logs = answer.json["logs"]
    assert [(line["seq"], line["line"]) for line in logs[:2]] == [(1, "one 1"), (2, "one 2")] and logs[0]["at"]


def test_a_status_is_recorded_after_the_lines_that_led_to_it(web, redis_conn, monkeypatch):
    # Only the event recorder runs, so the log recorder cannot get there first.
    monkeypatch.setattr(FeedThreads, "_log_loop", lambda self: None)
    deployment = new_deployment()
    state.publish(redis_conn, deployment, expect=state.ABSENT, message="deploy requested", take_over=True)
    for n in range(1, 4):
        state.publish_log(redis_conn, deployment.id, f"line {n}")
    state.publish(redis_conn, deployment.changed(status="failed", error="exited with 3"), expect="deploying", message="failed")
    _app, feed = web()
    wait_for(lambda: (row := feed.store.get_deployment(deployment.id)) and row["status"] == "failed", timeout=10, message="the outcome recorded")
    assert recorded(feed.store, deployment.id) == [(1, "line 1"), (2, "line 2"), (3, "line 3")]


def test_a_flood_of_log_lines_never_trims_a_status_event(web, redis_conn, monkeypatch):
    # A small event stream, so that log lines on it would trim the event within the flood.
    monkeypatch.setattr(state, "EVENTS_MAXLEN", 1000)
    deployment = new_deployment()
    state.publish(redis_conn, deployment, expect=state.ABSENT, message="deploy requested", take_over=True)
    # No web process runs during the flood: everything waits in Redis.
    publish_lines(redis_conn, deployment.id, (f"line {n}" for n in range(1, 50_001)))

    assert redis_conn.xlen(state.EVENTS_STREAM) == 1
    # Redis keeps the newest lines of the deployment, no more.
    assert redis_conn.xlen(state.LOG_STREAM.format(deployment.id)) == state.LOG_STREAM_MAXLEN
    assert stream_seqs(redis_conn, deployment.id)[0] == 50_000 - state.LOG_STREAM_MAXLEN + 1

    _app, feed = web()
    store = feed.store
    wait_for(lambda: store.get_deployment(deployment.id), timeout=10, message="the status event recorded")
    wait_for(lambda: store.log_counts(deployment.id)["last_seq"] == 50_000, timeout=30, message="the lines recorded")
    lines = recorded(store, deployment.id)
    assert [seq for seq, _line in lines] == list(range(50_000 - state.LOG_STREAM_MAXLEN + 1, 50_001))
    # What Redis trimmed before the web process came back is counted, not silently gone.
    assert store.log_counts(deployment.id) == {"last_seq": 50_000, "stored": state.LOG_STREAM_MAXLEN, "dropped": 50_000 - state.LOG_STREAM_MAXLEN}


def test_redis_keeps_at_most_n_lines_per_deployment_for_a_week_after_the_last(redis_conn, monkeypatch):
    monkeypatch.setattr(state, "LOG_STREAM_MAXLEN", 50)
    deployment_id = new_deployment_id()
    publish_lines(redis_conn, deployment_id, (f"line {n}" for n in range(1, 201)))
    assert stream_seqs(redis_conn, deployment_id) == list(range(151, 201))
    assert redis_conn.zscore(state.LOG_STREAMS, deployment_id)
    for key in (state.LOG_STREAM.format(deployment_id), state.LOG_SEQ.format(deployment_id)):
        assert 0 < redis_conn.ttl(key) <= state.LOG_TTL_SECONDS
    # A counter Redis lost (evicted) while the stream stayed carries on after the stream's last line.
    redis_conn.delete(state.LOG_SEQ.format(deployment_id))
    state.publish_log(redis_conn, deployment_id, "after")
    assert stream_seqs(redis_conn, deployment_id)[-2:] == [200, 201]


def test_a_fully_recorded_quiet_stream_is_unlisted_until_its_next_line(web, redis_conn, monkeypatch):
    monkeypatch.setattr(feed_module, "LOG_IDLE_MS", 0)
    monkeypatch.setattr(feed_module, "RECLAIM_SECONDS", 0.2)
    deployment_id = new_deployment_id()
    state.publish_log(redis_conn, deployment_id, "one")
    _app, feed = web()
    wait_for(lambda: redis_conn.zscore(state.LOG_STREAMS, deployment_id) is None, timeout=5, message="the stream unlisted")
    assert recorded(feed.store, deployment_id) == [(1, "one")]
    state.publish_log(redis_conn, deployment_id, "two")
    assert redis_conn.zscore(state.LOG_STREAMS, deployment_id)
    wait_for(lambda: recorded(feed.store, deployment_id) == [(1, "one"), (2, "two")], timeout=5, message="the next line recorded")


def test_sqlite_keeps_every_line_up_to_its_cap_and_counts_the_rest(web, settings, redis_conn):
    _app, feed = web(Store(settings.database_path, max_log_lines=20))
    store = feed.store
    deployment_id = new_deployment_id()
    for n in range(1, 31):
        state.publish_log(redis_conn, deployment_id, f"line {n}")
    wait_for(lambda: store.log_counts(deployment_id)["last_seq"] == 30, timeout=10, message="the lines recorded")
    assert recorded(store, deployment_id) == [(n, f"line {n}") for n in range(1, 21)]
    assert store.log_counts(deployment_id) == {"last_seq": 30, "stored": 20, "dropped": 10}


def test_lines_written_while_no_web_process_runs_are_recorded_when_one_starts(web, redis_conn):
    deployment_id = new_deployment_id()
    for n in range(1, 4):
        state.publish_log(redis_conn, deployment_id, f"line {n}")
    _app, feed = web()
    wait_for(lambda: len(recorded(feed.store, deployment_id)) == 3, timeout=10, message="the lines recorded")


def test_a_dead_recorders_pending_events_are_claimed_without_a_restart(web, redis_conn, monkeypatch):
    monkeypatch.setattr(feed_module, "CLAIM_IDLE_MS", 300)
    monkeypatch.setattr(feed_module, "RECLAIM_SECONDS", 0.5, raising=False)
    _app, feed = web()
    store = feed.store
    # The live recorder is up and past its start.
    first = new_deployment(1)
    state.publish(redis_conn, first, expect=state.ABSENT, message="deploy requested", take_over=True)
    wait_for(lambda: store.get_deployment(first.id), timeout=10, message="the live recorder")

    # Another web process (a gunicorn worker restarted since) read two entries and died before
    # acknowledging them. One transaction, so the live recorder cannot read them first.
    second = new_deployment(2)
    with redis_conn.pipeline(transaction=True) as pipe:
        pipe.xadd(state.EVENTS_STREAM, {"kind": "deployment", "data": second.dumps(), "current": "1"})
        pipe.xadd(state.EVENTS_STREAM, {"kind": "log", "data": '{"deploymentId": "%s", "line": "old", "at": "2026-01-01T00:00:00.000Z"}' % second.id})
        pipe.xreadgroup(feed_module.RECORDER_GROUP, "web-dead-1", {state.EVENTS_STREAM: ">"}, count=10)
        *_, read = pipe.execute()
    assert len(read[0][1]) == 2
    assert redis_conn.xpending(state.EVENTS_STREAM, feed_module.RECORDER_GROUP)["consumers"] == [{"name": b"web-dead-1", "pending": 2}]

    wait_for(lambda: store.get_deployment(second.id), timeout=8, message="the dead recorder's event claimed and recorded")
    # An entry of the old kind (a log line on the event stream, from before the upgrade) still
    # lands, numbered after the deployment's other lines.
    wait_for(lambda: recorded(store, second.id) == [(1, "old")], timeout=5, message="the old log entry recorded")
    wait_for(lambda: redis_conn.xpending(state.EVENTS_STREAM, feed_module.RECORDER_GROUP)["pending"] == 0, timeout=5, message="acknowledged")


def test_a_dead_recorders_log_stream_is_taken_over(web, redis_conn, monkeypatch):
    monkeypatch.setattr(feed_module, "RECLAIM_SECONDS", 0.5, raising=False)
    deployment_id = new_deployment_id()
    # A recorder took the stream and died: its lock runs out, then a live one carries on.
    redis_conn.set(feed_module.LOG_LOCK.format(deployment_id), "web-dead-1", px=1500)
    for n in range(1, 4):
        state.publish_log(redis_conn, deployment_id, f"line {n}")
    _app, feed = web()
    wait_for(lambda: len(recorded(feed.store, deployment_id)) == 3, timeout=8, message="the lines recorded after the lock ran out")


def test_recording_twice_is_harmless(web, settings, redis_conn):
    store = Store(settings.database_path)
    store.migrate()
    deployment_id = new_deployment_id()
    batch = [(n, "2026-01-01T00:00:00.000Z", f"line {n}") for n in range(1, 6)]
    store.record_logs(deployment_id, batch)
    store.record_logs(deployment_id, batch[2:])
    store.record_logs(deployment_id, batch)
    assert recorded(store, deployment_id) == [(n, f"line {n}") for n in range(1, 6)]
    assert store.log_counts(deployment_id) == {"last_seq": 5, "stored": 5, "dropped": 0}
    # An old event-stream log entry redelivered is kept once too.
    store.record_log("1700000000000-0", deployment_id, "old", "2026-01-01T00:00:00.000Z")
    store.record_log("1700000000000-0", deployment_id, "old", "2026-01-01T00:00:00.000Z")
    assert recorded(store, deployment_id)[-1] == (6, "old") and store.log_counts(deployment_id)["stored"] == 6

    # Two web processes (one store each) recording the same streams: every line exactly once.
    (_app, one), (_app2, two) = web(Store(settings.database_path)), web(Store(settings.database_path))
    other = new_deployment_id()
    publish_lines(redis_conn, other, (f"line {n}" for n in range(1, 3001)), batch=100)
    wait_for(lambda: one.store.log_counts(other)["last_seq"] == 3000, timeout=20, message="the lines recorded")
    assert recorded(two.store, other) == [(n, f"line {n}") for n in range(1, 3001)]
    assert one.store.log_counts(other) == {"last_seq": 3000, "stored": 3000, "dropped": 0}


def test_a_live_deployments_line_numbers_go_on_after_redis_forgot_its_counter(web, redis_conn):
    """A preview deployed weeks ago logs its destroy under the same id: its counter (gone with
    the stream's TTL, or with Redis) starts again from what SQLite holds, not from 1."""
    deployment = new_deployment()
    state.publish(redis_conn, deployment, expect=state.ABSENT, message="deploy requested", take_over=True)
    for n in range(1, 4):
        state.publish_log(redis_conn, deployment.id, f"deploy {n}")
    state.publish(redis_conn, deployment.changed(status="deployed", preview_url="https://p.example.com"), expect="deploying", message="deployed")
    _app, feed = web()
    store = feed.store
    wait_for(lambda: len(recorded(store, deployment.id)) == 3 and store.get_deployment(deployment.id)["status"] == "deployed", timeout=10, message="recorded")
    feed.close()

    redis_conn.delete(state.LOG_SEQ.format(deployment.id), state.LOG_STREAM.format(deployment.id))
    _app, feed = web()
    wait_for(lambda: redis_conn.get(state.LOG_SEQ.format(deployment.id)) == b"3", timeout=10, message="the counter restored")
    state.publish_log(redis_conn, deployment.id, "destroying")
    wait_for(lambda: recorded(feed.store, deployment.id)[-1:] == [(4, "destroying")], timeout=10, message="the destroy line recorded")


def test_old_log_rows_are_numbered_in_stream_order_by_the_migration(tmp_path):
    store = Store(str(tmp_path / "old.db"))
    migrations.apply(store.db, stop_before="m003_log_sequence_numbers")
    for event_id, deployment_id, line in [
        ("1700000000000-10", "a", "third"), ("1700000000000-9", "a", "second"), ("1699999999999-0", "a", "first"),
        ("1700000000001-0", "b", "only"),
    ]:
        store.db["deployment_logs"].insert({"id": event_id, "deployment_id": deployment_id, "line": line, "created_at": "t"})
    store.migrate()
    assert recorded(store, "a") == [(1, "first"), (2, "second"), (3, "third")]
    assert recorded(store, "b") == [(1, "only")]
    assert store.log_counts("a") == {"last_seq": 3, "stored": 3, "dropped": 0}
    store.record_logs("a", [(4, "t", "fourth")])
    assert recorded(store, "a")[-1] == (4, "fourth")


def test_a_workers_log_buffer_writes_every_line_in_order_in_batches(redis_conn):
    buffer = LogBuffer(redis_conn)
    one, two = new_deployment_id(), new_deployment_id()
    for n in range(1, 20_001):
        buffer.add(one, f"one {n}")
        if n % 4 == 0:
            buffer.add(two, f"two {n // 4}")
    assert buffer.flush()
    assert stream_seqs(redis_conn, one) == list(range(10_001, 20_001))  # the newest LOG_STREAM_MAXLEN
    lines = [fields[b"line"].decode() for _id, fields in redis_conn.xrange(state.LOG_STREAM.format(two))]
    assert lines == [f"two {n}" for n in range(1, 5_001)]
    buffer.add(one, "after")  # numbering goes on after the batches
    assert buffer.flush()
    assert stream_seqs(redis_conn, one)[-1] == 20_001


def test_a_log_buffer_drops_a_batch_redis_refuses_and_goes_on():
    gone = redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    buffer = LogBuffer(gone)
    buffer.add(new_deployment_id(), "lost")
    assert buffer.flush()  # dropped, logged, nothing raised to the provisioner's reader


def test_a_flood_waits_for_the_recorder_instead_of_trimming_lines_it_has_not_recorded(redis_conn):
    buffer = LogBuffer(redis_conn, patience=30)
    deployment_id = new_deployment_id()
    recorded_key = state.LOG_RECORDED.format(deployment_id)
    for n in range(1, state.LOG_STREAM_MAXLEN + 1):
        buffer.add(deployment_id, f"line {n}")
    assert buffer.flush()
    for n in range(state.LOG_STREAM_MAXLEN + 1, state.LOG_STREAM_MAXLEN + 501):
        buffer.add(deployment_id, f"line {n}")
    assert not buffer.flush(timeout=0.3)  # the stream is full of lines nobody recorded: it waits
    assert stream_seqs(redis_conn, deployment_id)[0] == 1
    redis_conn.set(recorded_key, 600)  # a recorder took the first 600
    assert buffer.flush()
    seqs = stream_seqs(redis_conn, deployment_id)
    assert seqs[0] == 501 and seqs[-1] == state.LOG_STREAM_MAXLEN + 500  # only recorded lines went


def test_without_a_recorder_a_flood_trims_after_the_patience(redis_conn):
    buffer = LogBuffer(redis_conn, patience=0.2)
    deployment_id = new_deployment_id()
    redis_conn.set(state.LOG_RECORDED.format(deployment_id), 0)
    for n in range(1, state.LOG_STREAM_MAXLEN + 2001):
        buffer.add(deployment_id, f"line {n}")
    assert buffer.flush()
    assert stream_seqs(redis_conn, deployment_id)[-1] == state.LOG_STREAM_MAXLEN + 2000
