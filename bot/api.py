"""The REST API under /api: JSON in and out, camelCase fields, bearer tokens.

Every error is JSON with an `error` field. Bad input is refused before anything is queued
or written.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time

import gidgethub
import httpx
import redis
from flask import Blueprint, Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from worker import previews, state

from . import validation
from .services import services
from .store import deployment_json

log = logging.getLogger("previewbot.api")

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_BODY_BYTES = 1024 * 1024
PUBLIC_ENDPOINTS = {"api.health", "api.openapi"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.before_request
def authenticate():
    request.max_content_length = MAX_BODY_BYTES
    if request.method == "OPTIONS":
        return "", 204  # a browser's CORS preflight carries no token
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Missing bearer token: send 'Authorization: Bearer <token>'")
    row = services().store.verify_token(token.strip())
    if row is None:
        raise ApiError(401, "Invalid or revoked API token")
    g.token = row
    return None


@bp.after_request
def allow_cross_origin(response):
    """The dashboard may be served from another origin (NEXT_PUBLIC_API_URL). The API is
    authorized by bearer tokens, never cookies, so any origin may call it: a page without a
    token gets nothing."""
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
    response.headers["Access-Control-Max-Age"] = "600"
    return response


@bp.errorhandler(ApiError)
def api_error(exc: ApiError):
    return jsonify(exc.body), exc.status


@bp.errorhandler(validation.InvalidInput)
def invalid_input(exc: validation.InvalidInput):
    return jsonify({"error": str(exc)}), 400


@bp.errorhandler(redis.RedisError)
def redis_down(exc: redis.RedisError):
    log.error("Redis unavailable: %s", type(exc).__name__)
    return jsonify({"error": "The queue (Redis) is unavailable; try again shortly."}), 503


@bp.errorhandler(sqlite3.OperationalError)
def database_down(exc: sqlite3.OperationalError):
    log.error("SQLite unavailable: %s", exc)
    return jsonify({"error": "The database is busy or unavailable; try again shortly."}), 503


@bp.errorhandler(gidgethub.GitHubException)
@bp.errorhandler(httpx.HTTPError)
def github_down(exc: Exception):
    log.error("GitHub unavailable: %s", type(exc).__name__)
    return jsonify({"error": "GitHub could not be reached to check the pull request; try again shortly."}), 502


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    return jsonify({"error": exc.description or exc.name}), exc.code


@bp.get("/health")
def health():
    checks = {}
    try:
        services().store.ping()
        checks["database"] = "ok"
    except sqlite3.Error as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        services().redis.ping()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "unavailable", **checks, "github": services().settings.github_enabled}
    return jsonify(body), 200 if ok else 503


@bp.post("/repos/<owner>/<repo>/pull-requests/<pr>/deploy")
def deploy(owner: str, repo: str, pr: str):
    repository, pr_number = _pull_request(owner, repo, pr)
    body = _json_object()
    branch = validation.branch_name(body.get("branchName"))
    sha = body.get("headSha")
    if sha is not None and (not isinstance(sha, str) or not _is_sha(sha)):
        raise validation.InvalidInput("headSha must be a 40-character commit id")
    _rate_limit()
    svc = services()
    head_repository, installation_id, title, author = repository, None, None, None
    if svc.github is not None:
        head = svc.github.pull_request_head(repository, pr_number)
        if head is None:
            raise ApiError(422, f"{repository}#{pr_number} is not an open pull request the app can see")
        if head["ref"] != branch:
            raise ApiError(422, f"branchName {branch!r} is not the head branch of {repository}#{pr_number}")
        head_repository, installation_id = head["repository"], head["installationId"]
        sha, title, author = sha or head["sha"], head["title"], head["author"]
    deployment = previews.new_deployment(
        repository=repository,
        pr_number=pr_number,
        branch=branch,
        head_repository=head_repository,
        sha=sha,
        trigger=body.get("trigger") if body.get("trigger") == "dashboard" else "api",
        requested_by=f"token:{g.token['name']}",
        installation_id=installation_id,
        provisioner=svc.settings.provisioner,
    )
    # SQLite first: if it is unavailable the request fails (503) before anything starts.
    svc.store.upsert_pull_request(
        {
            "repository": repository,
            "number": pr_number,
            "branch_name": branch,
            "head_repository": head_repository,
            "head_sha": sha,
            "title": title,
            "author": author,
            "state": "open",
            "installation_id": installation_id,
        }
    )
    outcome = previews.request_deploy(svc.redis, svc.settings, deployment)
    if not outcome.started:
        raise ApiError(409, "A deployment of this branch is already in progress", deploymentId=outcome.holder)
    try:
        svc.store.record_deployment(deployment, None)
    except sqlite3.Error as exc:
        # The deploy has started and its event is in Redis: the recorder writes it later.
        log.warning("deployment %s will be recorded from the event stream: %s", deployment["id"], exc)
    return jsonify(_with_extras(deployment)), 202


@bp.get("/repos/<owner>/<repo>/pull-requests/<pr>/deployment")
def get_deployment(owner: str, repo: str, pr: str):
    repository, pr_number = _pull_request(owner, repo, pr)
    row = services().store.latest_deployment(repository, pr_number)
    if row is None or row["status"] == "idle":
        return jsonify({"status": "idle", "error": "No live deployment for this pull request"}), 404
    return jsonify(deployment_json(row))


@bp.delete("/repos/<owner>/<repo>/pull-requests/<pr>/deployment")
def destroy(owner: str, repo: str, pr: str):
    repository, pr_number = _pull_request(owner, repo, pr)
    _rate_limit()
    svc = services()
    current = state.current(svc.redis, repository, pr_number)
    if current is None or current["status"] == "idle":
        return jsonify({"status": "idle", "error": "No live deployment for this pull request"}), 404
    outcome = previews.request_destroy(svc.redis, svc.settings, current, reason=f"destroyed by token:{g.token['name']}")
    return jsonify({**_with_extras(current), "destroy": "started" if outcome.started else "queued"}), 202


@bp.get("/repos/<owner>/<repo>/pull-requests/<pr>/deployments")
def history(owner: str, repo: str, pr: str):
    repository, pr_number = _pull_request(owner, repo, pr)
    rows = services().store.deployment_history(repository, pr_number)
    return jsonify({"deployments": [deployment_json(r) for r in rows]})


@bp.get("/deployments/<deployment_id>")
def deployment_detail(deployment_id: str):
    row = services().store.get_deployment(deployment_id[:64])
    if row is None or not _may_see(row["repository"]):
        raise ApiError(404, "No such deployment")
    store = services().store
    return jsonify(
        {
            **deployment_json(row),
            "events": [
                {"status": e["status"], "message": e["message"], "at": e["created_at"]}
                for e in store.deployment_events(row["id"])
            ],
            "logs": [{"line": r["line"], "at": r["created_at"]} for r in store.deployment_logs(row["id"])],
        }
    )


@bp.get("/pull-requests")
def pull_requests():
    """Every open pull request the bot has seen, newest first, with its latest deployment."""
    wanted = request.args.get("repository") or None
    status = request.args.get("status") or None
    if wanted:
        validation.full_repository_name(wanted)
    if status and status not in ("idle", "deploying", "deployed", "failed"):
        raise validation.InvalidInput("status must be idle, deploying, deployed or failed")
    allowed = g.token["repositories"]
    repositories = [wanted] if wanted else allowed
    if wanted and allowed is not None and wanted not in allowed:
        repositories = []
    items = []
    for pull in services().store.list_pull_requests(repositories=repositories):
        deployment = pull["deployment"]
        card = {
            "repository": pull["repository"],
            "prNumber": pull["number"],
            "title": pull["title"],
            "branchName": pull["branch_name"],
            "headSha": pull["head_sha"],
            "author": pull["author"],
            "createdAt": pull["created_at"],
            "status": deployment["status"] if deployment else "idle",
            "deployment": deployment_json(deployment) if deployment else None,
        }
        if status is None or card["status"] == status:
            items.append(card)
    return jsonify({"pullRequests": items})


@bp.get("/openapi.json")
def openapi():
    from .openapi import document

    return jsonify(document())


# -- helpers ---------------------------------------------------------------------------------


def _pull_request(owner: str, repo: str, pr: str) -> tuple[str, int]:
    repository = validation.repository_name(owner, repo)
    number = validation.pr_number(pr)
    if not _may_see(repository):
        raise ApiError(403, f"This token may not act on {repository}")
    return repository, number


def _may_see(repository: str) -> bool:
    allowed = g.token["repositories"]
    return allowed is None or repository in allowed


def _json_object() -> dict:
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        raise validation.InvalidInput("The body must be a JSON object") from None
    if not isinstance(body, dict):
        raise validation.InvalidInput("The body must be a JSON object")
    return body


def _is_sha(value: str) -> bool:
    return len(value) == 40 and all(c in "0123456789abcdef" for c in value)


def _rate_limit() -> None:
    """Writes are limited per token per minute, counted in Redis so all web processes agree."""
    limit = services().settings.rate_limit_per_minute
    window = int(time.time() // 60)
    key = f"{state.PREFIX}:rate:{g.token['name']}:{window}"
    pipe = services().redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, 120)
    count = pipe.execute()[0]
    if count > limit:
        retry = 60 - int(time.time() % 60)
        response = jsonify({"error": f"Rate limit of {limit} writes per minute exceeded; retry in {retry}s"})
        response.status_code = 429
        response.headers["Retry-After"] = str(retry)
        from flask import abort

        abort(response)


def _with_extras(deployment: dict) -> dict:
    return {**deployment, "deploymentId": deployment["id"]}
