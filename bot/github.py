"""Talking to GitHub as the App: app JWTs, cached installation tokens, retries.

gidgethub does the HTTP (over httpx) and the JWT; this module adds what a busy bot needs:
installation tokens kept until shortly before they expire, and retries with backoff for 5xx
answers and rate limits (403/429 with `Retry-After` or `x-ratelimit-reset`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Mapping

import gidgethub
import httpx
from gidgethub import apps
from gidgethub.httpx import GitHubAPI

log = logging.getLogger("previewbot.github")

USER_AGENT = "previewbot"
MAX_ATTEMPTS = 5
MAX_WAIT_SECONDS = 60.0
# Refresh installation tokens this long before GitHub expires them (they live one hour).
TOKEN_MARGIN_SECONDS = 300


class RetryingGitHubAPI(GitHubAPI):
    """gidgethub's httpx client, retrying what GitHub asks to be retried."""

    def __init__(self, *args, base_delay: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_delay = base_delay

    async def _request(self, method: str, url: str, headers: Mapping[str, str], body: bytes = b"") -> tuple[int, Mapping[str, str], bytes]:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                status, response_headers, content = await super()._request(method, url, headers, body)
            except httpx.TransportError as exc:
                if attempt == MAX_ATTEMPTS:
                    raise
                wait = self._backoff(attempt)
                log.warning("GitHub %s %s failed (%s); retrying in %.1fs", method, _path(url), type(exc).__name__, wait)
                await asyncio.sleep(wait)
                continue
            wait = retry_after(status, response_headers, attempt, self.base_delay)
            if wait is None or attempt == MAX_ATTEMPTS:
                return status, response_headers, content
            log.warning("GitHub %s %s answered %s; retrying in %.1fs", method, _path(url), status, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        return min(MAX_WAIT_SECONDS, self.base_delay * 2 ** (attempt - 1)) * (1 + random.random() / 4)


def retry_after(status: int, headers: Mapping[str, str], attempt: int, base_delay: float, now: float | None = None) -> float | None:
    """How long to wait before retrying, or None when the answer is final. Pure."""
    lowered = {k.lower(): v for k, v in headers.items()}
    rate_limited = status == 429 or (
        status == 403 and (lowered.get("x-ratelimit-remaining") == "0" or "retry-after" in lowered)
    )
    if rate_limited:
        if "retry-after" in lowered:
            try:
                return min(MAX_WAIT_SECONDS, max(0.0, float(lowered["retry-after"])))
            except ValueError:
                pass
        if "x-ratelimit-reset" in lowered:
            try:
                return min(MAX_WAIT_SECONDS, max(0.0, float(lowered["x-ratelimit-reset"]) - (now or time.time())) + 0.5)
            except ValueError:
                pass
        return min(MAX_WAIT_SECONDS, 60.0 * attempt)
    if status >= 500:
        return min(MAX_WAIT_SECONDS, base_delay * 2 ** (attempt - 1))
    return None


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
        """One REST call with the installation token; a revoked token is replaced once."""
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

    async def getiter(self, url: str, url_vars: dict | None = None, *, limit: int = 1000):
        token = await self._token()
        count = 0
        async for item in self.gh.getiter(url, url_vars or {}, oauth_token=token):
            yield item
            count += 1
            if count >= limit:
                return


@asynccontextmanager
async def github_session(settings, installation_id: int):
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0)) as client:
        gh = RetryingGitHubAPI(client, USER_AGENT, base_url=settings.github_api_url)
        yield GitHubSession(gh, installation_tokens(settings), int(installation_id))


@asynccontextmanager
async def app_client(settings):
    """A client that authenticates as the App itself (JWT), for installation look-ups."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0)) as client:
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
