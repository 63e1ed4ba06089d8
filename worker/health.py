"""The health check (design §4.15): a deployment becomes `deployed` only once its preview answers.

Part of the deploy job: it runs under the job's lease and stops at once when the lease's stop
event is set (a cancel, a lost lease). Only URLs on the hosts the operator allows are requested,
so a pull request's build cannot point the bot at an internal address. What is kept of each
answer is its status code, never its body.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import httpx

from bot.config import Settings
from bot.model import Deployment
from bot.tls import tls_context

# Each request gets at most this long: a preview that hangs is tried again, not waited for.
REQUEST_SECONDS = 5.0
# Pause between attempts.
INTERVAL_SECONDS = 1.0
ERROR_KINDS = (
    (httpx.TimeoutException, "timed out"),
    (httpx.ConnectError, "could not connect"),
    (httpx.RemoteProtocolError, "not an HTTP answer"),
)


def health_url(preview_url: str, path: str) -> str:
    """The preview URL plus the health path (`https://a.example.com/app/` + `/healthz` →
    `https://a.example.com/app/healthz`); the URL's query and fragment are dropped."""
    base = httpx.URL(preview_url)
    return str(base.copy_with(raw_path=base.raw_path.split(b"?")[0].rstrip(b"/") + path.encode(), fragment=None))


def check_preview(
    settings: Settings,
    deployment: Deployment,
    preview_url: str,
    *,
    stop: threading.Event,
    log: Callable[[str], None],
    at_most: float | None = None,
) -> str | None:
    """Check the preview of `deployment` as its environment's settings and the repository's
    `health_check` say. None when it is healthy, there is no check, or `stop` was set (the
    caller knows why from its lease); else the error to fail the deployment with. `at_most`
    bounds the wait (what is left of the job's time)."""
    path = deployment.health_check_path or settings.health_path
    if not path:
        return None
    timeout = deployment.health_check_timeout or settings.health_timeout
    if at_most is not None:
        timeout = max(0.0, min(timeout, at_most))
    if not settings.allows_url(preview_url):
        return "Health check refused: the preview URL's host is not in PREVIEW_URL_ALLOWED_HOSTS, so previewbot does not request it."
    url = health_url(preview_url, path)
    with httpx.Client(follow_redirects=False, trust_env=False, verify=tls_context()) as client:
        return wait_until_healthy(client, url, timeout=timeout, log=log, wait=stop.wait)


def wait_until_healthy(
    client: httpx.Client,
    url: str,
    *,
    timeout: float,
    log: Callable[[str], None],
    wait: Callable[[float], bool],
    clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """Request `url` until it answers 2xx or 3xx, for at most `timeout` seconds. `wait(seconds)`
    pauses between attempts and returns True to stop (None is then returned: no verdict).
    Returns None when healthy, else the error naming the last status code or connection error."""
    deadline = clock() + timeout
    attempt = 0
    while True:
        attempt += 1
        status, last = _attempt(client, url, max(0.1, min(REQUEST_SECONDS, deadline - clock())))
        log(f"health check {attempt}: {last}")
        if status is not None and 200 <= status < 400:
            return None
        left = deadline - clock()
        if left <= 0:
            return f"Health check failed: {url} did not answer 2xx or 3xx within {timeout:g}s (last: {last})."
        if wait(min(INTERVAL_SECONDS, left)):
            return None


def _attempt(client: httpx.Client, url: str, seconds: float) -> tuple[int | None, str]:
    """One request: its status code and `HTTP <code>`, or None and the kind of connection
    error. The body is never read."""
    try:
        with client.stream("GET", url, timeout=seconds) as response:
            return response.status_code, f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        return None, next((kind for error, kind in ERROR_KINDS if isinstance(exc, error)), type(exc).__name__)
