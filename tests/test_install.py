"""`make install` (and `make run`) install what the program needs and nothing more; `make test`
adds the test tools. The install is real: a fresh virtual environment from PyPI, as a newcomer's
first `make run` makes it (about 45 s here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from bot.embedded_redis import free_port

from .harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
TEST_TOOLS = ("pytest", "playwright", "schemathesis", "hypothesis", "pytest-timeout")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("install") / "venv"
    done = make("install", f"VENV={path}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return path


def installed_distributions(venv: Path) -> set[str]:
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    return {package["name"].lower() for package in json.loads(listed.stdout)}


@pytest.mark.slow
def test_the_runtime_install_holds_no_test_tool(venv):
    names = installed_distributions(venv)
    assert "previewbot" in names and "gunicorn" in names
    assert not names & set(TEST_TOOLS)
    assert not (venv / "bin" / "pytest").exists()
    assert subprocess.run([str(venv / "bin" / "previewbot"), "--help"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_the_runtime_install_serves(venv, tmp_path):
    """What `make run` starts, from the runtime install alone: the web process on its gevent
    workers (which need packages of gunicorn's `gevent` extra), a worker, an embedded Redis."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "APP_ID", "PRIVATE_KEY", "PRIVATE_KEY_PATH", "WEBHOOK_SECRET")}
    env.update(PORT=str(port), DATABASE_PATH=str(tmp_path / "bot.db"))
    out = (tmp_path / "run.log").open("w")
    process = subprocess.Popen([str(venv / "bin" / "previewbot"), "run", "--workers", "1"], cwd=tmp_path, env=env,
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, message="the health check of `previewbot run` from the runtime install")
        assert "exited with" not in (tmp_path / "run.log").read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=30)
        out.close()


@pytest.mark.slow
def test_a_second_run_installs_nothing_and_test_adds_only_the_test_tools(venv):
    assert make("-q", "install", f"VENV={venv}").returncode == 0  # up to date: nothing to do
    run = make("-n", "run", f"VENV={venv}").stdout.splitlines()
    assert run == [f"{venv}/bin/previewbot run"]
    test = make("-n", "test", f"VENV={venv}").stdout
    assert f"{venv}/bin/pip install --quiet -e '.[test]'" in test
    assert "-m venv" not in test and "pip install --quiet -e .\n" not in test
    assert f"{venv}/bin/pytest -q" in test
