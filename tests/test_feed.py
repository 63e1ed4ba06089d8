"""The web process's fan-out to WebSocket clients: a client that cannot keep up is dropped,
the others are not slowed; a client whose token is no longer accepted is closed."""

import json
import queue
import socket
import threading

from wsproto.frame_protocol import FrameProtocol

from bot.feed import REVOKED, Hub, Subscriber, text_frame
from bot.ws import _write_now


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


# -- updates written at once (Subscriber.offer with a socket) ------------------------------------


def connected(**fields) -> tuple[Subscriber, socket.socket, socket.socket]:
    """A subscriber writing to one end of a socket pair (the /ws handler's writer), that end,
    and the client's, which reads nothing until asked."""
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return Subscriber(write_now=_write_now(server), **fields), server, client


def read_messages(client: socket.socket) -> list[dict]:
    client.setblocking(False)
    data = b""
    while True:
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(data)
    return [json.loads(frame.payload) for frame in protocol.received_frames()]


def test_an_update_a_clients_socket_takes_at_once_is_written_by_the_publisher():
    hub = Hub()
    subscriber, _server, client = connected()
    hub.subscribe(subscriber)
    hub.publish(update(1))
    hub.publish(update(2))
    assert subscriber.messages.empty() and subscriber.unsent == 0  # its sender never woke
    assert [m["n"] for m in read_messages(client)] == [1, 2]


def test_what_a_full_socket_does_not_take_waits_for_the_sender_and_later_updates_queue_behind_it():
    hub = Hub()
    subscriber, server, client = connected()
    hub.subscribe(subscriber)
    big = {**update(1), "padding": "x" * 200_000}
    hub.publish(big)
    rest = subscriber.messages.get_nowait()  # the part of the frame the socket did not take
    assert 0 < len(rest) < len(text_frame(json.dumps(big))) and subscriber.unsent == 1
    hub.publish(update(2))  # the sender has not written the rest: this one must not jump ahead
    assert subscriber.messages.get_nowait() == text_frame(json.dumps(update(2)))
    assert subscriber.unsent == 2

    # The sender writes both (blocking, as its greenlet does) while the client reads.
    reader = threading.Thread(target=lambda: received_all.extend(read_all(client)))
    received_all: list[dict] = []
    reader.start()
    for chunk in (rest, text_frame(json.dumps(update(2)))):
        server.sendall(chunk)
        subscriber.sent()
    server.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert [m["n"] for m in received_all] == [1, 2] and received_all[0]["padding"] == big["padding"]
    assert subscriber.unsent == 0
    hub.publish(update(3))  # nothing waits any more: written at once again
    assert subscriber.messages.empty()


def read_all(client: socket.socket) -> list[dict]:
    client.setblocking(True)
    data = b""
    while chunk := client.recv(1 << 20):
        data += chunk
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(data)
    return [json.loads(frame.payload) for frame in protocol.received_frames()]


def test_a_client_that_reads_nothing_fills_its_socket_then_its_queue_and_is_dropped():
    dropped = []
    hub = Hub()
    stuck, _server, _client = connected(messages=queue.Queue(maxsize=3), drop=lambda: dropped.append("stuck"))
    hub.subscribe(stuck)
    other = hub.subscribe(Subscriber())
    for n in range(8):
        hub.publish({**update(n), "padding": "x" * 50_000})
    assert dropped == ["stuck"] and stuck.overflowed and stuck.messages.qsize() == 3
    assert [received(other.messages.get_nowait())["n"] for _ in range(8)] == list(range(8))


def test_a_message_the_sender_holds_keeps_updates_from_being_written_before_it():
    hub = Hub()
    subscriber, _server, client = connected()
    hub.subscribe(subscriber)
    assert subscriber.offer("a reply")  # the sender takes it and has not written it yet
    hub.publish(update(1))
    assert subscriber.messages.qsize() == 2 and read_messages(client) == []


def test_an_update_to_a_closed_connection_is_not_kept():
    hub = Hub()
    subscriber, _server, client = connected()
    hub.subscribe(subscriber)
    client.close()
    hub.publish(update(1))
    hub.publish(update(2))
    assert subscriber.messages.empty()
