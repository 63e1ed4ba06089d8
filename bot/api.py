"""The REST API under /api: JSON in and out, camelCase fields, bearer tokens.

spectree validates each request against the pydantic models of `bot.api_models` and generates
the OpenAPI document (GET /api/openapi.json) from those same models and the routes, so the
document cannot drift from what the API checks and answers.

Every error is JSON with an `error` field. Bad input is refused before anything is queued
or written.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from datetime import datetime, timezone

import gidgethub
import httpx
import pydantic
import redis
from flask import Blueprint, Flask, abort, g, jsonify, request
from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree
from werkzeug.exceptions import HTTPException

from . import costs, livelogs, previews, state, validation
from .api_models import (
    AuthMethods,
    Conflict,
    CostQuery,
    CostReport,
    DeployRefused,
    DeployRequest,
    DeploymentDetail,
    DeploymentPage,
    DeploymentRecord,
    DeploymentState,
    DestroyAccepted,
    EnvironmentList,
    EnvironmentQuery,
    ErrorBody,
    ExtendAccepted,
    Health,
    HistoryQuery,
    LogPage,
    LogQuery,
    NotFound,
    OpenApiDocument,
    PullRequestList,
    PullRequestQuery,
    Session,
    SessionRequest,
)
from .model import DEFAULT_ENVIRONMENT, Deployment, PreviewKey
from .services import services
from .times import timestamp

log = logging.getLogger("previewbot.api")

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_BODY_BYTES = 1024 * 1024
PUBLIC_ENDPOINTS = {"api.health", "api.openapi", "api.create_session", "api.auth_methods"}
JSON_BODY_ENDPOINTS = {"api.deploy", "api.create_session"}


def _refuse_invalid(req, resp, error: pydantic.ValidationError | None, instance, model_adapter) -> None:
    """spectree's hook after validating a request: a refusal is our 400 `{"error": ...}` naming
    the field and why, not spectree's 422 list of pydantic errors."""
    if error is None:
        return
    first = error.errors(include_url=False)[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, validation.InvalidInput):
        raise cause  # bot.validation's message already names the field
    field = ".".join(str(part) for part in first["loc"])
    raise validation.InvalidInput(f"{field}: {first['msg']}")


spec = SpecTree(
    "flask",
    title="previewbot API",
    version="1",
    description="Preview environments for pull requests. Every route but `/api/health`, "
    "`/api/openapi.json`, `/api/auth` and `POST /api/sessions` needs an API token (`.venv/bin/previewbot token create --name "
    "NAME`, or a dashboard session's) as `Authorization: Bearer <token>`. Every error is a JSON object "
    "with an `error` field, including 404 for unknown paths and "
    "405 for methods a path does not have. Every route answers CORS preflights (OPTIONS) without a "
    "token, and every answer allows any origin.",
    mode="strict",  # only the routes decorated here: not the dashboard, not the WebSocket
    # Components are named after the models; they are all this package's, so names cannot clash.
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
    validation_error_status=400,
    validation_error_model=ErrorBody,
    before=_refuse_invalid,
    security_schemes=[
        SecurityScheme(
            name="bearerAuth",
            data=SecuritySchemeData(
                type="http", scheme="bearer", description="An API token; tokens may be limited to repositories."
            ),
        )
    ],
    security={"bearerAuth": []},
)
PUBLIC: dict = {}  # as a route's `security`: no token needed

PULL_REQUEST_PATH = {
    "owner": f"The GitHub user or organization owning the repository (`{validation.OWNER.pattern}`).",
    "repo": f"The repository's name (`{validation.REPO.pattern}`, not `.` or `..`).",
    "prNumber": f"The pull request's number, 1 to {validation.MAX_PR_NUMBER}.",
}
# Answers any route that needs a token may give before reaching its own logic.
TOKEN_ERRORS = {
    "HTTP_401": (ErrorBody, "No bearer token, or an unknown, expired or revoked one."),
    "HTTP_503": (ErrorBody, "Redis or SQLite is unavailable; try again shortly."),
}
# Answers every .../pull-requests/{prNumber}/... route gives for its path.
PULL_REQUEST_ERRORS = {
    **TOKEN_ERRORS,
    "HTTP_400": (ErrorBody, "A malformed path parameter, query parameter or body; nothing was queued or written."),
    "HTTP_403": (ErrorBody, "The token is limited to other repositories, or (a write by a GitHub sign-in) the "
                 "person cannot push to this one."),
    "HTTP_404": (ErrorBody, "A path parameter holding `/` left the path matching no route."),
}
NO_LIVE_DEPLOYMENT = (NotFound, "No live deployment (`status` is `idle`), or a path no route matches.")
RATE_LIMITED = (
    ErrorBody,
    "The token made more writes (deploys and destroys) this minute than PREVIEW_API_RATE_LIMIT allows; "
    "the `Retry-After` header says in how many seconds the next minute starts.",
)
# spectree documents its validation-error status on every route; on a route that takes no
# input nothing can fail validation, so naming a status the route documents anyway keeps a
# 400 it never gives out of the document.
NO_INPUT = {"validation_error_status": 200}


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
        raise ApiError(401, "Invalid, expired or revoked API token")
    g.token = row
    return None


@bp.before_request
def read_json_body():
    """The deploy body is parsed here, whatever its Content-Type says (as it always was), and
    cached for spectree to validate: a body that is not a JSON object, or nests too deep to
    parse, is a clear 400 instead of spectree validating `{}`. spectree reads form content
    types as forms, so those are refused too."""
    if request.endpoint not in JSON_BODY_ENDPOINTS:
        return None
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict) or request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise validation.InvalidInput("The body must be a JSON object")
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
@spec.validate(
    resp=Response(
        HTTP_200=(Health, "The database and Redis both answer."),
        HTTP_503=(Health, "The database or Redis does not answer; the body says which."),
    ),
    security=PUBLIC,
    tags=["service"],
    operation_id="health",
    **NO_INPUT,
)
def health():
    """Whether the database and Redis answer"""
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


@bp.get("/auth")
@spec.validate(
    resp=Response(HTTP_200=(AuthMethods, "How people may sign in besides sign-in links.")),
    security=PUBLIC,
    tags=["sessions"],
    operation_id="authMethods",
    **NO_INPUT,
)
def auth_methods():
    """How people may sign in to the dashboard

    The dashboard shows "Sign in with GitHub" when `github` is true.
    """
    settings = services().settings
    return jsonify({"github": bool(settings.github_client_id and settings.github_client_secret)})


@bp.post("/sessions")
@spec.validate(
    resp=Response(
        HTTP_201=(Session, "A new session token."),
        HTTP_400=(ErrorBody, "The body is not a JSON object with a `code` string."),
        HTTP_401=(ErrorBody, "The code is unknown, expired or already used: one answer for all."),
        HTTP_413=(ErrorBody, "The request body is over 1 MiB."),
        HTTP_503=(ErrorBody, "SQLite is unavailable; try again shortly."),
    ),
    security=PUBLIC,
    tags=["sessions"],
    operation_id="createSession",
)
def create_session(json: SessionRequest):
    """Exchange a sign-in link's code for a session token

    How the dashboard signs in without a token in its address: `previewbot run` and `previewbot
    signin` print a link `/?code=…` that works once, for 10 minutes; the page trades its code
    here for a token that lasts 30 days.
    """
    session = services().store.exchange_signin_code(json.code)
    if session is None:
        raise ApiError(401, "This sign-in link is unknown, expired or already used; ask for a new one (run 'make signin' or '.venv/bin/previewbot signin' on the server)")
    token, expires_at = session
    return jsonify({"token": token, "expiresAt": expires_at}), 201


# Route variables are camelCase because the document names its path parameters after them.
@bp.post("/repos/<owner>/<repo>/pull-requests/<prNumber>/deploy")
@spec.validate(
    resp=Response(
        HTTP_202=(DeploymentRecord, "The deploy is queued; the deployment is `deploying`."),
        **{
            **PULL_REQUEST_ERRORS,
            "HTTP_403": (
                DeployRefused,
                "The token is limited to other repositories, the person cannot push to this one (a GitHub sign-in), or "
                "(`code`: `budget_exceeded`) the repository's monthly budget is spent and this would be a new preview.",
            ),
        },
        HTTP_409=(Conflict, "A deploy of this branch, or of this environment, is already in progress."),
        HTTP_413=(ErrorBody, "The request body is over 1 MiB."),
        HTTP_422=(
            ErrorBody,
            "GitHub App only: the pull request is not open or not visible to the app, `branchName` is not its head "
            "branch, or `headSha` is not its head commit; nothing was deployed.",
        ),
        HTTP_429=RATE_LIMITED,
        HTTP_502=(ErrorBody, "GitHub App only: GitHub could not be reached to check the pull request."),
    ),
    path_parameter_descriptions=PULL_REQUEST_PATH,
    tags=["deployments"],
    operation_id="deploy",
)
def deploy(owner: str, repo: str, prNumber: str, json: DeployRequest):
    """Deploy the pull request's branch to its preview

    Queues a deploy and answers at once with the deployment in `deploying`. One deployment per
    branch runs at a time: while one runs, the answer is 409.
    """
    repository, pr_number = _pull_request(owner, repo, prNumber, write=True)
    svc = services()
    if json.environment not in svc.settings.environments:
        raise validation.InvalidInput(
            f"environment {json.environment!r} is not one of this installation's: {', '.join(svc.settings.environments)}"
        )
    _rate_limit()
    branch, sha = json.branch_name, json.head_sha
    head_repository, installation_id, title, author = repository, None, json.title, None
    if svc.github is not None:
        head = svc.github.pull_request_head(repository, pr_number)
        if head is None:
            raise ApiError(422, f"{repository}#{pr_number} is not an open pull request the app can see")
        if head["ref"] != branch:
            raise ApiError(422, f"branchName {branch!r} is not the head branch of {repository}#{pr_number}")
        state.record_head(svc.redis, repository, pr_number, head["sha"], at=time.time())
        # Only the head is deployed: a commit the pull request no longer (or never) had was not
        # the one reviewed, and a fork's could be anything.
        if sha is not None and sha != head["sha"]:
            raise ApiError(422, f"headSha {sha} is not the head commit of {repository}#{pr_number} (it is {head['sha']}); nothing was deployed")
        head_repository, installation_id = head["repository"], head["installationId"]
        sha, title, author = head["sha"], head["title"], head["author"]
    deployment = Deployment.new(
        repository=repository,
        pr_number=pr_number,
        environment=json.environment,
        branch_name=branch,
        head_repository=head_repository,
        head_sha=sha,
        trigger="dashboard" if json.trigger == "dashboard" else "api",
        requested_by=f"token:{g.token['name']}",
        installation_id=installation_id,
        provisioner=svc.settings.for_environment(json.environment).provisioner,
    )
    # One SQLite transaction around the start: if SQLite is unavailable the request fails (503)
    # before anything starts, and a refused deploy leaves no trace (no dashboard card).
    with svc.store.write():
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
        if outcome.refused:
            raise ApiError(403, outcome.refused, code="budget_exceeded")
        if not outcome.started:
            raise ApiError(409, "A deploy of this branch, or of this environment, is already in progress", deploymentId=outcome.holder)
        svc.store.record_deployment(deployment, None)
    return jsonify(deployment.to_json()), 202


@bp.get("/repos/<owner>/<repo>/pull-requests/<prNumber>/deployment")
@spec.validate(
    query=EnvironmentQuery,
    resp=Response(
        HTTP_200=(DeploymentState, "The latest deployment, whatever its state but idle."),
        **{**PULL_REQUEST_ERRORS, "HTTP_404": NO_LIVE_DEPLOYMENT},
    ),
    path_parameter_descriptions=PULL_REQUEST_PATH,
    tags=["deployments"],
    operation_id="getDeployment",
)
def get_deployment(owner: str, repo: str, prNumber: str, query: EnvironmentQuery):
    """The pull request's latest deployment"""
    key = PreviewKey(*_pull_request(owner, repo, prNumber), query.environment)
    deployment = services().store.latest_deployment(key)
    if deployment is None or deployment.state == "idle":
        return _no_live_deployment()
    return jsonify(deployment.to_state_json())


@bp.delete("/repos/<owner>/<repo>/pull-requests/<prNumber>/deployment")
@spec.validate(
    query=EnvironmentQuery,
    resp=Response(
        HTTP_202=(DestroyAccepted, "The teardown of the current deployment is started or queued."),
        **{**PULL_REQUEST_ERRORS, "HTTP_404": NO_LIVE_DEPLOYMENT},
        HTTP_429=RATE_LIMITED,
    ),
    path_parameter_descriptions=PULL_REQUEST_PATH,
    tags=["deployments"],
    operation_id="destroyDeployment",
)
def destroy(owner: str, repo: str, prNumber: str, query: EnvironmentQuery):
    """Tear the pull request's preview down"""
    key = PreviewKey(*_pull_request(owner, repo, prNumber, write=True), query.environment)
    _rate_limit()
    svc = services()
    outcome = previews.request_destroy(svc.redis, svc.settings, key, reason=f"destroyed by token:{g.token['name']}")
    if outcome is None:
        return _no_live_deployment()
    return jsonify({**outcome.deployment.to_state_json(), "destroy": "started" if outcome.started else "queued"}), 202


@bp.post("/repos/<owner>/<repo>/pull-requests/<prNumber>/deployment/cancel")
@spec.validate(
    query=EnvironmentQuery,
    resp=Response(
        HTTP_202=(DeploymentState, "The deploy in progress is being cancelled: a queued one leaves the queue, a "
                  "running provisioner is stopped and what it built torn down; the record ends `cancelled`."),
        HTTP_409=(ErrorBody, "No deploy of this pull request is queued or running."),
        **PULL_REQUEST_ERRORS,
        HTTP_429=RATE_LIMITED,
    ),
    path_parameter_descriptions=PULL_REQUEST_PATH,
    tags=["deployments"],
    operation_id="cancelDeployment",
)
def cancel(owner: str, repo: str, prNumber: str, query: EnvironmentQuery):
    """Cancel the pull request's deploy in progress"""
    key = PreviewKey(*_pull_request(owner, repo, prNumber, write=True), query.environment)
    _rate_limit()
    svc = services()
    deployment = previews.request_cancel(svc.redis, svc.settings, key, reason=f"cancelled by token:{g.token['name']}")
    if deployment is None:
        raise ApiError(409, "No deploy of this pull request is in progress")
    return jsonify(deployment.to_state_json()), 202


@bp.post("/repos/<owner>/<repo>/pull-requests/<prNumber>/deployment/extend")
@spec.validate(
    query=EnvironmentQuery,
    resp=Response(
        HTTP_200=(ExtendAccepted, "The preview lives its whole TTL again, from now."),
        HTTP_409=(ErrorBody, "Nothing is deployed in the environment."),
        **PULL_REQUEST_ERRORS,
        HTTP_429=RATE_LIMITED,
    ),
    path_parameter_descriptions=PULL_REQUEST_PATH,
    tags=["deployments"],
    operation_id="extendDeployment",
)
def extend(owner: str, repo: str, prNumber: str, query: EnvironmentQuery):
    """Keep the pull request's preview for its whole TTL again, from now"""
    key = PreviewKey(*_pull_request(owner, repo, prNumber, write=True), query.environment)
    _rate_limit()
    svc = services()
    deployment = previews.request_extend(svc.redis, svc.settings, key, reason=f"extended by token:{g.token['name']}")
    if deployment is None:
        raise ApiError(409, "Nothing is deployed in this environment, so there is nothing to extend")
    return jsonify({"expiresAt": deployment.expires_at})


@bp.get("/costs")
@spec.validate(
    query=CostQuery,
    resp=Response(
        HTTP_200=(CostReport, "The month's spend per repository and pull request."),
        **TOKEN_ERRORS,
        HTTP_400=(ErrorBody, "A malformed query parameter."),
        HTTP_403=(ErrorBody, "The token is limited to other repositories."),
    ),
    tags=["costs"],
    operation_id="listCosts",
)
def cost_report(query: CostQuery):
    """What previews cost in a UTC month, per repository and pull request

    A deployment costs its `hourlyCost` for every hour from its creation until its record ended
    (or until now); one that spans a month end is split at it.
    """
    if query.repository and not _may_see(query.repository):
        raise ApiError(403, f"This token may not see {query.repository}")
    now = datetime.now(timezone.utc)
    month = query.month or costs.month_of(now)
    _start, month_end = costs.month_bounds(month)
    found = services().store.costing_deployments(before=timestamp(month_end), repository=query.repository)
    report = costs.totals([d for d in found if _may_see(d.repository)], month=month, now=now)
    budget = services().settings.monthly_budget
    report["repositories"] = [{**entry, "budget": budget} for entry in report["repositories"]]
    return jsonify(report)


@bp.get("/repos/<owner>/<repo>/pull-requests/<prNumber>/environments")
@spec.validate(
    resp=Response(HTTP_200=(EnvironmentList, "Every environment of the pull request with its state."), **PULL_REQUEST_ERRORS),
    path_parameter_descriptions=PULL_REQUEST_PATH,
    tags=["deployments"],
    operation_id="listEnvironments",
)
def environments(owner: str, repo: str, prNumber: str):
    """The pull request's environments: those the operator lists, and any other with a record"""
    repository, pr_number = _pull_request(owner, repo, prNumber)
    svc = services()
    latest = {d.environment: d for d in svc.store.latest_deployments(repository, pr_number)}
    names = list(svc.settings.environments) + sorted(set(latest) - set(svc.settings.environments))
    return jsonify({"environments": [_environment_json(name, latest.get(name), svc.settings) for name in names]})


def _no_live_deployment():
    return jsonify({"status": "idle", "error": "No live deployment in this environment of the pull request"}), 404


def _environment_json(name: str, deployment: Deployment | None, settings) -> dict:
    state = deployment.state if deployment else "idle"
    return {
        "environment": name,
        "status": state,
        "deployable": name in settings.environments,
        "deployment": deployment.to_state_json() if deployment else None,
    }


@bp.get("/repos/<owner>/<repo>/pull-requests/<prNumber>/deployments")
@spec.validate(
    resp=Response(HTTP_200=(DeploymentPage, "One page of deployments, newest first."), **PULL_REQUEST_ERRORS),
    path_parameter_descriptions=PULL_REQUEST_PATH,
    tags=["deployments"],
    operation_id="listDeployments",
)
def history(owner: str, repo: str, prNumber: str, query: HistoryQuery):
    """The pull request's deployments, newest first, a page at a time"""
    key = PreviewKey(*_pull_request(owner, repo, prNumber), query.environment)
    before = query.before[:64] if query.before else None
    store = services().store
    page, cursor = store.deployment_history(key, limit=query.limit, before=before)
    ends = store.deploy_ends([d.id for d in page])
    return jsonify({"deployments": [{**d.to_json(), "finishedAt": ends.get(d.id)} for d in page], "next": cursor})


@bp.get("/deployments/<deploymentId>")
@spec.validate(
    resp=Response(
        HTTP_200=(DeploymentDetail, "The deployment, its status changes and log lines."),
        **TOKEN_ERRORS,
        HTTP_404=(ErrorBody, "No such deployment, or one in a repository the token may not see."),
    ),
    path_parameter_descriptions={"deploymentId": "A deployment's id (only its first 64 characters are looked at)."},
    tags=["deployments"],
    operation_id="getDeploymentById",
    **NO_INPUT,
)
def deployment_detail(deploymentId: str):
    """One deployment with its events and logs"""
    row = services().store.get_deployment(deploymentId[:64])
    if row is None or not _may_see(row["repository"]):
        raise ApiError(404, "No such deployment")
    store = services().store
    return jsonify(
        {
            **Deployment.from_row(row).to_json(),
            "events": [
                {"status": e["status"], "message": e["message"], "at": e["created_at"]}
                for e in store.deployment_events(row["id"])
            ],
            "logs": [{"seq": r["seq"], "line": r["line"], "at": r["created_at"]} for r in store.deployment_logs(row["id"])],
        }
    )


@bp.get("/deployments/<deploymentId>/logs")
@spec.validate(
    query=LogQuery,
    resp=Response(
        HTTP_200=(LogPage, "Log lines of the deployment, in order."),
        **TOKEN_ERRORS,
        HTTP_400=(ErrorBody, "A malformed query parameter."),
        HTTP_404=(ErrorBody, "No such deployment, or one in a repository the token may not see."),
    ),
    path_parameter_descriptions={"deploymentId": "A deployment's id (only its first 64 characters are looked at)."},
    tags=["deployments"],
    operation_id="getDeploymentLogs",
)
def deployment_logs(deploymentId: str, query: LogQuery):
    """A deployment's log lines, live

    The lines after `after`, or the last ones, from what SQLite recorded and the newest lines
    Redis holds, so a deploy in progress shows its output as it comes. Ask again with
    `after=lastSeq` to follow it (or subscribe on the WebSocket).
    """
    svc = services()
    deployment = livelogs.find_deployment(svc.redis, svc.store, deploymentId[:64])
    if deployment is None or not _may_see(deployment.repository):
        raise ApiError(404, "No such deployment")
    lines = livelogs.read_log(svc.redis, svc.store, deployment.id, after=query.after, limit=query.limit)
    return jsonify(
        {
            "lines": [{"seq": e.seq, "at": e.at, "line": e.line} for e in lines],
            "lastSeq": lines[-1].seq if lines else query.after or 0,
        }
    )


@bp.get("/pull-requests")
@spec.validate(
    resp=Response(
        HTTP_200=(PullRequestList, "The pull requests the token may see."),
        **TOKEN_ERRORS,
        HTTP_400=(ErrorBody, "A malformed query parameter."),
    ),
    tags=["pull requests"],
    operation_id="listPullRequests",
)
def pull_requests(query: PullRequestQuery):
    """Open pull requests the bot has seen, newest first, with their latest deployment"""
    allowed = g.token["repositories"]
    wanted = query.repository
    repositories = [wanted] if wanted else allowed
    if wanted and allowed is not None and wanted not in allowed:
        repositories = []
    items = []
    listed = services().settings.environments
    for pull in services().store.list_pull_requests(repositories=repositories):
        latest = pull["environments"]
        deployment = latest.get(DEFAULT_ENVIRONMENT)
        names = list(listed) + sorted(set(latest) - set(listed))
        card = {
            "repository": pull["repository"],
            "prNumber": pull["number"],
            "title": pull["title"],
            "branchName": pull["branch_name"],
            "headSha": pull["head_sha"],
            "author": pull["author"],
            "createdAt": pull["created_at"],
            "status": deployment.state if deployment else "idle",
            "deployment": deployment.to_state_json() if deployment else None,
            "environments": [_environment_json(name, latest.get(name), services().settings) for name in names],
            "canWrite": _may_write(pull["repository"]),
        }
        if query.status is None or card["status"] == query.status:
            items.append(card)
    return jsonify({"pullRequests": items})


@bp.get("/openapi.json")
@spec.validate(
    resp=Response(HTTP_200=(OpenApiDocument, "The OpenAPI document.")),
    security=PUBLIC,
    tags=["service"],
    operation_id="openapi",
    **NO_INPUT,
)
def openapi():
    """This document"""
    return jsonify(spec.spec)


# -- helpers ---------------------------------------------------------------------------------


def _pull_request(owner: str, repo: str, pr: str, *, write: bool = False) -> tuple[str, int]:
    repository = validation.repository_name(owner, repo)
    number = validation.pr_number(pr)
    if not _may_see(repository):
        raise ApiError(403, f"This token may not act on {repository}")
    if write and not _may_write(repository):
        raise ApiError(403, f"You can read {repository} but not push to it on GitHub, so you may not deploy, destroy or cancel its previews")
    return repository, number


def _may_see(repository: str) -> bool:
    allowed = g.token["repositories"]
    return allowed is None or repository in allowed


def _may_write(repository: str) -> bool:
    """A GitHub sign-in writes only where GitHub said the person can push; other tokens
    wherever they may see."""
    writable = g.token["writable"]
    return _may_see(repository) and (writable is None or repository in writable)


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
        abort(response)
