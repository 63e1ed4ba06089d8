"""The webhook inbox between the receiver and the workers (real Redis)."""

import json

from rq.job import Job
from rq.serializers import JSONSerializer

from worker import inbox, state


def accept(conn, delivery_id, job=None):
    record = {"deliveryId": delivery_id, "event": "issue_comment", "action": "created", "memo": {}}
    return inbox.accept_delivery(conn, delivery_id=delivery_id, record=record, job=job)


def test_a_delivery_is_accepted_once_and_always_announced(redis_conn):
    assert accept(redis_conn, "d1", job={"action": "created"})
    assert not accept(redis_conn, "d1", job={"action": "created"})  # a redelivery
    assert accept(redis_conn, "d2")  # no work: announced, not queued
    assert redis_conn.xlen(inbox.INBOX_STREAM) == 1
    kinds = [fields[b"kind"] for _id, fields in redis_conn.xrange(state.DELIVERIES_STREAM)]
    assert kinds == [b"delivery", b"delivery"]
    assert redis_conn.xlen(state.EVENTS_STREAM) == 0  # the WebSocket broadcasters never see deliveries
    assert 0 < redis_conn.ttl("previewbot:delivery:d1") <= inbox.DELIVERY_MEMORY_SECONDS


def test_dispatching_twice_queues_one_job(redis_conn):
    accept(redis_conn, "d3", job={"action": "created", "comment": {"body": "/preview"}})
    entries = redis_conn.xrange(inbox.INBOX_STREAM)
    # A dispatcher that died after queueing but before acknowledging: another one repeats it.
    assert inbox.dispatch(redis_conn, entries) == inbox.dispatch(redis_conn, entries)
    assert redis_conn.llen("rq:queue:previewbot") == 1
    job = Job.fetch("webhook-d3", connection=redis_conn, serializer=JSONSerializer)
    assert job.kwargs == {"event": "issue_comment", "delivery_id": "d3", "payload": {"action": "created", "comment": {"body": "/preview"}}}
    assert json.dumps(job.kwargs)  # JSON-safe arguments
