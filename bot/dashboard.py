"""The dashboard at `/` and each deployment's log page at `/deployments/<id>/logs`: static
HTML, CSS and JavaScript, no build step, no CDN.

The pages learn where the API is from a meta tag: `NEXT_PUBLIC_API_URL` when set (its WebSocket
is the same address with ws:// or wss://), otherwise the page's own origin. The log page is the
same for every deployment (its script reads the id from the address), so it holds no data and
needs no token to be served: what it shows comes from the API, with the reader's token.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request

from .links import LOG_PAGE_PATH
from .services import services

# A Host header fit to be written into a page or a header: a name or an address, and a port.
HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def init_app(app: Flask) -> None:
    app.add_url_rule("/", "dashboard", index)
    app.add_url_rule(LOG_PAGE_PATH, "log_page", log_page)


def index() -> Response:
    return _page("index.html")


def log_page(deployment_id: str) -> Response:
    return _page("logs.html")


def _page(name: str) -> Response:
    page = current_app.root_path + "/static/" + name
    with open(page, encoding="utf-8") as f:
        text = f.read()
    api_url = services().settings.public_api_url or ""
    text = text.replace("{{API_URL}}", html.escape(api_url, quote=True))
    response = Response(text, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = content_security_policy(api_url)
    response.headers["X-Content-Type-Options"] = "nosniff"
    # A sign-in link carries a one-time ?code=; never send the address to anyone else.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def content_security_policy(api_url: str) -> str:
    """Only our own script and style; fetch and WebSocket only to this origin and the API."""
    connect = ["'self'"]
    host = request.host
    if HOST_HEADER.fullmatch(host):  # the Host header is the client's; keep it out of the header if odd
        connect += [f"ws://{host}", f"wss://{host}"]
    if api_url:
        parts = urlsplit(api_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        ws_scheme = "wss" if parts.scheme == "https" else "ws"
        connect += [origin, f"{ws_scheme}://{parts.netloc}"]
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {' '.join(dict.fromkeys(connect))}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
