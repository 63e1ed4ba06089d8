"""Signing in to the dashboard without a token in a URL: one-time sign-in codes, session tokens
that expire, and logs that never show a token or a code (real SQLite, real Redis, and the real
`previewbot web` where the test is about what the process does)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import sqlite_utils

from bot.app import create_app
from bot.store import SESSION_TTL, Store, hash_token, migrations, timestamp

from .harness import wait_for
from .test_cli import previewbot


@pytest.fixture
def app(settings):
    return create_app(settings, start_feed=False)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app) -> Store:
    return app.extensions["previewbot"].store


def exchange(client, code):
    return client.post("/api/sessions", json={"code": code})


def pull_requests(client, token):
    return client.get("/api/pull-requests", headers={"Authorization": f"Bearer {token}"})


def expire(store: Store, table: str, where: str = "1") -> None:
    """The rows' expiry a second ago: as if the clock had run past it."""
    past = timestamp(datetime.now(timezone.utc) - timedelta(seconds=1))
    store.db.execute(f"UPDATE {table} SET expires_at = ? WHERE {where}", [past])


# -- the exchange ----------------------------------------------------------------------------


def test_a_code_is_exchanged_once_for_a_session_token_that_lasts_30_days(client, store, settings):
    code = store.create_signin_code()
    response = exchange(client, code)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"token", "expiresAt"}
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(timezone.utc) + timedelta(days=30))) < timedelta(minutes=1)
    assert SESSION_TTL == timedelta(days=30)
    assert pull_requests(client, body["token"]).status_code == 200

    row = store.verify_token(body["token"])
    assert row["name"].startswith("session-") and row["kind"] == "session" and row["expires_at"] == body["expiresAt"]
    # Neither the code nor the token is kept in clear.
    data = open(settings.database_path, "rb").read().decode(errors="replace")
    assert code not in data and body["token"] not in data

    used = exchange(client, code)
    assert used.status_code == 401


def test_every_bad_code_gets_the_same_401(client, store):
    used = store.create_signin_code()
    assert exchange(client, used).status_code == 201
    expired = store.create_signin_code()
    expire(store, "signin_codes")
    answers = [exchange(client, code) for code in (used, expired, "pvc_" + "x" * 43, "nope", "x" * 5000)]
    assert {a.status_code for a in answers} == {401}
    assert len({a.get_data() for a in answers}) == 1  # no hint which
    assert "sign-in link" in answers[0].get_json()["error"]
    assert store.db["api_tokens"].count == 1


@pytest.mark.parametrize(
    "body, content_type",
    [(b"{not json", "application/json"), (b"", "application/json"), (b"[]", "application/json"), (b"{}", "application/json"),
     (b'{"code": 7}', "application/json"), (b'{"code": ""}', "application/json"), (b"code=abc", "application/x-www-form-urlencoded")],
)
def test_a_body_without_a_code_is_400(client, store, body, content_type):
    response = client.post("/api/sessions", data=body, content_type=content_type)
    assert response.status_code == 400 and response.get_json()["error"]
    assert store.db["api_tokens"].count == 0


def test_the_exchange_needs_no_token_and_ignores_one(client, store):
    response = client.post("/api/sessions", json={"code": store.create_signin_code()}, headers={"Authorization": "Bearer pvb_wrong"})
    assert response.status_code == 201


def test_the_exchange_answers_as_documented(app, store):
    from .test_openapi_fuzz import call

    code = store.create_signin_code()
    status, session = call(app, "POST", "/api/sessions", body={"code": code})
    assert status == 201 and session["token"].startswith("pvb_")
    assert call(app, "POST", "/api/sessions", body={"code": code})[0] == 401
    assert call(app, "POST", "/api/sessions", body={"kode": code})[0] == 400


def test_two_exchanges_of_one_code_at_once_give_one_token(make_bot):
    """Through the real web process with two gunicorn workers: the races are between processes."""
    bot = make_bot()
    bot.start_web(workers=2)
    codes = [bot.store.create_signin_code() for _ in range(20)]
    with httpx.Client(base_url=bot.url, timeout=10) as http:
        for code in codes:
            barrier = threading.Barrier(2)
            statuses: list[int] = []

            def send(code=code, barrier=barrier, statuses=statuses):
                barrier.wait()
                statuses.append(http.post("/api/sessions", json={"code": code}).status_code)

            threads = [threading.Thread(target=send) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(statuses) == [201, 401], code
    assert sum(1 for row in bot.store.list_tokens() if row["kind"] == "session") == 20


# -- session tokens: expiry and revocation ---------------------------------------------------


def test_an_expired_session_token_is_refused(client, store):
    token = exchange(client, store.create_signin_code()).get_json()["token"]
    assert pull_requests(client, token).status_code == 200
    expire(store, "api_tokens")
    response = pull_requests(client, token)
    assert response.status_code == 401 and "expired" in response.get_json()["error"]
    assert store.verify_token(token) is None


def test_a_session_is_listed_and_revoked_like_any_token(client, store, settings):
    token = exchange(client, store.create_signin_code()).get_json()["token"]
    name = store.verify_token(token)["name"]
    env = {"DATABASE_PATH": settings.database_path}

    listed = previewbot("token", "list", env=env).stdout
    line = next(line for line in listed.splitlines() if line.startswith(name))
    assert "\tactive\t" in line and "dashboard session until" in line and token not in listed
    assert previewbot("token", "revoke", name, env=env).returncode == 0
    assert pull_requests(client, token).status_code == 401
    assert "revoked" in next(line for line in previewbot("token", "list", env=env).stdout.splitlines() if line.startswith(name))


def test_signin_prints_a_fresh_link_each_time(store, settings):
    env = {"DATABASE_PATH": settings.database_path, "HOST": "127.0.0.1", "PORT": "3999"}
    links = [previewbot("signin", env=env).stdout.splitlines()[-1] for _ in range(2)]
    assert all(link.startswith("http://127.0.0.1:3999/?code=pvc_") for link in links) and links[0] != links[1]
    assert "pvb_" not in "".join(links)
    assert store.exchange_signin_code(links[1].split("?code=", 1)[1]) is not None


def test_active_token_names_leaves_out_revoked_expired_and_unknown(store):
    for name in ("live", "revoked", "expired"):
        store.create_token(name)
    store.revoke_token("revoked")
    expire(store, "api_tokens", "name = 'expired'")
    assert store.active_token_names({"live", "revoked", "expired", "unknown", "it's; DROP"}) == {"live"}
    assert store.active_token_names(set()) == set()
    many = {f"t{n}" for n in range(5000)} | {"live"}  # more names than SQLite takes as parameters
    assert store.active_token_names(many) == {"live"}


def test_verify_token_answers_with_the_name(store):
    token = store.create_token("ci", ["octo/app"])
    row = store.verify_token(token)
    assert row["name"] == "ci" and row["kind"] == "api" and row["expires_at"] is None and row["repositories"] == ["octo/app"]


def test_tokens_made_before_sessions_keep_working(tmp_path):
    path = str(tmp_path / "old.db")
    migrations.apply(sqlite_utils.Database(path), stop_before="m006_session_tokens_and_signin_codes")
    store = Store(path)
    token = "pvb_" + "a" * 43
    row = {"name": "dashboard", "repositories": None, "created_at": "2026-01-01T00:00:00.000Z", "revoked_at": None}
    store.db["api_tokens"].insert({**row, "token_hash": hash_token(token)})
    store.migrate()
    assert store.list_tokens() == [{**row, "kind": "api", "expires_at": None}]
    assert store.verify_token(token)["name"] == "dashboard"
    assert store.active_token_names({"dashboard"}) == {"dashboard"}


# -- the real web process ----------------------------------------------------------------------


def test_an_expired_session_is_refused_on_the_websocket_too(make_bot):
    import websocket

    bot = make_bot().start_web()
    with httpx.Client(base_url=bot.url, timeout=10) as http:
        token = http.post("/api/sessions", json={"code": bot.store.create_signin_code()}).json()["token"]
    expire(bot.store, "api_tokens", "kind = 'session'")
    for url, first in ((bot.ws_url(token=token), None), (f"ws://127.0.0.1:{bot.port}/ws", json.dumps({"type": "auth", "token": token}))):
        ws = websocket.create_connection(url, timeout=10)
        try:
            if first:
                ws.send(first)
            opcode, frame = ws.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame[:2], "big") == 4401, url
        finally:
            ws.close()


def test_no_token_or_code_reaches_the_web_process_log(make_bot):
    """gunicorn's access log is on; a script's `/ws?token=…`, a sign-in link's `/?code=…` and a
    token in any query show there redacted."""
    import websocket

    from .harness import FeedClient

    bot = make_bot().start_web()
    code = bot.store.create_signin_code()
    unknown = "not-token-shaped-but-secret"
    FeedClient(bot.ws_url()).ready().close()  # a script's WebSocket with ?token=
    with httpx.Client(base_url=bot.url, timeout=10) as http:
        assert http.get(f"/?code={code}").status_code == 200
        http.get(f"/ws?token={bot.token}")  # not an upgrade: answered like any request
        http.get(f"/ws?repository=octo/app&token={unknown}")
        assert http.get(f"/api/pull-requests?token={bot.token}", headers={"Authorization": f"Bearer {bot.token}"}).status_code == 200
        session = http.post("/api/sessions", json={"code": code})
        assert session.status_code == 201
    ws = websocket.create_connection(f"ws://127.0.0.1:{bot.port}/ws?token={unknown}", timeout=10)
    ws.close()

    log = wait_for(lambda: bot.log_text() if '"GET /api/pull-requests?token=[redacted]"' in bot.log_text() else None, message="the access log lines")
    assert '"GET /?code=[redacted]" 200' in log
    assert '"GET /ws?token=[redacted]"' in log and '"GET /ws?repository=octo/app&token=[redacted]"' in log
    assert '"POST /api/sessions" 201' in log
    for secret in (bot.token, code, unknown, session.json()["token"]):
        assert secret not in log
