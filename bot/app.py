"""The web process: `create_app` builds the Flask app and each part wires itself in."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from . import api, dashboard, github_signin, setup, state, webhooks, ws
from .config import Settings, load_settings
from .feed import FeedThreads, Hub
from .github import WebGitHub
from .logs import configure_logging
from .queue import get_queue
from .services import Services
from .store import Store

log = logging.getLogger("previewbot.web")

# GitHub sends webhook payloads of up to 25 MB; the API's own limit is lower (bot.api).
MAX_REQUEST_BYTES = 25 * 1024 * 1024


def create_app(settings: Settings | None = None, *, start_feed: bool = True) -> Flask:
    settings = settings or load_settings()
    configure_logging(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False

    store = Store(settings.database_path)
    store.migrate()
    conn = state.connect(settings.redis_url)
    svc = Services(settings=settings, store=store, redis=conn, hub=Hub(), queue=get_queue(conn))
    if settings.github_enabled:
        svc.github = WebGitHub(settings, store)
    app.extensions["previewbot"] = svc

    api.init_app(app)
    ws.init_app(app)
    webhooks.init_app(app)
    dashboard.init_app(app)
    github_signin.init_app(app)
    setup.init_app(app, settings, conn)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        # Routing errors (404, 405) and oversize bodies (413) happen outside the blueprints;
        # API clients and GitHub get JSON with an `error` field for them too.
        if exc.code == 413:
            return jsonify({"error": "The request body is too large"}), 413
        if request.path.startswith("/api/") or request.path == settings.webhook_path:
            return jsonify({"error": exc.description or exc.name}), exc.code
        return exc

    if start_feed:
        svc.feed = FeedThreads(conn, store, svc.hub, repair_seconds=settings.reconcile_seconds)
        svc.feed.start()
    return app
