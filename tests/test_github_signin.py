"""Sign in with GitHub, end to end through the fake GitHub's OAuth web flow and its user
endpoints (validated against GitHub's OpenAPI description): GitHub's answer decides what a
person sees and what they may deploy, and their user access token is never kept nor logged.
Real SQLite and Redis; the browser is played by Flask's test client (it keeps cookies) and
httpx (GitHub's authorize page)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.app import create_app
from bot.config import load_settings
from bot.store import GITHUB_SESSION_TTL, Store

from .fakegithub import FakeGitHub

APP_ID = 4242
SHA = "c" * 40


@pytest.fixture(scope="module")
def public_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def fake(public_pem):
    """Private repositories octo/app and octo/lib of installation 1: rita reads octo/app, walt
    pushes to octo/app and reads octo/lib; anyone else has no access."""
    with FakeGitHub(APP_ID, public_pem) as fake:
        fake.add_installation(1, account="octo", account_type="Organization")
        fake.add_repo("octo/app", installation_id=1, private=True)
        fake.add_repo("octo/lib", installation_id=1, private=True)
        fake.set_permission("octo/app", "rita", "read")
        fake.set_permission("octo/app", "walt", "write")
        fake.set_permission("octo/lib", "walt", "read")
        yield fake
        assert fake.violations == []


@pytest.fixture
def settings(tmp_path, redis_url, fake):
    return load_settings(
        {
            "REDIS_URL": redis_url,
            "DATABASE_PATH": str(tmp_path / "previewbot.db"),
            "PREVIEW_SIMULATED_SECONDS": "0",
            "GITHUB_URL": fake.url,
            "GITHUB_API_URL": fake.url,
            "GITHUB_CLIENT_ID": fake.client_id,
            "GITHUB_CLIENT_SECRET": fake.client_secret,
        },
        dotenv=None,
    )


@pytest.fixture
def app(settings):
    app = create_app(settings, start_feed=False)
    store: Store = app.extensions["previewbot"].store
    for number, repository in enumerate(("octo/app", "octo/lib"), start=1):
        store.upsert_pull_request(
            {
                "repository": repository,
                "number": number,
                "branch_name": "feature",
                "head_repository": repository,
                "head_sha": SHA,
                "title": f"Change {number}",
                "author": "octo",
                "state": "open",
                "installation_id": 1,
            }
        )
    return app


@pytest.fixture
def store(app) -> Store:
    return app.extensions["previewbot"].store


def authorize(client, fake: FakeGitHub, login: str, start_path: str = "/auth/github") -> str:
    """Start signing in and approve on GitHub as `login`: the callback's path and query."""
    fake.signed_in_login = login
    start = client.get(start_path)
    assert start.status_code == 302
    at_github = httpx.get(start.headers["Location"], follow_redirects=False)
    assert at_github.status_code == 302
    back = urlsplit(at_github.headers["location"])
    assert back.path == "/auth/github/callback"
    return f"{back.path}?{back.query}"


def sign_in(app, fake: FakeGitHub, login: str) -> dict:
    """The whole flow in a fresh browser: the session the page gets for its one-time code."""
    client = app.test_client()
    landed = client.get(authorize(client, fake, login))
    assert landed.status_code == 302
    target = urlsplit(landed.headers["Location"])
    assert target.path == "/"
    session = client.post("/api/sessions", json={"code": parse_qs(target.query)["code"][0]})
    assert session.status_code == 201
    return session.get_json()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def cards(app, token: str) -> dict[str, bool]:
    """Repository -> canWrite of the pull requests the token sees."""
    answer = app.test_client().get("/api/pull-requests", headers=bearer(token))
    assert answer.status_code == 200
    return {card["repository"]: card["canWrite"] for card in answer.get_json()["pullRequests"]}


def deploy(app, token: str, repository: str, number: int):
    return app.test_client().post(
        f"/api/repos/{repository}/pull-requests/{number}/deploy", headers=bearer(token), json={"branchName": "feature"}
    )


def test_sign_in_with_github_is_offered_when_the_oauth_pair_is_set(app, tmp_path, redis_url):
    assert app.test_client().get("/api/auth").get_json() == {"github": True}
    bare = create_app(
        load_settings({"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "bare.db")}, dotenv=None), start_feed=False
    ).test_client()
    assert bare.get("/api/auth").get_json() == {"github": False}
    assert bare.get("/auth/github").status_code == 404


def test_a_reader_sees_the_pull_request_but_may_not_act_on_it(app, fake, store):
    session = sign_in(app, fake, "rita")
    expires = datetime.fromisoformat(session["expiresAt"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(timezone.utc) + timedelta(hours=8))) < timedelta(minutes=1)
    assert GITHUB_SESSION_TTL == timedelta(hours=8)
    row = store.verify_token(session["token"])
    assert row["kind"] == "github" and row["repositories"] == ["octo/app"] and row["writable"] == []

    token = session["token"]
    assert cards(app, token) == {"octo/app": False}
    refused = deploy(app, token, "octo/app", 1)
    assert refused.status_code == 403 and "push" in refused.get_json()["error"]
    client = app.test_client()
    assert client.delete("/api/repos/octo/app/pull-requests/1/deployment", headers=bearer(token)).status_code == 403
    assert client.post("/api/repos/octo/app/pull-requests/1/deployment/cancel", headers=bearer(token)).status_code == 403
    # Reading is allowed: no deployment yet is a 404, not a refusal.
    assert client.get("/api/repos/octo/app/pull-requests/1/deployment", headers=bearer(token)).status_code == 404
    assert client.get("/api/repos/octo/lib/pull-requests/2/environments", headers=bearer(token)).status_code == 403


def test_a_writer_deploys_where_they_can_push_and_only_there(app, fake):
    token = sign_in(app, fake, "walt")["token"]
    assert cards(app, token) == {"octo/app": True, "octo/lib": False}
    deployed = deploy(app, token, "octo/app", 1)
    assert deployed.status_code == 202 and deployed.get_json()["requestedBy"].startswith("token:github-")
    assert deploy(app, token, "octo/lib", 2).status_code == 403


def test_a_stranger_sees_nothing(app, fake, store):
    deployment = deploy(app, store.create_token("ops"), "octo/app", 1).get_json()
    token = sign_in(app, fake, "sam")["token"]
    assert store.verify_token(token)["repositories"] == []
    assert cards(app, token) == {}
    client = app.test_client()
    assert client.get("/api/pull-requests?repository=octo/app", headers=bearer(token)).get_json() == {"pullRequests": []}
    assert client.get(f"/api/deployments/{deployment['id']}", headers=bearer(token)).status_code == 404
    assert client.get(f"/api/deployments/{deployment['id']}/logs", headers=bearer(token)).status_code == 404
    assert deploy(app, token, "octo/app", 1).status_code == 403


@pytest.mark.parametrize(
    ("start", "back"),
    [
        ("/auth/github?next=/deployments/0123abcd/logs", {"next": ["/deployments/0123abcd/logs"]}),
        ("/auth/github?next=https://evil.example/", {}),
        ("/auth/github?next=//evil.example/deployments/1/logs", {}),
    ],
)
def test_a_sign_in_from_a_log_page_returns_to_it_and_nowhere_else(app, fake, start, back):
    client = app.test_client()
    landed = client.get(authorize(client, fake, "rita", start))
    target = urlsplit(landed.headers["Location"])
    query = parse_qs(target.query)
    assert target.path == "/" and not target.netloc and set(query) == {"code", *back}
    assert {k: v for k, v in query.items() if k != "code"} == back


def test_a_forged_or_missing_state_is_refused(app, fake, store):
    victim = app.test_client()
    callback = authorize(victim, fake, "mallory")
    # Another browser (no state cookie) landing on the callback: a login CSRF attempt.
    assert app.test_client().get(callback).status_code == 400
    # The right browser, another state.
    path, _, query = callback.partition("?")
    forged = parse_qs(query)
    assert victim.get(path + "?code=" + forged["code"][0] + "&state=forged").status_code == 400
    # Nothing was traded: no user token from GitHub, no sign-in code.
    assert fake.user_tokens == {}
    assert store.db["signin_codes"].count == 0


def test_a_code_github_refuses_opens_no_session(app, fake, store):
    client = app.test_client()
    callback = authorize(client, fake, "walt")
    path, _, query = callback.partition("?")
    state = parse_qs(query)["state"][0]
    refused = client.get(f"{path}?code=used-or-made-up&state={state}")
    assert refused.status_code == 401 and "Start again" in refused.get_data(as_text=True)
    assert store.db["signin_codes"].count == 0


def test_the_user_access_token_is_neither_stored_nor_logged(app, fake, settings, caplog):
    caplog.set_level(logging.DEBUG)
    session = sign_in(app, fake, "walt")
    [user_token] = fake.user_tokens
    files = [Path(settings.database_path + suffix) for suffix in ("", "-wal")]
    data = b"".join(f.read_bytes() for f in files if f.exists()).decode(errors="replace")
    assert user_token not in data and session["token"] not in data
    assert user_token not in caplog.text and session["token"] not in caplog.text
    assert "GitHub sign-in: walt may read 2 repositories and write 1" in caplog.text
