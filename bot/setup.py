"""`previewbot setup`: register the GitHub App from `app.yml` through GitHub's manifest flow.

The command serves one page whose form posts the manifest to GitHub; GitHub creates the App
and sends the browser back with a one-time code, which we exchange for the App's id, key and
secrets and write to `.env`. The command runs a small server of its own: setup comes before
anything is configured (no Redis, no App) and ends once the App exists. `make run` in local mode
(no App configured) serves the same pages at `/setup`; a web process with an App never does, so
a production one can never be made to re-register its App.
"""

from __future__ import annotations

import dataclasses
import hmac
import html
import io
import json
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import httpx
from flask import Flask, Response, request
from werkzeug.serving import WSGIRequestHandler, make_server

from .config import Settings
from .dashboard import HOST_HEADER
from .state import PREFIX

APP_MANIFEST = Path(__file__).resolve().parent.parent / "app.yml"
SETUP_PATH = "/setup"
LOOPBACK = ("127.0.0.1", "::1")
CALLBACK_PATH = "/setup/callback"
# GitHub's rule for account names: letters, digits and inner single hyphens, at most 39.
ORG_NAME = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38}")
# What setup writes to .env; an inline PRIVATE_KEY goes too, as it would win over the new file.
WRITTEN = ("APP_ID", "PRIVATE_KEY_PATH", "WEBHOOK_SECRET", "APP_SLUG", "GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET")
REPLACED = (*WRITTEN, "PRIVATE_KEY")
_PLAIN_VALUE = re.compile(r"[\w.:/+@-]*")


class SetupError(Exception):
    """Setup cannot go on; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class RegisteredApp:
    """What GitHub's manifest conversion answers, the part we keep."""

    app_id: int
    slug: str
    name: str
    html_url: str
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    webhook_secret: str = dataclasses.field(repr=False)
    pem: str = dataclasses.field(repr=False)

    @property
    def install_url(self) -> str:
        return f"{self.html_url}/installations/new"


# ----------------------------------------------------------------- pure parts


def build_manifest(template: Mapping, settings: Settings, callback_url: str) -> dict:
    """`app.yml` pointed at this previewbot: its home page from PUBLIC_URL, webhooks to
    WEBHOOK_PROXY_URL when a relay carries them (`previewbot relay`), else to PUBLIC_URL +
    WEBHOOK_PATH; the browser sent back to `callback_url`; the dashboard's "Sign in with GitHub"
    callback registered; always private (previews run the App owner's code)."""
    hook_url = settings.webhook_proxy_url or settings.base_url + settings.webhook_path
    return {
        **template,
        "url": settings.base_url,
        "hook_attributes": {**template.get("hook_attributes", {}), "url": hook_url},
        "redirect_url": callback_url,
        "callback_urls": [settings.base_url + "/auth/github/callback"],
        "public": False,
    }


def registration_url(settings: Settings, org: str | None, state: str) -> str:
    """Where the manifest form posts: the person's or the organization's new-App page."""
    owner = f"/organizations/{org}" if org else ""
    return f"{settings.github_url}{owner}/settings/apps/new?{urlencode({'state': state})}"


def dotenv_line(name: str, value: str) -> str:
    """One `.env` line; a value with anything but plain characters double-quoted and escaped."""
    if _PLAIN_VALUE.fullmatch(value):
        return f"{name}={value}\n"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{name}="{escaped}"\n'


def render_dotenv(existing: str, values: Mapping[str, str]) -> str:
    """`existing` without the App's old settings (multi-line values included), then `values`;
    every other line is kept as it was written."""
    from dotenv.parser import parse_stream

    kept = "".join(b.original.string for b in parse_stream(io.StringIO(existing)) if b.key not in REPLACED)
    if kept and not kept.endswith("\n"):
        kept += "\n"
    return kept + "".join(dotenv_line(name, value) for name, value in values.items())


def setup_page(form_action: str, manifest: dict) -> str:
    """A form, not a script, posts the manifest: GitHub's flow needs the person's browser to
    carry it, with their GitHub session, to GitHub's page."""
    hook_url = manifest["hook_attributes"]["url"]
    return _html(
        "Register previewbot's GitHub App",
        f"<p>GitHub will create a private App named <b>{html.escape(manifest['name'])}</b> that sends its "
        f"webhooks to <code>{html.escape(hook_url)}</code>; you can rename it on the next page.</p>"
        f'<form action="{html.escape(form_action, quote=True)}" method="post">'
        f'<input type="hidden" name="manifest" value="{html.escape(json.dumps(manifest), quote=True)}">'
        '<button type="submit">Register the GitHub App on GitHub</button></form>',
    )


def _html(title: str, body: str) -> str:
    return f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{body}</html>'


# ----------------------------------------------------------------------- I/O


def load_manifest_template(path: Path = APP_MANIFEST) -> dict:
    """`app.yml`, the one list of the permissions and events the bot needs (read from the
    checkout: the manual registration steps point at the same file)."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SetupError(f"cannot read the App manifest {path}: {exc.strerror}") from None


def exchange_code(settings: Settings, code: str) -> RegisteredApp:
    """Trade the one-time code for the App's credentials (the code is the only credential)."""
    from .github import USER_AGENT

    url = f"{settings.github_api_url}/app-manifests/{quote(code, safe='')}/conversions"
    headers = {"Accept": "application/vnd.github+json", "User-Agent": USER_AGENT, "X-GitHub-Api-Version": "2022-11-28"}
    try:
        response = httpx.post(url, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        # Not str(exc): it may hold the URL, and the code in it is still good for an hour.
        raise SetupError(f"could not reach GITHUB_API_URL {settings.github_api_url} ({type(exc).__name__}); start again") from None
    if response.status_code == 404:
        raise SetupError("GitHub did not take the code back (it works once, within an hour); start again")
    if response.status_code != 201:
        raise SetupError(f"GitHub answered {response.status_code} when asked for the new App's credentials; start again")
    data = response.json()
    return RegisteredApp(
        app_id=data["id"], slug=data["slug"], name=data["name"], html_url=data["html_url"], client_id=data["client_id"],
        client_secret=data["client_secret"], webhook_secret=data["webhook_secret"], pem=data["pem"],
    )


def write_private(path: Path, text: str) -> None:
    """Replace `path` at once with a file only its owner can read: never a moment where a key
    is world-readable or half-written."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_app(app: RegisteredApp, dotenv_path: Path) -> Path:
    """The PEM next to `.env`, then `.env` with the App's settings; returns the PEM's path."""
    pem_path = dotenv_path.parent / f"{app.slug}.private-key.pem"
    write_private(pem_path, app.pem)
    existing = dotenv_path.read_text(encoding="utf-8") if dotenv_path.exists() else ""
    values = dict(zip(WRITTEN, (str(app.app_id), str(pem_path), app.webhook_secret, app.slug, app.client_id, app.client_secret)))
    write_private(dotenv_path, render_dotenv(existing, values))
    return pem_path


class OneState:
    """The state of the command's one setup: made once, checked in constant time."""

    def __init__(self) -> None:
        self.value = secrets.token_urlsafe(32)

    def new(self) -> str:
        return self.value

    def take(self, state: str) -> bool:
        return hmac.compare_digest(state, self.value)


class RedisStates:
    """States of the setup pages of `previewbot web`, which may run in several processes: each
    page view makes one, kept ten minutes, usable once."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def new(self) -> str:
        state = secrets.token_urlsafe(32)
        self.conn.set(f"{PREFIX}:setup-state:{state}", 1, ex=600)
        return state

    def take(self, state: str) -> bool:
        return bool(state) and len(state) <= 64 and self.conn.getdel(f"{PREFIX}:setup-state:{state}") is not None


def init_app(app: Flask, settings: Settings, conn) -> None:
    """Serve `/setup` from the web process while no App is configured (local mode)."""
    if settings.github_enabled:
        return
    setup_app = create_setup_app(settings, org=None, states=RedisStates(conn), dotenv_path=Path(".env"),
                                 on_registered=lambda registered: print(
                                     f"previewbot: registered GitHub App {registered.slug}; restart previewbot to use it", flush=True),
                                 check=lambda: _check_can_register(settings, org=None, force=False, dotenv_path=Path(".env"), environ=os.environ))
    inner = app.wsgi_app

    def dispatch(environ, start_response):
        if environ.get("PATH_INFO") not in (SETUP_PATH, CALLBACK_PATH):
            return inner(environ, start_response)
        # Whoever finishes setup chooses the App this previewbot becomes: only someone on this
        # machine may (a server reached from elsewhere runs `previewbot setup` instead).
        if environ.get("REMOTE_ADDR") not in LOOPBACK:
            return _page("Setup is only open on this machine", "<p>Open it from the machine previewbot runs on, "
                         "or run <code>.venv/bin/previewbot setup</code> there.</p>", 403)(environ, start_response)
        return setup_app(environ, start_response)

    app.wsgi_app = dispatch


def create_setup_app(settings: Settings, *, org: str | None, states, dotenv_path: Path,
                     on_registered: Callable[[RegisteredApp], None], check: Callable[[], None] = lambda: None) -> Flask:
    """The setup pages: `/setup` (the form) and its callback, which takes the `state` it was
    given back (`states`: OneState or RedisStates), exchanges the code, saves the App and calls
    `on_registered` once the answer has been sent. `check` raises SetupError when no App may be
    registered now (the page then says why)."""
    app = Flask(__name__, static_folder=None)
    template = load_manifest_template()
    github = urlsplit(settings.github_url)

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"  # the callback's address holds the code
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; form-action 'self' {github.scheme}://{github.netloc}; base-uri 'none'; frame-ancestors 'none'"
        )
        return response

    @app.get(SETUP_PATH)
    def setup() -> Response:
        # The browser comes back where it reached us (localhost, a tunnel, a server's name).
        if not HOST_HEADER.fullmatch(request.host):
            return Response("Unexpected Host header.", status=400, mimetype="text/plain")
        try:
            check()
        except SetupError as exc:
            return _page("previewbot cannot register a GitHub App yet", f"<p>{html.escape(str(exc))}.</p>", 400)
        callback_url = f"{request.scheme}://{request.host}{CALLBACK_PATH}"
        form_action = registration_url(settings, org, states.new())
        return Response(setup_page(form_action, build_manifest(template, settings, callback_url)), mimetype="text/html")

    @app.get(CALLBACK_PATH)
    def callback() -> Response:
        if not states.take(request.args.get("state", "")):
            return _page("This answer is not for this setup", f'<p>The state does not match. <a href="{SETUP_PATH}">Start again</a>.</p>', 400)
        code = request.args.get("code", "")
        try:
            registered = exchange_code(settings, code)
            pem_path = save_app(registered, dotenv_path)
        except SetupError as exc:
            return _page("The App could not be saved", f'<p>{html.escape(str(exc))}. <a href="{SETUP_PATH}">Start again</a>.</p>', 502)
        install = html.escape(registered.install_url, quote=True)
        response = _page(
            f"GitHub App {registered.name} registered",
            f"<p>App ID {registered.app_id}. Wrote {', '.join(WRITTEN)} to <code>{html.escape(str(dotenv_path.resolve()))}</code> "
            f"and the private key to <code>{html.escape(str(pem_path.resolve()))}</code> (both readable by you only).</p>"
            f'<p>Now <a href="{install}">install the App</a> on the repositories that should get previews.</p>',
            200,
        )
        response.call_on_close(lambda: on_registered(registered))
        return response

    return app


def _page(title: str, body: str, status: int) -> Response:
    return Response(_html(title, body), status=status, mimetype="text/html")


class _PathOnlyLog(WSGIRequestHandler):
    """Logs requests without their query: the callback's carries the one-time code."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("info", '"%s %s" %s', self.command, urlsplit(self.path).path, code)


def run_setup(settings: Settings, *, org: str | None, force: bool, dotenv_path: Path = Path(".env"),
              environ: Mapping[str, str] = os.environ) -> int:
    """Serve the setup page until the App is registered and saved; print its install link."""
    try:
        _check_can_register(settings, org=org, force=force, dotenv_path=dotenv_path, environ=environ)
        registered: list[RegisteredApp] = []
        done = threading.Event()

        def on_registered(app: RegisteredApp) -> None:
            registered.append(app)
            done.set()

        web = create_setup_app(settings, org=org, states=OneState(), dotenv_path=dotenv_path, on_registered=on_registered)
        server = make_server(settings.host, settings.port, web, threaded=True, request_handler=_PathOnlyLog)
    except (SetupError, OSError) as exc:
        print(f"previewbot: setup: {exc}", file=sys.stderr)
        return 1
    browser_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    print(f"previewbot: open http://{browser_host}:{settings.port}{SETUP_PATH} in a browser to register the GitHub App"
          f"{f' of organization {org}' if org else ''} (Ctrl-C to give up)", flush=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    # Ctrl-C gives up even when this process was started with SIGINT ignored (as a shell without
    # job control starts a command run in the background), where Python installs no handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # In steps: Ctrl-C's signal may reach one of the server's threads, and then only a main
        # thread that wakes up now and then runs the handler that stops it.
        while not done.wait(timeout=0.5):
            pass
    except KeyboardInterrupt:
        print("previewbot: setup stopped; nothing was written", file=sys.stderr)
        return 130
    finally:
        server.shutdown()
        thread.join()
    app = registered[0]
    print(f"previewbot: registered GitHub App {app.slug} (APP_ID {app.app_id}); wrote {', '.join(WRITTEN)} to {dotenv_path.resolve()}")
    if "APP_ID" in environ:
        print("previewbot: APP_ID is also set in the environment, where it wins over .env; unset it", file=sys.stderr)
    print(f"Install it on the repositories that should get previews: {app.install_url}", flush=True)
    return 0


def _check_can_register(settings: Settings, *, org: str | None, force: bool, dotenv_path: Path, environ: Mapping[str, str]) -> None:
    if settings.app_id and not force:
        where = "the environment" if "APP_ID" in environ else str(dotenv_path)
        raise SetupError(f"a GitHub App is already configured (APP_ID {settings.app_id} in {where}); "
                         "run 'previewbot setup --force' to register a new one and replace its settings")
    if not (settings.public_url or settings.webhook_proxy_url):
        raise SetupError("PUBLIC_URL is required: GitHub sends webhooks to PUBLIC_URL + WEBHOOK_PATH "
                         "(e.g. PUBLIC_URL=https://previewbot.example.com), or to WEBHOOK_PROXY_URL "
                         "for 'previewbot relay' (e.g. a channel of https://smee.io)")
    if org is not None and not ORG_NAME.fullmatch(org):
        raise SetupError(f"--org must be a GitHub organization's name, got {org!r}")
