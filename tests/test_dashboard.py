"""The dashboard end to end: headless Chromium (Debian's, driven by Playwright) against the real
`previewbot web` and `previewbot worker` processes.

Every wait is one of Playwright's auto-waiting `expect` assertions. Screenshots of each state are
kept under test-output/ for review.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

from bot import state  # noqa: E402
from bot.model import Deployment, PreviewKey, Resource  # noqa: E402

from .awsfakes import CREDENTIALS, MotoServer  # noqa: E402
from .harness import wait_for  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

expect.set_options(timeout=10_000)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        reason = f"Debian's chromium is not installed at {CHROMIUM}: run `make browser-deps` (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser profile per test. Script errors, dialogs (an alert() from injected HTML)
    and Content-Security-Policy violations fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught error: {error}"))

    def on_dialog(dialog):
        problems.append(f"dialog opened: {dialog.message!r}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on(
        "console",
        lambda message: problems.append(f"console: {message.text}")
        if message.type == "error" and "Content Security Policy" in message.text
        else None,
    )
    yield page
    page.unroute_all(behavior="ignoreErrors")  # a request still in flight must not fail teardown
    context.close()
    assert not problems, problems


# -- helpers -----------------------------------------------------------------------------------


def seed(bot, repository: str, number: int, branch: str, title: str | None = None, author: str | None = "octocat"):
    """Remember an open pull request as a webhook would; each one seeded is newer than the last."""
    global _seeded
    _seeded += 1
    opened = datetime.now(timezone.utc) - timedelta(minutes=60 - _seeded)
    bot.store.upsert_pull_request(
        {
            "repository": repository,
            "number": number,
            "title": title,
            "branch_name": branch,
            "author": author,
            "state": "open",
            "created_at": opened.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
    )


_seeded = 0


def card(page, repository: str, number: int):
    return page.locator(f'li.card[data-key="{repository}#{number}"]')


def badge(page, repository: str, number: int):
    return card(page, repository, number).locator(".badge-text")


def silent_feed(ws):
    """A stand-in for /ws that accepts the page's auth message and answers its pings, and
    delivers nothing else."""

    def answer(message):
        if message == "ping":
            ws.send('{"type":"pong"}')
        elif json.loads(message).get("type") == "auth":
            ws.send('{"type":"auth","ok":true}')

    ws.on_message(answer)


def open_dashboard(page, bot, query: str = ""):
    """Sign in with a one-time sign-in link, as `previewbot signin` prints one, and wait until
    the live feed is subscribed."""
    page.goto(f"{bot.url}/?code={bot.store.create_signin_code()}{'&' + query if query else ''}")
    expect(page.locator("#connection")).to_have_text("Live")


def stored_token(page) -> str | None:
    return page.evaluate("localStorage.getItem('previewbot.token')")


def command_bot(make_bot, tmp_path: Path, script: str, env: dict | None = None):
    path = tmp_path / "deploy.sh"
    path.write_text(script)
    return make_bot(
        {"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": shlex.join(["sh", str(path)]), **(env or {})}
    )


# -- tests -------------------------------------------------------------------------------------


def test_deploy_from_a_card_shows_deploying_then_deployed(make_bot, page, output_dir):
    bot = make_bot({"PREVIEW_SIMULATED_SECONDS": "3"}).start()
    seed(bot, "acme/shop", 12, "feature/login", "Add a login page", "octocat")
    seed(bot, "acme/shop", 13, "fix/cart-total", "Fix rounding in the cart total", "hubot")
    seed(bot, "acme/blog", 4, "docs/intro", None, None)

    open_dashboard(page, bot)
    # The code left the address bar; the session token it was exchanged for is in localStorage.
    assert "code=" not in page.url
    assert bot.store.verify_token(stored_token(page))["kind"] == "session"

    # One card per pull request, newest first.
    expect(page.locator("li.card .card-number")).to_have_text(["#4", "#13", "#12"])
    item = card(page, "acme/shop", 12)
    expect(item.locator(".card-repo")).to_have_text("acme/shop")
    expect(item.locator(".card-title")).to_have_text("Add a login page")
    expect(item.locator(".branch")).to_have_text("feature/login")
    expect(item.locator(".author")).to_have_text("octocat")
    expect(badge(page, "acme/shop", 12)).to_have_text("Idle")
    expect(card(page, "acme/blog", 4).locator(".card-title")).to_have_text("Pull request #4")
    # Only the default environment: no rows of environments.
    expect(item.locator(".env-section")).to_be_hidden()
    expect(item.locator("li.env")).to_have_count(0)

    # Idle: "Preview" reveals "Deploy Preview for BRANCH".
    toggle = item.locator("button.preview-toggle")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    deploy = item.get_by_role("button", name="Deploy Preview for feature/login")
    expect(deploy).to_be_hidden()
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(deploy).to_be_visible()
    page.screenshot(path=output_dir / "idle.png")

    # Deploying: a spinner and the elapsed time; the running deploy cannot be started again.
    deploy.click()
    expect(badge(page, "acme/shop", 12)).to_have_text("Deploying")
    expect(item.locator(".spinner")).to_be_visible()
    expect(item.locator(".elapsed")).to_have_text(re.compile(r"^[1-9]\d*s$"))
    expect(item.locator("button.deploy")).to_be_disabled()
    page.screenshot(path=output_dir / "deploying.png")

    # Deployed: the preview URL as a link, a ✓ on the Preview button, and "Redeploy Preview".
    expect(badge(page, "acme/shop", 12)).to_have_text("Deployed", timeout=15_000)
    link = item.get_by_role("link", name="https://preview-12.shop.example.com")
    expect(link).to_have_attribute("href", "https://preview-12.shop.example.com")
    expect(toggle).to_contain_text("✓")
    expect(item.get_by_role("button", name="Redeploy Preview")).to_be_enabled()
    expect(item.locator(".spinner")).to_be_hidden()
    expect(page.locator("#announcer")).to_contain_text("acme/shop #12: preview deployed")
    page.screenshot(path=output_dir / "deployed.png")

    deployment = bot.deployment("acme/shop", 12).json()
    assert deployment["trigger"] == "dashboard"
    assert deployment["status"] == "deployed"


def test_a_failed_deploy_shows_its_error_and_retry_works(make_bot, page, output_dir, tmp_path):
    marker = tmp_path / "failed-once"
    bot = command_bot(
        make_bot,
        tmp_path,
        f"""
if [ -e {shlex.quote(str(marker))} ]; then
  sleep 1
  echo "https://pr-$PREVIEW_PR_NUMBER.preview.acme.test"
  exit 0
fi
touch {shlex.quote(str(marker))}
echo "npm ERR! Cannot find module 'left-pad'" >&2
exit 1
""",
    ).start()
    seed(bot, "acme/shop", 7, "feat/checkout", "New checkout flow", "mona")

    open_dashboard(page, bot)
    item = card(page, "acme/shop", 7)
    item.locator("button.preview-toggle").click()
    item.get_by_role("button", name="Deploy Preview for feat/checkout").click()

    # Failed: the error message and a Retry button.
    expect(badge(page, "acme/shop", 7)).to_have_text("Failed")
    expect(item.locator(".error-text")).to_contain_text("deploy command exited with 1")
    expect(item.locator(".error-text")).to_contain_text("Cannot find module 'left-pad'")
    retry = item.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    expect(item.locator("button.preview-toggle")).to_be_hidden()
    page.screenshot(path=output_dir / "failed.png")

    retry.click()
    expect(badge(page, "acme/shop", 7)).to_have_text("Deploying")
    expect(retry).to_be_hidden()
    expect(badge(page, "acme/shop", 7)).to_have_text("Deployed")
    expect(item.get_by_role("link", name="https://pr-7.preview.acme.test")).to_be_visible()
    expect(item.locator(".error-text")).to_be_hidden()


def test_a_deploy_started_elsewhere_appears_live(make_bot, page):
    bot = make_bot({"PREVIEW_SIMULATED_SECONDS": "2"}).start()
    seed(bot, "acme/api", 5, "feat/search", "Full-text search", "octocat")

    open_dashboard(page, bot)
    page.evaluate("window.__sameDocument = true")
    expect(badge(page, "acme/api", 5)).to_have_text("Idle")

    assert bot.deploy("acme/api", 5, "feat/search").status_code == 202
    item = card(page, "acme/api", 5)
    expect(badge(page, "acme/api", 5)).to_have_text("Deploying")
    expect(item.locator(".spinner")).to_be_visible()
    item.locator("button.preview-toggle").click()
    expect(item.locator("button.deploy")).to_be_disabled()
    expect(item.locator("button.deploy")).to_have_text("Deploy in progress…")
    expect(badge(page, "acme/api", 5)).to_have_text("Deployed")
    expect(item.get_by_role("link", name="https://preview-5.api.example.com")).to_be_visible()

    # A pull request the page has never shown appears with its first update.
    assert bot.deploy("acme/api", 6, "feat/rate-limits").status_code == 202
    expect(card(page, "acme/api", 6)).to_be_visible()
    expect(card(page, "acme/api", 6).locator(".branch")).to_have_text("feat/rate-limits")
    expect(badge(page, "acme/api", 6)).to_have_text("Deployed")
    expect(page.locator("li.card .card-number")).to_have_text(["#6", "#5"])

    assert page.evaluate("window.__sameDocument") is True  # no reload happened


def test_a_deploy_already_running_is_not_started_twice(make_bot, page):
    """A page that missed the start of a deploy (its feed is silenced here) asks, gets 409, and
    shows the running deploy instead of starting another; the periodic resync then catches up."""
    bot = make_bot({"PREVIEW_SIMULATED_SECONDS": "3"}).start()
    seed(bot, "acme/api", 8, "feat/export", "CSV export", "octocat")

    page.route_web_socket(re.compile(r"/ws$"), silent_feed)
    open_dashboard(page, bot)
    item = card(page, "acme/api", 8)
    expect(badge(page, "acme/api", 8)).to_have_text("Idle")

    assert bot.deploy("acme/api", 8, "feat/export").status_code == 202
    item.locator("button.preview-toggle").click()
    item.get_by_role("button", name="Deploy Preview for feat/export").click()
    expect(item.locator(".card-message")).to_have_text("A deploy of this branch is already in progress.")
    expect(badge(page, "acme/api", 8)).to_have_text("Deploying")
    expect(item.locator("button.deploy")).to_be_disabled()
    expect(item.locator(".elapsed")).to_have_text(re.compile(r"^\d+s$"))
    expect(badge(page, "acme/api", 8)).to_have_text("Deployed", timeout=15_000)
    history = bot.client().get("/api/repos/acme/api/pull-requests/8/deployments").json()["deployments"]
    assert len(history) == 1


def test_a_dropped_connection_reconnects_and_catches_up(make_bot, page, output_dir, redis_conn):
    bot = make_bot({"PREVIEW_SIMULATED_SECONDS": "2"}).start()
    seed(bot, "acme/shop", 21, "feat/wishlist", "Wishlist", "octocat")

    open_dashboard(page, bot)
    page.evaluate("window.__sameDocument = true")
    assert bot.deploy("acme/shop", 21, "feat/wishlist").status_code == 202
    expect(badge(page, "acme/shop", 21)).to_have_text("Deploying")

    # The web process goes away mid-deploy: the page says it is reconnecting.
    bot.stop_web()
    connection = page.locator("#connection")
    expect(connection).to_have_text("Reconnecting…")
    expect(connection).to_have_attribute("data-state", "reconnecting")
    page.screenshot(path=output_dir / "reconnecting.png")

    # The deploy finishes while no web process runs; the page learns of it after reconnecting.
    wait_for(
        lambda: getattr(state.current(redis_conn, PreviewKey("acme/shop", 21)), "status", None) == "deployed",
        message="the worker to finish the deploy",
    )
    bot.start_web()  # same port
    expect(connection).to_have_text("Live", timeout=15_000)
    expect(badge(page, "acme/shop", 21)).to_have_text("Deployed", timeout=15_000)

    # And updates flow over the new connection.
    item = card(page, "acme/shop", 21)
    item.locator("button.preview-toggle").click()
    item.get_by_role("button", name="Redeploy Preview").click()
    expect(badge(page, "acme/shop", 21)).to_have_text("Deploying")
    expect(badge(page, "acme/shop", 21)).to_have_text("Deployed")
    assert page.evaluate("window.__sameDocument") is True


def test_a_sign_in_link_leaves_the_address_bar_and_signs_in_once(make_bot, browser, page, output_dir):
    bot = make_bot().start()
    seed(bot, "acme/shop", 50, "feat/sign-in", "Sign in by link", "octocat")
    code = bot.store.create_signin_code()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sockets, sent, received = [], [], []

    def on_websocket(ws):
        sockets.append(ws.url)
        ws.on("framesent", lambda payload: sent.append(payload))
        ws.on("framereceived", lambda payload: received.append(payload))

    page.on("websocket", on_websocket)
    # What the address bar says when the code is sent to be exchanged.
    address_at_exchange: list[str] = []

    def exchange(route):
        address_at_exchange.append(page.url)
        route.continue_()

    page.route("**/api/sessions", exchange)

    page.goto(f"{bot.url}/?code={code}&repository=acme/shop")
    expect(page.locator("#connection")).to_have_text("Live")
    expect(card(page, "acme/shop", 50)).to_be_visible()
    # The code left the address bar before it was used; the filter stayed.
    assert address_at_exchange == [f"{bot.url}/?repository=acme%2Fshop"]
    assert page.url == f"{bot.url}/?repository=acme%2Fshop"
    token = stored_token(page)
    assert bot.store.verify_token(token)["kind"] == "session"
    page.screenshot(path=output_dir / "signed-in-by-link.png")

    # Live data over the WebSocket, which got the token in its first message, not its URL.
    assert bot.deploy("acme/shop", 50, "feat/sign-in").status_code == 202
    expect(badge(page, "acme/shop", 50)).to_have_text("Deployed")
    assert sockets == [f"ws://127.0.0.1:{bot.port}/ws"]
    assert json.loads(sent[0]) == {"type": "auth", "token": token}
    assert any(json.loads(frame).get("type") == "deployment:update" for frame in received)
    assert not any(token in url for url in requested)
    assert [url for url in requested if code in url] == [f"{bot.url}/?code={code}&repository=acme/shop"]

    # The link works once: opened again (another browser profile), it says so.
    context = browser.new_context()
    try:
        again = context.new_page()
        again.goto(f"{bot.url}/?code={code}")
        expect(again.locator("#sign-in-message")).to_contain_text("This sign-in link is not valid")
        expect(again.locator("#main")).to_be_hidden()
        expect(again.get_by_label("API token")).to_be_visible()
        assert "code=" not in again.url and stored_token(again) is None
        again.screenshot(path=output_dir / "used-link.png")
    finally:
        context.close()


def test_revoking_the_session_signs_the_page_out(make_bot, page, output_dir):
    bot = make_bot().start()
    seed(bot, "acme/shop", 51, "feat/revoke", "Revoked session", "octocat")
    open_dashboard(page, bot)
    expect(card(page, "acme/shop", 51)).to_be_visible()
    assert bot.store.revoke_token(bot.store.verify_token(stored_token(page))["name"])
    # The server closes the session's WebSocket with 4401 within 5 s; the page signs out.
    message = page.locator("#sign-in-message")
    expect(message).to_contain_text("Your sign-in is no longer accepted")
    expect(page.locator("#main")).to_be_hidden()
    expect(page.locator("li.card")).to_have_count(0)
    assert stored_token(page) is None
    page.screenshot(path=output_dir / "revoked.png")


def test_a_bad_token_is_refused_and_nothing_is_shown(make_bot, page, output_dir):
    bot = make_bot().start()
    seed(bot, "acme/shop", 1, "feat/secret-project", "Secret project", "octocat")

    # No token: only the sign-in form.
    page.goto(bot.url)
    expect(page.get_by_label("API token")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()

    # A bad token, typed in: refused with a message, not kept.
    page.get_by_label("API token").fill("not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    message = page.locator("#sign-in-message")
    expect(message).to_contain_text("This API token was not accepted")
    expect(message).to_contain_text("Invalid, expired or revoked API token")
    expect(page.locator("#main")).to_be_hidden()
    expect(page.locator("li.card")).to_have_count(0)
    expect(page.get_by_text("Secret project")).to_have_count(0)
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    assert stored_token(page) is None
    page.screenshot(path=output_dir / "bad-token.png")

    # A token in the address (an old link), even a good one, is taken off the URL and not used.
    page.goto(f"{bot.url}/?token={bot.token}")
    expect(message).to_contain_text("no longer takes a token from its address")
    expect(page.locator("#main")).to_be_hidden()
    assert "token=" not in page.url and stored_token(page) is None

    # The right token, typed in.
    page.get_by_label("API token").fill(bot.token)
    page.get_by_role("button", name="Sign in").click()
    expect(card(page, "acme/shop", 1)).to_be_visible()
    expect(page.locator("#connection")).to_have_text("Live")

    # Signing out forgets the token and shows nothing again, also after a reload.
    page.get_by_role("button", name="Sign out").click()
    expect(message).to_have_text("You are signed out.")
    expect(page.locator("li.card")).to_have_count(0)
    expect(page.locator("#main")).to_be_hidden()
    assert stored_token(page) is None
    page.screenshot(path=output_dir / "signed-out.png")
    page.reload()
    expect(page.get_by_label("API token")).to_be_visible()
    expect(page.locator("li.card")).to_have_count(0)


def test_html_in_pull_request_data_renders_as_text(make_bot, page):
    bot = make_bot().start()
    evil_branch = "<img src=x onerror=alert(1)>"
    evil_title = '<script>alert("title")</script><b>bold</b>'
    seed(bot, "acme/web", 3, evil_branch, evil_title, "<svg onload=alert(2)>")

    open_dashboard(page, bot)
    item = card(page, "acme/web", 3)
    expect(item.locator(".branch")).to_have_text(evil_branch)
    expect(item.locator(".card-title")).to_have_text(evil_title)
    expect(item.locator(".author")).to_have_text("<svg onload=alert(2)>")
    item.locator("button.preview-toggle").click()
    expect(item.get_by_role("button", name=f"Deploy Preview for {evil_branch}")).to_be_visible()

    # A branch name with markup (a valid git name) arriving over the WebSocket is text too.
    ws_branch = "<img/src=x/onerror=alert(3)>"
    assert bot.deploy("acme/web", 9, ws_branch).status_code == 202
    expect(card(page, "acme/web", 9).locator(".branch")).to_have_text(ws_branch)
    expect(badge(page, "acme/web", 9)).to_have_text("Deployed")
    assert page.locator("#cards img, #cards script, #cards svg, #cards b").count() == 0


def test_filter_by_repository_and_status(make_bot, page, output_dir, tmp_path):
    bot = command_bot(
        make_bot,
        tmp_path,
        """
case "$PREVIEW_BRANCH" in
  *broken*) echo "tests failed: 3 of 120" >&2; exit 1 ;;
esac
echo "https://pr-$PREVIEW_PR_NUMBER.preview.acme.test"
""",
    ).start()
    seed(bot, "acme/shop", 1, "feat/cart", "Shopping cart", "octocat")
    seed(bot, "acme/shop", 2, "fix/broken-tax", "Tax calculation", "hubot")
    seed(bot, "acme/blog", 3, "docs/intro", "Introduction post", "mona")
    seed(bot, "acme/blog", 4, "feat/rss", "RSS feed", "mona")
    assert bot.deploy("acme/shop", 1, "feat/cart").status_code == 202
    assert bot.deploy("acme/shop", 2, "fix/broken-tax").status_code == 202
    bot.wait_status("acme/shop", 1, "deployed")
    bot.wait_status("acme/shop", 2, "failed")

    open_dashboard(page, bot)
    cards = page.locator("li.card")
    expect(cards).to_have_count(4)
    repository = page.get_by_label("Repository")
    status = page.get_by_label("Status")

    repository.select_option("acme/blog")
    expect(page.locator("li.card .card-repo")).to_have_text(["acme/blog", "acme/blog"])
    assert "repository=acme%2Fblog" in page.url

    status.select_option("failed")
    expect(cards).to_have_count(0)
    expect(page.locator("#empty")).to_contain_text("No pull requests match these filters.")

    repository.select_option("")
    expect(page.locator("li.card .card-number")).to_have_text(["#2"])
    expect(badge(page, "acme/shop", 2)).to_have_text("Failed")

    status.select_option("deployed")
    expect(page.locator("li.card .card-number")).to_have_text(["#1"])

    status.select_option("idle")
    expect(page.locator("li.card .card-number")).to_have_text(["#4", "#3"])

    page.get_by_role("button", name="Clear filters").click()
    expect(cards).to_have_count(4)
    assert "status=" not in page.url

    # The filters live in the address bar, so a reload keeps them.
    page.goto(f"{bot.url}/?status=failed")
    expect(page.locator("li.card .card-number")).to_have_text(["#2"])
    expect(status).to_have_value("failed")

    # Phone width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(bot.url)
    expect(page.locator("#connection")).to_have_text("Live")
    expect(cards).to_have_count(4)
    card(page, "acme/shop", 1).locator("button.preview-toggle").click()
    page.evaluate("window.scrollTo(0, 0)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    boxes = [cards.nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["x"] == boxes[1]["x"] and boxes[0]["width"] > 330
    page.screenshot(path=output_dir / "phone-390.png", full_page=True)


def test_next_public_api_url_is_the_api_and_websocket_base(make_bot, page):
    """The page is served by one address and talks to the API at another (localhost vs
    127.0.0.1 here). The API does not send CORS headers itself, so the test adds them."""
    bot = make_bot()
    api_base = f"http://localhost:{bot.port}"
    bot.env["NEXT_PUBLIC_API_URL"] = api_base
    bot.start()
    seed(bot, "acme/shop", 30, "feat/api-base", "Separate API host", "octocat")

    api_requests: list[str] = []

    def via_api_host(route):
        api_requests.append(route.request.url)
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "access-control-allow-origin": "*"})

    page.route(f"{api_base}/api/**", via_api_host)
    own_origin = []
    page.on("request", lambda r: own_origin.append(r.url) if r.url.startswith(f"{bot.url}/api/") else None)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    open_dashboard(page, bot)
    expect(card(page, "acme/shop", 30)).to_be_visible()
    assert api_requests[0] == f"{api_base}/api/sessions"  # the sign-in link's code, exchanged
    assert all(url.startswith(f"{api_base}/api/pull-requests") for url in api_requests[1:])
    assert not own_origin
    assert sockets and all(url == f"ws://localhost:{bot.port}/ws" for url in sockets)


def test_cancel_a_running_deploy_from_its_card(make_bot, page, output_dir):
    bot = make_bot({"PREVIEW_SIMULATED_SECONDS": "8"}).start()
    seed(bot, "acme/shop", 40, "feat/slow-build", "A slow build", "octocat")

    open_dashboard(page, bot)
    item = card(page, "acme/shop", 40)
    cancel = item.get_by_role("button", name="Cancel deploy")
    expect(badge(page, "acme/shop", 40)).to_have_text("Idle")
    expect(cancel).to_be_hidden()

    # Deploying: Cancel is offered, reachable from the keyboard, and fits a phone's width.
    item.locator("button.preview-toggle").click()
    item.get_by_role("button", name="Deploy Preview for feat/slow-build").click()
    expect(badge(page, "acme/shop", 40)).to_have_text("Deploying")
    expect(cancel).to_be_visible()
    expect(cancel).to_be_enabled()
    page.screenshot(path=output_dir / "deploying-with-cancel.png")
    page.set_viewport_size({"width": 390, "height": 844})
    cancel.scroll_into_view_if_needed()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=output_dir / "deploying-with-cancel-phone-390.png")
    page.set_viewport_size({"width": 1280, "height": 860})

    # The request is held back a moment so the page can be seen waiting for it: disabled.
    def slow_cancel(route):
        page.wait_for_timeout(700)
        route.continue_()

    page.route("**/deployment/cancel", slow_cancel)
    cancel.focus()
    page.keyboard.press("Enter")
    cancelling = item.locator("button.cancel")
    expect(cancelling).to_have_text("Cancelling…")
    expect(cancelling).to_be_disabled()

    # The worker stops the provisioner; the WebSocket says idle with the outcome "cancelled".
    expect(badge(page, "acme/shop", 40)).to_have_text("Idle")
    expect(item.locator(".outcome")).to_have_text("Cancelled")
    expect(item.locator(".state-idle")).to_contain_text("cancelled")
    expect(cancelling).to_be_hidden()
    expect(item.locator(".spinner")).to_be_hidden()
    deploy = item.get_by_role("button", name="Deploy Preview for feat/slow-build")
    expect(deploy).to_be_visible()
    expect(deploy).to_be_enabled()
    expect(item.locator(".card-message")).to_be_hidden()
    expect(page.locator("#announcer")).to_contain_text("acme/shop #40: deploy cancelled")
    # The keyboard focus stayed on the card.
    expect(item.locator("button.preview-toggle")).to_be_focused()
    page.screenshot(path=output_dir / "cancelled.png")

    history = bot.client().get("/api/repos/acme/shop/pull-requests/40/deployments").json()["deployments"]
    assert [d["status"] for d in history] == ["cancelled"]
    assert history[0]["trigger"] == "dashboard"

    # A reload still says why the environment is idle (from the list), and a new deploy clears it.
    page.reload()
    expect(page.locator("#connection")).to_have_text("Live")
    expect(item.locator(".outcome")).to_have_text("Cancelled")
    item.locator("button.preview-toggle").click()
    page.unroute("**/deployment/cancel")
    deploy.click()
    expect(badge(page, "acme/shop", 40)).to_have_text("Deploying")
    expect(item.locator(".outcome")).to_be_hidden()


def test_cancel_is_offered_only_while_deploying(make_bot, page, tmp_path):
    bot = command_bot(
        make_bot,
        tmp_path,
        """
case "$PREVIEW_BRANCH" in
  *broken*) echo "build failed" >&2; exit 1 ;;
esac
echo "https://pr-$PREVIEW_PR_NUMBER.preview.acme.test"
""",
    ).start()
    seed(bot, "acme/shop", 41, "feat/done", "Deployed", "octocat")
    seed(bot, "acme/shop", 42, "fix/broken-build", "Failed", "octocat")
    seed(bot, "acme/shop", 43, "docs/readme", "Idle", "octocat")
    assert bot.deploy("acme/shop", 41, "feat/done").status_code == 202
    assert bot.deploy("acme/shop", 42, "fix/broken-build").status_code == 202
    bot.wait_status("acme/shop", 41, "deployed")
    bot.wait_status("acme/shop", 42, "failed")

    open_dashboard(page, bot)
    expect(badge(page, "acme/shop", 41)).to_have_text("Deployed")
    expect(badge(page, "acme/shop", 42)).to_have_text("Failed")
    expect(badge(page, "acme/shop", 43)).to_have_text("Idle")
    for number in (41, 42, 43):
        item = card(page, "acme/shop", number)
        toggle = item.locator("button.preview-toggle")
        if toggle.is_visible():
            toggle.click()  # nor in the open panel
        expect(item.locator("button.cancel")).to_have_count(1)  # rendered, but not offered
        expect(item.locator("button.cancel")).to_be_hidden()
        expect(item.get_by_role("button", name=re.compile("Cancel"))).to_have_count(0)
        expect(item.locator(".outcome")).to_be_hidden()  # these never were cancelled


def test_cancel_when_nothing_is_running_shows_the_error_on_the_card(make_bot, page):
    """The page still shows a deploy that already finished (its feed is silenced here): Cancel
    gets 409 and the card says so, then catches up with the list."""
    bot = make_bot({"PREVIEW_SIMULATED_SECONDS": "2"}).start()
    seed(bot, "acme/api", 44, "feat/quick", "Quick build", "octocat")

    page.route_web_socket(re.compile(r"/ws$"), silent_feed)
    assert bot.deploy("acme/api", 44, "feat/quick").status_code == 202
    open_dashboard(page, bot)
    item = card(page, "acme/api", 44)
    expect(badge(page, "acme/api", 44)).to_have_text("Deploying")
    bot.wait_status("acme/api", 44, "deployed")

    item.get_by_role("button", name="Cancel deploy").click()
    message = item.locator(".card-message")
    expect(message).to_have_text("Could not cancel the deploy: No deploy of this pull request is in progress")
    expect(message).to_have_attribute("data-kind", "error")
    expect(badge(page, "acme/api", 44)).to_have_text("Deployed")
    expect(item.locator("button.cancel")).to_be_hidden()
    expect(message).to_be_visible()
    history = bot.client().get("/api/repos/acme/api/pull-requests/44/deployments").json()["deployments"]
    assert [d["status"] for d in history] == ["deployed"]


# -- several environments per pull request -------------------------------------------------------


def environments_bot(make_bot, tmp_path: Path, staging_script: str, env: dict | None = None):
    """An installation with the environments `preview` (simulated) and `staging` (a command)."""
    path = tmp_path / "deploy-staging.sh"
    path.write_text(staging_script)
    return make_bot(
        {
            "PREVIEW_ENVIRONMENTS": "preview,staging",
            "PREVIEW_ENV_STAGING_PROVISIONER": "command",
            "PREVIEW_ENV_STAGING_DEPLOY_COMMAND": shlex.join(["sh", str(path)]),
            **(env or {}),
        }
    )


def env_row(page, repository: str, number: int, environment: str):
    return card(page, repository, number).locator(f'li.env[data-environment="{environment}"]')


def env_badge(page, repository: str, number: int, environment: str):
    return env_row(page, repository, number, environment).locator(".env-status")


def env_deployment(bot, repository: str, number: int, environment: str) -> dict:
    with bot.client() as c:
        response = c.get(f"/api/repos/{repository}/pull-requests/{number}/deployment", params={"environment": environment})
    return response.json()


def env_history(bot, repository: str, number: int, environment: str) -> list[dict]:
    with bot.client() as c:
        response = c.get(f"/api/repos/{repository}/pull-requests/{number}/deployments", params={"environment": environment})
    return response.json()["deployments"]


def wait_env_status(bot, repository: str, number: int, environment: str, status: str) -> dict:
    return wait_for(
        lambda: (body := env_deployment(bot, repository, number, environment)).get("status") == status and body,
        timeout=20,
        message=f"{repository}#{number} {environment} to be {status}",
    )


def test_each_environment_has_its_own_row_state_and_retry(make_bot, page, output_dir, tmp_path):
    marker = tmp_path / "staging-failed-once"
    bot = environments_bot(
        make_bot,
        tmp_path,
        f"""
if [ -e {shlex.quote(str(marker))} ]; then
  sleep 2
  echo "https://$PREVIEW_ENVIRONMENT-$PREVIEW_PR_NUMBER.acme.test"
  exit 0
fi
touch {shlex.quote(str(marker))}
echo 'migrate: relation "orders" already exists' >&2
exit 1
""",
    ).start()
    seed(bot, "acme/shop", 50, "feat/orders", "Order history", "octocat")
    seed(bot, "acme/shop", 51, "fix/typo", "Fix a typo in the footer", "hubot")
    assert bot.deploy("acme/shop", 50, "feat/orders").status_code == 202
    assert bot.deploy("acme/shop", 50, "feat/orders", environment="staging").status_code == 202
    preview = wait_env_status(bot, "acme/shop", 50, "preview", "deployed")
    wait_env_status(bot, "acme/shop", 50, "staging", "failed")

    open_dashboard(page, bot)
    item = card(page, "acme/shop", 50)
    # A row per environment, in the operator's order, instead of the one-environment card.
    expect(item.locator(".env-name")).to_have_text(["preview", "staging"])
    expect(item.locator(".badge-text")).to_be_hidden()
    expect(item.locator("button.preview-toggle")).to_be_hidden()
    expect(item).to_have_attribute("data-status", "failed")  # the accent: the state most worth a look

    # preview: deployed, its URL with a ✓, Redeploy.
    row = env_row(page, "acme/shop", 50, "preview")
    expect(env_badge(page, "acme/shop", 50, "preview")).to_have_text("Deployed")
    link = row.get_by_role("link", name="https://preview-50.shop.example.com")
    expect(link).to_have_attribute("href", "https://preview-50.shop.example.com")
    expect(row.locator(".env-deployed .check")).to_have_text("✓")
    expect(row.get_by_role("button")).to_have_text(["Redeploy", "Extend", "Destroy", "History▾"])
    expect(row.get_by_role("button", name="Redeploy preview")).to_be_enabled()
    expect(row.locator(".error-text")).to_be_hidden()

    # staging: failed, its error, Retry.
    staging = env_row(page, "acme/shop", 50, "staging")
    expect(env_badge(page, "acme/shop", 50, "staging")).to_have_text("Failed")
    expect(staging.locator(".error-text")).to_contain_text("deploy command exited with 1")
    expect(staging.locator(".error-text")).to_contain_text('relation "orders" already exists')
    expect(staging.get_by_role("button")).to_have_text(["Retry", "Destroy", "History▾"])
    retry = staging.get_by_role("button", name="Retry staging")
    expect(retry).to_be_visible()
    expect(staging.get_by_role("link")).to_have_text(["Logs"])  # no preview URL, only the log

    # Another pull request: both environments idle, each with its own Deploy.
    expect(card(page, "acme/shop", 51).locator(".env-status")).to_have_text(["Idle", "Idle"])
    expect(env_row(page, "acme/shop", 51, "staging").get_by_role("button", name="Deploy staging")).to_be_visible()
    page.screenshot(path=output_dir / "two-environments.png")

    # Phone width: the rows fit, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.evaluate("window.scrollTo(0, 0)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for environment in ("preview", "staging"):
        box = env_row(page, "acme/shop", 50, environment).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    page.screenshot(path=output_dir / "two-environments-phone-390.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})

    # Retry, from the keyboard, deploys staging only; the focus moves to its Cancel.
    retry.focus()
    page.keyboard.press("Enter")
    expect(env_badge(page, "acme/shop", 50, "staging")).to_have_text("Deploying")
    expect(staging.locator(".spinner")).to_be_visible()
    expect(staging.locator(".env-elapsed")).to_have_text(re.compile(r"^\d+s$"))
    expect(staging.get_by_role("button", name="Cancel the deploy to staging")).to_be_focused()
    expect(staging.locator(".error-text")).to_be_hidden()
    expect(env_badge(page, "acme/shop", 50, "preview")).to_have_text("Deployed")
    expect(row.locator(".spinner")).to_be_hidden()
    expect(link).to_be_visible()
    page.screenshot(path=output_dir / "two-environments-deploying.png")

    expect(env_badge(page, "acme/shop", 50, "staging")).to_have_text("Deployed", timeout=15_000)
    expect(staging.get_by_role("link", name="https://staging-50.acme.test")).to_be_visible()
    expect(staging.get_by_role("button", name="Redeploy staging")).to_be_visible()
    expect(page.locator("#announcer")).to_contain_text("acme/shop #50: staging deployed at https://staging-50.acme.test")
    expect(item).to_have_attribute("data-status", "deployed")
    expect(link).to_be_visible()

    staging_now = env_deployment(bot, "acme/shop", 50, "staging")
    assert (staging_now["status"], staging_now["environment"], staging_now["trigger"]) == ("deployed", "staging", "dashboard")
    assert [d["status"] for d in env_history(bot, "acme/shop", 50, "staging")] == ["deployed", "failed"]
    preview_now = env_deployment(bot, "acme/shop", 50, "preview")
    assert (preview_now["id"], preview_now["status"]) == (preview["id"], "deployed")
    assert len(env_history(bot, "acme/shop", 50, "preview")) == 1

    # The status filter is the API's: on each pull request's default environment (preview).
    page.goto(f"{bot.url}/?status=deployed")
    expect(page.locator("li.card .card-number")).to_have_text(["#50"])
    expect(item.locator(".env-status")).to_have_text(["Deployed", "Deployed"])
    page.get_by_label("Status").select_option("idle")
    expect(page.locator("li.card .card-number")).to_have_text(["#51"])
    expect(card(page, "acme/shop", 51).locator(".env-name")).to_have_text(["preview", "staging"])


def test_a_live_update_of_one_environment_changes_only_its_row(make_bot, page, output_dir, tmp_path):
    bot = environments_bot(
        make_bot,
        tmp_path,
        """
sleep 10
echo "https://staging-$PREVIEW_PR_NUMBER.acme.test"
""",
        {"PREVIEW_SIMULATED_SECONDS": "1"},
    ).start()
    seed(bot, "acme/api", 60, "feat/webhooks", "Outgoing webhooks", "mona")

    open_dashboard(page, bot)
    page.evaluate("window.__sameDocument = true")
    item = card(page, "acme/api", 60)
    preview, staging = env_row(page, "acme/api", 60, "preview"), env_row(page, "acme/api", 60, "staging")
    expect(item.locator(".env-status")).to_have_text(["Idle", "Idle"])

    # Deploy on the preview row deploys preview; staging stays idle.
    preview.get_by_role("button", name="Deploy preview").click()
    expect(env_badge(page, "acme/api", 60, "preview")).to_have_text("Deploying")
    expect(preview.locator(".spinner")).to_be_visible()
    expect(env_badge(page, "acme/api", 60, "staging")).to_have_text("Idle")
    expect(staging.locator(".spinner")).to_be_hidden()
    expect(env_badge(page, "acme/api", 60, "preview")).to_have_text("Deployed")
    expect(preview.get_by_role("link", name="https://preview-60.api.example.com")).to_be_visible()
    expect(env_badge(page, "acme/api", 60, "staging")).to_have_text("Idle")
    expect(staging.get_by_role("button", name="Deploy staging")).to_be_visible()
    assert env_deployment(bot, "acme/api", 60, "staging")["status"] == "idle"  # the 404's body
    preview_id = env_deployment(bot, "acme/api", 60, "preview")["id"]
    preview_text = preview.inner_text()

    # A deploy of staging started elsewhere arrives over the WebSocket: only its row changes.
    assert bot.deploy("acme/api", 60, "feat/webhooks", environment="staging").status_code == 202
    expect(env_badge(page, "acme/api", 60, "staging")).to_have_text("Deploying")
    expect(staging.locator(".spinner")).to_be_visible()
    cancel = staging.get_by_role("button", name="Cancel the deploy to staging")
    expect(cancel).to_be_enabled()
    assert preview.inner_text() == preview_text
    expect(preview.get_by_role("button", name="Redeploy preview")).to_be_enabled()
    expect(item).to_have_attribute("data-status", "deploying")
    page.set_viewport_size({"width": 390, "height": 844})
    item.scroll_into_view_if_needed()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=output_dir / "staging-deploying-phone-390.png")
    page.set_viewport_size({"width": 1280, "height": 860})

    # Cancel on the staging row cancels staging; the focus stays on the row.
    cancel.focus()
    page.keyboard.press("Enter")
    expect(env_badge(page, "acme/api", 60, "staging")).to_have_text("Idle")
    expect(staging.locator(".outcome")).to_have_text("Cancelled")
    expect(staging.get_by_role("button", name="Deploy staging")).to_be_focused()
    expect(page.locator("#announcer")).to_contain_text("acme/api #60: staging deploy cancelled")
    assert preview.inner_text() == preview_text
    page.screenshot(path=output_dir / "staging-cancelled.png")

    assert [d["status"] for d in env_history(bot, "acme/api", 60, "staging")] == ["cancelled"]
    assert env_deployment(bot, "acme/api", 60, "preview")["id"] == preview_id
    assert page.evaluate("window.__sameDocument") is True  # no reload happened


def test_an_environment_no_longer_listed_shows_its_preview_but_offers_no_deploy(make_bot, page, output_dir):
    first = make_bot({"PREVIEW_ENVIRONMENTS": "preview,retired"}).start()
    seed(first, "acme/shop", 60, "feat/old-env", "Old environment")
    with first.client() as c:
        assert c.post("/api/repos/acme/shop/pull-requests/60/deploy", json={"branchName": "feat/old-env", "environment": "retired"}).status_code == 202
    wait_env_status(first, "acme/shop", 60, "retired", "deployed")
    # The operator removes the name and restarts: the live preview stays visible, and can be
    # torn down, not redeployed.
    first.stop()
    first.env["PREVIEW_ENVIRONMENTS"] = "preview"
    bot = first.start()
    open_dashboard(page, bot)
    row = env_row(page, "acme/shop", 60, "retired")
    expect(env_badge(page, "acme/shop", 60, "retired")).to_contain_text("Deployed")
    expect(row.get_by_role("button", name=re.compile("Redeploy|Deploy|Retry"))).to_have_count(0)
    expect(env_row(page, "acme/shop", 60, "preview").get_by_role("button", name=re.compile("^Deploy"))).to_be_visible()
    page.screenshot(path=output_dir / "unlisted-environment.png")


# -- history, destroy, the log page ----------------------------------------------------------


def sha_of(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def test_history_lists_every_deployment_a_page_at_a_time_and_leads_to_its_logs(make_bot, page, output_dir, tmp_path):
    fail = tmp_path / "fail-next"
    fail.touch()
    bot = command_bot(
        make_bot,
        tmp_path,
        f"""
echo "building $PREVIEW_SHA"
if [ -e {shlex.quote(str(fail))} ]; then rm {shlex.quote(str(fail))}; echo "tests failed" >&2; exit 1; fi
echo "https://pr-$PREVIEW_PR_NUMBER.preview.acme.test"
""",
    ).start()
    # A REST deploy may name the pull request; the card shows that title.
    first = bot.deploy("acme/shop", 60, "feat/cart", headSha=sha_of(0), title="Make the cart faster").json()
    bot.wait_status("acme/shop", 60, "failed")
    for n in range(1, 11):
        assert bot.deploy("acme/shop", 60, "feat/cart", headSha=sha_of(n)).status_code == 202
        bot.wait_status("acme/shop", 60, "deployed")
        wait_for(lambda: bot.store.latest_deployment(PreviewKey("acme/shop", 60)).head_sha == sha_of(n), message="recorded")

    open_dashboard(page, bot)
    item = card(page, "acme/shop", 60)
    expect(item.locator(".card-title")).to_have_text("Make the cart faster")
    toggle = item.get_by_role("button", name="History of preview")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    entries = item.locator(".history-item")
    expect(entries).to_have_count(10)
    expect(entries.locator(".history-badge")).to_have_text(["Deployed"] + ["Superseded"] * 9)
    newest = entries.first
    expect(newest.locator(".history-commit")).to_have_text(sha_of(10)[:7])
    expect(newest.locator(".history-trigger")).to_have_text("by api")
    expect(newest.locator(".history-who")).to_have_text("token:tests")
    expect(newest.locator(".history-duration")).to_have_text(re.compile(r"^took \d+s$"))
    expect(newest.locator(".history-cost")).to_have_count(0)  # this API gives no cost yet
    page.screenshot(path=output_dir / "history.png")

    # "More": the next page, the failed first deploy last.
    item.get_by_role("button", name="More", exact=True).click()
    expect(entries).to_have_count(11)
    expect(entries.last.locator(".history-badge")).to_have_text("Failed")
    expect(item.get_by_role("button", name="More", exact=True)).to_be_hidden()

    # Live: a new deploy shows up at the top while the history is open, the rest kept.
    assert bot.deploy("acme/shop", 60, "feat/cart", headSha=sha_of(11)).status_code == 202
    expect(entries).to_have_count(12)
    expect(entries.first.locator(".history-commit")).to_have_text(sha_of(11)[:7])
    expect(entries.first.locator(".history-badge")).to_have_text("Deployed")

    # Phone width: the history fits.
    page.set_viewport_size({"width": 390, "height": 844})
    entries.last.scroll_into_view_if_needed()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=output_dir / "history-phone-390.png")
    page.set_viewport_size({"width": 1280, "height": 860})

    # Each entry leads to its own log.
    entries.last.get_by_role("link", name=re.compile("^Logs of the deploy")).click()
    expect(page).to_have_url(f"{bot.url}/deployments/{first['deploymentId']}/logs")
    expect(page.locator(".log-line .log-text")).to_have_text([f"building {sha_of(0)}", "tests failed"])
    expect(page.locator("#status-text")).to_have_text("Failed")


def test_destroy_asks_first_then_tears_the_preview_down(make_bot, page, output_dir):
    bot = make_bot().start()
    seed(bot, "acme/shop", 61, "feat/one", "One environment", "octocat")
    assert bot.deploy("acme/shop", 61, "feat/one").status_code == 202
    bot.wait_status("acme/shop", 61, "deployed")

    open_dashboard(page, bot)
    item = card(page, "acme/shop", 61)
    destroy = item.get_by_role("button", name="Destroy preview", exact=True)
    expect(badge(page, "acme/shop", 61)).to_have_text("Deployed")
    # The first click only asks; "Keep it" changes nothing.
    destroy.click()
    confirm = item.get_by_role("group", name="Confirm destroying preview")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("Tear down preview?")
    expect(destroy).to_be_hidden()
    page.screenshot(path=output_dir / "destroy-confirm.png")
    confirm.get_by_role("button", name="Keep it").click()
    expect(confirm).to_be_hidden()
    expect(destroy).to_be_focused()
    destroy.click()
    confirm.get_by_role("button", name="Yes, destroy preview", exact=True).click()
    # Torn down: idle, the outcome said, Destroy gone, Deploy offered again.
    expect(badge(page, "acme/shop", 61)).to_have_text("Idle")
    expect(item.locator(".outcome")).to_have_text("Torn down")
    expect(destroy).to_be_hidden()
    expect(item.get_by_role("button", name="Cancel deploy")).to_be_hidden()
    history = bot.client().get("/api/repos/acme/shop/pull-requests/61/deployments").json()["deployments"]
    assert [d["status"] for d in history] == ["destroyed"]


def test_each_environment_row_has_its_own_destroy(make_bot, page, output_dir):
    bot = make_bot({"PREVIEW_ENVIRONMENTS": "preview,staging"}).start()
    seed(bot, "acme/shop", 62, "feat/two", "Two environments", "octocat")
    for environment in ("preview", "staging"):
        assert bot.deploy("acme/shop", 62, "feat/two", environment=environment).status_code == 202
        wait_env_status(bot, "acme/shop", 62, environment, "deployed")

    open_dashboard(page, bot)
    staging = env_row(page, "acme/shop", 62, "staging")
    staging.get_by_role("button", name="Destroy staging", exact=True).click()
    staging.get_by_role("button", name="Yes, destroy staging", exact=True).click()
    expect(env_badge(page, "acme/shop", 62, "staging")).to_have_text("Idle")
    expect(staging.locator(".outcome")).to_have_text("Torn down")
    expect(env_badge(page, "acme/shop", 62, "preview")).to_have_text("Deployed")
    expect(env_row(page, "acme/shop", 62, "preview").get_by_role("button", name="Destroy preview", exact=True)).to_be_visible()
    page.screenshot(path=output_dir / "destroyed-staging.png")


def test_the_log_page_follows_a_running_deploy_unless_the_reader_scrolled_up(make_bot, page, output_dir, tmp_path):
    gate = tmp_path / "gate"
    bot = command_bot(
        make_bot,
        tmp_path,
        f"""
i=1
while [ $i -le 200 ]; do echo "step $i"; i=$((i+1)); done
echo '<img src=x onerror=alert(1)> <b>not bold</b>'
while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done
while [ $i -le 400 ]; do echo "step $i"; i=$((i+1)); done
echo "https://pr-$PREVIEW_PR_NUMBER.preview.acme.test"
""",
    ).start()
    seed(bot, "acme/shop", 63, "feat/build", "A long build", "octocat")
    deployment_id = bot.deploy("acme/shop", 63, "feat/build").json()["deploymentId"]

    # The card's Logs link leads to the running deploy's log.
    open_dashboard(page, bot)
    card(page, "acme/shop", 63).get_by_role("link", name="Logs of the running deploy to preview").click()
    expect(page).to_have_url(f"{bot.url}/deployments/{deployment_id}/logs")
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#title")).to_have_text("Log of acme/shop #63")
    expect(page.locator("#status-text")).to_have_text("Deploying")
    lines = page.locator(".log-line")
    expect(lines).to_have_count(201)
    expect(lines.last.locator(".log-text")).to_have_text("<img src=x onerror=alert(1)> <b>not bold</b>")
    expect(page.locator(".log-view img, .log-view b")).to_have_count(0)
    # It follows the end.
    view = page.locator("#log")
    expect(lines.last).to_be_in_viewport()
    page.screenshot(path=output_dir / "log-live.png")

    # Scrolled up, the reader keeps their place while lines come, and can go back to the end.
    view.evaluate("v => { v.scrollTop = 0 }")
    gate.touch()
    expect(page.locator("#status-text")).to_have_text("Deployed", timeout=20_000)
    expect(lines).to_have_count(402)
    expect(lines.first).to_be_in_viewport()
    follow = page.get_by_role("button", name="Follow the end")
    expect(follow).to_be_visible()
    follow.click()
    expect(lines.last).to_be_in_viewport()
    expect(lines.last.locator(".log-text")).to_have_text("https://pr-63.preview.acme.test")
    expect(follow).to_be_hidden()
    seqs = lines.locator(".log-seq").all_text_contents()
    assert seqs == [str(n) for n in range(1, 403)]

    # A phone: lines wrap, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert view.evaluate("v => v.scrollWidth <= v.clientWidth")
    page.screenshot(path=output_dir / "log-phone-390.png")
    page.set_viewport_size({"width": 1280, "height": 860})

    # Reloaded, the page shows the log again, once.
    page.reload()
    expect(page.locator("#connection")).to_have_text("Live")
    expect(lines).to_have_count(402)


def test_the_log_page_without_a_sign_in_or_for_an_unknown_deployment(make_bot, page, output_dir):
    bot = make_bot().start()
    page.goto(f"{bot.url}/deployments/{'0' * 32}/logs")
    expect(page.get_by_role("heading", name="Sign in to read this log")).to_be_visible()
    page.screenshot(path=output_dir / "log-signed-out.png")
    open_dashboard(page, bot)
    page.goto(f"{bot.url}/deployments/{'0' * 32}/logs")
    expect(page.locator("#notice")).to_have_text("No such deployment, or not one this sign-in may see.")
    expect(page.locator(".log-line")).to_have_count(0)


# -- what a deployment runs on, and its price ---------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


def test_a_deployed_card_shows_its_ec2_instance_and_hourly_cost(make_bot, page, output_dir, moto):
    """The ec2 provisioner against moto: the list gives the resources and price once the deploy
    ends (the WebSocket message does not carry them). The preview URL is loopback and never
    requested, so moto's public addresses are never contacted."""
    moto.reset()
    ec2 = boto3.client("ec2", endpoint_url=moto.url, region_name=CREDENTIALS["AWS_REGION"], aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    bot = make_bot({
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ENDPOINT_URL_PRICING": "http://127.0.0.1:9",  # unreachable: PREVIEW_HOURLY_COST applies
        "PREVIEW_PROVISIONER": "ec2",
        "PREVIEW_EC2_AMI": ami,
        "PREVIEW_HOURLY_COST": "0.0208",
        "PREVIEW_URL_TEMPLATE": "http://127.0.0.1:9/{environment}-{pr}/",
    }).start()
    seed(bot, "acme/shop", 70, "feat/vm", "Runs on a VM", "octocat")

    open_dashboard(page, bot)
    item = card(page, "acme/shop", 70)
    expect(item.locator(".deployment-details")).to_be_hidden()
    item.locator("button.preview-toggle").click()
    item.get_by_role("button", name="Deploy Preview for feat/vm").click()
    expect(badge(page, "acme/shop", 70)).to_have_text("Deployed", timeout=30_000)

    [instance] = bot.deployment("acme/shop", 70).json()["resources"]
    assert instance["kind"] == "ec2:instance" and instance["id"].startswith("i-")
    expect(item.locator(".resource")).to_have_text([f"ec2:instance {instance['id']} t3.small us-east-1"])
    expect(item.locator(".hourly-cost")).to_have_text("$0.0208 an hour")
    page.screenshot(path=output_dir / "ec2-deployed.png")

    # Torn down: nothing runs, so nothing is shown.
    with bot.client() as client:
        assert client.delete("/api/repos/acme/shop/pull-requests/70/deployment").status_code == 202
    expect(badge(page, "acme/shop", 70)).to_have_text("Idle", timeout=30_000)
    expect(item.locator(".deployment-details")).to_be_hidden()


def test_an_environments_row_shows_its_resources_and_cost_as_text(make_bot, page, output_dir):
    """Seeded through the Store like a recorded event: what a provisioner reports is untrusted
    text, so markup in it stays text (an alert() would fail the test)."""
    bot = make_bot({"PREVIEW_ENVIRONMENTS": "preview,staging"}).start()
    seed(bot, "acme/shop", 71, "feat/big", "Needs a big VM", "octocat")
    hostile = '<img src=x onerror=alert(1)>'
    now = datetime.now(timezone.utc)
    staging = Deployment.new(repository="acme/shop", pr_number=71, branch_name="feat/big", environment="staging").changed(
        status="deployed",
        preview_url="https://staging-71.shop.example.com",
        resources=(Resource(kind="ec2:instance", id="i-0abc1234def567890", type="t3.large", region="eu-west-1"), Resource(kind=hostile, id="x")),
        hourly_cost=0.0944,
        # Running for 4 h 30 min (USD 0.4248 so far), and 3 more hours before it expires.
        created_at=(now - timedelta(hours=4, minutes=30)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        expires_at=(now + timedelta(hours=3, seconds=30)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    bot.store.record_deployment(staging, "1-0")

    open_dashboard(page, bot)
    row = card(page, "acme/shop", 71).locator('li.env[data-environment="staging"]')
    expect(row.locator(".env-status")).to_have_text("Deployed")
    expect(row.locator(".resource")).to_have_text(["ec2:instance i-0abc1234def567890 t3.large eu-west-1", f"{hostile} x"])
    expect(row.locator(".hourly-cost")).to_have_text("$0.0944 an hour")
    expect(row.locator(".costs")).to_have_text("$0.42 so far · $0.0944 an hour")
    # Three hours left: not yet a warning.
    expiry = row.locator(".expiry")
    expect(expiry).to_have_text("Expires in 3 h")
    expect(expiry).not_to_have_class(re.compile(r"\bis-warning\b"))
    expect(expiry.locator("time")).to_have_attribute("datetime", staging.expires_at)
    expect(expiry).to_have_attribute("title", re.compile(r"^Expires at \d{4}-\d\d-\d\d \d\d:\d\d UTC unless extended$"))
    expect(row.get_by_role("button", name="Extend staging", exact=True)).to_be_visible()
    assert row.locator("img").count() == 0
    preview = card(page, "acme/shop", 71).locator('li.env[data-environment="preview"]')
    expect(preview.locator(".deployment-details")).to_be_hidden()
    page.screenshot(path=output_dir / "row-resources.png")


# -- Sign in with GitHub -------------------------------------------------------------------------


def test_sign_in_with_github_shows_a_reader_the_preview_without_its_buttons(make_bot, page, output_dir):
    """A reviewer who can read acme/shop on GitHub but not push to it opens a check run's details
    link (the log page) and signs in through GitHub's OAuth pages (the fake's, their click already
    made): they come back to the log, and on the dashboard see the pull request and its preview
    but are offered nothing to act on it; a repository they cannot read stays out."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from .fakegithub import FakeGitHub

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with FakeGitHub(4242, key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)) as fake:
        fake.add_installation(1, account="acme", account_type="Organization")
        fake.add_repo("acme/shop", installation_id=1, private=True)
        fake.add_repo("acme/vault", installation_id=1, private=True)
        fake.set_permission("acme/shop", "rita", "read")
        fake.signed_in_login = "rita"
        oauth = {"GITHUB_URL": fake.url, "GITHUB_API_URL": fake.url, "GITHUB_CLIENT_ID": fake.client_id, "GITHUB_CLIENT_SECRET": fake.client_secret}
        bot = make_bot(oauth).start()
        seed(bot, "acme/shop", 60, "feat/review-me", "Review me", "octocat")
        seed(bot, "acme/vault", 61, "feat/hidden", "Not for rita", "octocat")
        deployment_id = bot.deploy("acme/shop", 60, "feat/review-me").json()["deploymentId"]
        bot.wait_status("acme/shop", 60, "deployed")

        log_page = f"{bot.url}/deployments/{deployment_id}/logs"
        page.goto(log_page)
        page.get_by_role("link", name="Sign in with GitHub").click()
        expect(page).to_have_url(log_page)
        expect(page.locator("#status-text")).to_have_text("Deployed")

        page.goto(bot.url)
        shop = card(page, "acme/shop", 60)
        expect(badge(page, "acme/shop", 60)).to_have_text("Deployed")
        expect(page.locator("li.card")).to_have_count(1)
        expect(page.locator("#connection")).to_have_text("Live")
        assert bot.store.verify_token(stored_token(page))["kind"] == "github"
        expect(shop.locator(".destroy")).to_be_hidden()
        # They see how long the preview has left, but may not extend it.
        expect(shop.locator(".expiry")).to_have_text(re.compile(r"^Expires in 2 d 23 h$"))
        expect(shop.locator(".extend")).to_be_hidden()
        expect(shop.get_by_role("button", name=re.compile("Extend"))).to_have_count(0)
        shop.locator(".preview-toggle").click()
        expect(shop.locator(".panel-note")).to_have_text("You can read acme/shop on GitHub but not push to it, so you cannot deploy it.")
        expect(shop.locator(".deploy")).to_be_hidden()
        page.screenshot(path=output_dir / "github-reader.png")
        assert fake.violations == []


# -- expiry: the time left, Extend, and previews that expire ---------------------------------------


def expiry_of(bot, repository: str, number: int, environment: str | None = None) -> str | None:
    with bot.client() as c:
        params = {"environment": environment} if environment else {}
        return c.get(f"/api/repos/{repository}/pull-requests/{number}/deployment", params=params).json()["expiresAt"]


def test_a_deployed_preview_shows_its_time_left_and_cost_and_extend_keeps_it(make_bot, page, output_dir):
    """The page's feed is silenced: what Extend shows comes from its own answer."""
    bot = make_bot({"PREVIEW_TTL": "1h", "PREVIEW_HOURLY_COST": "0.5"}).start()
    seed(bot, "acme/shop", 80, "feat/expiring", "Lives an hour", "octocat")
    assert bot.deploy("acme/shop", 80, "feat/expiring").status_code == 202
    bot.wait_status("acme/shop", 80, "deployed")
    before = expiry_of(bot, "acme/shop", 80)
    assert before

    page.route_web_socket(re.compile(r"/ws$"), silent_feed)
    open_dashboard(page, bot)
    item = card(page, "acme/shop", 80)
    expect(badge(page, "acme/shop", 80)).to_have_text("Deployed")
    expiry = item.locator(".expiry")
    expect(expiry).to_have_text("Expires in 59 min")
    expect(expiry.locator("time")).to_have_attribute("datetime", before)
    # Less than two hours left: shown as a warning.
    expect(expiry).to_have_class(re.compile(r"\bis-warning\b"))
    expect(item.locator(".cost-so-far")).to_have_text(re.compile(r"^(< \$0\.01|\$0\.0\d) so far$"))
    expect(item.locator(".hourly-cost")).to_have_text("$0.50 an hour")
    extend = item.get_by_role("button", name="Extend preview", exact=True)
    expect(extend).to_be_visible()
    expect(extend).to_have_text("Extend")
    page.screenshot(path=output_dir / "expires-in.png")

    # Held back a moment, the request shows as pending; then the answer's expiry is shown at once.
    requested: list[str] = []

    def slow_extend(route):
        requested.append(route.request.method + " " + route.request.url)
        page.wait_for_timeout(700)
        route.continue_()

    page.route("**/deployment/extend*", slow_extend)
    extend.focus()
    page.keyboard.press("Enter")
    extending = item.locator("button.extend")
    expect(extending).to_have_text("Extending…")
    expect(extending).to_be_disabled()
    expect(extending).to_have_text("Extend")
    expect(extending).to_be_enabled()
    expect(extending).to_be_focused()
    assert requested == [f"POST {bot.url}/api/repos/acme/shop/pull-requests/80/deployment/extend"]
    after = expiry_of(bot, "acme/shop", 80)
    assert after > before
    expect(expiry.locator("time")).to_have_attribute("datetime", after)
    expect(expiry).to_have_text("Expires in 59 min")
    expect(page.locator("#announcer")).to_contain_text("acme/shop #80: extended; expires in 59 min.")
    expect(item.locator(".card-message")).to_be_hidden()
    page.screenshot(path=output_dir / "extended.png")


def test_a_preview_that_expires_is_torn_down_and_says_so(make_bot, page, output_dir):
    bot = make_bot({"PREVIEW_TTL": "6s", "PREVIEW_TTL_WARNING": "1h", "PREVIEW_HOURLY_COST": "36"}).start()
    seed(bot, "acme/shop", 81, "feat/short-lived", "Lives six seconds", "octocat")

    open_dashboard(page, bot)
    item = card(page, "acme/shop", 81)
    item.locator("button.preview-toggle").click()
    item.get_by_role("button", name="Deploy Preview for feat/short-lived").click()
    expect(badge(page, "acme/shop", 81)).to_have_text("Deployed")
    expiry = item.locator(".expiry")
    expect(expiry).to_have_text(re.compile(r"^(Expires in [1-6] s|Expiring now)$"))
    expect(expiry).to_have_class(re.compile(r"\bis-warning\b"))
    page.screenshot(path=output_dir / "about-to-expire.png")

    # The worker destroys it on its own; the WebSocket says idle with the outcome "expired".
    expect(badge(page, "acme/shop", 81)).to_have_text("Idle", timeout=20_000)
    expect(item.locator(".outcome")).to_have_text("Expired")
    expect(item.locator(".state-idle")).to_contain_text("The preview expired and was torn down.")
    expect(expiry).to_be_hidden()
    expect(item.locator("button.extend")).to_be_hidden()
    expect(page.locator("#announcer")).to_contain_text("acme/shop #81: preview expired and torn down.")

    history = bot.client().get("/api/repos/acme/shop/pull-requests/81/deployments").json()["deployments"]
    assert [(d["status"], d["expired"]) for d in history] == [("destroyed", True)]
    assert history[0]["cost"] > 0
    item.get_by_role("button", name="History of preview").click()
    entries = item.locator(".history-item")
    expect(entries).to_have_count(1)
    expect(entries.locator(".history-badge")).to_have_text("Expired")
    expect(entries.first).to_have_attribute("data-status", "expired")
    # What it cost, from its creation until it was torn down.
    expect(entries.locator(".history-cost")).to_have_text(f"${history[0]['cost']:.2f}")
    page.screenshot(path=output_dir / "expired.png")

    # A reload still says why (from the list).
    page.reload()
    expect(page.locator("#connection")).to_have_text("Live")
    expect(item.locator(".outcome")).to_have_text("Expired")


def test_extend_is_offered_only_for_a_deployed_preview_that_expires(make_bot, page, tmp_path):
    gate = tmp_path / "gate"
    bot = command_bot(
        make_bot,
        tmp_path,
        f"""
case "$PREVIEW_BRANCH" in
  *broken*) echo "build failed" >&2; exit 1 ;;
  *slow*) while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done ;;
esac
echo "https://pr-$PREVIEW_PR_NUMBER.preview.acme.test"
""",
        {"PREVIEW_TTL": "3h"},
    ).start()
    seed(bot, "acme/shop", 82, "feat/done", "Deployed", "octocat")
    seed(bot, "acme/shop", 83, "fix/broken-build", "Failed", "octocat")
    seed(bot, "acme/shop", 84, "docs/readme", "Idle", "octocat")
    seed(bot, "acme/shop", 85, "feat/slow-build", "Deploying", "octocat")
    assert bot.deploy("acme/shop", 82, "feat/done").status_code == 202
    assert bot.deploy("acme/shop", 83, "fix/broken-build").status_code == 202
    assert bot.deploy("acme/shop", 85, "feat/slow-build").status_code == 202
    bot.wait_status("acme/shop", 82, "deployed")
    bot.wait_status("acme/shop", 83, "failed")

    open_dashboard(page, bot)
    expect(badge(page, "acme/shop", 82)).to_have_text("Deployed")
    expect(badge(page, "acme/shop", 83)).to_have_text("Failed")
    expect(badge(page, "acme/shop", 84)).to_have_text("Idle")
    expect(badge(page, "acme/shop", 85)).to_have_text("Deploying")
    deployed = card(page, "acme/shop", 82)
    expect(deployed.get_by_role("button", name="Extend preview", exact=True)).to_be_visible()
    expect(deployed.locator(".expiry")).to_have_text(re.compile(r"^Expires in 2 h 59 min$"))
    expect(deployed.locator(".expiry")).not_to_have_class(re.compile(r"\bis-warning\b"))
    for number in (83, 84, 85):
        item = card(page, "acme/shop", number)
        toggle = item.locator("button.preview-toggle")
        if toggle.is_visible():
            toggle.click()  # nor in the open panel
        expect(item.locator("button.extend")).to_have_count(1)  # rendered, but not offered
        expect(item.locator("button.extend")).to_be_hidden()
        expect(item.get_by_role("button", name=re.compile("Extend"))).to_have_count(0)
        expect(item.locator(".expiry")).to_be_hidden()

    # The running deploy ends: now it is offered there too.
    gate.touch()
    slow = card(page, "acme/shop", 85)
    expect(badge(page, "acme/shop", 85)).to_have_text("Deployed")
    expect(slow.get_by_role("button", name="Extend preview", exact=True)).to_be_visible()
    expect(slow.locator(".expiry")).to_have_text(re.compile(r"^Expires in 2 h 59 min$"))


def test_each_environment_row_has_its_own_extend_and_one_that_never_expires_has_none(make_bot, page, output_dir):
    bot = make_bot({"PREVIEW_ENVIRONMENTS": "preview,staging,qa", "PREVIEW_TTL": "1h", "PREVIEW_ENV_QA_TTL": "0",
                    "PREVIEW_HOURLY_COST": "0.0208"}).start()
    seed(bot, "acme/shop", 86, "feat/three", "Three environments", "octocat")
    for environment in ("staging", "qa"):
        assert bot.deploy("acme/shop", 86, "feat/three", environment=environment).status_code == 202
        wait_env_status(bot, "acme/shop", 86, environment, "deployed")
    before = expiry_of(bot, "acme/shop", 86, "staging")
    assert before and expiry_of(bot, "acme/shop", 86, "qa") is None

    open_dashboard(page, bot)
    staging = env_row(page, "acme/shop", 86, "staging")
    qa = env_row(page, "acme/shop", 86, "qa")
    preview = env_row(page, "acme/shop", 86, "preview")
    expect(env_badge(page, "acme/shop", 86, "staging")).to_have_text("Deployed")
    expect(env_badge(page, "acme/shop", 86, "qa")).to_have_text("Deployed")
    expect(staging.locator(".expiry")).to_have_text("Expires in 59 min")
    expect(staging.locator(".costs")).to_have_text(re.compile(r"^(< \$0\.01|\$0\.00) so far · \$0\.0208 an hour$"))
    # Never expires: nothing said, nothing to extend; the cost is still shown.
    expect(qa.locator(".expiry")).to_be_hidden()
    expect(qa.get_by_role("button", name=re.compile("Extend"))).to_have_count(0)
    expect(qa.locator(".hourly-cost")).to_have_text("$0.0208 an hour")
    expect(preview.get_by_role("button", name=re.compile("Extend"))).to_have_count(0)

    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url) if "/deployment/extend" in r.url else None)
    staging.get_by_role("button", name="Extend staging", exact=True).click()
    expect(page.locator("#announcer")).to_contain_text("acme/shop #86 staging: extended; expires in 59 min.")
    assert requested == [f"{bot.url}/api/repos/acme/shop/pull-requests/86/deployment/extend?environment=staging"]
    after = expiry_of(bot, "acme/shop", 86, "staging")
    assert after > before
    expect(staging.locator(".expiry time")).to_have_attribute("datetime", after)
    page.screenshot(path=output_dir / "rows-extend.png")

    # Torn down elsewhere just before the extend request arrives: the error shows on the row.
    def destroyed_first(route):
        with bot.client() as c:
            assert c.delete("/api/repos/acme/shop/pull-requests/86/deployment", params={"environment": "staging"}).status_code == 202
        wait_env_status(bot, "acme/shop", 86, "staging", "idle")
        route.continue_()

    page.route("**/deployment/extend*", destroyed_first)
    staging.get_by_role("button", name="Extend staging", exact=True).click()
    message = staging.locator(".env-message")
    expect(message).to_have_text("Could not extend the preview: Nothing is deployed in this environment, so there is nothing to extend")
    expect(message).to_have_attribute("data-kind", "error")
    # The list then says what happened.
    expect(env_badge(page, "acme/shop", 86, "staging")).to_have_text("Idle")
    expect(staging.get_by_role("button", name=re.compile("Extend"))).to_have_count(0)


def test_a_deploy_refused_by_the_monthly_budget_shows_why_on_the_card(make_bot, page, output_dir):
    bot = make_bot({"PREVIEW_MONTHLY_BUDGET": "0", "PREVIEW_HOURLY_COST": "0.5"}).start()
    seed(bot, "acme/shop", 87, "feat/over-budget", "Over budget", "octocat")

    open_dashboard(page, bot)
    item = card(page, "acme/shop", 87)
    item.locator("button.preview-toggle").click()
    item.get_by_role("button", name="Deploy Preview for feat/over-budget").click()
    message = item.locator(".card-message")
    expect(message).to_contain_text("Could not start the deploy: The monthly preview budget of acme/shop is spent")
    expect(message).to_have_attribute("data-kind", "error")
    expect(badge(page, "acme/shop", 87)).to_have_text("Idle")
    expect(item.get_by_role("button", name="Deploy Preview for feat/over-budget")).to_be_enabled()
    page.screenshot(path=output_dir / "over-budget.png")
