"""The OpenAPI description of the REST API under /api, served at GET /api/openapi.json.

It describes what `bot.api` really answers, status by status: the fuzz tests
(tests/test_openapi_fuzz.py) send generated requests to the real app and check every answer
against this document, so a route or an answer added to `bot.api` belongs here too.
"""

from __future__ import annotations

import copy

from . import validation

OPENAPI_VERSION = "3.1.0"

STATUSES = ["idle", "deploying", "deployed", "failed"]

# `bot.validation.OWNER` and `REPO`; "." and ".." are refused besides (see the parameter).
OWNER_PATTERN = validation.OWNER.pattern
REPO_PATTERN = validation.REPO.pattern
REPOSITORY_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$"
# The characters git refuses anywhere in a branch name (controls, space, ~ ^ : ? * [ \).
# The other rules of `git check-ref-format` (no "..", "@{", "//", leading "-" or ".", trailing
# "/", "." or ".lock") are positional and only stated in the description.
BRANCH_CHARACTERS = r"^[^\x00-\x1f\x7f ~^:?*\[\\]+$"
SHA_PATTERN = r"^[0-9a-f]{40}$"


def document() -> dict:
    """The OpenAPI 3.1 document, a fresh dict on every call (callers may change it)."""
    return copy.deepcopy(_DOCUMENT)


# -- building blocks ---------------------------------------------------------------------------


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema["type"]
    return {**schema, "type": [kind, "null"] if isinstance(kind, str) else [*kind, "null"]}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


def _parameter(name: str) -> dict:
    return {"$ref": f"#/components/parameters/{name}"}


PR_PARAMETERS = [_parameter("owner"), _parameter("repo"), _parameter("prNumber")]

# Answers every route that needs a token can give before reaching its own logic.
AUTHENTICATED_ERRORS = {
    "401": _error("Unauthorized"),
    "503": _error("Unavailable"),
}

# Answers every /repos/{owner}/{repo}/pull-requests/{prNumber}/... route gives for its path.
PULL_REQUEST_ERRORS = {
    "400": _error("BadRequest"),
    **AUTHENTICATED_ERRORS,
    "403": _error("Forbidden"),
    "404": _error("NotFound"),
}


def _deployment_properties() -> dict:
    text = {"type": "string"}
    return {
        "id": {**text, "description": "The deployment's id (32 hex characters for new deployments)."},
        "deploymentId": {**text, "description": "The same as `id`."},
        "repository": {**text, "description": "The base repository, `owner/repo`.", "examples": ["octo/app"]},
        "headRepository": _nullable(
            {**text, "description": "The repository the branch lives in (a fork's name for fork pull requests)."}
        ),
        "prNumber": {"type": "integer", "minimum": 1},
        "branchName": {**text, "description": "The pull request's head branch, as sent (not escaped)."},
        "headSha": _nullable({**text, "description": "The commit deployed, when known."}),
        "status": {"type": "string", "enum": STATUSES},
        "previewUrl": _nullable({**text, "description": "The preview's address once deployed."}),
        "error": _nullable({**text, "description": "Why the deployment failed."}),
        "provisioner": _nullable({**text, "description": "`simulated` or `command`."}),
        "trigger": _nullable({**text, "description": "What started it: `api`, `dashboard`, `comment`, `check_run`, `push`…"}),
        "requestedBy": _nullable({**text, "description": "`token:<name>` or a GitHub login."}),
        "installationId": _nullable({"type": "integer", "description": "The GitHub App installation serving the repository."}),
        "createdAt": _nullable({**text, "format": "date-time"}),
        "updatedAt": _nullable({**text, "format": "date-time"}),
        "destroyedAt": _nullable({**text, "format": "date-time", "description": "When the preview was torn down."}),
    }


DEPLOYMENT_REQUIRED = [
    "id",
    "deploymentId",
    "repository",
    "headRepository",
    "prNumber",
    "branchName",
    "headSha",
    "status",
    "previewUrl",
    "error",
    "provisioner",
    "trigger",
    "requestedBy",
    "installationId",
    "createdAt",
    "updatedAt",
]

SCHEMAS = {
    "Error": {
        "type": "object",
        "description": "Every error answer: a JSON object with a human-readable `error`; some carry more fields.",
        "properties": {"error": {"type": "string", "minLength": 1}},
        "required": ["error"],
        "additionalProperties": True,
    },
    "Conflict": {
        "allOf": [_ref("Error")],
        "type": "object",
        "properties": {
            "deploymentId": _nullable(
                {"type": "string", "description": "The deployment that holds the branch."}
            )
        },
        "required": ["deploymentId"],
    },
    "NotFound": {
        "allOf": [_ref("Error")],
        "type": "object",
        "description": "`status` is `idle` when the pull request has no live deployment; a path that "
        "matches no route (a parameter holding `/`, say) answers with `error` alone.",
        "properties": {"status": {"type": "string", "enum": ["idle"]}},
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "database": {"type": "string", "description": "`ok` or `down: <error type>`."},
            "redis": {"type": "string", "description": "`ok` or `down: <error type>`."},
            "github": {"type": "boolean", "description": "Whether the GitHub App is configured."},
        },
        "required": ["status", "database", "redis", "github"],
        "additionalProperties": False,
    },
    "DeployRequest": {
        "type": "object",
        "properties": {
            "branchName": {
                "type": "string",
                "minLength": 1,
                "maxLength": validation.MAX_BRANCH_LENGTH,
                "pattern": BRANCH_CHARACTERS,
                "description": "The pull request's head branch: a name `git check-ref-format --branch` "
                "accepts (no control characters, space, `~ ^ : ? * [ \\`, `..`, `@{` or `//`; not "
                "starting with `-`, `/` or `.`; not ending with `/`, `.` or `.lock`), at most "
                f"{validation.MAX_BRANCH_LENGTH} characters. Shell metacharacters are allowed. "
                "With the GitHub App configured it must be the pull request's current head branch.",
                "examples": ["feature/login", "fix-$(x)"],
            },
            "headSha": _nullable(
                {
                    "type": "string",
                    "pattern": SHA_PATTERN,
                    "description": "The commit to deploy (40 lowercase hex characters); "
                    "defaults to the pull request's head commit.",
                }
            ),
            "trigger": {
                "type": "string",
                "enum": ["api", "dashboard"],
                "description": "`dashboard` marks deploys started from the dashboard; anything else is recorded as `api`.",
            },
        },
        "required": ["branchName"],
        "additionalProperties": True,
    },
    "Deployment": {
        "type": "object",
        "description": "One deployment of a pull request's branch.",
        "properties": _deployment_properties(),
        "required": [*DEPLOYMENT_REQUIRED, "destroyedAt"],
        "additionalProperties": False,
    },
    "DeploymentSnapshot": {
        "type": "object",
        "description": "A deployment as just announced to the workers: the fields of `Deployment` "
        "(`destroyedAt` only once torn down).",
        "properties": _deployment_properties(),
        "required": DEPLOYMENT_REQUIRED,
        "additionalProperties": False,
    },
    "DestroyAccepted": {
        "type": "object",
        "description": "The pull request's current deployment, whose teardown was accepted.",
        "properties": {
            **_deployment_properties(),
            "destroy": {
                "type": "string",
                "enum": ["started", "queued"],
                "description": "`queued` when a job holds the branch: the teardown runs after it.",
            },
        },
        "required": [*DEPLOYMENT_REQUIRED, "destroy"],
        "additionalProperties": False,
    },
    "DeploymentHistory": {
        "type": "object",
        "properties": {
            "deployments": {
                "type": "array",
                "items": _ref("Deployment"),
                "maxItems": 50,
                "description": "Newest first, at most 50.",
            }
        },
        "required": ["deployments"],
        "additionalProperties": False,
    },
    "DeploymentDetail": {
        "type": "object",
        "description": "A deployment with its status changes and log lines.",
        "properties": {
            **_deployment_properties(),
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": STATUSES},
                        "message": _nullable({"type": "string"}),
                        "at": _nullable({"type": "string", "format": "date-time"}),
                    },
                    "required": ["status", "message", "at"],
                    "additionalProperties": False,
                },
            },
            "logs": {
                "type": "array",
                "maxItems": 1000,
                "items": {
                    "type": "object",
                    "properties": {"line": {"type": "string"}, "at": _nullable({"type": "string", "format": "date-time"})},
                    "required": ["line", "at"],
                    "additionalProperties": False,
                },
            },
        },
        "required": [*DEPLOYMENT_REQUIRED, "destroyedAt", "events", "logs"],
        "additionalProperties": False,
    },
    "PullRequest": {
        "type": "object",
        "description": "An open pull request the bot has seen, with its latest deployment.",
        "properties": {
            "repository": {"type": "string"},
            "prNumber": {"type": "integer", "minimum": 1},
            "title": _nullable({"type": "string"}),
            "branchName": _nullable({"type": "string"}),
            "headSha": _nullable({"type": "string"}),
            "author": _nullable({"type": "string"}),
            "createdAt": _nullable({"type": "string", "format": "date-time"}),
            "status": {"type": "string", "enum": STATUSES, "description": "The latest deployment's, else `idle`."},
            "deployment": _nullable(_ref("Deployment")),
        },
        "required": ["repository", "prNumber", "title", "branchName", "headSha", "author", "createdAt", "status", "deployment"],
        "additionalProperties": False,
    },
    "PullRequestList": {
        "type": "object",
        "properties": {"pullRequests": {"type": "array", "items": _ref("PullRequest")}},
        "required": ["pullRequests"],
        "additionalProperties": False,
    },
}

PARAMETERS = {
    "owner": {
        "name": "owner",
        "in": "path",
        "required": True,
        "description": "The GitHub user or organization owning the repository.",
        "example": "octo",
        "schema": {"type": "string", "pattern": OWNER_PATTERN, "minLength": 1, "maxLength": 39},
    },
    "repo": {
        "name": "repo",
        "in": "path",
        "required": True,
        "description": "The repository's name (not `.` or `..`).",
        "example": "app",
        "schema": {"type": "string", "pattern": REPO_PATTERN, "minLength": 1, "maxLength": 100, "not": {"enum": [".", ".."]}},
    },
    "prNumber": {
        "name": "prNumber",
        "in": "path",
        "required": True,
        "description": "The pull request's number.",
        "example": 1,
        "schema": {"type": "integer", "minimum": 1, "maximum": validation.MAX_PR_NUMBER},
    },
    "deploymentId": {
        "name": "deploymentId",
        "in": "path",
        "required": True,
        "description": "A deployment's id (only its first 64 characters are looked at).",
        "example": "9f1c0e4b2d6a4f3e8b7c5a1d2e3f4a5b",
        "schema": {"type": "string", "minLength": 1},
    },
}

RESPONSES = {
    "BadRequest": _json(
        _ref("Error"),
        "Bad input: a malformed path parameter, query parameter or body. Nothing was queued or written.",
    ),
    "Unauthorized": _json(_ref("Error"), "No bearer token, or an unknown or revoked one."),
    "Forbidden": _json(_ref("Error"), "The token is limited to other repositories."),
    "NotFound": _json(_ref("NotFound"), "Nothing here (see the operation)."),
    "Unavailable": _json(_ref("Error"), "Redis or SQLite is unavailable; try again shortly."),
    "TooLarge": _json(_ref("Error"), "The request body is over 1 MiB."),
    "RateLimited": _json(
        _ref("Error"),
        "The token made more writes (deploys and destroys) this minute than PREVIEW_API_RATE_LIMIT allows.",
        headers={
            "Retry-After": {
                "description": "Seconds until the next minute starts.",
                "schema": {"type": "string", "pattern": r"^[0-9]+$"},
            }
        },
    ),
}

TOKEN = [{"bearerAuth": []}]
PUBLIC: list = []

PATHS = {
    "/api/health": {
        "get": {
            "operationId": "health",
            "summary": "Whether the database and Redis answer",
            "tags": ["service"],
            "security": PUBLIC,
            "responses": {
                "200": _json(_ref("Health"), "The database and Redis both answer."),
                "503": _json(_ref("Health"), "The database or Redis does not answer; the body says which."),
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["service"],
            "security": PUBLIC,
            "responses": {
                "200": _json({"type": "object", "required": ["openapi", "info", "paths"]}, "The OpenAPI document."),
            },
        }
    },
    "/api/repos/{owner}/{repo}/pull-requests/{prNumber}/deploy": {
        "parameters": PR_PARAMETERS,
        "post": {
            "operationId": "deploy",
            "summary": "Deploy the pull request's branch to its preview",
            "description": "Queues a deploy and answers at once with the deployment in `deploying`. "
            "One deployment per branch runs at a time: while one runs, the answer is 409.",
            "tags": ["deployments"],
            "security": TOKEN,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("DeployRequest")}},
            },
            "responses": {
                "202": _json(_ref("DeploymentSnapshot"), "The deploy is queued."),
                **PULL_REQUEST_ERRORS,
                "409": _json(_ref("Conflict"), "A deployment of this branch is already in progress."),
                "413": _error("TooLarge"),
                "422": _json(
                    _ref("Error"),
                    "GitHub App only: the pull request is not open or not visible to the app, or "
                    "`branchName` is not its head branch.",
                ),
                "429": _error("RateLimited"),
                "502": _json(_ref("Error"), "GitHub App only: GitHub could not be reached to check the pull request."),
            },
        },
    },
    "/api/repos/{owner}/{repo}/pull-requests/{prNumber}/deployment": {
        "parameters": PR_PARAMETERS,
        "get": {
            "operationId": "getDeployment",
            "summary": "The pull request's latest deployment",
            "tags": ["deployments"],
            "security": TOKEN,
            "responses": {
                "200": _json(_ref("Deployment"), "The latest deployment (any status but idle)."),
                **PULL_REQUEST_ERRORS,
                "404": _json(_ref("NotFound"), "No live deployment (`status` is `idle`)."),
            },
        },
        "delete": {
            "operationId": "destroyDeployment",
            "summary": "Tear the pull request's preview down",
            "tags": ["deployments"],
            "security": TOKEN,
            "responses": {
                "202": _json(_ref("DestroyAccepted"), "The teardown is queued."),
                **PULL_REQUEST_ERRORS,
                "404": _json(_ref("NotFound"), "No live deployment (`status` is `idle`)."),
                "429": _error("RateLimited"),
            },
        },
    },
    "/api/repos/{owner}/{repo}/pull-requests/{prNumber}/deployments": {
        "parameters": PR_PARAMETERS,
        "get": {
            "operationId": "listDeployments",
            "summary": "The pull request's deployments, newest first",
            "tags": ["deployments"],
            "security": TOKEN,
            "responses": {
                "200": _json(_ref("DeploymentHistory"), "Up to 50 deployments, newest first."),
                **PULL_REQUEST_ERRORS,
            },
        },
    },
    "/api/deployments/{deploymentId}": {
        "parameters": [_parameter("deploymentId")],
        "get": {
            "operationId": "getDeploymentById",
            "summary": "One deployment with its events and logs",
            "tags": ["deployments"],
            "security": TOKEN,
            "responses": {
                "200": _json(_ref("DeploymentDetail"), "The deployment, its status changes and log lines."),
                **AUTHENTICATED_ERRORS,
                "404": _json(_ref("Error"), "No such deployment, or one in a repository the token may not see."),
            },
        },
    },
    "/api/pull-requests": {
        "get": {
            "operationId": "listPullRequests",
            "summary": "Open pull requests the bot has seen, newest first, with their latest deployment",
            "tags": ["pull requests"],
            "security": TOKEN,
            "parameters": [
                {
                    "name": "repository",
                    "in": "query",
                    "required": False,
                    "description": "Only this repository (`owner/repo`); an empty value means all.",
                    "schema": {"type": "string", "pattern": REPOSITORY_PATTERN},
                },
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "description": "Only pull requests whose latest deployment has this status; an empty value means all.",
                    "schema": {"type": "string", "enum": STATUSES},
                },
            ],
            "responses": {
                "200": _json(_ref("PullRequestList"), "The pull requests the token may see."),
                "400": _error("BadRequest"),
                **AUTHENTICATED_ERRORS,
            },
        }
    },
}

PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Origin": {"description": "Always `*`: the API is authorized by tokens, never cookies.", "schema": {"type": "string", "enum": ["*"]}},
    "Access-Control-Allow-Methods": {"description": "`GET, POST, DELETE, OPTIONS`.", "schema": {"type": "string"}},
    "Access-Control-Allow-Headers": {"description": "`Authorization, Content-Type`.", "schema": {"type": "string"}},
    "Access-Control-Max-Age": {"description": "Seconds a browser may cache the answer.", "schema": {"type": "string", "pattern": r"^[0-9]+$"}},
}


def _with_preflight(paths: dict) -> dict:
    """Every path answers a browser's CORS preflight (OPTIONS) without a token, so a dashboard
    served from another origin can call the API."""
    result = {}
    for path, item in paths.items():
        operation = next(op for method, op in item.items() if method != "parameters")
        result[path] = {
            **item,
            "options": {
                "operationId": f"{operation['operationId']}Preflight",
                "summary": "CORS preflight",
                "tags": ["service"],
                "security": PUBLIC,
                "responses": {"204": {"description": "Cross-origin calls are allowed.", "headers": PREFLIGHT_HEADERS}},
            },
        }
    return result


_DOCUMENT = {
    "openapi": OPENAPI_VERSION,
    "info": {
        "title": "previewbot API",
        "version": "1",
        "description": "Preview environments for pull requests. JSON in and out with camelCase fields. "
        "Every route but `/api/health` and `/api/openapi.json` needs an API token "
        "(`previewbot token create NAME`) as `Authorization: Bearer <token>`. Every route answers "
        "CORS preflights, and every answer allows any origin. Every error is a JSON "
        "object with an `error` field, including 404 for unknown paths and 405 for methods a path "
        "does not have. Bad input is refused before anything is queued or written.",
    },
    "servers": [{"url": "/", "description": "The web process (`previewbot web`)."}],
    "tags": [
        {"name": "service", "description": "Health and this description."},
        {"name": "deployments", "description": "Deploy, inspect and destroy pull-request previews."},
        {"name": "pull requests", "description": "What the dashboard lists."},
    ],
    "security": TOKEN,
    "paths": _with_preflight(PATHS),
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API token from `previewbot token create NAME`; tokens may be limited to repositories.",
            }
        },
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "responses": RESPONSES,
    },
}
