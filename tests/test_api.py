"""The REST API's contract and its answers to bad input, through the real Flask app with a
real Redis and SQLite file (the feed threads are not needed here)."""

from __future__ import annotations

import json

import pytest

from bot.app import create_app
from bot.queue import QUEUE_NAME


@pytest.fixture
def app(settings):
    return create_app(settings, start_feed=False)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def token(app):
    return app.extensions["previewbot"].store.create_token("api-tests")


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def nothing_changed(app, redis_conn):
    store = app.extensions["previewbot"].store
    assert store.db["deployments"].count == 0
    assert redis_conn.llen(f"rq:queue:{QUEUE_NAME}") == 0
    assert not redis_conn.keys("previewbot:lock:*")


def test_health_needs_no_token(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok" and response.get_json()["redis"] == "ok"


def test_health_says_which_dependency_is_down(tmp_path):
    from bot.config import load_settings

    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_PATH": str(tmp_path / "x.db")})
    response = create_app(settings, start_feed=False).test_client().get("/api/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["database"] == "ok" and body["redis"].startswith("down")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer pvb_nope"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer " + "x" * 5000}],
)
def test_missing_or_unknown_token_is_401(client, app, redis_conn, headers):
    response = client.post("/api/repos/octo/app/pull-requests/1/deploy", json={"branchName": "main"}, headers=headers)
    assert response.status_code == 401
    assert "error" in response.get_json()
    nothing_changed(app, redis_conn)


def test_revoked_token_is_401(client, app, token, redis_conn):
    app.extensions["previewbot"].store.revoke_token("api-tests")
    response = client.post("/api/repos/octo/app/pull-requests/1/deploy", json={"branchName": "main"}, headers=auth(token))
    assert response.status_code == 401
    nothing_changed(app, redis_conn)


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b'"main"', "application/json"),
        (b"branchName=main", "application/x-www-form-urlencoded"),
        (json.dumps({}).encode(), "application/json"),
        (json.dumps({"branchName": 5}).encode(), "application/json"),
        (json.dumps({"branchName": None}).encode(), "application/json"),
        (json.dumps({"branchName": ["main"]}).encode(), "application/json"),
        (json.dumps({"branchName": ""}).encode(), "application/json"),
        (json.dumps({"branchName": "x" * 10_000}).encode(), "application/json"),
        (json.dumps({"branchName": "a\nb"}).encode(), "application/json"),
        (json.dumps({"branchName": "a b"}).encode(), "application/json"),
        (json.dumps({"branchName": "../etc"}).encode(), "application/json"),
        (json.dumps({"branchName": "main", "headSha": "not-a-sha"}).encode(), "application/json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ],
)
def test_bad_bodies_are_400_and_change_nothing(client, app, token, redis_conn, body, content_type):
    response = client.post(
        "/api/repos/octo/app/pull-requests/1/deploy", data=body, content_type=content_type, headers=auth(token)
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]
    nothing_changed(app, redis_conn)


def test_body_over_one_megabyte_is_413(client, app, token, redis_conn):
    body = json.dumps({"branchName": "main", "padding": "x" * (1024 * 1024)})
    response = client.post("/api/repos/octo/app/pull-requests/1/deploy", data=body, content_type="application/json", headers=auth(token))
    assert response.status_code == 413
    assert response.get_json()["error"]
    nothing_changed(app, redis_conn)


@pytest.mark.parametrize(
    "path",
    [
        "/api/repos/octo/app/pull-requests/0/deploy",
        "/api/repos/octo/app/pull-requests/-1/deploy",
        "/api/repos/octo/app/pull-requests/abc/deploy",
        "/api/repos/octo/app/pull-requests/99999999999/deploy",
        "/api/repos/octo/app/pull-requests/%C2%B2/deploy",
        "/api/repos/oc%20to/app/pull-requests/1/deploy",
        "/api/repos/octo/a%3Bb/pull-requests/1/deploy",
        "/api/repos/octo/../pull-requests/1/deploy",
        "/api/repos/-octo/app/pull-requests/1/deploy",
        "/api/repos/octo/%2E%2E/pull-requests/1/deploy",
        "/api/repos/octo/app/pull-requests/1/deploy/extra",
    ],
)
def test_odd_path_segments_are_4xx(client, app, token, redis_conn, path):
    response = client.post(path, json={"branchName": "main"}, headers=auth(token))
    assert 400 <= response.status_code < 500
    assert response.get_json()["error"]
    nothing_changed(app, redis_conn)


def test_deploy_shape_and_409_while_in_progress(client, app, token, redis_conn):
    first = client.post("/api/repos/octo/app/pull-requests/5/deploy", json={"branchName": "feat/$(reboot)"}, headers=auth(token))
    assert first.status_code == 202
    body = first.get_json()
    assert body["status"] == "deploying" and body["branchName"] == "feat/$(reboot)" and body["prNumber"] == 5
    second = client.post("/api/repos/octo/app/pull-requests/5/deploy", json={"branchName": "feat/$(reboot)"}, headers=auth(token))
    assert second.status_code == 409
    assert second.get_json()["deploymentId"] == body["deploymentId"]
    assert redis_conn.llen(f"rq:queue:{QUEUE_NAME}") == 1
    current = client.get("/api/repos/octo/app/pull-requests/5/deployment", headers=auth(token))
    assert current.status_code == 200 and current.get_json()["status"] == "deploying"


def test_no_deployment_is_404_idle(client, token):
    response = client.get("/api/repos/octo/app/pull-requests/5/deployment", headers=auth(token))
    assert response.status_code == 404
    assert response.get_json()["status"] == "idle"


def test_unknown_api_path_is_json_404(client, token):
    response = client.get("/api/nothing-here", headers=auth(token))
    assert response.status_code == 404 and response.get_json()["error"]


def test_wrong_method_is_json_405(client, token):
    response = client.put("/api/repos/octo/app/pull-requests/5/deploy", headers=auth(token))
    assert response.status_code == 405 and response.get_json()["error"]


def test_scoped_token_sees_only_its_repositories(client, app, redis_conn):
    store = app.extensions["previewbot"].store
    scoped = store.create_token("scoped", ["octo/app"])
    denied = client.post("/api/repos/octo/other/pull-requests/1/deploy", json={"branchName": "main"}, headers=auth(scoped))
    assert denied.status_code == 403
    nothing_changed(app, redis_conn)
    allowed = client.post("/api/repos/octo/app/pull-requests/1/deploy", json={"branchName": "main"}, headers=auth(scoped))
    assert allowed.status_code == 202


def test_writes_are_rate_limited_per_token(tmp_path, redis_url):
    from bot.config import load_settings

    settings = load_settings({"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "r.db"), "PREVIEW_API_RATE_LIMIT": "3"})
    app = create_app(settings, start_feed=False)
    store = app.extensions["previewbot"].store
    token, other = store.create_token("a"), store.create_token("b")
    client = app.test_client()
    codes = [
        client.post(f"/api/repos/octo/app/pull-requests/{n}/deploy", json={"branchName": f"b{n}"}, headers=auth(token)).status_code
        for n in range(1, 6)
    ]
    assert codes == [202, 202, 202, 429, 429]
    limited = client.post("/api/repos/octo/app/pull-requests/9/deploy", json={"branchName": "main"}, headers=auth(token))
    assert int(limited.headers["Retry-After"]) > 0
    assert client.post("/api/repos/octo/app/pull-requests/9/deploy", json={"branchName": "main"}, headers=auth(other)).status_code == 202


def test_redis_down_is_503_not_500(tmp_path):
    from bot.config import load_settings

    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_PATH": str(tmp_path / "d.db")})
    app = create_app(settings, start_feed=False)
    token = app.extensions["previewbot"].store.create_token("t")
    response = app.test_client().post("/api/repos/octo/app/pull-requests/1/deploy", json={"branchName": "main"}, headers=auth(token))
    assert response.status_code == 503
    assert "Redis" in response.get_json()["error"]
    assert app.extensions["previewbot"].store.db["deployments"].count == 0


def test_locked_database_is_a_clear_503_and_nothing_starts(client, app, token, redis_conn, settings):
    import sqlite3

    blocker = sqlite3.connect(settings.database_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        response = client.post("/api/repos/octo/app/pull-requests/1/deploy", json={"branchName": "main"}, headers=auth(token))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status_code == 503
    assert "database" in response.get_json()["error"]
    nothing_changed(app, redis_conn)
    assert app.extensions["previewbot"].store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_cross_origin_calls_are_allowed_for_a_dashboard_served_elsewhere(client, token):
    preflight = client.options(
        "/api/repos/octo/app/pull-requests/1/deploy",
        headers={"Origin": "https://dash.example.test", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    refused = client.get("/api/pull-requests", headers={"Origin": "https://dash.example.test"})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
    listed = client.get("/api/pull-requests", headers={"Origin": "https://dash.example.test", **auth(token)})
    assert listed.status_code == 200 and listed.headers["Access-Control-Allow-Origin"] == "*"


def test_full_database_is_a_clear_503_and_stays_intact(client, app, token, redis_conn):
    store = app.extensions["previewbot"].store
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")  # this connection's file cannot grow
    for number in range(1, 200):  # fill the last free pages, then one more write cannot fit
        response = client.post(f"/api/repos/octo/app/pull-requests/{number}/deploy", json={"branchName": f"b{number}-" + "y" * 200}, headers=auth(token))
        if response.status_code != 202:
            break
    assert response.status_code == 503
    assert "database" in response.get_json()["error"]
    assert len(redis_conn.keys("previewbot:lock:*")) == number - 1  # the refused one started nothing
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.db.execute("PRAGMA max_page_count = 1073741823")
    assert client.get("/api/health").status_code == 200


def test_a_refused_deploy_leaves_no_dashboard_card(client, app, token, redis_conn):
    assert client.post("/api/repos/octo/app/pull-requests/1/deploy", json={"branchName": "shared"}, headers=auth(token)).status_code == 202
    # Another pull request with the same head branch: the branch is busy.
    refused = client.post("/api/repos/octo/app/pull-requests/2/deploy", json={"branchName": "shared"}, headers=auth(token))
    assert refused.status_code == 409
    cards = client.get("/api/pull-requests", headers=auth(token)).get_json()["pullRequests"]
    assert [c["prNumber"] for c in cards] == [1]
    assert app.extensions["previewbot"].store.get_pull_request("octo/app", 2) is None


@pytest.mark.parametrize("limit", ["0", "101", "-1", "x", "1.5"])
def test_history_page_size_out_of_range_is_400(client, token, limit):
    response = client.get(f"/api/repos/octo/app/pull-requests/1/deployments?limit={limit}", headers=auth(token))
    assert response.status_code == 400 and "limit" in response.get_json()["error"]


@pytest.fixture
def two_environments(tmp_path, redis_url):
    from bot.config import load_settings

    settings = load_settings(
        {
            "REDIS_URL": redis_url,
            "DATABASE_PATH": str(tmp_path / "envs.db"),
            "PREVIEW_ENVIRONMENTS": "preview,staging",
            "PREVIEW_ENV_STAGING_PROVISIONER": "command",
            "PREVIEW_ENV_STAGING_DEPLOY_COMMAND": "true",
        }
    )
    app = create_app(settings, start_feed=False)
    return app.test_client(), auth(app.extensions["previewbot"].store.create_token("envs"))


def test_one_branch_deploys_to_two_environments_at_once(two_environments):
    client, headers = two_environments
    base = "/api/repos/octo/app/pull-requests/8"
    preview = client.post(f"{base}/deploy", json={"branchName": "feat/x"}, headers=headers)
    staging = client.post(f"{base}/deploy", json={"branchName": "feat/x", "environment": "staging"}, headers=headers)
    assert (preview.status_code, staging.status_code) == (202, 202)
    assert (preview.get_json()["environment"], staging.get_json()["environment"]) == ("preview", "staging")
    assert staging.get_json()["provisioner"] == "command"  # the environment's own settings
    got = client.get(f"{base}/deployment?environment=staging", headers=headers).get_json()
    assert got["id"] == staging.get_json()["id"] and got["status"] == "deploying"
    assert client.get(f"{base}/deployment", headers=headers).get_json()["id"] == preview.get_json()["id"]
    listed = client.get(f"{base}/environments", headers=headers).get_json()["environments"]
    assert [(e["environment"], e["status"]) for e in listed] == [("preview", "deploying"), ("staging", "deploying")]
    # Another branch to a busy environment waits; the other environment is not involved.
    busy = client.post(f"{base}/deploy", json={"branchName": "feat/y", "environment": "staging"}, headers=headers)
    assert busy.status_code == 409 and busy.get_json()["deploymentId"] == staging.get_json()["id"]
    history = client.get(f"{base}/deployments?environment=staging", headers=headers).get_json()["deployments"]
    assert [d["id"] for d in history] == [staging.get_json()["id"]]


@pytest.mark.parametrize("environment", ["production", "Staging", "destroy", "x" * 21, 7])
def test_a_deploy_to_an_environment_not_listed_is_400_and_changes_nothing(two_environments, environment, redis_conn):
    client, headers = two_environments
    response = client.post("/api/repos/octo/app/pull-requests/8/deploy", json={"branchName": "feat/x", "environment": environment}, headers=headers)
    assert response.status_code == 400 and "environment" in response.get_json()["error"]
    assert redis_conn.llen(f"rq:queue:{QUEUE_NAME}") == 0 and not redis_conn.keys("previewbot:lock:*")


def test_an_environment_no_longer_listed_can_still_be_read_and_torn_down(tmp_path, redis_url):
    from bot.config import load_settings

    def client_with(environments: str):
        settings = load_settings({"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "retired.db"), "PREVIEW_ENVIRONMENTS": environments})
        app = create_app(settings, start_feed=False)
        return app.test_client(), auth(app.extensions["previewbot"].store.create_token(f"t-{len(environments)}"))

    before, headers = client_with("preview,retired")
    started = before.post("/api/repos/octo/app/pull-requests/9/deploy", json={"branchName": "feat/r", "environment": "retired"}, headers=headers)
    assert started.status_code == 202
    # The operator removes the name: no new deploy there, but the live one is never stranded.
    after, headers = client_with("preview")
    base = "/api/repos/octo/app/pull-requests/9"
    assert after.post(f"{base}/deploy", json={"branchName": "feat/r", "environment": "retired"}, headers=headers).status_code == 400
    assert after.get(f"{base}/deployment?environment=retired", headers=headers).get_json()["id"] == started.get_json()["id"]
    listed = after.get(f"{base}/environments", headers=headers).get_json()["environments"]
    assert [(e["environment"], e["status"], e["deployable"]) for e in listed] == [("preview", "idle", True), ("retired", "deploying", False)]
    assert after.post(f"{base}/deployment/cancel?environment=retired", headers=headers).status_code == 202
    assert after.get(f"{base}/deployment?environment=Bad!", headers=headers).status_code == 400


def test_a_deploy_may_name_the_pull_request(client, token):
    response = client.post("/api/repos/octo/app/pull-requests/3/deploy", json={"branchName": "feat/a", "title": "  Add a cart  "}, headers=auth(token))
    assert response.status_code == 202
    cards = client.get("/api/pull-requests", headers=auth(token)).get_json()["pullRequests"]
    assert [(c["prNumber"], c["title"]) for c in cards] == [(3, "Add a cart")]
    too_long = client.post("/api/repos/octo/app/pull-requests/4/deploy", json={"branchName": "feat/b", "title": "x" * 257}, headers=auth(token))
    assert too_long.status_code == 400 and "title" in too_long.get_json()["error"]


@pytest.mark.parametrize("query", ["after=-1", "after=abc", "after=1.5", "limit=0", "limit=5001", "limit=x"])
def test_log_query_out_of_range_is_400(client, token, query):
    deployment_id = client.post("/api/repos/octo/app/pull-requests/5/deploy", json={"branchName": "feat/c"}, headers=auth(token)).get_json()["id"]
    response = client.get(f"/api/deployments/{deployment_id}/logs?{query}", headers=auth(token))
    assert response.status_code == 400 and response.get_json()["error"]
    assert client.get(f"/api/deployments/{deployment_id}/logs", headers=auth(token)).get_json() == {"lines": [], "lastSeq": 0}
    assert client.get("/api/deployments/nope/logs", headers=auth(token)).status_code == 404
