"""A fake GitHub REST API, served over real HTTP on loopback, as strict as GitHub.

The bot's web and worker processes are separate OS processes, so the fake is a
real HTTP server (werkzeug, one thread per connection) that they reach through
``GITHUB_API_URL=fake.url``. Tests drive it from the outside::

    with FakeGitHub(app_id=1, public_key_pem=public_pem) as fake:
        fake.add_installation(1, account="octo")
        fake.add_repo("octo/app", installation_id=1)
        fake.add_pull("octo/app", 1, head_ref="feature", head_sha="a" * 40)
        ...  # start the bot with GITHUB_API_URL=fake.url, deliver webhooks
        fake.wait_for(lambda: fake.calls_to("POST", r"/repos/octo/app/check-runs"))
        assert fake.violations == []

Strictness, in the order a request is checked:

1. ``fake.down`` answers 503 to everything.
2. ``User-Agent`` is required (403), ``X-GitHub-Api-Version`` must be a
   version GitHub serves (400).
3. Method + path must be an operation of ``fixtures/github-openapi.json``
   (GitHub's own description, trimmed); integer path parameters only match
   digits. Otherwise 404.
4. Query parameters are type/enum checked (422); unknown ones are reported as
   violations but, like GitHub, ignored.
5. The JSON body must parse (400) and validate against the operation's
   ``requestBody`` schema (422 "Validation Failed").
6. Faults injected with :meth:`FakeGitHub.fail` (or a write-only outage,
   :meth:`FakeGitHub.fail_writes`) answer here. Those of
   :meth:`FakeGitHub.fail_after_performing` answer after step 8 instead: the
   request is performed, and the client gets a 502 (or a dropped connection).
7. Authentication: app endpoints need an app JWT (RS256, iss, iat, exp checked
   like GitHub); repository endpoints need an unexpired installation token of
   the installation that owns the repository, with the needed permission; user
   endpoints (``/user…``) a user access token from the OAuth web flow.
8. The endpoint itself: semantic checks the schema cannot express (check-run
   action limits, conclusion/status consistency, unknown refs...), then state.

Every rejection that means "the client sent something GitHub would refuse" is
appended to ``fake.violations``. Rejections that a correct client meets in
normal operation are not: an expired installation token (clients refresh), a
resource that does not exist (404 for an unknown pull number), injected faults.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import math
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

import jsonschema
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.datastructures import Headers
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

SPEC_PATH = Path(__file__).parent / "fixtures" / "github-openapi.json"
DOCS_URL = "https://docs.github.com/rest"
WEB_URL = "https://github.com"
#: Where source archive links point (GitHub's are codeload.github.com links valid for minutes).
CODELOAD_URL = "https://codeload.example"

#: API versions GitHub serves; any other X-GitHub-Api-Version is a 400.
SUPPORTED_API_VERSIONS = ("2022-11-28", "2026-03-10")

#: GitHub tolerates this much clock drift on a JWT's ``iat``.
JWT_CLOCK_SKEW = 60
#: GitHub rejects app JWTs that live longer than 10 minutes.
JWT_MAX_LIFETIME = 600

PERMISSION_LEVELS = {"none": 0, "read": 1, "write": 2, "admin": 3}

#: Repository role -> what the collaborator-permission endpoint reports in
#: ``permission`` (GitHub folds maintain into write and triage into read) and
#: the ``user.permissions`` booleans.
ROLES = {
    "admin": ("admin", dict(admin=True, maintain=True, push=True, triage=True, pull=True)),
    "maintain": ("write", dict(admin=False, maintain=True, push=True, triage=True, pull=True)),
    "write": ("write", dict(admin=False, maintain=False, push=True, triage=True, pull=True)),
    "triage": ("read", dict(admin=False, maintain=False, push=False, triage=True, pull=True)),
    "read": ("read", dict(admin=False, maintain=False, push=False, triage=False, pull=True)),
    "none": ("none", dict(admin=False, maintain=False, push=False, triage=False, pull=False)),
}

#: Installation permissions when a test does not pass its own.
DEFAULT_INSTALLATION_PERMISSIONS = {
    "metadata": "read",
    "contents": "read",
    "pull_requests": "write",
    "issues": "write",
    "checks": "write",
    "deployments": "write",
    "statuses": "write",
}
DEFAULT_EVENTS = ["check_run", "issue_comment", "pull_request"]
#: ``Call.status`` of a request whose connection the fake closed without answering.
DROPPED = 0
REACTION_CONTENTS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "eyes", "rocket")
SHA_RE = re.compile(r"[0-9a-f]{40}")


# --------------------------------------------------------------------------
# Small helpers shared by the fake and tests
# --------------------------------------------------------------------------


def stable_id(kind: str, key: str) -> int:
    """A deterministic positive id for ``key`` (same formula as tests/webhooks.py).

    Users and repositories get the same id in webhook payloads and in API
    answers, so a bot comparing ``sender.id`` with ``user.id`` is not fooled.
    """
    digest = hashlib.sha256(f"{kind}:{key.lower()}".encode()).hexdigest()
    return int(digest[:8], 16) % 900_000_000 + 100_000_000


def node_id(type_name: str, ident: int) -> str:
    """A legacy GraphQL node id, e.g. ``MDQ6VXNlcjE=`` for ("User", 1)."""
    return base64.b64encode(f"0{len(type_name)}:{type_name}{ident}".encode()).decode()


def iso(ts: float) -> str:
    """Format an epoch timestamp the way GitHub does: ``2024-01-02T03:04:05Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


_DATE_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def is_date_time(value: Any) -> bool:
    """RFC 3339 date-time check (jsonschema needs an extra package for it).

    Like every JSON Schema format, it only constrains strings.
    """
    if not isinstance(value, str):
        return True
    if not _DATE_TIME_RE.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
FORMAT_CHECKER.checks("date-time")(is_date_time)
# GitHub's description gives uri fields a default of "" (deployment statuses),
# so the empty string counts as a uri here.
FORMAT_CHECKER.checks("uri")(
    lambda v: not isinstance(v, str) or v == "" or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", v) is not None
)


def openapi_to_jsonschema(node: Any, *, in_properties: bool = False) -> Any:
    """Turn an OpenAPI 3.0 schema into plain JSON Schema.

    The only OpenAPI 3.0 keyword that changes validation here is ``nullable``
    (the package ships no 3.1 description): ``{"type": "string", "nullable":
    true}`` becomes ``{"type": ["string", "null"]}``; a nullable schema without
    ``type`` (``allOf``/``anyOf`` wrappers) becomes ``anyOf [schema, null]``.
    Inside a ``properties`` map the keys are property names, not keywords.
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    if in_properties:
        return {name: openapi_to_jsonschema(schema) for name, schema in node.items()}
    out = {
        key: openapi_to_jsonschema(value, in_properties=(key == "properties"))
        for key, value in node.items()
        if key != "nullable"
    }
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def make_validator(schema: dict) -> jsonschema.protocols.Validator:
    """A validator for an OpenAPI 3.0 schema.

    OpenAPI 3.0 schemas are a Draft 4/5 dialect (boolean ``exclusiveMinimum``),
    hence Draft4Validator; formats checked: date-time and uri.
    """
    return jsonschema.Draft4Validator(openapi_to_jsonschema(schema), format_checker=FORMAT_CHECKER)


# --------------------------------------------------------------------------
# The OpenAPI description
# --------------------------------------------------------------------------


@dataclass
class Operation:
    """One (method, path template) of the description, compiled for matching."""

    method: str
    template: str
    operation_id: str
    docs_url: str
    regex: re.Pattern = field(repr=False)
    path_params: dict[str, dict] = field(repr=False)
    query_params: dict[str, dict] = field(repr=False)
    body_required: bool = field(repr=False)
    body_validator: jsonschema.protocols.Validator | None = field(repr=False)
    responses: dict[str, dict] = field(repr=False)

    def match(self, raw_path: str) -> dict[str, Any] | None:
        """Path parameters (unquoted, integers converted) if ``raw_path`` matches."""
        m = self.regex.fullmatch(raw_path)
        if not m:
            return None
        params: dict[str, Any] = {}
        for name, value in m.groupdict().items():
            value = unquote(value)
            params[name] = int(value) if self.path_params[name].get("type") == "integer" else value
        return params

    def response_validator(self, status: int) -> jsonschema.protocols.Validator | None:
        """Validator for the JSON body of a ``status`` response, if documented."""
        response = self.responses.get(str(status))
        schema = (response or {}).get("content", {}).get("application/json", {}).get("schema")
        return make_validator(schema) if schema else None


class OpenAPISpec:
    """The trimmed GitHub description, with route matching and validation."""

    def __init__(self, path: Path = SPEC_PATH):
        with open(path, encoding="utf-8") as f:
            self.document = json.load(f)
        self.source = self.document.get("x-source", "unknown")
        self.operations: list[Operation] = []
        for template, methods in self.document["paths"].items():
            for method, op in methods.items():
                self.operations.append(self._compile(method.upper(), template, op))
        # Literal segments first, so /issues/comments/{id} wins over /issues/{n}/...
        self.operations.sort(key=lambda o: -sum(not s.startswith("{") for s in o.template.split("/")))

    @staticmethod
    def _compile(method: str, template: str, op: dict) -> Operation:
        params = op.get("parameters", [])
        path_params = {p["name"]: p["schema"] for p in params if p["in"] == "path"}
        query_params = {p["name"]: p for p in params if p["in"] == "query"}

        def segment(match: re.Match) -> str:
            name = match.group(1)
            if path_params[name].get("type") == "integer":
                pattern = "[0-9]+"
            else:  # a file's `path` spans segments (octokit expands it as `{+path}`)
                pattern = ".+" if name == "path" else "[^/]+"
            return f"(?P<{name}>{pattern})"

        regex = re.compile(re.sub(r"\{(\w+)\}", segment, re.escape(template).replace(r"\{", "{").replace(r"\}", "}")))
        body = op.get("requestBody")
        schema = body["content"]["application/json"]["schema"] if body else None
        return Operation(
            method=method,
            template=template,
            operation_id=op["operationId"],
            docs_url=op.get("externalDocs", {}).get("url", DOCS_URL),
            regex=regex,
            path_params=path_params,
            query_params=query_params,
            body_required=bool(body and body.get("required")),
            body_validator=make_validator(schema) if schema else None,
            responses=op.get("responses", {}),
        )

    def find(self, method: str, raw_path: str) -> tuple[Operation, dict] | None:
        """The operation and path parameters for a request, or None (GitHub: 404)."""
        for op in self.operations:
            if op.method == method:
                params = op.match(raw_path)
                if params is not None:
                    return op, params
        return None

    def operation(self, method: str, template: str) -> Operation:
        """Look an operation up by method and path template."""
        for op in self.operations:
            if op.method == method.upper() and op.template == template:
                return op
        raise KeyError(f"{method} {template}")


# --------------------------------------------------------------------------
# Recorded calls, faults, rejections
# --------------------------------------------------------------------------


@dataclass
class Call:
    """One request the fake received and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]  # lower-case names
    status: int  # what the client got; DROPPED when the connection was closed instead
    response: Any = None

    def __str__(self) -> str:
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{self.method} {self.path}{query} -> {self.status or 'dropped'}"


@dataclass
class Fault:
    """An injected failure (see :meth:`FakeGitHub.fail`)."""

    method: str
    path_regex: re.Pattern
    status: int
    remaining: int
    headers: dict[str, str]
    body: Any
    skip: int = 0  # matching calls answered as usual before the fault's turn
    after_performing: bool = False  # the endpoint runs first; its answer is replaced
    drop_connection: bool = False  # no answer at all: the connection is closed

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.method in ("*", method) and bool(self.path_regex.fullmatch(path))


class Rejection(Exception):
    """Raised anywhere while handling a request to answer with an error."""

    def __init__(self, status: int, message: str, *, violation: str | None = None,
                 errors: list[dict] | None = None, docs: str = DOCS_URL, body: Any = None):
        super().__init__(message)
        self.status = status
        self.violation = violation
        if body is None:
            body = {"message": message, "documentation_url": docs}
            if errors is not None:
                body["errors"] = errors
            body["status"] = str(status)
        self.body = body


def _not_found(docs: str = DOCS_URL, violation: str | None = None) -> Rejection:
    return Rejection(404, "Not Found", docs=docs, violation=violation)


def _validation_failed(errors: list[dict], docs: str, what: str) -> Rejection:
    detail = "; ".join(f"{e.get('field') or '(body)'}: {e.get('message') or e['code']}" for e in errors)
    return Rejection(422, "Validation Failed", errors=errors, docs=docs, violation=f"{what}: {detail}")


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


@dataclass
class Installation:
    id: int
    account: str
    account_type: str
    permissions: dict[str, str]
    events: list[str]
    repository_selection: str
    created_at: float


@dataclass
class Token:
    token: str
    installation_id: int
    expires_at: float
    permissions: dict[str, str]
    repositories: set[str] | None  # lower-case full names, None = all of the installation's


@dataclass
class Repo:
    full_name: str
    installation_id: int
    private: bool
    id: int
    default_branch: str
    created_at: float
    branches: dict[str, str] = field(default_factory=dict)  # branch -> sha
    commits: set[str] = field(default_factory=set)
    issues: set[int] = field(default_factory=set)
    pulls: dict[int, dict] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # lower-case login -> role
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> path -> content

    @property
    def owner(self) -> str:
        return self.full_name.split("/")[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/")[1]


#: Which installation permission each repository operation needs (any of).
OPERATION_PERMISSIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "pulls/list": (("pull_requests", "read"),),
    "pulls/get": (("pull_requests", "read"),),
    "repos/get-collaborator-permission-level": (("metadata", "read"),),
    "reactions/create-for-issue-comment": (("issues", "write"), ("pull_requests", "write")),
    "issues/list-comments": (("issues", "read"), ("pull_requests", "read")),
    "issues/create-comment": (("issues", "write"), ("pull_requests", "write")),
    "issues/get-comment": (("issues", "read"), ("pull_requests", "read")),
    "issues/update-comment": (("issues", "write"), ("pull_requests", "write")),
    "checks/create": (("checks", "write"),),
    "checks/get": (("checks", "read"),),
    "checks/update": (("checks", "write"),),
    "checks/list-for-ref": (("checks", "read"),),
    "repos/list-deployments": (("deployments", "read"),),
    "repos/create-deployment": (("deployments", "write"),),
    "repos/list-deployment-statuses": (("deployments", "read"),),
    "repos/create-deployment-status": (("deployments", "write"),),
    "repos/get-content": (("contents", "read"),),
    "repos/download-tarball-archive": (("contents", "read"),),
}

#: Operations authenticated as the app (JWT) rather than as an installation.
APP_OPERATIONS = {
    "apps/get-authenticated",
    "apps/list-installations",
    "apps/create-installation-access-token",
    "apps/get-repo-installation",
}

#: Operations that take no credential: the manifest flow's code is the credential.
UNAUTHENTICATED_OPERATIONS = {"apps/create-from-manifest"}

#: Operations authenticated as a user (a user access token from the OAuth web flow).
USER_OPERATIONS = {
    "users/get-authenticated",
    "apps/list-installations-for-authenticated-user",
    "apps/list-installation-repos-for-authenticated-user",
}
#: GitHub's OAuth web flow (web pages, not the REST API); a code works once, for 10 minutes.
OAUTH_AUTHORIZE_PATH = "/login/oauth/authorize"
OAUTH_TOKEN_PATH = "/login/oauth/access_token"
OAUTH_CODE_TTL = 600

#: GitHub's web form of the manifest flow (not the REST API): ``POST`` a ``manifest`` field here.
MANIFEST_FORM_PATH = re.compile(r"/(?:organizations/(?P<org>[A-Za-z0-9-]{1,39})/)?settings/apps/new")
#: Top-level keys GitHub reads from an App manifest.
MANIFEST_KEYS = {"name", "url", "hook_attributes", "redirect_url", "callback_urls", "setup_url", "description",
                 "public", "default_events", "default_permissions", "request_oauth_on_install", "setup_on_update"}
#: The permission (any of) an App must ask for to subscribe to an event, for the events bots use.
EVENT_PERMISSIONS = {
    "check_run": ("checks",), "check_suite": ("checks",), "issue_comment": ("issues", "pull_requests"),
    "issues": ("issues",), "pull_request": ("pull_requests",), "pull_request_review": ("pull_requests",),
    "push": ("contents",), "deployment": ("deployments",), "deployment_status": ("deployments",),
}
#: A manifest's code works once, within an hour.
MANIFEST_CODE_TTL = 3600

#: The ``resource`` GitHub names in 422 errors, by operation.
RESOURCES = {
    "apps/create-installation-access-token": "Installation",
    "reactions/create-for-issue-comment": "Reaction",
    "issues/create-comment": "IssueComment",
    "issues/update-comment": "IssueComment",
    "checks/create": "CheckRun",
    "checks/update": "CheckRun",
    "repos/create-deployment": "Deployment",
    "repos/create-deployment-status": "DeploymentStatus",
}

#: Keys kept on stored check runs / deployments for tests but not part of
#: GitHub's representation, so never sent to clients.
CHECK_RUN_INTERNAL = ("repository", "actions", "annotations", "images")
DEPLOYMENT_INTERNAL = ("repository", "statuses")


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not log every request to stderr."""

    def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 - werkzeug's name
        if type != "info":
            super().log(type, message, *args)


# --------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------


class FakeGitHub:
    """Fake GitHub REST API server. See the module docstring for behaviour.

    Public state (read it under ``with fake.lock:`` if the bot may be writing):

    - ``calls``: list of :class:`Call`, every request in order
    - ``violations``: list of str, every request GitHub would have refused
    - ``comments[repo][issue_number]``: list of issue-comment dicts
    - ``check_runs[id]``: check-run dicts (plus ``repository``, ``actions``,
      ``annotations``)
    - ``deployments[id]``: deployment dicts (plus ``repository`` and
      ``statuses``, a list of deployment-status dicts, oldest first)
    - ``reactions[comment_id]``: list of reaction contents, e.g. ``["eyes"]``
    - ``repos[full_name]``: :class:`Repo`; ``installations[id]``: :class:`Installation`
    - ``tokens_issued``: number of installation tokens created
    - ``signed_in_login``: who is signed in to GitHub in the browser: the OAuth
      authorize page (``GET /login/oauth/authorize``) approves at once for them and
      redirects with a code; ``POST /login/oauth/access_token`` trades it (with
      ``client_id`` and ``client_secret``) for a user access token
    - ``user_tokens``: every user access token issued, token -> login
    - ``manifests``: every App manifest posted to the manifest flow's form
      (``POST /settings/apps/new``, which redirects with a code at once), with
      its ``org`` and ``state``; exchanging the code makes the fake that new App
    - ``archive_links``: every short-lived source archive link handed out, in order
    - ``token_ttl_seconds``: lifetime of new installation tokens (3600)
    - ``down``: when True every request answers 503
    - ``clock``: ``time.time``; replace it to move the fake's time
    """

    def __init__(self, app_id: int, public_key_pem: bytes | str, *, slug: str = "previewbot",
                 name: str | None = None, owner: str = "octo", client_id: str | None = None,
                 spec_path: Path = SPEC_PATH):
        self.app_id = int(app_id)
        self.slug = slug
        self.app_name = name or slug
        self.app_owner = owner
        self.client_id = client_id or f"Iv1.{hashlib.sha1(str(app_id).encode()).hexdigest()[:16]}"
        self.client_secret = secrets.token_hex(20)
        self.bot_login = f"{slug}[bot]"
        self._public_key = self._load_public_key(public_key_pem)
        self.spec = OpenAPISpec(spec_path)

        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._version = 0  # bumped on every recorded call; wait_for sleeps on it

        self.clock: Callable[[], float] = time.time
        self.started_at = time.time()
        self.token_ttl_seconds = 3600
        self.down = False

        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.installations: dict[int, Installation] = {}
        self.repos: dict[str, Repo] = {}
        self.comments: dict[str, dict[int, list[dict]]] = {}
        self.check_runs: dict[int, dict] = {}
        self.deployments: dict[int, dict] = {}
        self.reactions: dict[int, list[str]] = {}
        self.tokens_issued = 0
        self.archive_links: list[str] = []

        self.manifests: list[dict] = []  # every manifest posted to the form, with its org and state
        self.signed_in_login: str | None = None
        self.user_tokens: dict[str, str] = {}  # user access token -> login
        self._oauth_codes: dict[str, tuple[str, str, float]] = {}  # code -> login, redirect_uri, expiry
        self._manifest_codes: dict[str, tuple[dict, str | None, float]] = {}  # code -> manifest, org, expiry
        self._tokens: dict[str, Token] = {}
        self._faults: list[Fault] = []
        self._reaction_records: dict[int, list[dict]] = {}
        self._comment_index: dict[int, tuple[str, int]] = {}
        self._check_suites: dict[tuple[str, int, str], int] = {}
        self._clone_urls: dict[str, str] = {}
        self._account_types: dict[str, str] = {}
        self._ratelimit_used: dict[str, int] = {}
        self._ids = {kind: itertools.count(base) for kind, base in (
            ("comment", 1_000_000_001), ("check_run", 2_000_000_001), ("deployment", 3_000_001),
            ("status", 4_000_001), ("reaction", 5_000_001), ("suite", 6_000_001), ("app", 900_001))}

        self._server = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ life

    @staticmethod
    def _load_public_key(pem: bytes | str):
        data = pem.encode() if isinstance(pem, str) else pem
        if b"PRIVATE KEY" in data:  # accept the private key too, for convenience
            return serialization.load_pem_private_key(data, password=None).public_key()
        return serialization.load_pem_public_key(data)

    def start(self) -> FakeGitHub:
        """Listen on 127.0.0.1 (random port) in a background thread."""
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"fakegithub:{self._server.server_port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ test setup

    def add_installation(self, installation_id: int, account: str = "octo", *, account_type: str = "User",
                         permissions: dict[str, str] | None = None, events: list[str] | None = None,
                         repository_selection: str = "all") -> Installation:
        """Install the app on ``account`` (a User or Organization)."""
        with self.lock:
            inst = Installation(
                id=int(installation_id), account=account, account_type=account_type,
                permissions=dict(permissions or DEFAULT_INSTALLATION_PERMISSIONS),
                events=list(events or DEFAULT_EVENTS), repository_selection=repository_selection,
                created_at=self.clock())
            self.installations[inst.id] = inst
            self._account_types[account.lower()] = account_type
            return inst

    def add_repo(self, full_name: str, installation_id: int, private: bool = False, *,
                 default_branch: str = "main", clone_url: str | None = None) -> Repo:
        """Add a repository owned by installation ``installation_id``.

        ``clone_url`` replaces the ``https://github.com/...git`` URL in every
        repository object naming it (point it at a local bare repo).
        """
        with self.lock:
            if int(installation_id) not in self.installations:
                raise ValueError(f"add_installation({installation_id}) first")
            repo = Repo(full_name=full_name, installation_id=int(installation_id), private=private,
                        id=stable_id("repo", full_name), default_branch=default_branch,
                        created_at=self.clock())
            base_sha = hashlib.sha1(f"{full_name}@{default_branch}".encode()).hexdigest()
            repo.branches[default_branch] = base_sha
            repo.commits.add(base_sha)
            self.repos[full_name] = repo
            self.comments.setdefault(full_name, {})
            if clone_url:
                self._clone_urls[full_name.lower()] = clone_url
            return repo

    def set_clone_url(self, full_name: str, clone_url: str) -> None:
        """Make repository objects for ``full_name`` (also forks) carry ``clone_url``."""
        with self.lock:
            self._clone_urls[full_name.lower()] = clone_url

    def add_commit(self, repo: str, sha: str, branch: str | None = None) -> None:
        """Make ``sha`` known in ``repo`` (optionally as the tip of ``branch``)."""
        with self.lock:
            r = self._repo(repo)
            r.commits.add(sha)
            if branch:
                r.branches[branch] = sha

    def add_file(self, repo: str, path: str, content: str | bytes, *, ref: str | None = None) -> None:
        """Put a file at ``path`` in the commit ``ref`` names (a branch, a known
        sha or a new sha; default: the default branch), for the contents API."""
        with self.lock:
            r = self._repo(repo)
            ref = ref or r.default_branch
            sha = self._resolve_ref(r, ref)
            if sha is None:
                if not SHA_RE.fullmatch(ref):
                    raise KeyError(f"unknown ref {ref!r} in {repo}; add_commit or add_pull first")
                sha = ref
                r.commits.add(sha)
            data = content.encode() if isinstance(content, str) else content
            r.files.setdefault(sha, {})[path.strip("/")] = data

    def add_issue(self, repo: str, number: int) -> None:
        """Make issue ``number`` exist (pull requests exist as issues already)."""
        with self.lock:
            self._repo(repo).issues.add(int(number))

    def add_pull(self, repo: str, number: int, head_ref: str, head_sha: str, head_repo: str | None = None,
                 user: str = "alice", title: str = "Add feature", state: str = "open", *,
                 base_ref: str | None = None, body: str | None = None, draft: bool = False,
                 merged: bool = False) -> dict:
        """Add pull request ``number``; returns its (mutable) record.

        ``head_repo`` other than ``repo`` makes it a fork PR: the head branch
        then lives in the fork only, and the base repo knows the head commit as
        ``refs/pull/N/head`` (as on GitHub).
        """
        with self.lock:
            r = self._repo(repo)
            now = self.clock()
            pull = {
                "number": int(number), "id": stable_id("pull", f"{repo}#{number}"), "title": title,
                "body": body, "user": user, "state": state, "draft": draft,
                "head_ref": head_ref, "head_sha": head_sha, "head_repo": head_repo or repo,
                "base_ref": base_ref or r.default_branch, "merged": merged,
                "created_at": now, "updated_at": now,
                "closed_at": now if state == "closed" else None,
                "merged_at": now if merged else None,
                "merge_commit_sha": hashlib.sha1(f"{repo}#{number}:merge".encode()).hexdigest(),
            }
            r.pulls[pull["number"]] = pull
            r.issues.add(pull["number"])
            self._index_pull_commits(r, pull)
            return pull

    def update_pull(self, repo: str, number: int, **changes: Any) -> dict:
        """Change a pull record (e.g. ``head_sha=`` after a push, ``state="closed"``)."""
        with self.lock:
            r = self._repo(repo)
            pull = r.pulls[int(number)]
            unknown = set(changes) - set(pull)
            if unknown:
                raise KeyError(f"unknown pull fields: {sorted(unknown)}")
            pull.update(changes)
            now = self.clock()
            pull["updated_at"] = now
            if changes.get("state") == "closed" and not pull["closed_at"]:
                pull["closed_at"] = now
            if changes.get("state") == "open":
                pull["closed_at"] = None
            if changes.get("merged") and not pull["merged_at"]:
                pull["merged_at"] = now
            self._index_pull_commits(r, pull)
            return pull

    def _index_pull_commits(self, repo: Repo, pull: dict) -> None:
        repo.commits.add(pull["head_sha"])
        repo.branches[f"refs/pull/{pull['number']}/head"] = pull["head_sha"]
        if pull["head_repo"].lower() == repo.full_name.lower():
            repo.branches[pull["head_ref"]] = pull["head_sha"]

    def set_permission(self, repo: str, username: str, permission: str) -> None:
        """Give ``username`` a role on ``repo``: admin/maintain/write/triage/read/none."""
        if permission not in ROLES:
            raise ValueError(f"permission must be one of {sorted(ROLES)}")
        with self.lock:
            self._repo(repo).roles[username.lower()] = permission

    def add_comment(self, repo: str, issue_number: int, body: str, user: str = "alice", *,
                    user_type: str | None = None) -> dict:
        """Seed a comment (e.g. the user's ``/preview``); returns the stored dict.

        Pass its ``id`` to ``tests.webhooks.issue_comment(comment_id=...)`` so
        the bot can react to it.
        """
        with self.lock:
            r = self._repo(repo)
            r.issues.add(int(issue_number))
            return self._create_comment(r, int(issue_number), body, self._user_json(user, user_type))

    def add_check_run(self, repo: str, head_sha: str, name: str, *, app_id: int | None = None,
                      status: str = "completed", conclusion: str | None = "success",
                      external_id: str = "") -> dict:
        """Seed a check run, e.g. one owned by another app (``app_id``)."""
        with self.lock:
            r = self._repo(repo)
            r.commits.add(head_sha)
            body = {"name": name, "head_sha": head_sha, "status": status, "external_id": external_id}
            if conclusion:
                body["conclusion"] = conclusion
            return self._new_check_run(r, body, app_id=app_id or self.app_id)

    def expire_tokens(self) -> None:
        """Make every installation token issued so far expired."""
        with self.lock:
            for tok in self._tokens.values():
                tok.expires_at = min(tok.expires_at, self.clock() - 1)

    def fail(self, method: str, path_regex: str, status: int, times: int = 1,
             headers: dict[str, str] | None = None, body: Any = None) -> Fault:
        """Answer the next ``times`` matching calls with ``status``.

        ``method`` is an HTTP method or ``"*"``; ``path_regex`` must match the
        whole path (no query string). ``headers`` override the defaults (e.g.
        ``{"x-ratelimit-remaining": "0", "x-ratelimit-reset": "..."}`` or
        ``{"Retry-After": "1"}``). Such calls are recorded, not violations.
        """
        fault = Fault(method=method.upper(), path_regex=re.compile(path_regex), status=int(status),
                      remaining=int(times), headers={k.lower(): str(v) for k, v in (headers or {}).items()},
                      body=body)
        with self.lock:
            self._faults.append(fault)
        return fault

    def fail_after_performing(self, method: str, path_regex: str, status: int = 502, *, nth: int = 1,
                              times: int = 1, drop_connection: bool = False) -> Fault:
        """Perform the ``nth`` matching call (and the ``times - 1`` after it) like
        GitHub, then answer ``status`` instead of its answer, or with
        ``drop_connection`` close the connection without a byte of answer: the
        resource exists, the client sees a failure (a proxy that lost GitHub's
        answer). A call the endpoint refuses gets that refusal and leaves the fault
        for the next one. The client's view is recorded (``Call.status`` is
        ``DROPPED`` for a dropped connection); such calls are not violations.
        """
        fault = self.fail(method, path_regex, status, times)
        with self.lock:
            fault.skip, fault.after_performing, fault.drop_connection = nth - 1, True, drop_connection
        return fault

    WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")

    def fail_writes(self, status: int = 502, path_regex: str = r"/.*",
                    headers: dict[str, str] | None = None) -> list[Fault]:
        """A write-only outage: answer ``status`` to every POST, PATCH, PUT and
        DELETE whose path matches ``path_regex`` (all of them by default, the
        installation-token endpoint included) while GETs work, until
        :meth:`end_faults` is called with what this returns."""
        return [self.fail(method, path_regex, status, times=10**9, headers=headers)
                for method in self.WRITE_METHODS]

    def end_faults(self, faults: Iterable[Fault]) -> None:
        """Switch injected faults off (their remaining answers are dropped)."""
        with self.lock:
            for fault in faults:
                fault.remaining = 0

    # ----------------------------------------------------------- observation

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        """Recorded calls with ``method`` ("*" = any) whose path fully matches."""
        pattern = re.compile(path_regex)
        with self.lock:
            return [c for c in self.calls
                    if method.upper() in ("*", c.method) and pattern.fullmatch(c.path)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10, message: str = "") -> Any:
        """Poll ``predicate()`` until truthy and return its value.

        Wakes up on every request the fake records and at least every 50 ms
        (the predicate may look at other things than the fake). The predicate
        runs without the fake's lock held, so it may talk to the bot. Raises
        AssertionError with the recent calls and violations on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                seen = self._version
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(self._timeout_report(predicate, timeout, message))
            with self._changed:
                if self._version == seen:
                    self._changed.wait(min(remaining, 0.05))

    def _timeout_report(self, predicate: Callable, timeout: float, message: str) -> str:
        with self.lock:
            recent = [str(c) for c in self.calls[-15:]]
            violations = list(self.violations)
        name = getattr(predicate, "__name__", repr(predicate))
        lines = [f"timed out after {timeout}s waiting for {message or name}",
                 f"last {len(recent)} of {len(self.calls)} calls to fake GitHub:"]
        lines += [f"  {c}" for c in recent] or ["  (none)"]
        if violations:
            lines.append("violations:")
            lines += [f"  {v}" for v in violations]
        return "\n".join(lines)

    # ------------------------------------------------------------------ WSGI

    def _wsgi(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.full_path
        raw_path = raw_uri.split("?", 1)[0]
        form_path = MANIFEST_FORM_PATH.fullmatch(raw_path)
        if form_path and request.method == "POST":
            with self.lock:
                answer = self._manifest_form(request, form_path.group("org"))
            return answer(environ, start_response)
        if (request.method, raw_path) in (("GET", OAUTH_AUTHORIZE_PATH), ("POST", OAUTH_TOKEN_PATH)):
            with self.lock:
                answer = self._authorize(request) if request.method == "GET" else self._access_token(request)
            return answer(environ, start_response)
        with self.lock:
            status, body, headers = self._handle(request, raw_path)
        if status == DROPPED:
            environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError("fake GitHub dropped the connection")  # werkzeug: a dropped connection
        response = Response(json.dumps(body) if body is not None else b"", status=status, headers=headers)
        return response(environ, start_response)

    def _handle(self, request: Request, raw_path: str) -> tuple[int, Any, Headers]:
        """Answer one request and record it (called with the lock held)."""
        method = request.method.upper()
        path = unquote(raw_path)
        data = request.get_data()
        parsed_body = _try_json(data)
        headers = self._default_headers(request)
        try:
            status, body = self._dispatch(request, method, raw_path, data, headers)
        except Rejection as rejection:
            status, body = rejection.status, rejection.body
            if rejection.violation:
                self.violations.append(f"{method} {path} -> {status}: {rejection.violation}")
        call = Call(method=method, path=path, query=request.args.to_dict(), json=parsed_body,
                    headers={k.lower(): v for k, v in request.headers.items()}, status=status,
                    response=copy.deepcopy(body))
        self.calls.append(call)
        self._version += 1
        self._changed.notify_all()
        return status, body, headers

    def _dispatch(self, request: Request, method: str, raw_path: str, data: bytes,
                  headers: Headers) -> tuple[int, Any]:
        """Run the checks of the module docstring in order, then the handler."""
        if self.down:
            return 503, {"message": "Service Unavailable", "documentation_url": DOCS_URL}
        self._check_headers(request)
        found = self.spec.find(method, raw_path)
        if found is None:
            raise _not_found(violation=f"no such operation in GitHub's REST API ({self.spec.source})")
        op, params = found
        query = self._check_query(op, request)
        body = self._check_body(op, data)
        fault = next((f for f in self._faults if f.matches(method, unquote(raw_path))), None)
        if fault is not None and fault.skip:
            fault.skip -= 1
            fault = None
        if fault is not None and not fault.after_performing:
            return self._apply_fault(fault, headers)
        ctx = _Context(op=op, params=params, query=query, body=body, headers=headers,
                       path=unquote(raw_path), raw_path=raw_path)
        if op.operation_id in APP_OPERATIONS:
            self._authenticate_app(request, ctx)
        elif op.operation_id in USER_OPERATIONS:
            self._authenticate_user(request, ctx)
        elif op.operation_id not in UNAUTHENTICATED_OPERATIONS:
            self._authenticate_installation(request, ctx)
        handler = getattr(self, "_op_" + re.sub(r"\W", "_", op.operation_id))
        answer = handler(ctx)
        if fault is not None:  # performed: the client gets the fault instead of the answer
            headers.remove("Location")
            return self._apply_fault(fault, headers)
        return answer

    # -------------------------------------------------------- request checks

    def _check_headers(self, request: Request) -> None:
        if not request.headers.get("User-Agent"):
            raise Rejection(
                403, "Request forbidden by administrative rules. Please make sure your request has a "
                "User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api"
                "#user-agent-required). Check https://developer.github.com for other possible causes.",
                violation="missing User-Agent header")
        version = request.headers.get("X-GitHub-Api-Version")
        if version is not None and version not in SUPPORTED_API_VERSIONS:
            raise Rejection(400, f"API version {version} is not supported.",
                            violation=f"unsupported X-GitHub-Api-Version {version!r}")

    def _check_query(self, op: Operation, request: Request) -> dict[str, Any]:
        """Type-check query parameters; returns them coerced (ints as int)."""
        values: dict[str, Any] = {}
        errors = []
        for name, raw in request.args.items(multi=False):
            param = op.query_params.get(name)
            if param is None:
                # GitHub ignores unknown parameters; a typo then silently does nothing.
                self.violations.append(f"{op.method} {op.template}: unknown query parameter {name!r} "
                                       "(GitHub would silently ignore it)")
                continue
            value = _coerce_query(raw, param["schema"])
            for err in make_validator(param["schema"]).iter_errors(value):
                errors.append({"resource": "Search", "field": name, "code": "invalid",
                               "message": f"{name}: {err.message}"})
            values[name] = value
        for name, param in op.query_params.items():
            if param.get("required") and name not in values:
                errors.append({"resource": "Search", "field": name, "code": "missing"})
        if errors:
            raise _validation_failed(errors, op.docs_url, "invalid query")
        return values

    def _check_body(self, op: Operation, data: bytes) -> Any:
        """Parse and validate the JSON body against the operation's schema."""
        if op.body_validator is None:
            return _try_json(data) if data.strip() else None
        if not data.strip():
            if not op.body_required:
                return None
            raise _validation_failed([{"resource": RESOURCES.get(op.operation_id, "Request"),
                                       "code": "missing", "message": "request body is required"}],
                                     op.docs_url, "missing JSON body")
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise Rejection(400, "Problems parsing JSON", docs=op.docs_url,
                            violation=f"body is not JSON ({exc})") from None
        errors = [_schema_error(err, RESOURCES.get(op.operation_id, "Request"))
                  for err in sorted(op.body_validator.iter_errors(body), key=lambda e: list(e.absolute_path))]
        if errors:
            raise _validation_failed(errors, op.docs_url, "body does not match the request schema")
        return body

    def _apply_fault(self, fault: Fault, headers: Headers) -> tuple[int, Any]:
        fault.remaining -= 1
        if fault.drop_connection:
            return DROPPED, None
        for name, value in fault.headers.items():
            headers.set(name, value)
        if fault.body is not None:
            return fault.status, fault.body
        return fault.status, {"message": _fault_message(fault), "documentation_url": DOCS_URL}

    # ------------------------------------------------------------------ auth

    def _authenticate_app(self, request: Request, ctx: _Context) -> None:
        """App endpoints: ``Authorization: Bearer <RS256 JWT issued by the app>``."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        docs = ctx.op.docs_url
        if not credential:
            raise Rejection(401, "A JSON web token could not be decoded", docs=docs,
                            violation="app endpoint called without Authorization: Bearer <JWT>")
        if scheme.lower() != "bearer" or credential.startswith(("ghs_", "ghp_", "gho_")):
            raise Rejection(401, "A JSON web token could not be decoded", docs=docs,
                            violation="app endpoint needs the app JWT as Bearer, not an installation token")
        problem = self._jwt_problem(credential)
        if problem:
            raise Rejection(401, problem, docs=docs, violation=f"bad app JWT: {problem}")
        ctx.credential = "app"

    def _jwt_problem(self, token: str) -> str | None:
        """What GitHub would say about this app JWT, or None if it is fine."""
        undecodable = "A JSON web token could not be decoded"
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "RS256":
                return undecodable
            claims = jwt.decode(token, self._public_key, algorithms=["RS256"], options={
                "verify_exp": False, "verify_iat": False, "verify_nbf": False,
                "verify_iss": False, "verify_aud": False, "verify_sub": False, "verify_jti": False})
        except jwt.PyJWTError:
            return undecodable
        now = self.clock()
        iat, exp, iss = claims.get("iat"), claims.get("exp"), claims.get("iss")
        if not _is_int(iat) or iat > now + JWT_CLOCK_SKEW:
            return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
        if not _is_number(exp) or exp <= now:
            return ("'Expiration time' claim ('exp') must be a numeric value representing the future time "
                    "at which the assertion expires")
        if exp - iat > JWT_MAX_LIFETIME:
            return "'Expiration time' claim ('exp') is too far in the future"
        if iss == self.client_id:
            return None
        if not (_is_int(iss) or (isinstance(iss, str) and iss.isdigit())):
            return "'Issuer' claim ('iss') must be an Integer"
        if int(iss) != self.app_id:
            return undecodable  # GitHub checks the signature with app `iss`'s key: no match
        return None

    def _authenticate_user(self, request: Request, ctx: _Context) -> None:
        """User endpoints: a user access token from the OAuth web flow."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        login = self.user_tokens.get(credential) if scheme.lower() in ("token", "bearer") else None
        if login is None:
            raise Rejection(401, "Requires authentication", docs=ctx.op.docs_url,
                            violation="user endpoint called without a user access token")
        ctx.credential = credential
        ctx.login = login

    def _authenticate_installation(self, request: Request, ctx: _Context) -> None:
        """Repository endpoints: an installation token with access and permission."""
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        docs = ctx.op.docs_url
        if not header:
            raise Rejection(401, "Requires authentication", docs=docs,
                            violation="repository endpoint called without Authorization")
        if scheme.lower() not in ("token", "bearer"):
            raise Rejection(401, "Bad credentials", docs=docs, violation=f"unknown auth scheme {scheme!r}")
        token = self._tokens.get(credential)
        if token is None:
            kind = "an app JWT" if credential.count(".") == 2 else "an unknown token"
            raise Rejection(401, "Bad credentials", docs=docs,
                            violation=f"repository endpoint called with {kind} (needs an installation token)")
        if token.expires_at <= self.clock():
            raise Rejection(401, "Bad credentials", docs=docs)  # normal: the client must refresh
        ctx.credential = token.token
        ctx.token = token
        repo = self._find_repo(ctx.params["owner"], ctx.params["repo"])
        if repo is None:
            raise _not_found(docs, violation=f"unknown repository {ctx.params['owner']}/{ctx.params['repo']}"
                                             " (did the test call add_repo?)")
        if repo.installation_id != token.installation_id:
            raise _not_found(docs, violation=f"token of installation {token.installation_id} used on "
                                             f"{repo.full_name}, owned by installation {repo.installation_id}")
        if token.repositories is not None and repo.full_name.lower() not in token.repositories:
            raise _not_found(docs, violation=f"token restricted to {sorted(token.repositories)} used on "
                                             f"{repo.full_name}")
        needed = OPERATION_PERMISSIONS[ctx.op.operation_id]
        if not any(PERMISSION_LEVELS[token.permissions.get(p, "none")] >= PERMISSION_LEVELS[level]
                   for p, level in needed):
            wanted = " or ".join(f"{p}:{level}" for p, level in needed)
            raise Rejection(403, "Resource not accessible by integration", docs=docs,
                            violation=f"token lacks permission {wanted} (has {token.permissions})")
        ctx.repo = repo

    # --------------------------------------------------------------- headers

    def _default_headers(self, request: Request) -> Headers:
        """Headers every GitHub answer carries, with this credential's rate limit."""
        credential = request.headers.get("Authorization", "anonymous")
        used = self._ratelimit_used[credential] = self._ratelimit_used.get(credential, 0) + 1
        limit = 60 if credential == "anonymous" else 5000
        reset = int(self.started_at) + 3600
        version = request.headers.get("X-GitHub-Api-Version") or SUPPORTED_API_VERSIONS[0]
        request_id = ":".join(secrets.token_hex(n).upper() for n in (2, 2, 3, 3, 4))
        return Headers({
            "Content-Type": "application/json; charset=utf-8",
            "Server": "GitHub.com",
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(limit - used, 0)),
            "x-ratelimit-reset": str(reset),
            "x-ratelimit-used": str(used),
            "x-ratelimit-resource": "core",
            "x-github-request-id": request_id,
            "x-github-media-type": "github.v3; format=json",
            "x-github-api-version-selected": version,
        })

    # ---------------------------------------------------------- repositories

    def _find_repo(self, owner: str, name: str) -> Repo | None:
        """Repository by owner/name, case-insensitively like GitHub."""
        wanted = f"{owner}/{name}".lower()
        return next((r for key, r in self.repos.items() if key.lower() == wanted), None)

    def _repo(self, full_name: str) -> Repo:
        owner, _, name = full_name.partition("/")
        repo = self._find_repo(owner, name)
        if repo is None:
            raise KeyError(f"unknown repo {full_name}; call add_repo first")
        return repo

    def _resolve_ref(self, repo: Repo, ref: str) -> str | None:
        """The commit sha a branch/sha/``refs/...`` name points at in ``repo``."""
        if SHA_RE.fullmatch(ref):
            return ref if ref in repo.commits else None
        for candidate in (ref, ref.removeprefix("refs/heads/")):
            if candidate in repo.branches:
                return repo.branches[candidate]
        return None

    def _role(self, repo: Repo, login: str) -> str:
        """Role of ``login`` on ``repo`` (owner of a user repo is admin)."""
        role = repo.roles.get(login.lower())
        if role:
            return role
        if login.lower() == repo.owner.lower() and self._account_types.get(login.lower(), "User") == "User":
            return "admin"
        return "none" if repo.private else "read"

    def _association(self, repo: Repo, login: str) -> str:
        if login.lower() == repo.owner.lower():
            return "OWNER"
        return "COLLABORATOR" if repo.roles.get(login.lower(), "none") != "none" else "NONE"

    # ------------------------------------------------------------ app routes

    def _manifest_form(self, request: Request, org: str | None) -> Response:
        """GitHub's "Create GitHub App from manifest" page, with the person's click already made:
        a valid manifest gets a one-time code and a redirect to its ``redirect_url`` with ``code``
        and the form's ``state``; an invalid one a 422 page (and a violation)."""
        try:
            manifest = json.loads(request.form.get("manifest", ""))
        except ValueError:
            manifest = None
        problems = _manifest_problems(manifest)
        self.manifests.append({"manifest": manifest, "org": org, "state": request.args.get("state")})
        self._version += 1
        self._changed.notify_all()
        if problems:
            self.violations.append(f"POST {request.path}: invalid App manifest: {'; '.join(problems)}")
            return Response("Invalid GitHub App configuration: " + "; ".join(problems), status=422,
                            mimetype="text/plain")
        code = secrets.token_hex(10)
        self._manifest_codes[code] = (manifest, org, self.clock() + MANIFEST_CODE_TTL)
        query = {"code": code, **({"state": request.args["state"]} if "state" in request.args else {})}
        separator = "&" if "?" in manifest["redirect_url"] else "?"
        return Response(status=302, headers={"Location": manifest["redirect_url"] + separator + urlencode(query)})

    def _op_apps_create_from_manifest(self, ctx: _Context) -> tuple[int, Any]:
        """Create the App the code stands for, once; the fake becomes that App (its id, slug and
        a new key pair), so what the client saved can authenticate against the fake."""
        manifest, org, expires_at = self._manifest_codes.pop(ctx.params["code"], (None, None, 0.0))
        if manifest is None or expires_at <= self.clock():
            raise _not_found(ctx.op.docs_url)  # normal: a code used twice or too late
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.app_id = next(self._ids["app"])
        self.app_name = manifest.get("name") or f"app-{self.app_id}"
        self.slug = re.sub(r"[^a-z0-9]+", "-", self.app_name.lower()).strip("-")
        self.bot_login = f"{self.slug}[bot]"
        self.client_id = "Iv23li" + _random_alnum(14)
        self._public_key = key.public_key()
        if org:
            self.app_owner = org
            self._account_types[org.lower()] = "Organization"
        app = self._app_json()
        app.update(description=manifest.get("description"), external_url=manifest["url"],
                   permissions=dict(manifest.get("default_permissions", {})),
                   events=list(manifest.get("default_events", [])))
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
        hook_secret = manifest.get("hook_attributes", {}).get("secret")
        return 201, {**app, "client_secret": secrets.token_hex(20),
                     "webhook_secret": hook_secret or secrets.token_hex(20), "pem": pem}

    # ------------------------------------------------------- OAuth web flow

    def _authorize(self, request: Request) -> Response:
        """GitHub's "Authorize application" page, with ``signed_in_login``'s click already made."""
        args = request.args
        if args.get("client_id") != self.client_id:
            self.violations.append(f"GET {OAUTH_AUTHORIZE_PATH}: unknown client_id {args.get('client_id')!r}")
            return Response("Not Found", status=404, mimetype="text/plain")
        if self.signed_in_login is None or not args.get("redirect_uri"):
            return Response("Sign in to GitHub first", status=403, mimetype="text/plain")
        code = secrets.token_hex(10)
        self._oauth_codes[code] = (self.signed_in_login, args["redirect_uri"], self.clock() + OAUTH_CODE_TTL)
        query = {"code": code, **({"state": args["state"]} if "state" in args else {})}
        separator = "&" if "?" in args["redirect_uri"] else "?"
        return Response(status=302, headers={"Location": args["redirect_uri"] + separator + urlencode(query)})

    def _access_token(self, request: Request) -> Response:
        """Trade an authorization code for a user access token. Like GitHub, a refusal is a 200
        with an ``error`` field."""
        form = request.form.to_dict() or _try_json(request.get_data())
        form = form if isinstance(form, dict) else {}
        if request.headers.get("Accept") != "application/json":
            self.violations.append(f"POST {OAUTH_TOKEN_PATH} without Accept: application/json (the answer would be a form)")
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.client_secret):
            answer = {"error": "incorrect_client_credentials"}
        else:
            login, redirect_uri, expires_at = self._oauth_codes.pop(form.get("code", ""), ("", "", 0.0))
            if expires_at <= self.clock():
                answer = {"error": "bad_verification_code"}
            elif form.get("redirect_uri", redirect_uri) != redirect_uri:
                answer = {"error": "redirect_uri_mismatch"}
            else:
                token = "ghu_" + _random_alnum(36)
                self.user_tokens[token] = login
                answer = {"access_token": token, "token_type": "bearer", "scope": ""}
        return Response(json.dumps(answer), status=200, mimetype="application/json")

    def _user_repos(self, installation_id: int, login: str) -> list[tuple[Repo, str]]:
        """The installation's repositories ``login`` has an explicit role on, with that role."""
        found = []
        for repo in self.repos.values():
            role = repo.roles.get(login.lower()) or ("admin" if self._role(repo, login) == "admin" else "none")
            if repo.installation_id == installation_id and role != "none":
                found.append((repo, role))
        return found

    def _op_users_get_authenticated(self, ctx: _Context) -> tuple[int, Any]:
        created = iso(self.started_at)
        return 200, {**self._user_json(ctx.login), "name": None, "company": None, "blog": "", "location": None,
                     "email": None, "hireable": None, "bio": None, "public_repos": 0, "public_gists": 0,
                     "followers": 0, "following": 0, "created_at": created, "updated_at": created,
                     "private_gists": 0, "total_private_repos": 0, "owned_private_repos": 0, "disk_usage": 0,
                     "collaborators": 0, "two_factor_authentication": True}

    def _op_apps_list_installations_for_authenticated_user(self, ctx: _Context) -> tuple[int, Any]:
        items = [self._installation_json(i) for i in sorted(self.installations.values(), key=lambda i: i.id)
                 if self._user_repos(i.id, ctx.login)]
        return 200, {"total_count": len(items), "installations": self._paginate(ctx, items)}

    def _op_apps_list_installation_repos_for_authenticated_user(self, ctx: _Context) -> tuple[int, Any]:
        inst = self.installations.get(int(ctx.params["installation_id"]))
        repos = self._user_repos(inst.id, ctx.login) if inst else []
        if not repos:
            raise _not_found(ctx.op.docs_url)  # normal: not an installation the user can see
        items = [{**self._repo_json(repo.full_name), "permissions": dict(ROLES[role][1])}
                 for repo, role in sorted(repos, key=lambda pair: pair[0].full_name)]
        return 200, {"total_count": len(items), "repository_selection": inst.repository_selection,
                     "repositories": self._paginate(ctx, items)}

    def _op_apps_get_authenticated(self, ctx: _Context) -> tuple[int, Any]:
        return 200, self._app_json()

    def _op_apps_list_installations(self, ctx: _Context) -> tuple[int, Any]:
        items = [self._installation_json(i) for i in sorted(self.installations.values(), key=lambda i: i.id)]
        return 200, self._paginate(ctx, items)

    def _op_apps_get_repo_installation(self, ctx: _Context) -> tuple[int, Any]:
        repo = self._find_repo(ctx.params["owner"], ctx.params["repo"])
        if repo is None or repo.installation_id not in self.installations:
            raise _not_found(ctx.op.docs_url)  # normal: the app is not installed there
        return 200, self._installation_json(self.installations[repo.installation_id])

    def _op_apps_create_installation_access_token(self, ctx: _Context) -> tuple[int, Any]:
        inst = self.installations.get(ctx.params["installation_id"])
        if inst is None:
            raise _not_found(ctx.op.docs_url)
        body = ctx.body or {}
        permissions = dict(inst.permissions)
        if "permissions" in body:
            for name, level in body["permissions"].items():
                if PERMISSION_LEVELS[inst.permissions.get(name, "none")] < PERMISSION_LEVELS[level]:
                    raise Rejection(422, "The permissions requested are not granted to this installation.",
                                    docs=ctx.op.docs_url,
                                    violation=f"requested {name}:{level}, installation has {inst.permissions}")
            permissions = dict(body["permissions"])
        repositories = self._token_repositories(inst, body, ctx.op.docs_url)
        now = self.clock()
        token = Token(token="ghs_" + _random_alnum(36), installation_id=inst.id,
                      expires_at=now + self.token_ttl_seconds, permissions=permissions,
                      repositories=None if repositories is None else {r.full_name.lower() for r in repositories})
        self._tokens[token.token] = token
        self.tokens_issued += 1
        answer = {"token": token.token, "expires_at": iso(token.expires_at), "permissions": permissions,
                  "repository_selection": inst.repository_selection if repositories is None else "selected"}
        if repositories is not None:
            answer["repositories"] = [self._repo_json(r.full_name) for r in repositories]
        return 201, answer

    def _token_repositories(self, inst: Installation, body: dict, docs: str) -> list[Repo] | None:
        """Repositories a token is restricted to (``repositories``/``repository_ids``)."""
        if "repositories" not in body and "repository_ids" not in body:
            return None
        owned = [r for r in self.repos.values() if r.installation_id == inst.id]
        chosen = []
        for name in body.get("repositories", []):
            repo = next((r for r in owned if r.name.lower() == name.lower()), None)
            chosen.append(repo)
        for rid in body.get("repository_ids", []):
            chosen.append(next((r for r in owned if r.id == rid), None))
        if any(r is None for r in chosen):
            raise Rejection(422, "There is at least one repository that does not exist or is not accessible "
                            "to the parent installation.", docs=docs,
                            violation=f"token requested for repositories outside installation {inst.id}")
        return chosen

    # ------------------------------------------------------------- contents

    def _op_repos_get_content(self, ctx: _Context) -> tuple[int, Any]:
        """A file's contents, base64 in lines of 60 like GitHub; 404 for a ref or file that
        does not exist (directories are not served)."""
        ref = ctx.query.get("ref") or ctx.repo.default_branch
        sha = self._resolve_ref(ctx.repo, ref)
        if sha is None:
            raise Rejection(404, f"No commit found for the ref {ref}", docs=ctx.op.docs_url)
        path = ctx.params["path"].strip("/")
        data = ctx.repo.files.get(sha, {}).get(path)
        if data is None:
            raise _not_found(ctx.op.docs_url)
        encoded = base64.b64encode(data).decode()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        api = f"{self.url}/repos/{ctx.repo.full_name}"
        url = f"{api}/contents/{path}?ref={ref}"
        html_url = f"{WEB_URL}/{ctx.repo.full_name}/blob/{ref}/{path}"
        git_url = f"{api}/git/blobs/{blob}"
        return 200, {
            "type": "file", "encoding": "base64", "size": len(data), "name": path.rsplit("/", 1)[-1],
            "path": path, "sha": blob, "url": url, "git_url": git_url, "html_url": html_url,
            "download_url": f"https://raw.githubusercontent.com/{ctx.repo.full_name}/{ref}/{path}",
            "content": "\n".join(encoded[i:i + 60] for i in range(0, len(encoded), 60)) + "\n",
            "_links": {"self": url, "git": git_url, "html": html_url},
        }

    def _op_repos_download_tarball_archive(self, ctx: _Context) -> tuple[int, Any]:
        """A 302 to a short-lived link of the commit's tarball, as GitHub answers: the link
        carries a token of its own, never the installation token that asked for it. 404 for a
        ref that does not exist."""
        ref = ctx.params["ref"]
        if self._resolve_ref(ctx.repo, ref) is None:
            raise _not_found(ctx.op.docs_url)
        link = f"{CODELOAD_URL}/{ctx.repo.full_name}/legacy.tar.gz/{ref}?token=short{_random_alnum(24)}"
        self.archive_links.append(link)
        ctx.headers.set("Content-Type", "text/html;charset=utf-8")
        ctx.headers.set("Location", link)
        return 302, None

    # ---------------------------------------------------------------- pulls

    def _op_pulls_get(self, ctx: _Context) -> tuple[int, Any]:
        pull = ctx.repo.pulls.get(ctx.params["pull_number"])
        if pull is None:
            raise _not_found(ctx.op.docs_url)
        return 200, self._pull_json(ctx.repo, pull)

    def _op_pulls_list(self, ctx: _Context) -> tuple[int, Any]:
        state = ctx.query.get("state", "open")
        pulls = [p for p in ctx.repo.pulls.values() if state == "all" or p["state"] == state]
        if "head" in ctx.query:
            owner, _, ref = ctx.query["head"].partition(":")
            pulls = [p for p in pulls if p["head_ref"] == ref and p["head_repo"].split("/")[0].lower() == owner.lower()]
        if "base" in ctx.query:
            pulls = [p for p in pulls if p["base_ref"] == ctx.query["base"]]
        sort = ctx.query.get("sort", "created")
        key = "updated_at" if sort == "updated" else "created_at"
        descending = ctx.query.get("direction", "desc" if sort == "created" else "asc") == "desc"
        pulls.sort(key=lambda p: (p[key], p["number"]), reverse=descending)
        return 200, self._paginate(ctx, [self._pull_json(ctx.repo, p, simple=True) for p in pulls])

    # ---------------------------------------------------------- permissions

    def _op_repos_get_collaborator_permission_level(self, ctx: _Context) -> tuple[int, Any]:
        role = self._role(ctx.repo, ctx.params["username"])
        permission, flags = ROLES[role]
        user = self._user_json(ctx.params["username"])
        user.update(permissions=dict(flags), role_name=role)
        return 200, {"permission": permission, "role_name": role, "user": user}

    # ------------------------------------------------------------- comments

    def _issue_exists(self, ctx: _Context, number: int) -> None:
        if number not in ctx.repo.issues:
            raise _not_found(ctx.op.docs_url)

    def _op_issues_list_comments(self, ctx: _Context) -> tuple[int, Any]:
        number = ctx.params["issue_number"]
        self._issue_exists(ctx, number)
        comments = self.comments[ctx.repo.full_name].get(number, [])
        if "since" in ctx.query:
            since = _parse_time(ctx.query["since"])
            comments = [c for c in comments if _parse_time(c["updated_at"]) >= since]
        return 200, self._paginate(ctx, [self._comment_json(c) for c in comments])

    def _op_issues_create_comment(self, ctx: _Context) -> tuple[int, Any]:
        number = ctx.params["issue_number"]
        self._issue_exists(ctx, number)
        self._check_comment_body(ctx)
        comment = self._create_comment(ctx.repo, number, ctx.body["body"], self._user_json(self.bot_login))
        ctx.headers.set("Location", comment["url"])
        return 201, self._comment_json(comment)

    def _op_issues_get_comment(self, ctx: _Context) -> tuple[int, Any]:
        return 200, self._comment_json(self._comment_in(ctx))

    def _op_issues_update_comment(self, ctx: _Context) -> tuple[int, Any]:
        comment = self._comment_in(ctx)
        self._check_comment_body(ctx)
        comment["body"] = ctx.body["body"]
        comment["updated_at"] = iso(self.clock())
        return 200, self._comment_json(comment)

    def _check_comment_body(self, ctx: _Context) -> None:
        body = ctx.body["body"]
        resource = RESOURCES[ctx.op.operation_id]
        if not body.strip():
            raise _validation_failed([{"resource": resource, "code": "missing_field", "field": "body"}],
                                     ctx.op.docs_url, "blank comment body")
        if len(body) > 65536:
            raise _validation_failed([{"resource": resource, "code": "custom", "field": "body",
                                       "message": "body is too long (maximum is 65536 characters)"}],
                                     ctx.op.docs_url, "comment body too long")

    def _comment_in(self, ctx: _Context) -> dict:
        """The comment of the URL, if it belongs to the URL's repository."""
        where = self._comment_index.get(ctx.params["comment_id"])
        if where is None or where[0] != ctx.repo.full_name:
            raise _not_found(ctx.op.docs_url)
        repo, number = where
        return next(c for c in self.comments[repo][number] if c["id"] == ctx.params["comment_id"])

    def _create_comment(self, repo: Repo, number: int, body: str, user: dict) -> dict:
        cid = next(self._ids["comment"])
        now = iso(self.clock())
        api = f"{self.url}/repos/{repo.full_name}"
        kind = "pull" if number in repo.pulls else "issues"
        comment = {
            "id": cid, "node_id": node_id("IssueComment", cid),
            "url": f"{api}/issues/comments/{cid}",
            "html_url": f"{WEB_URL}/{repo.full_name}/{kind}/{number}#issuecomment-{cid}",
            "issue_url": f"{api}/issues/{number}",
            "body": body, "user": user, "created_at": now, "updated_at": now,
            "author_association": "NONE" if user["type"] == "Bot" else self._association(repo, user["login"]),
            "performed_via_github_app": self._app_json() if user["login"] == self.bot_login else None,
        }
        self.comments[repo.full_name].setdefault(number, []).append(comment)
        self._comment_index[cid] = (repo.full_name, number)
        return comment

    def _comment_json(self, comment: dict) -> dict:
        out = copy.deepcopy(comment)
        contents = [r["content"] for r in self._reaction_records.get(comment["id"], [])]
        out["reactions"] = {"url": f"{comment['url']}/reactions", "total_count": len(contents),
                            **{c: contents.count(c) for c in REACTION_CONTENTS}}
        return out

    # ------------------------------------------------------------ reactions

    def _op_reactions_create_for_issue_comment(self, ctx: _Context) -> tuple[int, Any]:
        comment = self._comment_in(ctx)
        content = ctx.body["content"]
        records = self._reaction_records.setdefault(comment["id"], [])
        existing = next((r for r in records if r["content"] == content and r["user"]["login"] == self.bot_login),
                        None)
        if existing is not None:
            return 200, copy.deepcopy(existing)
        rid = next(self._ids["reaction"])
        reaction = {"id": rid, "node_id": node_id("Reaction", rid), "user": self._user_json(self.bot_login),
                    "content": content, "created_at": iso(self.clock())}
        records.append(reaction)
        self.reactions.setdefault(comment["id"], []).append(content)
        return 201, copy.deepcopy(reaction)

    # ----------------------------------------------------------- check runs

    def _op_checks_create(self, ctx: _Context) -> tuple[int, Any]:
        body = ctx.body
        errors = _check_run_semantics(body)
        if body["head_sha"] not in ctx.repo.commits:
            raise Rejection(422, f"No commit found for SHA: {body['head_sha']}", docs=ctx.op.docs_url,
                            violation=f"check run for unknown commit {body['head_sha']!r} "
                                      "(a full sha known to the repo is needed)")
        if errors:
            raise _validation_failed(errors, ctx.op.docs_url, "check run rejected")
        run = self._new_check_run(ctx.repo, body, app_id=self.app_id)
        ctx.headers.set("Location", run["url"])
        return 201, self._check_run_json(run)

    def _op_checks_update(self, ctx: _Context) -> tuple[int, Any]:
        run = self._check_run_in(ctx)
        errors = _check_run_semantics(ctx.body)
        if errors:
            raise _validation_failed(errors, ctx.op.docs_url, "check run update rejected")
        if run["app"]["id"] != self.app_id:
            raise Rejection(403, f"Invalid app_id `{self.app_id}` - check run can only be modified by "
                                 "the GitHub App that created it.", docs=ctx.op.docs_url,
                            violation=f"updating check run {run['id']} of app {run['app']['id']}")
        self._apply_check_run_fields(run, ctx.body)
        return 200, self._check_run_json(run)

    def _op_checks_get(self, ctx: _Context) -> tuple[int, Any]:
        return 200, self._check_run_json(self._check_run_in(ctx))

    def _op_checks_list_for_ref(self, ctx: _Context) -> tuple[int, Any]:
        sha = self._resolve_ref(ctx.repo, ctx.params["ref"])
        if sha is None:
            raise Rejection(422, f"No commit found for SHA: {ctx.params['ref']}", docs=ctx.op.docs_url,
                            violation=f"unknown ref {ctx.params['ref']!r} in {ctx.repo.full_name}")
        runs = [r for r in self.check_runs.values()
                if r["repository"] == ctx.repo.full_name and r["head_sha"] == sha]
        runs.sort(key=lambda r: r["id"], reverse=True)  # newest first, like GitHub
        if ctx.query.get("filter", "latest") == "latest":
            latest: dict[tuple[str, int], dict] = {}
            for run in runs:
                latest.setdefault((run["name"], run["app"]["id"]), run)
            runs = list(latest.values())
        if "check_name" in ctx.query:
            runs = [r for r in runs if r["name"] == ctx.query["check_name"]]
        if "status" in ctx.query:
            runs = [r for r in runs if r["status"] == ctx.query["status"]]
        if "app_id" in ctx.query:
            runs = [r for r in runs if r["app"]["id"] == ctx.query["app_id"]]
        page = self._paginate(ctx, [self._check_run_json(r) for r in runs])
        return 200, {"total_count": len(runs), "check_runs": page}

    def _check_run_in(self, ctx: _Context) -> dict:
        run = self.check_runs.get(ctx.params["check_run_id"])
        if run is None or run["repository"] != ctx.repo.full_name:
            raise _not_found(ctx.op.docs_url)
        return run

    def _new_check_run(self, repo: Repo, body: dict, app_id: int) -> dict:
        rid = next(self._ids["check_run"])
        suite_key = (repo.full_name, app_id, body["head_sha"])
        if suite_key not in self._check_suites:
            self._check_suites[suite_key] = next(self._ids["suite"])
        app = self._app_json() if app_id == self.app_id else self._other_app_json(app_id)
        run = {
            "id": rid, "node_id": node_id("CheckRun", rid), "head_sha": body["head_sha"],
            "external_id": body.get("external_id", ""), "name": body["name"],
            "url": f"{self.url}/repos/{repo.full_name}/check-runs/{rid}",
            "html_url": f"{WEB_URL}/{repo.full_name}/runs/{rid}",
            "details_url": app["external_url"],
            "status": "queued", "conclusion": None, "started_at": iso(self.clock()), "completed_at": None,
            "output": {"title": None, "summary": None, "text": None, "annotations_count": 0,
                       "annotations_url": f"{self.url}/repos/{repo.full_name}/check-runs/{rid}/annotations"},
            "check_suite": {"id": self._check_suites[suite_key]},
            "app": app,
            "repository": repo.full_name, "actions": [], "annotations": [], "images": [],
        }
        self._apply_check_run_fields(run, body)
        self.check_runs[rid] = run
        return run

    def _apply_check_run_fields(self, run: dict, body: dict) -> None:
        """Apply a create/update body; ``conclusion`` implies status completed."""
        for key in ("name", "details_url", "external_id", "started_at"):
            if key in body:
                run[key] = body[key]
        if "status" in body:
            run["status"] = body["status"]
            if body["status"] != "completed":
                run["conclusion"] = None
                run["completed_at"] = None
        if body.get("conclusion"):
            run["conclusion"] = body["conclusion"]
            run["status"] = "completed"
            run["completed_at"] = body.get("completed_at") or iso(self.clock())
        if "output" in body:
            output = body["output"]
            for key in ("title", "summary", "text"):
                if key in output:
                    run["output"][key] = output[key]
            run["annotations"].extend(output.get("annotations", []))
            run["output"]["annotations_count"] = len(run["annotations"])
            if "images" in output:
                run["images"] = list(output["images"])
        if "actions" in body:
            run["actions"] = copy.deepcopy(body["actions"])

    def _check_run_json(self, run: dict) -> dict:
        out = {k: copy.deepcopy(v) for k, v in run.items() if k not in CHECK_RUN_INTERNAL}
        out["pull_requests"] = self._check_run_pulls(self.repos[run["repository"]], run["head_sha"])
        return out

    def _check_run_pulls(self, repo: Repo, sha: str) -> list[dict]:
        """Open same-repo PRs at ``sha``: GitHub leaves fork PRs out of check runs."""
        def minimal(ref: str, sha_: str) -> dict:
            return {"ref": ref, "sha": sha_, "repo": {"id": repo.id, "url": f"{self.url}/repos/{repo.full_name}",
                                                       "name": repo.name}}
        return [{"id": p["id"], "number": p["number"], "url": f"{self.url}/repos/{repo.full_name}/pulls/{p['number']}",
                 "head": minimal(p["head_ref"], p["head_sha"]),
                 "base": minimal(p["base_ref"], repo.branches[repo.default_branch])}
                for p in repo.pulls.values()
                if p["state"] == "open" and p["head_sha"] == sha and p["head_repo"].lower() == repo.full_name.lower()]

    # ---------------------------------------------------------- deployments

    def _op_repos_create_deployment(self, ctx: _Context) -> tuple[int, Any]:
        body = ctx.body
        sha = self._resolve_ref(ctx.repo, body["ref"])
        if sha is None:
            raise Rejection(422, f"No ref found for: {body['ref']}", docs=ctx.op.docs_url,
                            violation=f"deployment of unknown ref {body['ref']!r} in {ctx.repo.full_name}")
        did = next(self._ids["deployment"])
        now = iso(self.clock())
        environment = body.get("environment", "production")
        api = f"{self.url}/repos/{ctx.repo.full_name}"
        deployment = {
            "url": f"{api}/deployments/{did}", "id": did, "node_id": node_id("Deployment", did),
            "sha": sha, "ref": body["ref"], "task": body.get("task", "deploy"),
            "payload": body.get("payload", {}), "original_environment": environment,
            "environment": environment, "description": body.get("description"),
            "creator": self._user_json(self.bot_login), "created_at": now, "updated_at": now,
            "statuses_url": f"{api}/deployments/{did}/statuses", "repository_url": api,
            "transient_environment": body.get("transient_environment", False),
            "production_environment": body.get("production_environment", environment == "production"),
            "performed_via_github_app": self._app_json(),
            "repository": ctx.repo.full_name, "statuses": [],
        }
        self.deployments[did] = deployment
        ctx.headers.set("Location", deployment["url"])
        return 201, _public(deployment, DEPLOYMENT_INTERNAL)

    def _op_repos_list_deployments(self, ctx: _Context) -> tuple[int, Any]:
        found = [d for d in self.deployments.values() if d["repository"] == ctx.repo.full_name]
        for key in ("sha", "ref", "task", "environment"):
            if key in ctx.query:
                found = [d for d in found if d[key] == ctx.query[key]]
        found.sort(key=lambda d: d["id"], reverse=True)
        return 200, self._paginate(ctx, [_public(d, DEPLOYMENT_INTERNAL) for d in found])

    def _op_repos_create_deployment_status(self, ctx: _Context) -> tuple[int, Any]:
        deployment = self._deployment_in(ctx)
        body = ctx.body
        if len(body.get("description") or "") > 140:
            raise _validation_failed([{"resource": "DeploymentStatus", "code": "custom", "field": "description",
                                       "message": "description is too long (maximum is 140 characters)"}],
                                     ctx.op.docs_url, "deployment status rejected")
        if "environment" in body:
            deployment["environment"] = body["environment"]
        status = self._new_deployment_status(deployment, body)
        if body["state"] == "success" and body.get("auto_inactive", True):
            self._inactivate_previous(deployment)
        ctx.headers.set("Location", status["url"])
        return 201, copy.deepcopy(status)

    def _op_repos_list_deployment_statuses(self, ctx: _Context) -> tuple[int, Any]:
        deployment = self._deployment_in(ctx)
        return 200, self._paginate(ctx, copy.deepcopy(deployment["statuses"][::-1]))

    def _deployment_in(self, ctx: _Context) -> dict:
        deployment = self.deployments.get(ctx.params["deployment_id"])
        if deployment is None or deployment["repository"] != ctx.repo.full_name:
            raise _not_found(ctx.op.docs_url)
        return deployment

    def _new_deployment_status(self, deployment: dict, body: dict) -> dict:
        sid = next(self._ids["status"])
        now = iso(self.clock())
        target = body.get("target_url") or body.get("log_url") or ""
        status = {
            "url": f"{deployment['url']}/statuses/{sid}", "id": sid, "node_id": node_id("DeploymentStatus", sid),
            "state": body["state"], "creator": self._user_json(self.bot_login),
            "description": body.get("description", ""), "environment": deployment["environment"],
            "target_url": target, "log_url": body.get("log_url") or target,
            "environment_url": body.get("environment_url", ""),
            "created_at": now, "updated_at": now, "deployment_url": deployment["url"],
            "repository_url": deployment["repository_url"], "performed_via_github_app": self._app_json(),
        }
        deployment["statuses"].append(status)
        deployment["updated_at"] = now
        return status

    def _inactivate_previous(self, deployment: dict) -> None:
        """GitHub's ``auto_inactive``: older successful deployments to the same
        non-transient, non-production environment get an ``inactive`` status."""
        for other in self.deployments.values():
            if (other["id"] < deployment["id"] and other["repository"] == deployment["repository"]
                    and other["environment"] == deployment["environment"]
                    and not other["transient_environment"] and not other["production_environment"]
                    and other["statuses"] and other["statuses"][-1]["state"] == "success"):
                self._new_deployment_status(other, {"state": "inactive"})

    # ------------------------------------------------------------ paginate

    def _paginate(self, ctx: _Context, items: list) -> list:
        """One page of ``items``; sets GitHub's ``Link`` header when needed."""
        per_page = min(max(int(ctx.query.get("per_page", 30)), 1), 100)
        page = max(int(ctx.query.get("page", 1)), 1)
        last = max(1, math.ceil(len(items) / per_page))

        def link(number: int) -> str:
            query = {**{k: str(v) for k, v in ctx.query.items()}, "per_page": str(per_page), "page": str(number)}
            return f"{self.url}{ctx.raw_path}?{urlencode(query)}"

        rels = []
        if page > 1:
            rels.append(f'<{link(min(page - 1, last))}>; rel="prev"')
        if page < last:
            rels += [f'<{link(page + 1)}>; rel="next"', f'<{link(last)}>; rel="last"']
        if page > 1:
            rels.append(f'<{link(1)}>; rel="first"')
        if rels:
            ctx.headers.set("Link", ", ".join(rels))
        return items[(page - 1) * per_page: page * per_page]

    # -------------------------------------------------------- JSON objects

    def _user_json(self, login: str, user_type: str | None = None) -> dict:
        """A "Simple User" object."""
        uid = stable_id("user", login)
        user_type = user_type or ("Bot" if login.endswith("[bot]") else self._account_types.get(login.lower(), "User"))
        api = f"{self.url}/users/{login}"
        html = f"{WEB_URL}/apps/{login.removesuffix('[bot]')}" if user_type == "Bot" else f"{WEB_URL}/{login}"
        return {
            "login": login, "id": uid, "node_id": node_id(user_type, uid),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4", "gravatar_id": "",
            "url": api, "html_url": html, "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}", "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}", "received_events_url": f"{api}/received_events",
            "type": user_type, "user_view_type": "public", "site_admin": False,
        }

    def _app_json(self) -> dict:
        """The "GitHub app" object of this app."""
        created = iso(self.started_at)
        inst_perms: dict[str, str] = {}
        for inst in self.installations.values():
            inst_perms.update(inst.permissions)
        return {
            "id": self.app_id, "slug": self.slug, "node_id": node_id("App", self.app_id),
            "client_id": self.client_id, "owner": self._user_json(self.app_owner),
            "name": self.app_name, "description": "Preview environments for pull requests",
            "external_url": f"https://{self.slug}.example.test", "html_url": f"{WEB_URL}/apps/{self.slug}",
            "created_at": created, "updated_at": created,
            "permissions": inst_perms or dict(DEFAULT_INSTALLATION_PERMISSIONS),
            "events": list(DEFAULT_EVENTS), "installations_count": len(self.installations),
        }

    def _other_app_json(self, app_id: int) -> dict:
        app = self._app_json()
        app.update(id=app_id, slug=f"app-{app_id}", name=f"App {app_id}", node_id=node_id("App", app_id),
                   client_id=f"Iv1.other{app_id}", html_url=f"{WEB_URL}/apps/app-{app_id}",
                   external_url=f"https://app-{app_id}.example.test")
        return app

    def _installation_json(self, inst: Installation) -> dict:
        account = self._user_json(inst.account, inst.account_type)
        return {
            "id": inst.id, "account": account, "repository_selection": inst.repository_selection,
            "access_tokens_url": f"{self.url}/app/installations/{inst.id}/access_tokens",
            "repositories_url": f"{self.url}/installation/repositories",
            "html_url": f"{WEB_URL}/settings/installations/{inst.id}",
            "app_id": self.app_id, "app_slug": self.slug, "target_id": account["id"],
            "target_type": inst.account_type, "permissions": dict(inst.permissions),
            "events": list(inst.events), "created_at": iso(inst.created_at), "updated_at": iso(inst.created_at),
            "single_file_name": None, "has_multiple_single_files": False, "single_file_paths": [],
            "suspended_by": None, "suspended_at": None,
        }

    def _repo_json(self, full_name: str) -> dict:
        """A full "Repository" object (forks need not be added with add_repo)."""
        known = next((r for key, r in self.repos.items() if key.lower() == full_name.lower()), None)
        owner, name = full_name.split("/")
        private = known.private if known else False
        default_branch = known.default_branch if known else "main"
        created = iso(known.created_at if known else self.started_at)
        api = f"{self.url}/repos/{full_name}"
        html = f"{WEB_URL}/{full_name}"
        rid = stable_id("repo", full_name)
        open_issues = len([p for p in known.pulls.values() if p["state"] == "open"]) if known else 0
        urls = {
            "forks_url": "/forks", "keys_url": "/keys{/key_id}", "collaborators_url": "/collaborators{/collaborator}",
            "teams_url": "/teams", "hooks_url": "/hooks", "issue_events_url": "/issues/events{/number}",
            "events_url": "/events", "assignees_url": "/assignees{/user}", "branches_url": "/branches{/branch}",
            "tags_url": "/tags", "blobs_url": "/git/blobs{/sha}", "git_tags_url": "/git/tags{/sha}",
            "git_refs_url": "/git/refs{/sha}", "trees_url": "/git/trees{/sha}", "statuses_url": "/statuses/{sha}",
            "languages_url": "/languages", "stargazers_url": "/stargazers", "contributors_url": "/contributors",
            "subscribers_url": "/subscribers", "subscription_url": "/subscription", "commits_url": "/commits{/sha}",
            "git_commits_url": "/git/commits{/sha}", "comments_url": "/comments{/number}",
            "issue_comment_url": "/issues/comments{/number}", "contents_url": "/contents/{+path}",
            "compare_url": "/compare/{base}...{head}", "merges_url": "/merges",
            "archive_url": "/{archive_format}{/ref}", "downloads_url": "/downloads", "issues_url": "/issues{/number}",
            "pulls_url": "/pulls{/number}", "milestones_url": "/milestones{/number}",
            "notifications_url": "/notifications{?since,all,participating}", "labels_url": "/labels{/name}",
            "releases_url": "/releases{/id}", "deployments_url": "/deployments",
        }
        repo = {
            "id": rid, "node_id": node_id("Repository", rid), "name": name, "full_name": full_name,
            "private": private, "owner": self._user_json(owner), "html_url": html, "description": None,
            "fork": known is None, "url": api,
            **{key: api + suffix for key, suffix in urls.items()},
            "created_at": created, "updated_at": created, "pushed_at": iso(self.clock()),
            "git_url": f"git://github.com/{full_name}.git", "ssh_url": f"git@github.com:{full_name}.git",
            "clone_url": self._clone_urls.get(full_name.lower(), f"{html}.git"), "svn_url": html,
            "homepage": None, "size": 1, "stargazers_count": 0, "watchers_count": 0, "language": "Python",
            "has_issues": True, "has_projects": True, "has_downloads": True, "has_wiki": True,
            "has_pages": False, "has_discussions": False, "forks_count": 0, "mirror_url": None,
            "archived": False, "disabled": False, "open_issues_count": open_issues, "license": None,
            "allow_forking": True, "is_template": False, "web_commit_signoff_required": False,
            "topics": [], "visibility": "private" if private else "public", "forks": 0,
            "open_issues": open_issues, "watchers": 0, "default_branch": default_branch,
        }
        return repo

    def _pull_json(self, repo: Repo, pull: dict, simple: bool = False) -> dict:
        """A "Pull Request" object (``simple``: the list endpoint's shape)."""
        api = f"{self.url}/repos/{repo.full_name}"
        html = f"{WEB_URL}/{repo.full_name}/pull/{pull['number']}"
        number = pull["number"]
        head_owner = pull["head_repo"].split("/")[0]
        base_sha = repo.branches[repo.default_branch]
        author = self._user_json(pull["user"])

        def side(label_owner: str, ref: str, sha: str, full_name: str) -> dict:
            return {"label": f"{label_owner}:{ref}", "ref": ref, "sha": sha,
                    "user": self._user_json(label_owner), "repo": self._repo_json(full_name)}

        links = {"self": f"{api}/pulls/{number}", "html": html, "issue": f"{api}/issues/{number}",
                 "comments": f"{api}/issues/{number}/comments",
                 "review_comments": f"{api}/pulls/{number}/comments",
                 "review_comment": f"{api}/pulls/comments{{/number}}",
                 "commits": f"{api}/pulls/{number}/commits", "statuses": f"{api}/statuses/{pull['head_sha']}"}
        out = {
            "url": links["self"], "id": pull["id"], "node_id": node_id("PullRequest", pull["id"]),
            "html_url": html, "diff_url": f"{html}.diff", "patch_url": f"{html}.patch",
            "issue_url": links["issue"], "commits_url": links["commits"],
            "review_comments_url": links["review_comments"], "review_comment_url": links["review_comment"],
            "comments_url": links["comments"], "statuses_url": links["statuses"],
            "number": number, "state": pull["state"], "locked": False, "title": pull["title"],
            "user": author, "body": pull["body"], "labels": [], "milestone": None,
            "active_lock_reason": None, "created_at": iso(pull["created_at"]),
            "updated_at": iso(pull["updated_at"]),
            "closed_at": iso(pull["closed_at"]) if pull["closed_at"] else None,
            "merged_at": iso(pull["merged_at"]) if pull["merged_at"] else None,
            "merge_commit_sha": pull["merge_commit_sha"], "assignee": None, "assignees": [],
            "requested_reviewers": [], "requested_teams": [],
            "head": side(head_owner, pull["head_ref"], pull["head_sha"], pull["head_repo"]),
            "base": side(repo.owner, pull["base_ref"], base_sha, repo.full_name),
            "_links": {k: {"href": v} for k, v in links.items()},
            "author_association": self._association(repo, pull["user"]),
            "auto_merge": None, "draft": pull["draft"],
        }
        if simple:
            return out
        out.update({
            "merged": bool(pull["merged"]), "mergeable": None if pull["state"] == "closed" else True,
            "rebaseable": None if pull["state"] == "closed" else True,
            "mergeable_state": "unknown" if pull["state"] == "closed" else "clean",
            "merged_by": self._user_json(repo.owner) if pull["merged"] else None,
            "comments": len(self.comments.get(repo.full_name, {}).get(number, [])),
            "review_comments": 0, "maintainer_can_modify": pull["head_repo"].lower() != repo.full_name.lower(),
            "commits": 1, "additions": 1, "deletions": 0, "changed_files": 1,
        })
        return out


# --------------------------------------------------------------------------
# Module-private helpers
# --------------------------------------------------------------------------


@dataclass
class _Context:
    """Everything a route handler needs about the request."""

    op: Operation
    params: dict[str, Any]
    query: dict[str, Any]
    body: Any
    headers: Headers  # response headers, handlers may add (Link, Location)
    path: str
    raw_path: str
    credential: str = ""
    login: str = ""  # of a user access token
    token: Token | None = None
    repo: Repo | None = None


def _manifest_problems(manifest: Any) -> list[str]:
    """What GitHub's manifest form would refuse in ``manifest`` (an empty list: nothing)."""
    if not isinstance(manifest, dict):
        return ["the manifest field must be a JSON object"]
    problems = [f"unknown key {key!r}" for key in sorted(set(manifest) - MANIFEST_KEYS)]
    url_fields = {"url": manifest.get("url"), "redirect_url": manifest.get("redirect_url"),
                  "hook_attributes.url": (manifest.get("hook_attributes") or {}).get("url")}
    for name, value in url_fields.items():
        if not (isinstance(value, str) and re.match(r"https?://[^\s/]+", value)):
            problems.append(f"{name} must be an http(s) URL, got {value!r}")
    if not isinstance(manifest.get("public", False), bool):
        problems.append("public must be a boolean")
    permissions = manifest.get("default_permissions", {})
    if not isinstance(permissions, dict) or any(v not in ("read", "write", "admin") for v in permissions.values()):
        problems.append(f"default_permissions must map permissions to read, write or admin, got {permissions!r}")
        permissions = {}
    for event in manifest.get("default_events", []):
        needed = EVENT_PERMISSIONS.get(event)
        if needed is None:
            problems.append(f"unknown event {event!r}")
        elif not any(p in permissions for p in needed):
            problems.append(f"event {event!r} needs the permission {' or '.join(needed)}")
    return problems


def _check_run_semantics(body: dict) -> list[dict]:
    """GitHub's check-run rules beyond the schema (422 errors, or [])."""
    errors = []

    def bad(field_: str, message: str, code: str = "invalid") -> None:
        errors.append({"resource": "CheckRun", "code": code, "field": field_, "message": message})

    actions = body.get("actions") or []
    if len(actions) > 3:
        bad("actions", f"{len(actions)} actions given, at most 3 are allowed")
    for i, action in enumerate(actions):
        for key, limit in (("label", 20), ("description", 40), ("identifier", 20)):
            if len(str(action.get(key, ""))) > limit:
                bad(f"actions[{i}].{key}", f"{key} is longer than {limit} characters")
    status, conclusion = body.get("status"), body.get("conclusion")
    if status in ("waiting", "requested", "pending"):
        bad("status", f"only GitHub Actions can set status {status!r}")
    if conclusion == "stale":
        bad("conclusion", "only GitHub can set the conclusion 'stale'")
    if status == "completed" and not conclusion:
        bad("conclusion", "conclusion is required when status is completed", code="missing_field")
    if body.get("completed_at") and not conclusion:
        bad("conclusion", "conclusion is required when completed_at is given", code="missing_field")
    return errors


def _schema_error(err: jsonschema.ValidationError, resource: str) -> dict:
    """A jsonschema error as an entry of GitHub's 422 ``errors`` list."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
    if err.validator == "required":
        missing = err.message.split("'")[1]
        return {"resource": resource, "code": "missing_field", "field": f"{path}.{missing}".lstrip("."),
                "message": err.message}
    message = err.message
    if err.context:  # anyOf/oneOf: say what the alternatives wanted
        message += " (" + "; ".join(sorted({c.message for c in err.context})) + ")"
    return {"resource": resource, "code": "invalid", "field": path, "message": message}


def _coerce_query(raw: str, schema: dict) -> Any:
    """Convert a query-string value to the schema's type when it parses."""
    kind = schema.get("type")
    if kind == "integer" and re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if kind == "boolean" and raw in ("true", "false"):
        return raw == "true"
    return raw


def _public(record: dict, internal: tuple[str, ...]) -> dict:
    return {k: copy.deepcopy(v) for k, v in record.items() if k not in internal}


def _try_json(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _random_alnum(length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _fault_message(fault: Fault) -> str:
    if fault.status == 403 and fault.headers.get("x-ratelimit-remaining") == "0":
        return "API rate limit exceeded for installation."
    if fault.status in (403, 429) and "retry-after" in fault.headers:
        return "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
    return {500: "Server Error", 502: "Server Error", 503: "Service Unavailable",
            504: "We couldn't respond to your request in time."}.get(fault.status, f"HTTP {fault.status}")
