"""The web process's fan-out to WebSocket clients: a client that cannot keep up is dropped,
the others are not slowed; a client whose token is no longer accepted is closed."""

import json
import queue

from wsproto.frame_protocol import FrameProtocol

from bot.feed import REVOKED, Hub, Subscriber, text_frame


def received(frame: bytes) -> dict:
    """The message a client reads from one frame the hub queued."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(frame)
    (only,) = list(client.received_frames())
    assert only.frame_finished and only.message_finished
    return json.loads(only.payload)


def test_frames_are_the_bytes_wsproto_writes_at_every_length_boundary():
    for size in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        message = ("é" * size)[: size // 2] + "x" * (size - size // 2)
        assert text_frame(message) == bytes(FrameProtocol(client=False, extensions=[]).send_data(message, fin=True))


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
    assert [received(fast.messages.get_nowait())["n"] for _ in range(10)] == list(range(10))
    assert slow.messages.qsize() == 3  # bounded: what it could not take was never kept


def test_an_update_is_encoded_and_framed_once_for_all_the_clients_that_want_it():
    hub = Hub()
    clients = [hub.subscribe(Subscriber()) for _ in range(3)]
    other = hub.subscribe(Subscriber(repository="octo/other"))
    hub.publish(update(1))
    frames = [c.messages.get_nowait() for c in clients]
    assert isinstance(frames[0], bytes) and all(f is frames[0] for f in frames) and received(frames[0])["n"] == 1
    assert other.messages.empty()


def test_updates_published_together_reach_each_client_in_one_item_with_the_frames_it_wants():
    hub = Hub()
    everything = hub.subscribe(Subscriber())
    second_only = hub.subscribe(Subscriber(pr_number="2"))
    first, second = update(1), {**update(2), "prNumber": "2"}
    hub.publish(first, second)
    both = everything.messages.get_nowait()
    assert everything.messages.empty() and both == text_frame(json.dumps(first)) + text_frame(json.dumps(second))
    assert received(second_only.messages.get_nowait())["n"] == 2 and second_only.messages.empty()


def test_clients_of_a_token_no_longer_accepted_are_closed_and_the_others_stay():
    hub = Hub()
    kept = hub.subscribe(Subscriber(token_name="ci"))
    gone = hub.subscribe(Subscriber(token_name="session-1"))
    asked = []

    def accepted(names):
        asked.append(set(names))
        return names - {"session-1"}

    hub.close_refused(accepted)
    assert asked == [{"ci", "session-1"}]
    assert gone.messages.get_nowait() is REVOKED and kept.messages.empty()
    hub.publish(update(2))
    assert gone.messages.empty() and received(kept.messages.get_nowait())["n"] == 2
    assert len(hub) == 1
