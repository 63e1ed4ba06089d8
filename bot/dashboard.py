"""The dashboard page at `/`: static HTML, CSS and JavaScript, no build step, no CDN."""

from __future__ import annotations

from flask import Flask, Response, current_app, send_from_directory

from .services import services


def init_app(app: Flask) -> None:
    app.add_url_rule("/", "dashboard", index)


def index() -> Response:
    page = (current_app.root_path + "/static/index.html")
    with open(page, encoding="utf-8") as f:
        html = f.read()
    api_url = services().settings.public_api_url or ""
    html = html.replace("{{API_URL}}", api_url.replace('"', "&quot;"))
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response
