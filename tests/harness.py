"""Real processes for end-to-end tests: `previewbot web` and `previewbot worker` as the
Procfile runs them, against a real Redis and a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bot.embedded_redis import free_port
from bot.store import Store

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail with `message` on timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}" + (f" (last error: {last_error!r})" if last_error else ""))


def process_alive(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan stays a zombie until init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Bot:
    """One installation of previewbot: its data directory, environment, processes and token."""

    def __init__(self, directory: Path, redis_url: str, env: dict | None = None):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREVIEW_", "APP_ID", "PRIVATE_KEY", "WEBHOOK_", "GITHUB_"))},
            "REDIS_URL": redis_url,
            "DATABASE_PATH": str(directory / "previewbot.db"),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "PREVIEW_SIMULATED_SECONDS": "0",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.store = Store(self.env["DATABASE_PATH"])
        self.store.migrate()
        self.token = self.store.create_token("tests")

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log_path = self.directory / f"{name}-{len(self.logs)}.log"
        self.logs.append(log_path)
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *args],
            cwd=self.directory,
            env=self.env,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_web(self, workers: int = 1, connections: int = 1000) -> "Bot":
        self.web = self._spawn("web", "web", "--workers", str(workers), "--connections", str(connections))
        wait_for(lambda: httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200, message="web health")
        return self

    def start_worker(self, count: int = 1) -> "Bot":
        for _ in range(count):
            self.workers.append(self._spawn("worker", "worker"))
        return self

    def start(self, workers: int = 1) -> "Bot":
        return self.start_worker(workers).start_web()

    def stop_web(self, sig: int = signal.SIGTERM) -> None:
        if self.web is not None:
            _stop(self.web, sig)
            self.web = None

    def stop_workers(self, sig: int = signal.SIGTERM) -> None:
        for process in self.workers:
            _stop(process, sig)
        self.workers = []

    def stop(self) -> None:
        self.stop_web()
        self.stop_workers()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    # -- API ---------------------------------------------------------------------------------

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=10)

    def deploy(self, repository: str, pr: int, branch: str, **extra) -> httpx.Response:
        with self.client() as c:
            return c.post(f"/api/repos/{repository}/pull-requests/{pr}/deploy", json={"branchName": branch, **extra})

    def deployment(self, repository: str, pr: int) -> httpx.Response:
        with self.client() as c:
            return c.get(f"/api/repos/{repository}/pull-requests/{pr}/deployment")

    def wait_status(self, repository: str, pr: int, status: str, timeout: float = 20.0) -> dict:
        def check():
            response = self.deployment(repository, pr)
            body = response.json()
            return body if body.get("status") == status else None

        return wait_for(check, timeout=timeout, message=f"{repository}#{pr} to be {status}")

    def ws_url(self, token: str | None = None, **filters) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"token": token or self.token, **filters}.items())
        return f"ws://127.0.0.1:{self.port}/ws?{query}"


def _stop(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is not None:
        return
    # A worker's first SIGTERM waits for its job (a warm shutdown); a second one does not.
    for signum, patience in ((sig, 3), (sig, 5), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=patience)
            return
        except subprocess.TimeoutExpired:
            continue


class FeedClient:
    """A WebSocket client of /ws that collects messages; `ready()` confirms the subscription."""

    def __init__(self, url: str):
        import websocket

        self.ws = websocket.create_connection(url, timeout=10)
        self.messages: list[dict] = []

    def ready(self) -> "FeedClient":
        self.ws.send("ping")
        self.until(lambda m: m.get("type") == "pong")
        return self

    def until(self, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            message = json.loads(self.ws.recv())
            self.messages.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"no matching message; got {self.messages}")

    def close(self) -> None:
        self.ws.close()
