"""The web process's fan-out to WebSocket clients: a client that cannot keep up is dropped,
the others are not slowed."""

import queue

from bot.feed import Hub, Subscriber


def update(n: int) -> dict:
    return {"type": "deployment:update", "repository": "octo/app", "prNumber": "1", "environment": "preview", "n": n}


def test_a_client_that_cannot_keep_up_is_dropped_once_and_the_others_get_everything():
    dropped = []
    hub = Hub()
    slow = hub.subscribe(Subscriber(messages=queue.Queue(maxsize=3), drop=lambda: dropped.append("slow")))
    fast = hub.subscribe(Subscriber())
    for n in range(10):
        hub.publish(update(n))
    assert dropped == ["slow"] and slow.overflowed
    assert [fast.messages.get_nowait()["n"] for _ in range(10)] == list(range(10))
    assert slow.messages.qsize() == 3  # bounded: what it could not take was never kept
