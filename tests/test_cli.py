"""The `previewbot` command as people run it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from bot.embedded_redis import free_port
from bot.store import Store

from .harness import process_alive, wait_for


def previewbot(*args, env=None, cwd=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], env={**os.environ, **(env or {})}, cwd=cwd,
        capture_output=True, text=True, timeout=60, **kw,
    )


def test_token_create_list_revoke(tmp_path):
    env = {"DATABASE_PATH": str(tmp_path / "t.db")}
    created = previewbot("token", "create", "--name", "ci", "--repository", "octo/app", env=env)
    assert created.returncode == 0
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("pvb_") and len(token) > 40
    listed = previewbot("token", "list", env=env)
    assert "ci\tactive" in listed.stdout and "octo/app" in listed.stdout and token not in listed.stdout
    assert token not in (tmp_path / "t.db").read_bytes().decode(errors="replace")
    assert previewbot("token", "create", "--name", "ci", env=env).returncode == 1
    assert previewbot("token", "revoke", "ci", env=env).returncode == 0
    assert "revoked" in previewbot("token", "list", env=env).stdout
    assert previewbot("token", "revoke", "ci", env=env).returncode == 1


def test_backup_copies_the_database_once_and_keeps_an_existing_copy(tmp_path):
    import sqlite3
    import stat

    env = {"DATABASE_PATH": str(tmp_path / "t.db")}
    assert previewbot("token", "create", "--name", "kept", env=env).returncode == 0
    target = tmp_path / "copy.db"
    first = previewbot("backup", str(target), env=env)
    assert first.returncode == 0 and "integrity check passed" in first.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with sqlite3.connect(target) as copy:
        assert copy.execute("SELECT name FROM api_tokens").fetchall() == [("kept",)]
    again = previewbot("backup", str(target), env=env)
    assert again.returncode == 1 and "exists" in again.stderr
    assert previewbot("backup", str(target), "--overwrite", env=env).returncode == 0


def test_bad_configuration_stops_with_one_line(tmp_path):
    result = previewbot("run", env={"PORT": "eighty", "DATABASE_PATH": str(tmp_path / "x.db")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PORT" in lines[0]


@pytest.mark.slow
def test_run_starts_embedded_redis_web_and_worker_and_ctrl_c_stops_all(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(PORT=str(port), DATABASE_PATH=str(tmp_path / "previewbot.db"), PREVIEW_SIMULATED_SECONDS="0", PYTHONUNBUFFERED="1")
    log = (tmp_path / "run.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output = lambda: (tmp_path / "run.log").read_text()
        base = f"http://127.0.0.1:{port}"
        match = wait_for(lambda: re.search(rf"{re.escape(base)}/\?code=(pvc_[\w-]+)$", output(), re.MULTILINE), message="the sign-in link")
        assert "local mode: GitHub is off" in wait_for(lambda: output() if "local mode" in output() else None)
        wait_for(lambda: httpx.get(f"{base}/api/health", timeout=1).status_code == 200, message="health")
        # The link's code works once, for a session token; no permanent token was made or shown.
        session = httpx.post(f"{base}/api/sessions", json={"code": match.group(1)})
        assert session.status_code == 201
        assert httpx.post(f"{base}/api/sessions", json={"code": match.group(1)}).status_code == 401
        token = session.json()["token"]
        assert "pvb_" not in output() and "?token=" not in output()
        assert [row["kind"] for row in Store(str(tmp_path / "previewbot.db")).list_tokens()] == ["session"]
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{base}/api/repos/octo/app/pull-requests/1/deploy", json={"branchName": "main"}, headers=headers).status_code == 202
        wait_for(lambda: httpx.get(f"{base}/api/repos/octo/app/pull-requests/1/deployment", headers=headers).json()["status"] == "deployed", message="deployed")
        children = _descendants(process.pid)
        assert len(children) >= 4  # redis, web master and its worker, worker
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        process.wait(timeout=30)
    wait_for(lambda: not any(process_alive(pid) for pid in children), message="every started process to stop")
    # Redis is stopped last, so no worker lost it while shutting down, and every worker took
    # the Ctrl-C as a request to stop (not as a lost Redis to wait for).
    assert "could not connect to Redis" not in output() and "dispatcher paused" not in output()
    assert "the worker loop stopped" not in output()
    assert not (tmp_path / ".previewbot" / "redis.sock").exists()
    # A second start keeps the data (the session included) and prints a new link, no token.
    second = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first_line = wait_for(lambda: second.stdout.readline(), message="output")
        lines = [first_line] + [second.stdout.readline() for _ in range(1)]
        links = [line for line in lines if "/?code=pvc_" in line]
        assert links and match.group(1) not in links[0] and "pvb_" not in "".join(lines), lines
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/api/repos/octo/app/pull-requests/1/deployment", headers=headers, timeout=1).json()["status"] == "deployed", message="data kept")
    finally:
        os.killpg(second.pid, signal.SIGINT)
        second.wait(timeout=30)


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    parents = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        parents.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found

