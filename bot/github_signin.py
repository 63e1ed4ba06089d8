"""Sign in with GitHub: the App's OAuth web flow opens a dashboard session limited to what GitHub
says the person may do.

`GET /auth/github` sends the browser to GitHub with a random `state`, kept in a short-lived
cookie of this path; GitHub sends it back to `GET /auth/github/callback` with a code. The
callback checks the state against the cookie (so no one can sign a browser in as someone else),
trades the code for a user access token, and asks GitHub, as that user, which repositories of
the App's installations they can access and with what permissions. The session may read those
and deploy, destroy and cancel only where the person can push (push, maintain or admin). The
user access token is used only during the callback: never stored, never logged.

The session is opened the way sign-in links open one: the callback redirects to `/?code=…`, a
one-time code the page trades at `POST /api/sessions`, so no token goes in an address. A sign-in
started from a deployment's log page (`?next=/deployments/<id>/logs`, the check run's details
link) comes back to it: the dashboard opens `next` once it has the session.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from urllib.parse import urlencode

import httpx
from flask import Blueprint, Flask, Response, redirect, request

from .config import Settings
from .services import services
from .tls import tls_context

log = logging.getLogger("previewbot.signin")

bp = Blueprint("github_signin", __name__, url_prefix="/auth/github")

STATE_COOKIE = "previewbot_oauth_state"
NEXT_COOKIE = "previewbot_oauth_next"
# Where a sign-in may return to besides the dashboard: a log page, never another site.
RETURN_PATH = re.compile(r"/deployments/[A-Za-z0-9._~-]{1,64}/logs")
STATE_TTL_SECONDS = 600
# Listing stops here (100 a page): a callback must answer in seconds, not page forever.
MAX_PAGES = 10
API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "previewbot"}


class SignInFailed(Exception):
    """The sign-in cannot go on; the message tells the person what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.errorhandler(SignInFailed)
def sign_in_failed(exc: SignInFailed) -> Response:
    response = Response(str(exc), status=exc.status, mimetype="text/plain")
    _forget(response)
    return response


@bp.get("")
def start() -> Response:
    """Send the browser to GitHub's authorize page, remembering the state in a cookie."""
    settings = _configured()
    state = secrets.token_urlsafe(32)
    query = urlencode({"client_id": settings.github_client_id, "redirect_uri": _callback_url(), "state": state})
    response = redirect(f"{settings.github_url}/login/oauth/authorize?{query}")
    next_path = request.args.get("next", "")
    remembered = {STATE_COOKIE: state, **({NEXT_COOKIE: next_path} if RETURN_PATH.fullmatch(next_path) else {})}
    for name, value in remembered.items():
        response.set_cookie(
            name,
            value,
            max_age=STATE_TTL_SECONDS,
            path=bp.url_prefix,
            httponly=True,
            samesite="Lax",  # sent on GitHub's top-level redirect back, not on other sites' requests
            secure=settings.base_url.startswith("https://"),
        )
    return response


@bp.get("/callback")
def callback() -> Response:
    """Check the state, trade the code, read the person's repositories, open a session."""
    _configured()
    expected = request.cookies.get(STATE_COOKIE, "")
    given = request.args.get("state", "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignInFailed(400, "This sign-in was not started from this browser, or took more than 10 minutes. Start again from the dashboard.")
    if "code" not in request.args:
        raise SignInFailed(401, "GitHub did not authorize the sign-in. Start again from the dashboard.")
    try:
        with httpx.Client(timeout=httpx.Timeout(20.0, connect=5.0), verify=tls_context()) as client:
            user_token = _access_token(client, request.args["code"])
            login, readable, writable = _repositories(client, user_token)
    except httpx.HTTPError as exc:
        log.error("GitHub sign-in: GitHub unavailable: %s", type(exc).__name__)
        raise SignInFailed(502, "GitHub could not be reached; try signing in again shortly.") from None
    code = services().store.create_signin_code(github=(readable, writable))
    log.info("GitHub sign-in: %s may read %d repositories and write %d", login, len(readable), len(writable))
    next_path = request.cookies.get(NEXT_COOKIE, "")
    back = {"code": code, **({"next": next_path} if RETURN_PATH.fullmatch(next_path) else {})}
    response = redirect("/?" + urlencode(back))
    _forget(response)
    return response


def _forget(response: Response) -> None:
    for name in (STATE_COOKIE, NEXT_COOKIE):
        response.delete_cookie(name, path=bp.url_prefix)


def _configured() -> Settings:
    settings = services().settings
    if not (settings.github_client_id and settings.github_client_secret):
        raise SignInFailed(404, "Sign in with GitHub is not set up here (GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET).")
    return settings


def _callback_url() -> str:
    return services().settings.base_url.rstrip("/") + bp.url_prefix + "/callback"


def _access_token(client: httpx.Client, code: str) -> str:
    settings = services().settings
    answer = client.post(
        f"{settings.github_url}/login/oauth/access_token",
        data={
            "client_id": settings.github_client_id,
            "client_secret": settings.github_client_secret,
            "code": code,
            "redirect_uri": _callback_url(),
        },
        headers={"Accept": "application/json", "User-Agent": "previewbot"},
    )
    answer.raise_for_status()
    token = answer.json().get("access_token")
    if not isinstance(token, str) or not token:
        # GitHub answers 200 with `error` (bad_verification_code, …): a used or stale code.
        raise SignInFailed(401, "GitHub did not accept the sign-in (the code was used or expired). Start again from the dashboard.")
    return token


def _repositories(client: httpx.Client, user_token: str) -> tuple[str, list[str], list[str]]:
    """The user's login, and the repositories of the App's installations they can read and
    those they can push to, as GitHub answers for their token."""
    api = services().settings.github_api_url
    headers = {**API_HEADERS, "Authorization": f"Bearer {user_token}"}
    user = client.get(f"{api}/user", headers=headers)
    user.raise_for_status()
    readable: set[str] = set()
    writable: set[str] = set()
    for installation in _pages(client, f"{api}/user/installations", "installations", headers):
        url = f"{api}/user/installations/{int(installation['id'])}/repositories"
        for repo in _pages(client, url, "repositories", headers):
            readable.add(repo["full_name"])
            permissions = repo.get("permissions") or {}
            if permissions.get("push") or permissions.get("maintain") or permissions.get("admin"):
                writable.add(repo["full_name"])
    return str(user.json()["login"]), sorted(readable), sorted(writable)


def _pages(client: httpx.Client, url: str, key: str, headers: dict[str, str]) -> list[dict]:
    items: list[dict] = []
    next_url: str | None = url + "?per_page=100"
    for _ in range(MAX_PAGES):
        if next_url is None:
            break
        answer = client.get(next_url, headers=headers)
        answer.raise_for_status()
        items += answer.json()[key]
        next_url = answer.links.get("next", {}).get("url")
    return items
