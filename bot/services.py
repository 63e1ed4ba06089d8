"""What the web process's parts share, kept on the Flask app (no globals at import time)."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app
from rq import Queue

from .config import Settings
from .feed import FeedThreads, Hub
from .store import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    redis: redis.Redis
    hub: Hub
    queue: Queue  # made once per process: it caches what it learns of the Redis server
    github: object | None = None  # bot.github.WebGitHub when the App is configured
    feed: FeedThreads | None = None


def services() -> Services:
    return current_app.extensions["previewbot"]
