"""The WebSocket feed at /ws: the seed's `deployment:update` messages, live.

Browsers cannot set headers on a WebSocket, so the API token comes as `?token=`. Optional
filters `repository`, `prNumber` and `environment` narrow the feed; a token scoped to some repositories
never receives another repository's events.
"""

from __future__ import annotations

import json
import queue

from flask import Flask, request
from flask_sock import ConnectionClosed, Sock

from .feed import Subscriber
from .services import services

sock = Sock()

# How often the connection looks for a message from the client while no update is waiting.
POLL_SECONDS = 0.2


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
    )
    svc.hub.subscribe(subscriber)
    try:
        while ws.connected and not subscriber.overflowed:
            try:
                ws.send(json.dumps(subscriber.messages.get(timeout=POLL_SECONDS)))
            except queue.Empty:
                pass
            incoming = ws.receive(timeout=0)
            if incoming == "ping":
                # Only sent on request, so clients that never ask see only the seed's messages;
                # a reply also tells the client that its subscription is in place.
                ws.send(json.dumps({"type": "pong"}))
    except ConnectionClosed:
        pass
    finally:
        svc.hub.unsubscribe(subscriber)
