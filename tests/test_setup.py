"""`previewbot setup`: the App registered through GitHub's manifest flow, end to end against the
fake GitHub (its form page stands in for the person's click), the command run as people run it."""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import html
import io
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dotenv import dotenv_values
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from bot.config import load_settings
from bot.embedded_redis import free_port
from bot.setup import build_manifest, render_dotenv

from .fakegithub import FakeGitHub
from .harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_URL = "https://previewbot.example.test"
GITHUB_VARIABLES = ("APP_ID", "PRIVATE_KEY", "PRIVATE_KEY_PATH", "WEBHOOK_SECRET", "APP_SLUG", "GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET")
UNRELATED = "# mine, kept\nDATABASE_PATH=bot.db\nPREVIEW_SIMULATED_SECONDS=0\n"


@pytest.fixture
def github():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with FakeGitHub(app_id=1, public_key_pem=pem) as fake:
        yield fake


def clean_environment() -> dict[str, str]:
    """The test run's environment without any GitHub App or URL settings of the developer's."""
    return {k: v for k, v in os.environ.items() if k not in GITHUB_VARIABLES and not k.startswith(("WEBHOOK_", "GITHUB_", "PUBLIC_URL"))}


class Setup:
    """One `previewbot setup` process in `directory`, its output in files."""

    def __init__(self, directory: Path, github: FakeGitHub, *args: str, env: dict | None = None, sigint_ignored: bool = False):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.out, self.err = directory / f"setup-{self.port}.out", directory / f"setup-{self.port}.err"
        environ = clean_environment()
        environ.update(GITHUB_URL=github.url, GITHUB_API_URL=github.url, PUBLIC_URL=PUBLIC_URL, PORT=str(self.port),
                       PYTHONUNBUFFERED="1", **(env or {}))
        with self.out.open("w") as out, self.err.open("w") as err:
            command = [sys.executable, "-m", "bot.cli", "setup", *args]
            if sigint_ignored:  # as a shell without job control starts a command run with `&`
                command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
            self.process = subprocess.Popen(command, cwd=directory, env=environ, stdout=out, stderr=err)

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_until_serving(self) -> None:
        wait_for(lambda: f"{self.base}/setup" in self.out.read_text() or self.process.poll() is not None, message="the setup page's address")
        assert self.process.poll() is None, self.output()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_setup(tmp_path):
    started: list[Setup] = []

    def start(github: FakeGitHub, *args: str, env: dict | None = None, sigint_ignored: bool = False) -> Setup:
        setup = Setup(tmp_path, github, *args, env=env, sigint_ignored=sigint_ignored)
        started.append(setup)
        return setup

    yield start
    for setup in started:
        setup.stop()


def setup_form(client: httpx.Client, base: str) -> tuple[str, str]:
    """The setup page's form: where it posts, and the manifest it posts."""
    page = client.get(f"{base}/setup").text
    action = html.unescape(re.search(r'<form action="([^"]+)" method="post">', page).group(1))
    manifest = html.unescape(re.search(r'name="manifest" value="([^"]+)"', page).group(1))
    return action, manifest


def register(setup: Setup) -> tuple[dict, httpx.Response]:
    """Do what the person does: open the page, press the button (GitHub's page then redirects
    back to the callback)."""
    setup.wait_until_serving()
    with httpx.Client(follow_redirects=True, timeout=30) as client:
        action, manifest = setup_form(client, setup.base)
        answer = client.post(action, data={"manifest": manifest})
    return json.loads(manifest), answer


def secrets_in(text: str, conversion: dict) -> list[str]:
    pem_lines = [line for line in conversion["pem"].splitlines() if "-----" not in line]
    values = {"webhook secret": conversion["webhook_secret"], "client secret": conversion["client_secret"]}
    return [name for name, value in values.items() if value in text] + (["private key"] if any(line in text for line in pem_lines) else [])


def test_setup_registers_the_app_from_app_yml_and_writes_a_private_env(tmp_path, github, start_setup, monkeypatch):
    (tmp_path / ".env").write_text(UNRELATED)
    (tmp_path / ".env").chmod(0o644)
    setup = start_setup(github)
    posted, answer = register(setup)
    assert answer.status_code == 200, answer.text
    assert setup.process.wait(timeout=30) == 0, setup.output()

    # The manifest: app.yml's permissions and events, pointed at PUBLIC_URL, private.
    template = yaml.safe_load((ROOT / "app.yml").read_text())
    [form] = github.manifests
    assert form["manifest"] == posted and form["org"] is None
    assert posted["default_permissions"] == template["default_permissions"]
    assert posted["default_events"] == template["default_events"] and posted["name"] == template["name"]
    assert posted["url"] == PUBLIC_URL and posted["hook_attributes"] == {"url": f"{PUBLIC_URL}/api/github/webhooks", "active": True}
    assert posted["redirect_url"] == f"{setup.base}/setup/callback" and posted["public"] is False
    assert posted["callback_urls"] == [f"{PUBLIC_URL}/auth/github/callback"]  # Sign in with GitHub
    assert len(form["state"]) >= 32

    # The conversion: one call, valid by GitHub's description, answered as documented.
    [call] = github.calls_to("POST", r"/app-manifests/[^/]+/conversions")
    assert call.status == 201 and github.violations == []
    validator = github.spec.operation("POST", "/app-manifests/{code}/conversions").response_validator(201)
    assert [e.message for e in validator.iter_errors(call.response)] == []
    conversion = call.response

    # .env and the key: owner-only, unrelated lines kept, values as GitHub gave them.
    env_file, pem_file = tmp_path / ".env", tmp_path / "previewbot.private-key.pem"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and stat.S_IMODE(pem_file.stat().st_mode) == 0o600
    assert env_file.read_text().startswith(UNRELATED)
    assert pem_file.read_text() == conversion["pem"]
    assert dotenv_values(env_file) == {
        "DATABASE_PATH": "bot.db", "PREVIEW_SIMULATED_SECONDS": "0", "APP_ID": str(conversion["id"]),
        "PRIVATE_KEY_PATH": "previewbot.private-key.pem", "WEBHOOK_SECRET": conversion["webhook_secret"],
        "APP_SLUG": conversion["slug"], "GITHUB_CLIENT_ID": conversion["client_id"], "GITHUB_CLIENT_SECRET": conversion["client_secret"],
    }

    # The page and the command both give the installation link; neither shows a secret.
    install = f"{conversion['html_url']}/installations/new"
    assert f'href="{install}"' in answer.text and install in setup.out.read_text().splitlines()[-1]
    assert secrets_in(setup.output() + answer.text, conversion) == []
    assert "code=" not in setup.output()  # the one-time code stays out of the request log

    # The values work: previewbot starts with GitHub on, and the key signs as the new App.
    monkeypatch.chdir(tmp_path)
    for name in GITHUB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.github_enabled and settings.app_id == str(conversion["id"]) and settings.app_slug == "previewbot"
    assert (settings.github_client_id, settings.github_client_secret) == (conversion["client_id"], conversion["client_secret"])
    assert conversion["client_secret"] in settings.secrets()
    now = int(github.clock())
    token = jwt.encode({"iat": now - 30, "exp": now + 300, "iss": settings.app_id}, settings.private_key, algorithm="RS256")
    app = httpx.get(f"{github.url}/app", headers={"Authorization": f"Bearer {token}", "User-Agent": "test"})
    assert app.status_code == 200 and app.json()["id"] == conversion["id"]


def test_ctrl_c_stops_setup_whichever_of_its_threads_the_signal_reaches(github, start_setup):
    """The kernel gives a process's signal to any of its threads that does not block it: here,
    to one of the setup page's server threads rather than the main thread."""
    setup = start_setup(github)
    setup.wait_until_serving()
    assert httpx.get(f"{setup.base}/setup", timeout=10).status_code == 200
    pid = setup.process.pid
    others = wait_for(lambda: [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid], message="the server's thread")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.tgkill(pid, others[0], signal.SIGINT) == 0, os.strerror(ctypes.get_errno())
    assert setup.process.wait(timeout=10) == 130 and "nothing was written" in setup.err.read_text()


def test_ctrl_c_stops_setup_started_with_sigint_ignored(github, start_setup):
    """Python installs no Ctrl-C handler in a process started with SIGINT ignored, as a shell
    without job control starts a command run in the background; setup says Ctrl-C gives up."""
    setup = start_setup(github, sigint_ignored=True)
    setup.wait_until_serving()
    assert httpx.get(f"{setup.base}/setup", timeout=10).status_code == 200
    setup.process.send_signal(signal.SIGINT)
    assert setup.process.wait(timeout=10) == 130 and "nothing was written" in setup.err.read_text()


def test_a_callback_with_another_state_is_refused_and_nothing_is_exchanged(tmp_path, github, start_setup):
    setup = start_setup(github)
    setup.wait_until_serving()
    with httpx.Client(follow_redirects=True, timeout=30) as client:
        action, manifest = setup_form(client, setup.base)
        forged = action.replace(urlsplit(action).query, "state=forged")
        refused = client.post(forged, data={"manifest": manifest})
        assert refused.status_code == 400 and "state does not match" in refused.text
        assert refused.url.path == "/setup/callback" and parse_qs(refused.url.query.decode())["state"] == ["forged"]
        without_state = client.get(f"{setup.base}/setup/callback", params={"code": "0" * 20})
        assert without_state.status_code == 400
    assert github.calls_to("POST", r"/app-manifests/.*") == [] and not (tmp_path / ".env").exists()
    assert setup.process.poll() is None  # still waiting for the real answer
    setup.process.send_signal(signal.SIGINT)
    assert setup.process.wait(timeout=30) == 130 and "nothing was written" in setup.err.read_text()


def test_a_second_run_refuses_without_force_and_replaces_the_app_with_it(tmp_path, github, start_setup):
    first = start_setup(github)
    register(first)
    assert first.process.wait(timeout=30) == 0, first.output()
    written = (tmp_path / ".env").read_text()
    first_id = dotenv_values(tmp_path / ".env")["APP_ID"]

    again = start_setup(github)
    assert again.process.wait(timeout=30) == 1
    assert f"already configured (APP_ID {first_id} in .env)" in again.err.read_text() and "--force" in again.err.read_text()
    assert (tmp_path / ".env").read_text() == written and len(github.manifests) == 1

    forced = start_setup(github, "--force", "--org", "acme")
    posted, answer = register(forced)
    assert answer.status_code == 200 and forced.process.wait(timeout=30) == 0, forced.output()
    assert github.manifests[-1]["org"] == "acme" and urlsplit(github.calls[-1].path).path.startswith("/app-manifests/")
    values = dotenv_values(tmp_path / ".env")
    assert values["APP_ID"] != first_id and values["APP_ID"] == str(github.app_id)
    assert (tmp_path / ".env").read_text().count("APP_ID=") == 1
    assert (tmp_path / "previewbot.private-key.pem").read_text() == github.calls[-1].response["pem"]
    assert secrets_in(forced.output() + answer.text, github.calls[-1].response) == []
    assert github.violations == []


def test_an_app_configured_in_the_environment_is_not_replaced_without_force(tmp_path, github, start_setup):
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    setup = start_setup(github, env={"APP_ID": "42", "PRIVATE_KEY": pem, "WEBHOOK_SECRET": "s" * 20})
    assert setup.process.wait(timeout=30) == 1
    assert "APP_ID 42 in the environment" in setup.err.read_text() and not (tmp_path / ".env").exists()


def test_the_env_file_loses_only_the_apps_old_settings():
    existing = 'A=1\nPRIVATE_KEY="-----BEGIN KEY-----\nabc\n-----END KEY-----"\nexport APP_ID=7\n# note\nB=2'
    rendered = render_dotenv(existing, {"APP_ID": "8", "WEBHOOK_SECRET": 'we"ird\\'})
    assert rendered == 'A=1\n# note\nB=2\nAPP_ID=8\nWEBHOOK_SECRET="we\\"ird\\\\"\n'
    assert dict(dotenv_values(stream=io.StringIO(rendered))) == {"A": "1", "B": "2", "APP_ID": "8", "WEBHOOK_SECRET": 'we"ird\\'}


def test_the_fake_form_refuses_what_github_refuses_and_a_code_works_once(github):
    """The fake's stand-in for GitHub's page is as strict as the rest of the fake."""
    manifest = {"name": "x", "url": PUBLIC_URL, "hook_attributes": {"url": f"{PUBLIC_URL}/hook"},
                "redirect_url": "http://127.0.0.1:1/cb", "default_permissions": {"checks": "write"}}
    with httpx.Client(base_url=github.url, headers={"User-Agent": "test"}) as client:
        bad = client.post("/settings/apps/new", data={"manifest": json.dumps({**manifest, "default_events": ["pull_request"]})})
        assert bad.status_code == 422 and "needs the permission pull_requests" in github.violations.pop()
        good = client.post("/organizations/acme/settings/apps/new?state=s1", data={"manifest": json.dumps(manifest)})
        assert good.status_code == 302 and good.headers["location"].startswith("http://127.0.0.1:1/cb?code=")
        query = parse_qs(urlsplit(good.headers["location"]).query)
        assert query["state"] == ["s1"]
        first = client.post(f"/app-manifests/{query['code'][0]}/conversions")
        assert first.status_code == 201 and first.json()["owner"]["login"] == "acme"
        assert client.post(f"/app-manifests/{query['code'][0]}/conversions").status_code == 404
    assert github.violations == []


# --------------------------------------------------------------------------
# WEBHOOK_PROXY_URL: webhooks through a server-sent-events relay
# --------------------------------------------------------------------------


class FakeRelay:
    """A smee.io-like channel: each client gets `ready`, then every delivery sent, as
    server-sent events; `hang_up` ends the open streams."""

    def __init__(self):
        self.connections = 0
        self._streams: list[queue.Queue] = []
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/channel"
        self._closed = False
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _wsgi(self, environ, start_response):
        stream: queue.Queue = queue.Queue()
        with self._lock:
            self._streams.append(stream)
            self.connections += 1
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return self._events(stream)

    def _events(self, stream: queue.Queue):
        yield b"event: ready\ndata: {}\n\n"
        while not self._closed:
            try:
                item = stream.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    def send(self, raw: str) -> None:
        with self._lock:
            for stream in self._streams:
                stream.put(raw.encode())

    def deliver(self, delivery: dict) -> None:
        self.send(f"data: {json.dumps(delivery)}\n\n")

    def hang_up(self) -> None:
        with self._lock:
            for stream in self._streams:
                stream.put(None)
            self._streams.clear()

    def stop(self) -> None:
        self._closed = True
        self._server.shutdown()
        self._server.server_close()


class WebhookRecorder:
    """Stands in for `previewbot web`: records every request it gets."""

    def __init__(self):
        self.requests: list[Request] = []
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        request.get_data()
        self.requests.append(request)
        return Response("", status=202)(environ, start_response)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def github_delivery(delivery_id: str, payload: dict, secret: bytes) -> tuple[dict, bytes]:
    """What smee.io relays for one GitHub delivery (headers lower-case, the body parsed), and
    the body GitHub signed."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    relayed = {"host": "smee.io", "content-length": str(len(body)), "connection": "close", "x-github-event": "issue_comment",
               "x-github-delivery": delivery_id, "x-hub-signature-256": signature, "content-type": "application/json",
               "user-agent": "GitHub-Hookshot/0ab1c2d", "body": json.loads(body), "query": {}, "timestamp": 1764633600000}
    return relayed, body


def test_the_relay_forwards_each_delivery_to_the_webhook_path_and_reconnects(tmp_path):
    relay, web = FakeRelay(), WebhookRecorder()
    env = {**clean_environment(), "WEBHOOK_PROXY_URL": relay.url, "HOST": "127.0.0.1", "PORT": str(web.port), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "relay.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "bot.cli", "relay"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: relay.connections == 1, message="the relay's client")
        relay.send("event: ping\ndata: {}\n\n")  # the relay's keep-alive: not a delivery
        first, first_body = github_delivery("d-1", {"action": "created", "comment": {"body": "/preview ünï <b>"}}, b"s3cret")
        relay.deliver(first)
        [request] = wait_for(lambda: list(web.requests), message="the forwarded delivery")
        assert request.method == "POST" and request.path == "/api/github/webhooks"
        assert request.get_data() == first_body  # byte for byte: GitHub's signature still verifies
        headers = {k.lower(): v for k, v in request.headers.items()}
        for name in ("x-github-event", "x-github-delivery", "x-hub-signature-256", "content-type", "user-agent"):
            assert headers[name] == first[name]
        assert headers["host"] == f"127.0.0.1:{web.port}" and "timestamp" not in headers  # the relay's own, dropped

        relay.hang_up()
        wait_for(lambda: relay.connections == 2, message="the relay's client to reconnect")
        second, second_body = github_delivery("d-2", {"action": "created", "zen": "Keep it logically awesome."}, b"s3cret")
        relay.deliver(second)
        wait_for(lambda: len(web.requests) == 2, message="the delivery after reconnecting")
        assert web.requests[1].get_data() == second_body and web.requests[1].headers["X-GitHub-Delivery"] == "d-2"
        assert "s3cret" not in log.read_text() and first["x-hub-signature-256"] not in log.read_text()
        assert "issue_comment d-1 -> 202" in log.read_text()
    finally:
        process.kill()
        process.wait()
        relay.stop()
        web.stop()


def test_with_a_relay_the_app_sends_its_webhooks_to_the_relay():
    settings = load_settings({"WEBHOOK_PROXY_URL": "https://smee.io/abc"}, dotenv=None)
    manifest = build_manifest({"name": "previewbot", "hook_attributes": {"active": True}}, settings, "http://127.0.0.1:3001/setup/callback")
    assert manifest["hook_attributes"] == {"active": True, "url": "https://smee.io/abc"}
    assert manifest["url"] == "http://127.0.0.1:3001" and manifest["public"] is False


# -- /setup on `previewbot web` in local mode --------------------------------------------------


def local_web(tmp_path, redis_url, github, **extra):
    from bot.app import create_app

    settings = load_settings({"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "bot.db"), "GITHUB_URL": github.url,
                              "GITHUB_API_URL": github.url, **extra}, dotenv=None)
    return create_app(settings, start_feed=False).test_client()


def test_local_mode_serves_setup_to_this_machine_and_registers_the_app(tmp_path, redis_url, github, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where `make run` runs: .env is written there
    web = local_web(tmp_path, redis_url, github, PUBLIC_URL=PUBLIC_URL)
    page = web.get("/setup")
    assert page.status_code == 200
    action = html.unescape(re.search(r'<form action="([^"]+)" method="post">', page.text).group(1))
    manifest = html.unescape(re.search(r'name="manifest" value="([^"]+)"', page.text).group(1))
    assert json.loads(manifest)["redirect_url"] == "http://localhost/setup/callback"
    # The person's click on GitHub's page: it sends the browser back with a code and the state.
    with httpx.Client(timeout=30) as client:
        sent_back = client.post(action, data={"manifest": manifest})
    assert sent_back.status_code == 302
    back = urlsplit(sent_back.headers["location"])
    done = web.get(f"{back.path}?{back.query}")
    assert done.status_code == 200 and "/installations/new" in done.text
    written = dotenv_values(tmp_path / ".env")
    assert written["APP_ID"] and stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    assert load_settings(dict(written), dotenv=None).github_enabled
    # A state works once: the same answer again changes nothing.
    assert web.get(f"{back.path}?{back.query}").status_code == 400


def test_local_mode_setup_is_closed_to_other_machines_and_says_what_it_needs(tmp_path, redis_url, github):
    web = local_web(tmp_path, redis_url, github, PUBLIC_URL=PUBLIC_URL)
    assert web.get("/setup", environ_overrides={"REMOTE_ADDR": "203.0.113.9"}).status_code == 403
    assert web.get("/setup/callback?code=x&state=y", environ_overrides={"REMOTE_ADDR": "203.0.113.9"}).status_code == 403
    without_public_url = local_web(tmp_path, redis_url, github)
    refused = without_public_url.get("/setup")
    assert refused.status_code == 400 and "PUBLIC_URL is required" in refused.text
    assert github.calls == []


def test_a_web_process_with_an_app_serves_no_setup(tmp_path, redis_url, github):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    web = local_web(tmp_path, redis_url, github, APP_ID="7", PRIVATE_KEY=pem, WEBHOOK_SECRET="s" * 20)
    assert web.get("/setup").status_code == 404
