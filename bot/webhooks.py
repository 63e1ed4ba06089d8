"""The GitHub webhook receiver: verify, dedupe, enqueue, answer — in milliseconds.

No GitHub call, no provisioning and no SQLite write happen here: one atomic Redis call
remembers the delivery id, announces the delivery (the recorder writes it to SQLite) and queues
the RQ job that handles it, with the payload as GitHub sent it (and, for a member's command,
its comment to acknowledge at once: see `bot.acks`). Deliveries that need no work
(comments that do not mention `/preview`, events the bot does not act on) are acknowledged
without a job, so a busy repository's chatter never delays a command.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import orjson
import redis
from flask import Flask
from gidgethub import ValidationFailure, sansio

from . import acks
from . import queue as jobs
from .commands import mentions_command
from .services import Services
from .redis_io import script
from .state import DELIVERIES_STREAM, EVENTS_MAXLEN, PREFIX

log = logging.getLogger("previewbot.webhooks")

MAX_WEBHOOK_BYTES = 5 * 1024 * 1024
MAX_JSON_DEPTH = 64
# GitHub lets people redeliver a delivery of the past 3 days; remember ids a little longer.
DELIVERY_MEMORY_SECONDS = 7 * 24 * 3600


class InvalidPayload(ValueError):
    """The payload lacks what its event must carry."""


def init_app(app: Flask) -> None:
    svc = app.extensions["previewbot"]
    if svc.settings.github_enabled:
        app.wsgi_app = WebhookReceiver(app.wsgi_app, svc)


class WebhookReceiver:
    """The webhook endpoint, as plain WSGI in front of the Flask app.

    It is the one endpoint called at volume (every event of every installed repository), and
    it needs nothing of Flask's: no routing, request context, session or response objects,
    which together cost as much CPU as the whole delivery's own work. Every other path goes
    on to Flask.
    """

    def __init__(self, wsgi_app, svc: Services):
        self.wsgi_app = wsgi_app
        self.svc = svc
        self.path = svc.settings.webhook_path

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != self.path:
            return self.wsgi_app(environ, start_response)
        headers = [("Content-Type", "application/json")]
        if environ.get("REQUEST_METHOD") != "POST":
            status, answer = 405, {"error": "GitHub deliveries are POSTed to this path"}
            headers.append(("Allow", "POST"))
        else:
            try:
                status, answer = receive(self.svc, environ)
            except Exception:
                log.exception("webhook delivery failed")
                status, answer = 500, {"error": "Internal error; GitHub may redeliver"}
        body = orjson.dumps(answer) + b"\n"
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]


def receive(svc: Services, environ: dict) -> tuple[int, dict]:
    """Verify, record, enqueue, answer: the status and JSON answer for one delivery."""
    try:
        body = read_body(environ)
    except ValueError:
        return 400, {"error": "Content-Length must be a non-negative integer"}
    except BodyTooLarge:
        return 413, {"error": "The request body is too large"}
    signature = environ.get("HTTP_X_HUB_SIGNATURE_256", "")
    try:
        if not signature.startswith("sha256=") or not signature.isascii():
            # hmac.compare_digest raises TypeError on non-ASCII text: refuse such headers first.
            raise ValidationFailure("missing signature")
        sansio.validate_event(body, signature=signature, secret=svc.settings.webhook_secret)
    except ValidationFailure:
        return 401, {"error": "Invalid or missing X-Hub-Signature-256"}

    event = environ.get("HTTP_X_GITHUB_EVENT", "")
    delivery_id = environ.get("HTTP_X_GITHUB_DELIVERY", "")
    if not event or not delivery_id or len(delivery_id) > 100:
        return 400, {"error": "X-GitHub-Event and X-GitHub-Delivery headers are required"}
    try:
        payload = parse_payload(body, environ.get("CONTENT_TYPE", ""))
        work = needs_work(event, payload, app_id=svc.settings.app_id)
    except InvalidPayload as exc:
        return 400, {"error": str(exc)}
    if event == "ping":
        return 200, {"status": "pong"}

    record = {"deliveryId": delivery_id, "event": event, "action": payload.get("action"), "memo": memo_for(payload)}
    try:
        accepted = accept_delivery(svc.redis, svc.queue, delivery_id=delivery_id, event=event, payload=payload, record=record, work=work)
    except redis.RedisError as exc:
        # Nothing was written, so GitHub's redelivery of it will be accepted.
        log.error("could not accept delivery %s: %s", delivery_id, type(exc).__name__)
        return 503, {"error": "The queue is unavailable; redeliver later"}
    if not accepted:
        return 200, {"status": "duplicate delivery ignored"}
    if not work:
        return 200, {"status": "acknowledged"}
    return 202, {"status": "queued"}


# KEYS[1] the delivery id key; ARGV[1] how long to remember it, then the writes to make when
# the id is new, each as its argument count followed by its arguments. 0 for a redelivery.
_ACCEPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""


def accept_delivery(conn: redis.Redis, queue, *, delivery_id: str, event: str, payload: dict, record: dict, work: bool) -> bool:
    """Remember the delivery id, announce the delivery and (with work) queue its job, all or
    nothing, in one round trip. False for a redelivery.

    RQ's own `enqueue_call` writes the job into a pipeline that is not sent; its commands run
    inside one script, and only when the delivery id is new, so a delivery is never half
    accepted and a redelivery never queues a second job."""
    pipe = conn.pipeline()
    pipe.multi()  # as RQ expects of a caller's pipeline; it is never executed
    pipe.xadd(DELIVERIES_STREAM, {"kind": "delivery", "data": orjson.dumps(record)}, maxlen=EVENTS_MAXLEN, approximate=True)
    if work:
        jobs.enqueue_webhook(queue, event=event, delivery_id=delivery_id, payload=payload, pipeline=pipe)
        if acks.acknowledged_apart(event, payload):
            acks.add(pipe, payload, now_ms=acks.now_ms())
    encode = conn.get_encoder().encode
    writes: list = [DELIVERY_MEMORY_SECONDS]
    for command, _options in pipe.command_stack:
        writes += [len(command), *map(encode, command)]
    return bool(script(conn, _ACCEPT)(keys=[f"{PREFIX}:delivery:{delivery_id}"], args=writes))


class BodyTooLarge(Exception):
    """The body is over MAX_WEBHOOK_BYTES."""


def read_body(environ: dict) -> bytes:
    """The request body, at most MAX_WEBHOOK_BYTES; a chunked one too (gunicorn ends it)."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH") or ""
    if length:
        size = int(length)
        if size < 0:
            raise ValueError(length)
        if size > MAX_WEBHOOK_BYTES:
            raise BodyTooLarge(size)
        return stream.read(size)
    if not environ.get("wsgi.input_terminated"):
        return b""  # no length and no end marker: nothing can be read safely
    body = stream.read(MAX_WEBHOOK_BYTES + 1)
    if len(body) > MAX_WEBHOOK_BYTES:
        raise BodyTooLarge(len(body))
    return body


def memo_for(payload: dict) -> dict:
    """The little of a delivery that the web process keeps (through the recorder, see
    `bot.feed.remember`): repository, installation, and a pull request's title, head and author."""
    memo = {}
    repository = _object(payload.get("repository"))
    if isinstance(repository.get("full_name"), str):
        memo["repository"] = {"full_name": repository["full_name"]}
    installation = _object(payload.get("installation"))
    if "id" in installation:
        memo["installation"] = {"id": installation["id"], "account": {"login": _object(installation.get("account")).get("login")}}
    pull = _object(payload.get("pull_request"))
    if pull:
        head = _object(pull.get("head"))
        memo["pull_request"] = {
            "number": pull.get("number"),
            "title": pull.get("title"),
            "state": pull.get("state"),
            "user": {"login": _object(pull.get("user")).get("login")},
            "head": {"ref": head.get("ref"), "sha": head.get("sha"), "repo": _repo(head.get("repo"))},
        }
    for key in ("repositories", "repositories_added", "repositories_removed"):
        if isinstance(payload.get(key), list):
            memo[key] = [{"full_name": r["full_name"]} for r in payload[key] if isinstance(r, dict) and isinstance(r.get("full_name"), str)]
    if "action" in payload:
        memo["action"] = payload["action"]
    return memo


def parse_payload(body: bytes, content_type: str) -> dict:
    """GitHub sends JSON, or form-encoded with the JSON in `payload`. Pure."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        from urllib.parse import parse_qs

        values = parse_qs(body.decode("utf-8", "replace")).get("payload")
        if not values:
            raise InvalidPayload("form-encoded delivery without a payload field")
        body = values[0].encode()
    elif kind != "application/json":
        raise InvalidPayload("Content-Type must be application/json")
    if _nesting(body) > MAX_JSON_DEPTH:
        raise InvalidPayload("JSON nested too deeply")
    try:
        payload = orjson.loads(body)  # a third of the stdlib parser's time on GitHub's payloads
    except orjson.JSONDecodeError:
        raise InvalidPayload("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidPayload("the payload must be a JSON object")
    return payload


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _nesting(body: bytes) -> int:
    """The deepest bracket nesting, counted without parsing (strings can hold brackets, which
    only over-counts; real GitHub payloads nest far less than the limit). Everything but the
    brackets is dropped first, in C, so the loop sees a few hundred bytes, not the body."""
    depth = deepest = 0
    for byte in body.translate(None, _NOT_BRACKETS):
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def needs_work(event: str, payload: dict, *, app_id: str | None) -> bool:
    """Whether a worker must handle this delivery. Pure.

    Raises InvalidPayload when an event the bot acts on lacks the fields its handler relies on.
    The handler gets the payload as GitHub sent it and parses the command itself; this only
    looks for the word, so a busy repository's chatter queues no job.
    """
    action = payload.get("action")
    if action is not None and not isinstance(action, str):
        raise InvalidPayload("payload field 'action' is not a str")
    if event == "issue_comment":
        issue, comment = _get(payload, "issue", dict), _get(payload, "comment", dict)
        user = _get(comment, "user", dict)
        _get(user, "login", str)
        _get(issue, "number", int)
        _get(comment, "id", int)
        _common(payload)
        body = comment.get("body")
        return action == "created" and "pull_request" in issue and user.get("type") != "Bot" and mentions_command(body)
    if event == "check_run":
        check_run = _get(payload, "check_run", dict)
        if action not in ("requested_action", "rerequested"):
            return False
        _get(check_run, "id", int)
        _common(payload)
        return str(_object(check_run.get("app")).get("id")) == str(app_id)
    if event == "pull_request":
        pull = _get(payload, "pull_request", dict)
        if action not in ("opened", "reopened", "synchronize", "closed"):
            return False
        head = _get(pull, "head", dict)
        _get(pull, "number", int)
        _get(_get(pull, "user", dict), "login", str)
        _get(head, "ref", str)
        _get(head, "sha", str)
        _common(payload)
        return True
    # Uninstalls destroy the previews of the repositories the App loses.
    if event == "installation" and action == "deleted":
        _get(_get(payload, "installation", dict), "id", int)
        if payload.get("repositories") is not None:  # optional: previews are also found by installation id
            _repository_names(payload, "repositories")
        return True
    if event == "installation_repositories" and action == "removed":
        _get(_get(payload, "installation", dict), "id", int)
        return bool(_repository_names(payload, "repositories_removed"))
    return False


def _repository_names(payload: dict, key: str) -> list[str]:
    repositories = _get(payload, key, list)
    return [_get(r, "full_name", str) for r in repositories]


def _common(payload: dict) -> None:
    """What every handled event must carry: its repository, installation and sender."""
    _get(_get(payload, "repository", dict), "full_name", str)
    _get(_get(payload, "installation", dict), "id", int)
    _get(_get(payload, "sender", dict), "login", str)


def _repo(repo) -> dict | None:
    return {"full_name": repo["full_name"]} if isinstance(repo, dict) and isinstance(repo.get("full_name"), str) else None


def _object(value) -> dict:
    """An optional object of the payload: a wrong type counts as absent."""
    return value if isinstance(value, dict) else {}


def _get(mapping: dict, key: str, kind: type):
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or not -(2**63) <= value < 2**63)):
        raise InvalidPayload(f"payload field {key!r} is missing or not a {kind.__name__}")
    return value
