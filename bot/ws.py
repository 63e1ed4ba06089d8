"""The WebSocket feed at /ws: the seed's `deployment:update` messages, live.

A client authenticates with its first message, `{"type": "auth", "token": "…"}`, answered with
`{"type": "auth", "ok": true}` (a bad or late one closes the connection with 4401), so the
dashboard never puts a token in a URL; scripts may still pass `?token=`. Optional filters
`repository`, `prNumber` and `environment` narrow the feed; a token scoped to some repositories
never receives another repository's events, and a revoked or expired token's connections close.

A client follows a deployment's log with `?logs=ID[&after=SEQ]` or the message
`{"type": "subscribe", "logs": ID[, "after": SEQ]}` (`unsubscribe` stops): it gets
`{"type": "subscribed", "logs": ID}`, then a `deployment:log` message per line, the earlier ones
first (after SEQ, or the last 1,000), then live, each line once and in order (see
`bot.livelogs`). An unknown deployment and one the token may not see get the same
`{"type": "error", ...}`.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
from typing import Callable

import redis
from flask import Flask, request
from flask_sock import ConnectionClosed, Sock

from .feed import CLOSED, LOGS_READY, REVOKED, Subscriber, text_frame
from .livelogs import TAIL_LINES, find_deployment, log_message, read_log
from .services import Services, services

log = logging.getLogger("previewbot.ws")

sock = Sock()

# How long a client has to send its auth message.
AUTH_SECONDS = 5.0
REFUSED = 4401
# Logs one connection may follow at once.
MAX_FOLLOWED_LOGS = 10
# Lines of one log sent per turn, so updates and other logs are not held up behind a long log.
LOG_SEND_BATCH = 500
NO_SUCH_DEPLOYMENT = "No such deployment, or not one this token may see"


class LogRequest(dict):
    """A client's `subscribe` or `unsubscribe`, passed from its reader to its sender: only the
    sender writes to the connection."""


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
    subscriber.write_now = _write_now(ws.sock)
    svc.hub.subscribe(subscriber)
    # Under gevent (`previewbot web`) these are two greenlets: an idle connection costs no
    # thread and wakes for nothing but its own updates and messages.
    if "logs" in request.args:
        subscriber.offer(LogRequest(type="subscribe", logs=request.args["logs"], after=request.args.get("after")))
    threading.Thread(target=_read, args=(ws, subscriber), daemon=True).start()
    try:
        while True:
            message = subscriber.messages.get()
            if message is CLOSED:
                break
            if message is REVOKED:
                ws.close(reason=REFUSED, message="token revoked or expired")
                break
            try:
                if message is LOGS_READY:
                    _send_logs(ws, svc, subscriber)
                elif isinstance(message, LogRequest):
                    _follow(ws, svc, subscriber, message)
                elif isinstance(message, bytes):
                    ws.sock.sendall(message)  # an update, framed once for every client (Hub.publish)
                else:
                    ws.send(message)
            except (redis.RedisError, sqlite3.Error) as exc:
                # The updates go on; the client subscribes again (after the last seq it got).
                log.warning("logs unavailable to a client: %s", exc)
                svc.hub.logs.unfollow(subscriber)
                subscriber.log_cursors.clear()
                ws.send(_error("Logs are unavailable right now (Redis or SQLite); subscribe again shortly"))
            finally:
                subscriber.sent()
    except (ConnectionClosed, OSError):
        pass  # the client left (a frame written to its closed socket fails with OSError)
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
            text = ws.receive()
            if text == "ping":
                # Only sent on request, so clients that never ask see only the seed's messages;
                # a reply also tells the client that its subscription is in place.
                subscriber.offer(json.dumps({"type": "pong"}))
            elif isinstance(text, str) and text.startswith("{"):
                subscriber.offer(_log_request(text))
    except ConnectionClosed:
        # A full queue means the sender is busy sending, and its next send finds the
        # connection closed.
        subscriber.offer(CLOSED)


def _write_now(sock) -> Callable[[bytes], int]:
    """A write of what `sock` takes at once, never waiting: 0 bytes when its buffer is full.
    gevent's socket wraps the OS socket as `_sock`; a send on that never yields to another
    greenlet, as the publisher writing to every client must not."""
    raw = getattr(sock, "_sock", sock)

    def write(data: bytes) -> int:
        try:
            return raw.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return 0

    return write


def _log_request(text: str) -> LogRequest | str:
    """A `subscribe` or `unsubscribe` message as a LogRequest; any other JSON message as the
    error to answer (other text is ignored, as it always was)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return _error("Messages must be JSON objects")
    if not isinstance(message, dict) or message.get("type") not in ("subscribe", "unsubscribe") or "logs" not in message:
        return _error("Unknown message: send {\"type\": \"subscribe\", \"logs\": DEPLOYMENT_ID}")
    return LogRequest(type=message["type"], logs=message["logs"], after=message.get("after"))


def _follow(ws, svc: Services, subscriber: Subscriber, request_: LogRequest) -> None:
    """Start (or stop) following a deployment's log: the earlier lines now, then live."""
    deployment_id, after = request_["logs"], _seq(request_.get("after"))
    if not isinstance(deployment_id, str) or not 0 < len(deployment_id) <= 64 or after is False:
        ws.send(_error("logs must be a deployment id and after a line number (0 or more)"))
        return
    if request_["type"] == "unsubscribe":
        subscriber.log_cursors.pop(deployment_id, None)
        svc.hub.logs.unfollow(subscriber, deployment_id)
        return
    if deployment_id not in subscriber.log_cursors and len(subscriber.log_cursors) >= MAX_FOLLOWED_LOGS:
        ws.send(_error(f"At most {MAX_FOLLOWED_LOGS} logs at a time on one connection", deployment_id))
        return
    try:
        deployment = find_deployment(svc.redis, svc.store, deployment_id)
        # The same answer whether the deployment does not exist or is another repository's.
        if deployment is None or not subscriber.may_see(deployment.repository):
            ws.send(_error(NO_SUCH_DEPLOYMENT, deployment_id))
            return
        # Followed before the replay, and woken after it: the reader's wake-ups (its start, each
        # batch it reads) and the one below all come with the cursor set, so the pulls that
        # follow send whatever came after the replay.
        svc.hub.logs.follow(subscriber, deployment)
        ws.send(json.dumps({"type": "subscribed", "logs": deployment_id}))
        if after is None:
            tail = read_log(svc.redis, svc.store, deployment_id, limit=TAIL_LINES)
            for entry in tail:
                ws.send(log_message(deployment, entry))
            after = tail[-1].seq if tail else 0
        subscriber.log_cursors[deployment_id] = after
    finally:
        svc.store.release()
    svc.hub.logs.wake(subscriber)


def _send_logs(ws, svc: Services, subscriber: Subscriber) -> None:
    """Send each followed log's lines after the last one sent, a batch per log, from the
    shared buffer or else from Redis and SQLite; wake again while more wait."""
    subscriber.logs_pending = False  # before looking: a line added meanwhile wakes it again
    more = False
    try:
        for deployment_id, cursor in list(subscriber.log_cursors.items()):
            lines = svc.hub.logs.after(deployment_id, cursor, LOG_SEND_BATCH)
            if lines is None:
                deployment = svc.hub.logs.deployment(deployment_id)
                if deployment is None:
                    continue  # unsubscribed meanwhile
                entries = read_log(svc.redis, svc.store, deployment_id, after=cursor, limit=LOG_SEND_BATCH)
                lines = [(entry.seq, log_message(deployment, entry)) for entry in entries]
            if lines:
                # One write for the batch: a line a frame, framed as wsproto would.
                ws.sock.sendall(b"".join(text_frame(text) for _seq, text in lines))
                subscriber.log_cursors[deployment_id] = lines[-1][0]
            more = more or len(lines) == LOG_SEND_BATCH
    finally:
        svc.store.release()
    if more:
        svc.hub.logs.wake(subscriber)


def _seq(value) -> int | None | bool:
    """`after` as a line number, None when not given, False when it is not one."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return False
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        return int(value)
    if isinstance(value, int) and 0 <= value < 10**15:
        return value
    return False


def _error(message: str, deployment_id: str | None = None) -> str:
    return json.dumps({"type": "error", "error": message, **({"logs": deployment_id} if deployment_id else {})})
