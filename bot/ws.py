"""The WebSocket feed at /ws: the seed's `deployment:update` messages, live.

Browsers cannot set headers on a WebSocket, so the API token comes as `?token=`. Optional
filters `repository`, `prNumber` and `environment` narrow the feed; a token scoped to some repositories
never receives another repository's events.
"""

from __future__ import annotations

import json
import queue
import socket
import threading

from flask import Flask, request
from flask_sock import ConnectionClosed, Sock

from .feed import Subscriber
from .services import services

sock = Sock()

# How long the sender waits for an update before it looks again whether the connection lives.
IDLE_SECONDS = 1.0
CLOSED = object()  # put on a subscriber's queue when its connection ends, to wake the sender


def init_app(app: Flask) -> None:
    sock.init_app(app)


@sock.route("/ws")
def feed(ws):
    svc = services()
    token = svc.store.verify_token(request.args.get("token"))
    if token is None:
        ws.close(reason=4401, message="invalid or missing token")
        return
    subscriber = Subscriber(
        repository=request.args.get("repository") or None,
        pr_number=request.args.get("prNumber") or None,
        environment=request.args.get("environment") or None,
        allowed=token["repositories"],
        drop=lambda: _cut(ws),
    )
    svc.hub.subscribe(subscriber)
    # Under gevent (`previewbot web`) these are two greenlets: an idle connection costs no
    # thread and wakes for nothing but its own updates and messages.
    threading.Thread(target=_read, args=(ws, subscriber), daemon=True).start()
    try:
        while ws.connected and not subscriber.overflowed:
            try:
                message = subscriber.messages.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                continue
            if message is CLOSED:
                break
            ws.send(json.dumps(message))
    except ConnectionClosed:
        pass
    finally:
        svc.hub.unsubscribe(subscriber)


def _cut(ws) -> None:
    """Shut the connection's socket: a send blocked on a client that reads nothing fails at once."""
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


def _read(ws, subscriber: Subscriber) -> None:
    """Answer what the client sends; sends go through the subscriber's queue, so only one
    greenlet ever writes to the connection."""
    try:
        while True:
            if ws.receive() == "ping":
                # Only sent on request, so clients that never ask see only the seed's messages;
                # a reply also tells the client that its subscription is in place.
                subscriber.messages.put({"type": "pong"})
    except ConnectionClosed:
        subscriber.messages.put(CLOSED)
