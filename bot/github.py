"""Talking to GitHub as the App: app JWTs, cached installation tokens, retries that are safe.

gidgethub does the HTTP (over httpx) and the JWT; this module adds what a busy bot needs:
installation tokens kept until shortly before they expire, and retries with backoff for rate
limits (403/429 with `Retry-After` or `x-ratelimit-reset`), 5xx answers and lost connections.

A retry never makes GitHub do anything twice. A request GitHub refused (a rate limit) or never
got (no connection) is sent again as it was, and so is any request that is idempotent: GET, PUT,
PATCH, DELETE, and the POSTs GitHub performs once however often they come (a reaction, an
installation token). A POST that creates something (a comment, a check run, a deployment, a
deployment status) and whose outcome is unknown (a 5xx, a connection lost after sending) is sent
again only after a look-up shows that GitHub did not create it (`CREATIONS`).

Every wait ends by the call chain's deadline (`deadline`, set where a job starts): a retry that
would pass it, or a wait longer than MAX_WAIT_SECONDS, ends the chain with `GitHubGaveUp`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import gidgethub
import httpx
from gidgethub import apps, sansio
from gidgethub.httpx import GitHubAPI

from .tls import tls_context

log = logging.getLogger("previewbot.github")

USER_AGENT = "previewbot"
MAX_ATTEMPTS = 5
# The longest wait before one retry: GitHub asking for more (a rate limit that resets in
# minutes) is given up on at once rather than slept through.
MAX_WAIT_SECONDS = 60.0
# Refresh installation tokens this long before GitHub expires them (they live one hour).
TOKEN_MARGIN_SECONDS = 300

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
# POSTs GitHub performs at most once however often they come: a reaction the comment already
# has is answered 200 with that reaction, and another installation token only replaces ours.
REPEATABLE_POSTS = re.compile(r".*/(reactions|access_tokens)")
# Failures before the request reached GitHub: safe to retry, whatever the request.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures that leave a request's outcome unknown: GitHub may have performed it.
UNCERTAIN = (gidgethub.GitHubBroken, httpx.TransportError)


class GitHubGaveUp(gidgethub.GitHubException):
    """Retrying would take longer than the call chain may: its deadline is too near, or GitHub
    asks for a longer wait than MAX_WAIT_SECONDS. The message says which."""


# -- the deadline of a call chain -------------------------------------------------------------


@dataclass(frozen=True)
class Deadline:
    """A moment on `clock` (monotonic: wall-clock jumps must not move it)."""

    at: float
    clock: Callable[[], float] = time.monotonic

    def seconds_left(self) -> float:
        return self.at - self.clock()


_deadline: ContextVar[Deadline | None] = ContextVar("previewbot_github_deadline", default=None)


@contextmanager
def deadline(seconds: float, *, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Every GitHub call made inside, its retries and waits included, ends within `seconds` (or
    by an enclosing deadline that comes first). `asyncio.run` copies the context, so a job sets
    it around its event loop."""
    outer = _deadline.get()
    keep_outer = outer is not None and outer.seconds_left() <= seconds
    token = _deadline.set(outer if keep_outer else Deadline(clock() + seconds, clock))
    try:
        yield
    finally:
        _deadline.reset(token)


def seconds_left() -> float | None:
    """Time left before the current call chain's deadline; None when it has none."""
    current = _deadline.get()
    return None if current is None else current.seconds_left()


@dataclass(frozen=True)
class Backoff:
    """How the client waits between attempts; tests give it a `sleep` that does not wait."""

    base_delay: float = 0.5
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def delay(self, attempt: int) -> float:
        """Exponential, with jitter so that workers that failed together do not retry together."""
        return min(MAX_WAIT_SECONDS, self.base_delay * 2 ** (attempt - 1) * (1 + random.random() / 4))

    async def wait(self, seconds: float, what: str) -> None:
        """Sleep before the next attempt at `what`; give up when that would take too long."""
        if seconds > MAX_WAIT_SECONDS:
            raise GitHubGaveUp(f"{what}: GitHub asks to wait {seconds:.0f}s, longer than a retry may wait ({MAX_WAIT_SECONDS:.0f}s)")
        left = seconds_left()
        if left is not None and seconds >= left:
            raise GitHubGaveUp(f"{what}: retrying in {seconds:.1f}s would pass the deadline ({max(left, 0.0):.1f}s left)")
        log.warning("%s; retrying in %.1fs", what, seconds)
        await self.sleep(seconds)


# -- the HTTP client --------------------------------------------------------------------------


class RetryingGitHubAPI(GitHubAPI):
    """gidgethub's httpx client, retrying what is safe to retry, within the deadline."""

    def __init__(self, *args: Any, backoff: Backoff = Backoff(), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.backoff = backoff

    async def _request(self, method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> tuple[int, Mapping[str, str], bytes]:
        repeatable = may_repeat(method, url)
        what = f"GitHub {method} {_path(url)}"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                status, response_headers, content = await self._send(method, url, headers, body)
            except httpx.TransportError as exc:
                if attempt == MAX_ATTEMPTS or not (repeatable or isinstance(exc, NOT_SENT)):
                    raise
                await self.backoff.wait(self.backoff.delay(attempt), f"{what} failed ({type(exc).__name__})")
                continue
            wait = rate_limit_wait(status, response_headers, attempt)
            if wait is None and status >= 500 and repeatable:
                wait = self.backoff.delay(attempt)
            if wait is None or attempt == MAX_ATTEMPTS:
                return status, response_headers, content
            await self.backoff.wait(wait, f"{what} answered {status}")
        raise AssertionError("unreachable")

    async def _send(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Mapping[str, str], bytes]:
        """One request, cut off at the deadline."""
        left = seconds_left()
        if left is not None and left <= 0:
            raise GitHubGaveUp(f"GitHub {method} {_path(url)}: the deadline has passed")
        try:
            async with asyncio.timeout(left):
                response = await self._client.request(method, url, headers=dict(headers), content=body)
        except TimeoutError as exc:
            raise GitHubGaveUp(f"GitHub {method} {_path(url)}: no answer before the deadline") from exc
        return response.status_code, response.headers, response.content


def may_repeat(method: str, url: str) -> bool:
    """Whether sending the request again cannot make GitHub do anything twice. Pure."""
    return method in IDEMPOTENT_METHODS or (method == "POST" and REPEATABLE_POSTS.fullmatch(_path(url)) is not None)


def rate_limit_wait(status: int, headers: Mapping[str, str], attempt: int, now: float | None = None) -> float | None:
    """How long a rate-limited answer asks us to wait, or None when it is not one. Pure.

    GitHub refused such a request without acting on it, so any request may be sent again."""
    lowered = {k.lower(): v for k, v in headers.items()}
    rate_limited = status == 429 or (
        status == 403 and (lowered.get("x-ratelimit-remaining") == "0" or "retry-after" in lowered)
    )
    if not rate_limited:
        return None
    if "retry-after" in lowered:
        try:
            return max(0.0, float(lowered["retry-after"]))
        except ValueError:
            pass
    if "x-ratelimit-reset" in lowered:
        try:
            return max(0.0, float(lowered["x-ratelimit-reset"]) - (now or time.time())) + 0.5
        except ValueError:
            pass
    return 60.0 * attempt


def _path(url: str) -> str:
    # Never log query strings; they could carry anything.
    return url.split("?", 1)[0]


class InstallationTokens:
    """Installation tokens, cached per process until shortly before they expire."""

    def __init__(self, app_id: str, private_key: str, api_url: str):
        self.app_id = app_id
        self.api_url = api_url
        self._private_key = private_key
        self._tokens: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()

    async def get(self, gh: GitHubAPI, installation_id: int) -> str:
        with self._lock:
            cached = self._tokens.get(installation_id)
        if cached and cached[1] - TOKEN_MARGIN_SECONDS > time.time():
            return cached[0]
        response = await apps.get_installation_access_token(
            gh, installation_id=str(installation_id), app_id=self.app_id, private_key=self._private_key
        )
        expires = datetime.fromisoformat(response["expires_at"].replace("Z", "+00:00")).timestamp()
        with self._lock:
            self._tokens[installation_id] = (response["token"], expires)
        return response["token"]

    def forget(self, installation_id: int) -> None:
        with self._lock:
            self._tokens.pop(installation_id, None)

    def app_jwt(self) -> str:
        return apps.get_jwt(app_id=self.app_id, private_key=self._private_key)

    def __repr__(self) -> str:  # keep the key out of any accidental repr in logs
        return f"InstallationTokens(app_id={self.app_id})"


_tokens: InstallationTokens | None = None


def installation_tokens(settings) -> InstallationTokens:
    global _tokens
    if _tokens is None or (_tokens.app_id, _tokens.api_url) != (settings.app_id, settings.github_api_url):
        _tokens = InstallationTokens(settings.app_id, settings.private_key, settings.github_api_url)
    return _tokens


class GitHubSession:
    """One installation's view of GitHub for the length of a job or request."""

    def __init__(self, gh: RetryingGitHubAPI, tokens: InstallationTokens, installation_id: int):
        self.gh = gh
        self.tokens = tokens
        self.installation_id = installation_id

    async def _token(self) -> str:
        return await self.tokens.get(self.gh, self.installation_id)

    async def call(self, method: str, url: str, *, url_vars: dict | None = None, data: Any = b"") -> Any:
        """One REST call with the installation token; a revoked token is replaced once. A POST
        that creates something is sent again after an unknown outcome only if a look-up shows
        that GitHub did not create it."""
        if method == "POST":
            path = _path(sansio.format_url(url, url_vars or {}, base_url=self.gh.base_url))
            creation = _creation(path)
            if creation is not None:
                find, where = creation
                return await self._create_once(url, url_vars, data, find=lambda: find(self, where, data), what=f"GitHub POST {path}")
        return await self._call(method, url, url_vars=url_vars, data=data)

    async def _call(self, method: str, url: str, *, url_vars: dict | None = None, data: Any = b"") -> Any:
        for attempt in (1, 2):
            token = await self._token()
            try:
                if method == "GET":
                    return await self.gh.getitem(url, url_vars or {}, oauth_token=token)
                if method == "POST":
                    return await self.gh.post(url, url_vars or {}, data=data, oauth_token=token)
                if method == "PATCH":
                    return await self.gh.patch(url, url_vars or {}, data=data, oauth_token=token)
                raise ValueError(method)
            except gidgethub.BadRequest as exc:
                if exc.status_code == 401 and attempt == 1:
                    self.tokens.forget(self.installation_id)
                    continue
                raise
        raise AssertionError("unreachable")

    async def _create_once(self, url: str, url_vars: dict | None, data: Any, *, find: Callable[[], Awaitable[Any]], what: str) -> Any:
        """POST `data`; after an unknown outcome, what `find` finds on GitHub is the answer, and
        only when it finds nothing is the POST sent again."""
        backoff = self.gh.backoff
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self._call("POST", url, url_vars=url_vars, data=data)
            except UNCERTAIN as exc:
                if attempt == MAX_ATTEMPTS:
                    raise
                outcome = f"answered {exc.status_code}" if isinstance(exc, gidgethub.GitHubBroken) else f"failed ({type(exc).__name__})"
                await backoff.wait(backoff.delay(attempt), f"{what} {outcome}")
            created = await find()
            if created is not None:
                log.warning("%s had created it after all; not sending it again", what)
                return created
        raise AssertionError("unreachable")

    async def getiter(self, url: str, url_vars: dict | None = None, *, limit: int = 1000) -> AsyncIterator[Any]:
        token = await self._token()
        count = 0
        async for item in self.gh.getiter(url, url_vars or {}, oauth_token=token):
            yield item
            count += 1
            if count >= limit:
                return


# -- finding what a creating POST created ------------------------------------------------------
# Each takes a session (or its stand-in in tests), the parts of the POST's path and its body.


async def find_check_run(session: GitHubSession, repository: str, head_sha: str, name: str, *, app_id: str | int, external_id: str | None = None) -> dict | None:
    """The App's latest check run called `name` on the commit, with `external_id` when given."""
    data = await session.call(
        "GET",
        "/repos/{+repository}/commits/{ref}/check-runs{?check_name,app_id}",
        url_vars={"repository": repository, "ref": head_sha, "check_name": name, "app_id": app_id},
    )
    for run in data.get("check_runs", []):
        ours = str((run.get("app") or {}).get("id")) == str(app_id)
        if ours and (external_id is None or run.get("external_id") == external_id):
            return run
    return None


async def find_deployment(session: GitHubSession, repository: str, *, ref: str, environment: str, payload: Any) -> dict | None:
    """The newest deployment of `ref` to `environment` that carries `payload`."""
    async for item in session.getiter(
        "/repos/{+repository}/deployments{?ref,environment,per_page}",
        {"repository": repository, "ref": ref, "environment": environment, "per_page": 100},
        limit=100,
    ):
        if _json_value(item.get("payload")) == payload:
            return item
    return None


async def _same_comment(session: GitHubSession, where: dict[str, str], data: dict) -> dict | None:
    """The newest comment by a bot on the issue with the body we sent."""
    found = None
    async for comment in session.getiter(
        "/repos/{+repository}/issues/{number}/comments{?per_page}",
        {"repository": where["repository"], "number": where["number"], "per_page": 100},
    ):
        if (comment.get("user") or {}).get("type") == "Bot" and _same_text(comment.get("body"), data.get("body")):
            found = comment
    return found


async def _same_check_run(session: GitHubSession, where: dict[str, str], data: dict) -> dict | None:
    return await find_check_run(
        session, where["repository"], data["head_sha"], data["name"], app_id=session.tokens.app_id, external_id=data.get("external_id")
    )


async def _same_deployment(session: GitHubSession, where: dict[str, str], data: dict) -> dict | None:
    return await find_deployment(
        session, where["repository"], ref=data["ref"], environment=data.get("environment", "production"), payload=data.get("payload", {})
    )


async def _same_deployment_status(session: GitHubSession, where: dict[str, str], data: dict) -> dict | None:
    """The deployment's newest status, if it is the one we sent."""
    async for status in session.getiter(
        "/repos/{+repository}/deployments/{id}/statuses{?per_page}", {"repository": where["repository"], "id": where["id"], "per_page": 1}, limit=1
    ):
        same = status.get("state") == data.get("state") and (status.get("description") or "") == (data.get("description") or "")
        return status if same else None
    return None


Finder = Callable[[GitHubSession, dict[str, str], dict], Awaitable[dict | None]]
_REPOSITORY = r"/repos/(?P<repository>[^/]+/[^/]+)"
# The POSTs that create something, by path, and how to find what one created.
CREATIONS: tuple[tuple[re.Pattern[str], Finder], ...] = (
    (re.compile(_REPOSITORY + r"/issues/(?P<number>\d+)/comments$"), _same_comment),
    (re.compile(_REPOSITORY + r"/check-runs$"), _same_check_run),
    (re.compile(_REPOSITORY + r"/deployments$"), _same_deployment),
    (re.compile(_REPOSITORY + r"/deployments/(?P<id>\d+)/statuses$"), _same_deployment_status),
)


def _creation(url: str) -> tuple[Finder, dict[str, str]] | None:
    """The finder of a creating POST to `url`, and the parts of its path; None for other POSTs."""
    path = unquote(urlsplit(url).path)
    for pattern, find in CREATIONS:
        if match := pattern.search(path):
            return find, match.groupdict()
    return None


def _same_text(a: str | None, b: str | None) -> bool:
    return (a or "").replace("\r\n", "\n").strip() == (b or "").replace("\r\n", "\n").strip()


def _json_value(value: Any) -> Any:
    """GitHub gives a deployment's payload as JSON or as a string of JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@asynccontextmanager
async def github_session(settings, installation_id: int):
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0), verify=tls_context()) as client:
        gh = RetryingGitHubAPI(client, USER_AGENT, base_url=settings.github_api_url)
        yield GitHubSession(gh, installation_tokens(settings), int(installation_id))


@asynccontextmanager
async def app_client(settings):
    """A client that authenticates as the App itself (JWT), for installation look-ups."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0), verify=tls_context()) as client:
        yield RetryingGitHubAPI(client, USER_AGENT, base_url=settings.github_api_url)


async def find_installation(settings, repository: str) -> int | None:
    async with app_client(settings) as gh:
        try:
            data = await gh.getitem("/repos/{+repository}/installation", {"repository": repository}, jwt=installation_tokens(settings).app_jwt())
        except gidgethub.BadRequest as exc:
            if exc.status_code == 404:
                return None
            raise
        return int(data["id"])


WRITE_ROLES = {"admin", "maintain", "write"}


async def may_deploy(session: GitHubSession, repository: str, username: str) -> bool:
    """Write, maintain or admin on the repository, by GitHub's collaborator-permission API."""
    try:
        data = await session.call(
            "GET", "/repos/{+repository}/collaborators/{username}/permission", url_vars={"repository": repository, "username": username}
        )
    except gidgethub.BadRequest as exc:
        if exc.status_code in (403, 404):
            return False
        raise
    return data.get("permission") in ("admin", "write") or data.get("role_name") in WRITE_ROLES


class WebGitHub:
    """The web process's one GitHub call: the REST deploy checks the pull request's head branch.
    (The webhook receiver makes none; workers do the rest.)"""

    def __init__(self, settings, store):
        self.settings = settings
        self.store = store
        self._one_loop = threading.Lock()

    def pull_request_head(self, repository: str, pr_number: int) -> dict | None:
        """The open pull request's head as GitHub has it now, or None if it is not one."""
        # The web process's greenlets share one thread, and so asyncio's notion of the running
        # loop: one event loop at a time.
        with self._one_loop:
            return asyncio.run(self._pull_request_head(repository, pr_number))

    async def _pull_request_head(self, repository: str, pr_number: int) -> dict | None:
        installation_id = self.store.installation_for(repository) or await find_installation(self.settings, repository)
        if installation_id is None:
            return None
        async with github_session(self.settings, installation_id) as session:
            try:
                pull = await session.call("GET", "/repos/{+repository}/pulls/{number}", url_vars={"repository": repository, "number": pr_number})
            except gidgethub.BadRequest as exc:
                if exc.status_code in (404, 410):
                    return None
                raise
        if pull.get("state") != "open":
            return None
        head_repo = pull["head"].get("repo")
        return {
            "ref": pull["head"]["ref"],
            "sha": pull["head"]["sha"],
            "repository": head_repo["full_name"] if head_repo else None,
            "installationId": installation_id,
            "title": pull.get("title"),
            "author": (pull.get("user") or {}).get("login"),
        }
