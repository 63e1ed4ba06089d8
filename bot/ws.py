"""The WebSocket feed at /ws: the seed's `deployment:update` messages, live.

A client authenticates with its first message, `{"type": "auth", "token": "…"}`, answered with
`{"type": "auth", "ok": true}` (a bad or late one closes the connection with 4401), so the
dashboard never puts a token in a URL; scripts may still pass `?token=`. Optional filters
`repository`, `prNumber` and `environment` narrow the feed; a token scoped to some repositories
never receives another repository's events, and a revoked or expired token's connections close.
"""

from __future__ import annotations

import json
import queue
import socket
import threading

from flask import Flask, request
from flask_sock import ConnectionClosed, Sock

from .feed import CLOSED, REVOKED, Subscriber
from .services import services

sock = Sock()

# How long a client has to send its auth message.
AUTH_SECONDS = 5.0
REFUSED = 4401


def init_app(app: Flask) -> None:
    sock.init_app(app)
    app.wsgi_app = _without_compression(app.wsgi_app)


def _without_compression(wsgi_app):
    """Decline permessage-deflate: the feed's messages are a few hundred bytes, and deflate
    costs every connection its own compressor (hundreds of KiB) and every update one
    compression per client."""

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/ws":
            environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return wsgi_app(environ, start_response)

    return app


@sock.route("/ws")
def feed(ws):
    svc = services()
    in_url = request.args.get("token")
    token = svc.store.verify_token(in_url if in_url is not None else _auth_message(ws))
    # Each greenlet has its own SQLite connection; an open feed needs none after this.
    svc.store.release()
    if token is None:
        ws.close(reason=REFUSED, message="invalid or missing token")
        return
    if in_url is None:
        ws.send(json.dumps({"type": "auth", "ok": True}))
    subscriber = Subscriber(
        repository=request.args.get("repository") or None,
        pr_number=request.args.get("prNumber") or None,
        environment=request.args.get("environment") or None,
        allowed=token["repositories"],
        token_name=token["name"],
        drop=lambda: _cut(ws),
    )
    svc.hub.subscribe(subscriber)
    # Under gevent (`previewbot web`) these are two greenlets: an idle connection costs no
    # thread and wakes for nothing but its own updates and messages.
    threading.Thread(target=_read, args=(ws, subscriber), daemon=True).start()
    try:
        while True:
            message = subscriber.messages.get()
            if message is CLOSED:
                break
            if message is REVOKED:
                ws.close(reason=REFUSED, message="token revoked or expired")
                break
            ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        svc.hub.unsubscribe(subscriber)


def _auth_message(ws) -> str | None:
    """The token of the client's first message, if it is an auth message sent in time."""
    try:
        first = ws.receive(timeout=AUTH_SECONDS)
        message = json.loads(first) if first else None
    except (ConnectionClosed, ValueError):
        return None
    if isinstance(message, dict) and message.get("type") == "auth" and isinstance(message.get("token"), str):
        return message["token"]
    return None


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
                _offer(subscriber, json.dumps({"type": "pong"}))
    except ConnectionClosed:
        # A full queue means the sender is busy sending, and its next send finds the
        # connection closed.
        _offer(subscriber, CLOSED)


def _offer(subscriber: Subscriber, message) -> None:
    try:
        subscriber.messages.put_nowait(message)
    except queue.Full:
        pass
