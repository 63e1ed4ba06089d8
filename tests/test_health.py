"""The health check: a deployment is `deployed` only once its preview answers 2xx or 3xx. In-process
against a fake clock, then end to end with the real processes and a real local HTTP server."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from bot.config import load_settings
from bot.model import Deployment
from worker.health import check_preview, health_url, wait_until_healthy

from .harness import wait_for

REPO = "octo/app"
BODY = "a private page body"


class HealthServer:
    """A preview on loopback that answers `status` to everything and remembers what it answered."""

    def __init__(self, status: int):
        self.status = status
        self.served: list[tuple[str, int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status = outer.status
                outer.served.append((self.path, status))
                self.send_response(status)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def statuses(self) -> list[int]:
        return [status for _path, status in self.served]

    def __enter__(self) -> "HealthServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    """Time that moves only when the check waits."""

    def __init__(self):
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


def answering(*statuses: int):
    """A client whose answers are `statuses` in turn (the last one repeats)."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(statuses[min(len(seen), len(statuses)) - 1], text=BODY)

    return httpx.Client(transport=httpx.MockTransport(handle)), seen


# -- in-process ---------------------------------------------------------------------------------


def test_healthy_after_502s_with_a_log_line_per_attempt():
    client, seen = answering(502, 502, 200)
    clock, lines = Clock(), []
    assert wait_until_healthy(client, "https://p.example.com/healthz", timeout=60, log=lines.append, wait=clock.wait, clock=clock) is None
    assert lines == ["health check 1: HTTP 502", "health check 2: HTTP 502", "health check 3: HTTP 200"]
    assert len(seen) == 3 and clock.now < 60


@pytest.mark.parametrize("status", [301, 302, 304, 204])
def test_a_redirect_or_any_2xx_is_up(status):
    client, seen = answering(status)
    assert wait_until_healthy(client, "https://p.example.com/", timeout=10, log=lambda line: None, wait=Clock().wait) is None
    assert len(seen) == 1  # the redirect is not followed


def test_never_healthy_fails_with_the_last_status_code_never_the_body():
    client, _ = answering(503, 500)
    clock = Clock()
    error = wait_until_healthy(client, "https://p.example.com/healthz", timeout=30, log=lambda line: None, wait=clock.wait, clock=clock)
    assert "HTTP 500" in error and "30s" in error and BODY not in error
    assert 30 <= clock.now < 32


def test_a_connection_error_is_named_by_its_kind():
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    clock, lines = Clock(), []
    error = wait_until_healthy(httpx.Client(transport=httpx.MockTransport(refuse)), "https://p.example.com/", timeout=3, log=lines.append, wait=clock.wait, clock=clock)
    assert "could not connect" in error and lines[0] == "health check 1: could not connect"


def test_a_stop_ends_the_check_without_a_verdict():
    client, seen = answering(502)
    assert wait_until_healthy(client, "https://p.example.com/", timeout=300, log=lambda line: None, wait=lambda seconds: True) is None
    assert len(seen) == 1


def test_the_url_is_the_preview_url_plus_the_path():
    assert health_url("http://127.0.0.1:8000", "/healthz") == "http://127.0.0.1:8000/healthz"
    assert health_url("https://a.example.com/app/?x=1#top", "/ready") == "https://a.example.com/app/ready"


def deployment(**fields) -> Deployment:
    return Deployment.new(repository=REPO, pr_number=1, branch_name="feat", **fields)


def test_no_path_no_check_and_the_repository_overrides_the_operator():
    with HealthServer(200) as preview:
        allowed = {"PREVIEW_URL_ALLOWED_HOSTS": "127.0.0.1"}
        assert check_preview(load_settings(allowed), deployment(), preview.url, stop=threading.Event(), log=lambda line: None) is None
        assert preview.served == []
        settings = load_settings({**allowed, "PREVIEW_HEALTH_PATH": "/healthz"})
        check_preview(settings, deployment(health_check_path="/ready"), preview.url, stop=threading.Event(), log=lambda line: None)
        check_preview(settings, deployment(), preview.url, stop=threading.Event(), log=lambda line: None)
        assert preview.served == [("/ready", 200), ("/healthz", 200)]


def test_a_url_outside_the_allowed_hosts_is_never_requested():
    with HealthServer(200) as preview:
        settings = load_settings({"PREVIEW_HEALTH_PATH": "/healthz", "PREVIEW_URL_ALLOWED_HOSTS": ".example.com"})
        error = check_preview(settings, deployment(), preview.url, stop=threading.Event(), log=lambda line: None)
        assert "PREVIEW_URL_ALLOWED_HOSTS" in error and preview.served == []


# -- end to end ---------------------------------------------------------------------------------


def scripts(tmp_path, url: str) -> dict:
    """The command provisioner: a deploy that prints `url`, a destroy that leaves a mark."""
    deploy, destroy = tmp_path / "deploy.py", tmp_path / "destroy.py"
    deploy.write_text(f"print({url!r})\n")
    destroy.write_text(f"import os, pathlib\npathlib.Path({str(tmp_path / 'destroyed')!r}).write_text(os.environ.get('PREVIEW_URL', ''))\n")
    return {
        "PREVIEW_PROVISIONER": "command",
        "PREVIEW_DEPLOY_COMMAND": f"{sys.executable} {deploy}",
        "PREVIEW_DESTROY_COMMAND": f"{sys.executable} {destroy}",
    }


@pytest.mark.slow
def test_deployed_only_after_the_preview_answers(make_bot):
    with HealthServer(502) as preview:
        bot = make_bot({"PREVIEW_URL_TEMPLATE": preview.url, "PREVIEW_URL_ALLOWED_HOSTS": "127.0.0.1", "PREVIEW_HEALTH_PATH": "/healthz"}).start()
        assert bot.deploy(REPO, 1, "feat").status_code == 202
        wait_for(lambda: preview.statuses().count(502) >= 2, message="two 502s")
        assert bot.deployment(REPO, 1).json()["status"] == "deploying"
        preview.status = 200
        deployed = bot.wait_status(REPO, 1, "deployed")
        statuses = preview.statuses()
        assert statuses[:2] == [502, 502] and statuses[-1] == 200
        assert {path for path, _ in preview.served} == {"/healthz"}
        expected = {"health check 1: HTTP 502", f"health check {len(statuses)}: HTTP 200"}

        def logged() -> bool:
            with bot.client() as client:
                return expected <= {line["line"] for line in client.get(f"/api/deployments/{deployed['id']}").json()["logs"]}

        wait_for(logged, message="a log line per attempt")


@pytest.mark.slow
def test_never_healthy_fails_with_the_status_and_tears_down(make_bot, tmp_path):
    with HealthServer(502) as preview:
        env = {**scripts(tmp_path, preview.url), "PREVIEW_URL_ALLOWED_HOSTS": "127.0.0.1", "PREVIEW_HEALTH_PATH": "/healthz", "PREVIEW_HEALTH_TIMEOUT": "2s"}
        bot = make_bot(env).start()
        bot.deploy(REPO, 1, "feat")
        failed = bot.wait_status(REPO, 1, "failed")
        assert "HTTP 502" in failed["error"] and BODY not in failed["error"]
        assert (tmp_path / "destroyed").read_text() == preview.url
        assert preview.statuses() and set(preview.statuses()) == {502}


@pytest.mark.slow
def test_a_preview_url_outside_the_allowed_hosts_fails_without_a_request(make_bot, tmp_path):
    with HealthServer(200) as preview:
        env = {**scripts(tmp_path, preview.url), "PREVIEW_URL_ALLOWED_HOSTS": ".example.com", "PREVIEW_HEALTH_PATH": "/healthz"}
        bot = make_bot(env).start()
        bot.deploy(REPO, 1, "feat")
        failed = bot.wait_status(REPO, 1, "failed")
        assert "PREVIEW_URL_ALLOWED_HOSTS" in failed["error"]
        assert preview.served == [] and (tmp_path / "destroyed").exists()
