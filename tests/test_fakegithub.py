"""Tests of the fake GitHub (tests/fakegithub.py) and the webhook helpers.

They talk HTTP to the fake like the bot's processes do, with a fresh RSA key
per module, and check that the fake is as strict as GitHub: what it accepts
and refuses, and that what it answers matches GitHub's OpenAPI description.
"""

from __future__ import annotations

import asyncio
import calendar
import http.client
import json
import threading
import time
from urllib.parse import parse_qs, urlsplit

import gidgethub.apps
import gidgethub.httpx
import gidgethub.sansio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests import webhooks
from tests.fakegithub import DROPPED, MANIFEST_FORM_PATH, FakeGitHub, stable_id

APP_ID = 4242
SHA = "a" * 40
FORK_SHA = "b" * 40
HEADERS = {"User-Agent": "previewbot-tests", "Accept": "application/vnd.github+json",
           "X-GitHub-Api-Version": "2022-11-28"}


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def _new_private_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def private_pem() -> bytes:
    return _new_private_key()


@pytest.fixture(scope="module")
def public_pem(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def fake(public_pem: bytes):
    """A running fake with octo/app (installation 1, PR #1 + fork PR #2) and other/lib (installation 2)."""
    with FakeGitHub(APP_ID, public_pem) as fake:
        fake.add_installation(1, account="octo")
        fake.add_repo("octo/app", installation_id=1)
        fake.add_pull("octo/app", 1, head_ref="feature", head_sha=SHA)
        fake.add_pull("octo/app", 2, head_ref="patch-1", head_sha=FORK_SHA, head_repo="mallory/app", user="mallory")
        fake.add_installation(2, account="other")
        fake.add_repo("other/lib", installation_id=2)
        yield fake


@pytest.fixture
def client(fake: FakeGitHub):
    with httpx.Client(base_url=fake.url, headers=HEADERS, timeout=10) as client:
        yield client


def make_jwt(private_pem: bytes, *, iat: float | None = None, lifetime: int = 600, iss=str(APP_ID)) -> str:
    """An app JWT like gidgethub/octokit make: iat 60 s in the past.

    Signed through PyJWS so that ``iss`` may also be an integer (PyJWT's
    encode insists on a string; GitHub's docs show an integer).
    """
    iat = int(time.time()) - 60 if iat is None else int(iat)
    claims = json.dumps({"iat": iat, "exp": iat + lifetime, "iss": iss}).encode()
    return jwt.PyJWS().encode(claims, private_pem, algorithm="RS256", headers={"typ": "JWT"})


def get_token(client: httpx.Client, private_pem: bytes, installation_id: int = 1, **body) -> str:
    response = client.post(f"/app/installations/{installation_id}/access_tokens", json=body or None,
                           headers={"Authorization": f"Bearer {make_jwt(private_pem)}"})
    assert response.status_code == 201, response.text
    return response.json()["token"]


@pytest.fixture
def token(client: httpx.Client, private_pem: bytes) -> str:
    return get_token(client, private_pem)


def auth(token: str) -> dict:
    return {"Authorization": f"token {token}"}


# --------------------------------------------------------------------------
# App authentication (JWT)
# --------------------------------------------------------------------------


def test_valid_jwt_gets_installation_token(fake, client, private_pem):
    response = client.post("/app/installations/1/access_tokens",
                           headers={"Authorization": f"Bearer {make_jwt(private_pem)}"})
    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("ghs_") and len(body["token"]) == 40
    expires = calendar.timegm(time.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert 3500 < expires - time.time() <= 3600
    assert body["repository_selection"] == "all"
    assert body["permissions"]["checks"] == "write"
    assert fake.tokens_issued == 1
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-github-request-id"):
        assert header in response.headers
    assert fake.violations == []


def test_token_ttl_is_configurable(fake, client, private_pem):
    fake.token_ttl_seconds = 120
    response = client.post("/app/installations/1/access_tokens",
                           headers={"Authorization": f"Bearer {make_jwt(private_pem)}"})
    expires = calendar.timegm(time.strptime(response.json()["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert 100 < expires - time.time() <= 120


@pytest.mark.parametrize("iss", [APP_ID, str(APP_ID)])
def test_jwt_iss_may_be_int_or_numeric_string(fake, client, private_pem, iss):
    response = client.get("/app", headers={"Authorization": f"Bearer {make_jwt(private_pem, iss=iss)}"})
    assert response.status_code == 200
    assert response.json()["id"] == APP_ID
    assert fake.violations == []


@pytest.mark.parametrize("case", ["expired", "lifetime_over_10_minutes", "wrong_key", "wrong_iss",
                                  "non_numeric_iss", "iat_in_future", "hs256", "token_scheme"])
def test_bad_jwt_is_401(fake, client, private_pem, case):
    now = int(time.time())
    scheme = "Bearer"
    if case == "expired":
        token = make_jwt(private_pem, iat=now - 700)  # exp = now - 100
    elif case == "lifetime_over_10_minutes":
        token = make_jwt(private_pem, lifetime=601)
    elif case == "wrong_key":
        token = make_jwt(_new_private_key())
    elif case == "wrong_iss":
        token = make_jwt(private_pem, iss=APP_ID + 1)
    elif case == "non_numeric_iss":
        token = make_jwt(private_pem, iss="previewbot")
    elif case == "iat_in_future":
        token = make_jwt(private_pem, iat=now + 120, lifetime=300)
    elif case == "hs256":
        token = jwt.encode({"iat": now - 60, "exp": now + 500, "iss": str(APP_ID)}, "s" * 32, algorithm="HS256")
    else:
        token, scheme = make_jwt(private_pem), "token"
    response = client.post("/app/installations/1/access_tokens", headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 401
    assert response.json()["message"]
    assert fake.tokens_issued == 0
    assert len(fake.violations) == 1 and "401" in fake.violations[0]


def test_app_endpoint_refuses_installation_token(fake, client, token):
    assert client.get("/app", headers=auth(token)).status_code == 401
    assert len(fake.violations) == 1


def test_repo_installation_and_installations_list(fake, client, private_pem):
    bearer = {"Authorization": f"Bearer {make_jwt(private_pem)}"}
    assert client.get("/repos/octo/app/installation", headers=bearer).json()["id"] == 1
    assert client.get("/repos/OCTO/App/installation", headers=bearer).json()["id"] == 1  # case-insensitive
    assert client.get("/repos/octo/nope/installation", headers=bearer).status_code == 404
    assert [i["id"] for i in client.get("/app/installations", headers=bearer).json()] == [1, 2]
    assert fake.violations == []


def test_token_permissions_and_repositories_can_be_narrowed(fake, client, private_pem):
    narrow = get_token(client, private_pem, permissions={"issues": "write"}, repositories=["app"])
    assert client.get("/repos/octo/app/check-runs/1", headers=auth(narrow)).status_code == 403
    assert "checks:read" in fake.violations[-1]
    too_much = client.post("/app/installations/1/access_tokens", json={"permissions": {"administration": "write"}},
                           headers={"Authorization": f"Bearer {make_jwt(private_pem)}"})
    assert too_much.status_code == 422
    foreign = client.post("/app/installations/1/access_tokens", json={"repositories": ["lib"]},
                          headers={"Authorization": f"Bearer {make_jwt(private_pem)}"})
    assert foreign.status_code == 422


# --------------------------------------------------------------------------
# Installation tokens on repository endpoints
# --------------------------------------------------------------------------


def test_token_from_another_installation_is_404(fake, client, private_pem):
    other = get_token(client, private_pem, installation_id=2)
    response = client.get("/repos/octo/app/pulls/1", headers=auth(other))
    assert response.status_code == 404
    assert response.json()["message"] == "Not Found"
    assert len(fake.violations) == 1 and "installation 2" in fake.violations[0]


def test_expired_installation_token_is_401_but_no_violation(fake, client, private_pem):
    fake.token_ttl_seconds = 0  # expires the moment it is issued
    stale = get_token(client, private_pem)
    response = client.get("/repos/octo/app/pulls/1", headers=auth(stale))
    assert response.status_code == 401
    assert response.json()["message"] == "Bad credentials"
    assert fake.violations == []  # clients meet this normally and must refresh


def test_expire_tokens_and_clock(fake, client, token):
    assert client.get("/repos/octo/app/pulls/1", headers=auth(token)).status_code == 200
    fake.clock = lambda: time.time() + 3601  # an hour later
    assert client.get("/repos/octo/app/pulls/1", headers=auth(token)).status_code == 401
    fake.clock = time.time
    fake.expire_tokens()
    assert client.get("/repos/octo/app/pulls/1", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_repo_endpoint_without_or_with_unknown_token(fake, client):
    assert client.get("/repos/octo/app/pulls/1").status_code == 401
    assert client.get("/repos/octo/app/pulls/1", headers=auth("ghs_" + "x" * 36)).status_code == 401
    assert len(fake.violations) == 2


def test_installation_without_permission_gets_403(fake, client, private_pem):
    fake.add_installation(3, account="readonly", permissions={"metadata": "read", "pull_requests": "read"})
    fake.add_repo("readonly/app", installation_id=3)
    fake.add_commit("readonly/app", SHA)
    ro = get_token(client, private_pem, installation_id=3)
    response = client.post("/repos/readonly/app/check-runs", headers=auth(ro), json={"name": "x", "head_sha": SHA})
    assert response.status_code == 403
    assert response.json()["message"] == "Resource not accessible by integration"
    assert "checks:write" in fake.violations[-1]


# --------------------------------------------------------------------------
# Request validation
# --------------------------------------------------------------------------


def test_missing_user_agent_is_403(fake):
    parts = urlsplit(fake.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/app")  # http.client sends no User-Agent of its own
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 403
    assert "User-Agent" in body["message"]
    assert fake.violations == ["GET /app -> 403: missing User-Agent header"]


@pytest.mark.parametrize("method,path", [
    ("GET", "/repos/octo/app/pulls/1/files"),      # an operation the description has, but not kept
    ("DELETE", "/repos/octo/app/pulls/1"),           # known path, unknown method
    ("GET", "/repos/octo/app/pulls/one"),            # integer path parameter
    ("GET", "/repos/octo/app/pulls/1/"),             # trailing slash
    ("GET", "/repository/octo/app"),
])
def test_unknown_route_is_404_and_violation(fake, client, token, method, path):
    response = client.request(method, path, headers=auth(token))
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found", "documentation_url": "https://docs.github.com/rest",
                               "status": "404"}
    assert len(fake.violations) == 1 and path in fake.violations[0]


def test_unsupported_api_version_is_400(fake, client, token):
    response = client.get("/repos/octo/app/pulls/1", headers={**auth(token), "X-GitHub-Api-Version": "2020-01-01"})
    assert response.status_code == 400
    assert len(fake.violations) == 1


def test_check_run_label_over_20_chars_is_422(fake, client, token):
    response = client.post("/repos/octo/app/check-runs", headers=auth(token), json={
        "name": "Preview", "head_sha": SHA,
        "actions": [{"label": "x" * 21, "description": "Redeploy the preview", "identifier": "redeploy"}]})
    assert response.status_code == 422
    body = response.json()
    assert body["message"] == "Validation Failed"
    assert body["errors"][0]["field"] == "actions[0].label"
    assert len(fake.violations) == 1 and "actions[0].label" in fake.violations[0]
    assert fake.check_runs == {}


@pytest.mark.parametrize("body,field", [
    ({"actions": [{"label": "a", "description": "d", "identifier": str(i)} for i in range(4)]}, "actions"),
    ({"actions": [{"label": "a", "description": "d" * 41, "identifier": "i"}]}, "actions[0].description"),
    ({"actions": [{"label": "a", "description": "d", "identifier": "i" * 21}]}, "actions[0].identifier"),
    ({"actions": [{"label": "a", "identifier": "i"}]}, "actions[0].description"),
    ({"status": "completed"}, "conclusion"),
    ({"completed_at": "2024-01-01T00:00:00Z"}, "conclusion"),
    ({"conclusion": "stale"}, "conclusion"),
    ({"started_at": "yesterday"}, "started_at"),
    ({"output": {"summary": "no title"}}, "output.title"),
])
def test_check_run_rules(fake, client, token, body, field):
    response = client.post("/repos/octo/app/check-runs", headers=auth(token),
                           json={"name": "Preview", "head_sha": SHA, **body})
    assert response.status_code == 422, response.text
    assert field in [e.get("field") for e in response.json()["errors"]]
    assert len(fake.violations) == 1


def test_check_run_update_rules(fake, client, token):
    run = client.post("/repos/octo/app/check-runs", headers=auth(token),
                      json={"name": "Preview", "head_sha": SHA, "status": "in_progress"}).json()
    url = f"/repos/octo/app/check-runs/{run['id']}"
    assert client.patch(url, headers=auth(token), json={"status": "completed"}).status_code == 422
    assert client.patch(url, headers=auth(token), json={"status": "waiting"}).status_code == 422
    done = client.patch(url, headers=auth(token), json={"conclusion": "success",
                                                        "output": {"title": "Ready", "summary": "https://pr-1"}})
    assert done.status_code == 200
    assert done.json()["status"] == "completed" and done.json()["completed_at"]
    assert fake.check_runs[run["id"]]["output"]["summary"] == "https://pr-1"
    assert len(fake.violations) == 2


def test_check_run_for_unknown_commit_is_422(fake, client, token):
    response = client.post("/repos/octo/app/check-runs", headers=auth(token),
                           json={"name": "Preview", "head_sha": "c" * 40})
    assert response.status_code == 422
    assert "No commit found" in response.json()["message"]


def test_comment_without_body_is_422(fake, client, token):
    missing = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={})
    assert missing.status_code == 422
    assert missing.json()["errors"][0] == {"resource": "IssueComment", "code": "missing_field", "field": "body",
                                           "message": "'body' is a required property"}
    blank = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": "  "})
    assert blank.status_code == 422
    wrong_type = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": 1})
    assert wrong_type.status_code == 422
    assert len(fake.violations) == 3
    assert fake.comments["octo/app"].get(1, []) == []


def test_body_that_is_not_json_is_400(fake, client, token):
    response = client.post("/repos/octo/app/issues/1/comments", headers={**auth(token), "Content-Type":
                           "application/json"}, content=b"{body: nope}")
    assert response.status_code == 400
    assert response.json()["message"] == "Problems parsing JSON"
    assert len(fake.violations) == 1


def test_query_parameters_are_checked(fake, client, token):
    assert client.get("/repos/octo/app/pulls", params={"state": "bogus"}, headers=auth(token)).status_code == 422
    assert client.get("/repos/octo/app/pulls", params={"per_page": "ten"}, headers=auth(token)).status_code == 422
    assert len(fake.violations) == 2
    # Unknown parameters: GitHub ignores them, the fake answers but reports them.
    response = client.get("/repos/octo/app/pulls", params={"status": "open"}, headers=auth(token))
    assert response.status_code == 200
    assert "unknown query parameter 'status'" in fake.violations[-1]


# --------------------------------------------------------------------------
# Endpoints and state
# --------------------------------------------------------------------------


def test_pulls(fake, client, token):
    pull = client.get("/repos/octo/app/pulls/1", headers=auth(token)).json()
    assert (pull["number"], pull["head"]["ref"], pull["head"]["sha"]) == (1, "feature", SHA)
    assert pull["head"]["repo"]["full_name"] == "octo/app" and pull["base"]["ref"] == "main"
    fork = client.get("/repos/octo/app/pulls/2", headers=auth(token)).json()
    assert fork["head"]["repo"]["full_name"] == "mallory/app" and fork["head"]["repo"]["fork"] is True
    assert fork["user"]["id"] == stable_id("user", "mallory")
    assert client.get("/repos/octo/app/pulls/99", headers=auth(token)).status_code == 404
    fake.update_pull("octo/app", 1, state="closed", merged=True)
    open_pulls = client.get("/repos/octo/app/pulls", headers=auth(token)).json()
    assert [p["number"] for p in open_pulls] == [2]
    closed = client.get("/repos/octo/app/pulls", params={"state": "closed"}, headers=auth(token)).json()
    assert [p["number"] for p in closed] == [1]
    by_head = client.get("/repos/octo/app/pulls", params={"state": "all", "head": "mallory:patch-1"},
                         headers=auth(token)).json()
    assert [p["number"] for p in by_head] == [2]
    assert fake.violations == []


@pytest.mark.parametrize("role,permission", [("admin", "admin"), ("maintain", "write"), ("write", "write"),
                                             ("triage", "read"), ("read", "read"), ("none", "none")])
def test_collaborator_permission(fake, client, token, role, permission):
    fake.set_permission("octo/app", "bob", role)
    body = client.get("/repos/octo/app/collaborators/bob/permission", headers=auth(token)).json()
    assert (body["permission"], body["role_name"], body["user"]["login"]) == (permission, role, "bob")


def test_collaborator_permission_defaults(fake, client, token, private_pem):
    def permission(repo, user, tok):
        return client.get(f"/repos/{repo}/collaborators/{user}/permission", headers=auth(tok)).json()["permission"]

    assert permission("octo/app", "stranger", token) == "read"  # public repo
    assert permission("octo/app", "octo", token) == "admin"  # owner of a user repo
    fake.add_repo("octo/secret", installation_id=1, private=True)
    assert permission("octo/secret", "stranger", token) == "none"


def test_reactions(fake, client, token):
    comment = fake.add_comment("octo/app", 1, "/preview", user="alice")
    url = f"/repos/octo/app/issues/comments/{comment['id']}/reactions"
    first = client.post(url, headers=auth(token), json={"content": "eyes"})
    again = client.post(url, headers=auth(token), json={"content": "eyes"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert client.post(url, headers=auth(token), json={"content": "rocket"}).status_code == 201
    assert client.post(url, headers=auth(token), json={"content": "party"}).status_code == 422
    assert client.post("/repos/octo/app/issues/comments/1/reactions", headers=auth(token),
                       json={"content": "eyes"}).status_code == 404
    assert fake.reactions[comment["id"]] == ["eyes", "rocket"]
    got = client.get(f"/repos/octo/app/issues/comments/{comment['id']}", headers=auth(token)).json()
    assert got["reactions"]["eyes"] == 1 and got["reactions"]["total_count"] == 2


def test_comments_create_edit_get(fake, client, token):
    created = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": "Deploying..."})
    assert created.status_code == 201
    comment = created.json()
    assert comment["user"]["login"] == "previewbot[bot]" and comment["user"]["type"] == "Bot"
    assert created.headers["location"] == comment["url"]
    edited = client.patch(f"/repos/octo/app/issues/comments/{comment['id']}", headers=auth(token),
                          json={"body": "Ready"})
    assert edited.json()["body"] == "Ready"
    assert [c["body"] for c in fake.comments["octo/app"][1]] == ["Ready"]
    assert client.post("/repos/octo/app/issues/77/comments", headers=auth(token),
                       json={"body": "x"}).status_code == 404
    assert fake.violations == []


def test_comment_pagination_link_header(fake, client, token):
    for i in range(5):
        fake.add_comment("octo/app", 1, f"comment {i}")
    first = client.get("/repos/octo/app/issues/1/comments", params={"per_page": 2}, headers=auth(token))
    assert [c["body"] for c in first.json()] == ["comment 0", "comment 1"]
    assert first.links["next"]["url"].endswith("per_page=2&page=2")
    assert first.links["last"]["url"].endswith("per_page=2&page=3")
    assert "prev" not in first.links
    last = client.get(first.links["last"]["url"], headers=auth(token))
    assert [c["body"] for c in last.json()] == ["comment 4"]
    assert set(last.links) == {"prev", "first"}
    # Following "next" links yields every comment once, in order.
    bodies, url = [], "/repos/octo/app/issues/1/comments?per_page=2"
    while url:
        page = client.get(url, headers=auth(token))
        bodies += [c["body"] for c in page.json()]
        url = page.links.get("next", {}).get("url")
    assert bodies == [f"comment {i}" for i in range(5)]
    single = client.get("/repos/octo/app/issues/1/comments", headers=auth(token))
    assert "link" not in single.headers
    assert fake.violations == []


def test_check_runs_for_ref(fake, client, token):
    def create(name, **extra):
        return client.post("/repos/octo/app/check-runs", headers=auth(token),
                           json={"name": name, "head_sha": SHA, **extra}).json()

    old = create("Preview")
    new = create("Preview", status="in_progress")
    create("Lint")
    fake.add_check_run("octo/app", SHA, "CI", app_id=99)
    latest = client.get(f"/repos/octo/app/commits/{SHA}/check-runs", params={"check_name": "Preview"},
                        headers=auth(token)).json()
    assert latest["total_count"] == 1 and latest["check_runs"][0]["id"] == new["id"]
    every = client.get(f"/repos/octo/app/commits/{SHA}/check-runs",
                       params={"check_name": "Preview", "filter": "all"}, headers=auth(token)).json()
    assert [r["id"] for r in every["check_runs"]] == [new["id"], old["id"]]
    mine = client.get("/repos/octo/app/commits/feature/check-runs", params={"app_id": APP_ID},
                      headers=auth(token)).json()  # a branch name works as ref too
    assert {r["name"] for r in mine["check_runs"]} == {"Preview", "Lint"}
    assert new["pull_requests"][0]["number"] == 1
    # Fork PRs are not listed in check runs, and the fork's branch is not a ref of the base repo.
    fork_run = client.post("/repos/octo/app/check-runs", headers=auth(token),
                           json={"name": "Preview", "head_sha": FORK_SHA}).json()
    assert fork_run["pull_requests"] == []
    assert client.get("/repos/octo/app/commits/patch-1/check-runs", headers=auth(token)).status_code == 422
    foreign = fake.check_runs[max(fake.check_runs)]
    assert client.patch(f"/repos/octo/app/check-runs/{foreign['id'] - 1}", headers=auth(token),
                        json={"status": "in_progress"}).status_code == 403  # app 99's run


def test_deployments(fake, client, token):
    def deploy(ref, **extra):
        return client.post("/repos/octo/app/deployments", headers=auth(token),
                           json={"ref": ref, "environment": "pr-1", "required_contexts": [], **extra})

    first = deploy("feature")
    assert first.status_code == 201 and first.json()["sha"] == SHA
    deployment = first.json()
    assert "statuses" not in deployment and "repository" not in deployment
    status = client.post(f"/repos/octo/app/deployments/{deployment['id']}/statuses", headers=auth(token),
                         json={"state": "success", "environment_url": "https://pr-1.example.test"})
    assert status.status_code == 201
    second = deploy(SHA, auto_merge=False).json()
    client.post(f"/repos/octo/app/deployments/{second['id']}/statuses", headers=auth(token), json={"state": "success"})
    # auto_inactive: the older successful deployment of the environment became inactive
    assert [s["state"] for s in fake.deployments[deployment["id"]]["statuses"]] == ["success", "inactive"]
    listed = client.get("/repos/octo/app/deployments", params={"environment": "pr-1"}, headers=auth(token)).json()
    assert [d["id"] for d in listed] == [second["id"], deployment["id"]]
    assert client.get("/repos/octo/app/deployments", params={"ref": "feature"}, headers=auth(token)).json()[0][
        "id"] == deployment["id"]
    statuses = client.get(f"/repos/octo/app/deployments/{deployment['id']}/statuses", headers=auth(token)).json()
    assert [s["state"] for s in statuses] == ["inactive", "success"]
    assert fake.violations == []
    # A fork PR's branch does not exist in the base repo; its sha (or refs/pull/N/head) does.
    assert deploy("patch-1").status_code == 422
    assert deploy("refs/pull/2/head").status_code == 201
    too_long = client.post(f"/repos/octo/app/deployments/{deployment['id']}/statuses", headers=auth(token),
                           json={"state": "failure", "description": "x" * 141})
    assert too_long.status_code == 422


def test_responses_match_githubs_openapi_schemas(fake, client, token, private_pem):
    """Every 2xx answer of every endpoint validates against the documented schema."""
    bearer = {"Authorization": f"Bearer {make_jwt(private_pem)}"}
    comment = fake.add_comment("octo/app", 1, "/preview")
    client.get("/app", headers=bearer)
    client.get("/app/installations", headers=bearer)
    client.get("/repos/octo/app/installation", headers=bearer)
    client.get("/repos/octo/app/pulls/1", headers=auth(token))
    client.get("/repos/octo/app/pulls/2", headers=auth(token))
    client.get("/repos/octo/app/pulls", params={"state": "all"}, headers=auth(token))
    client.get("/repos/octo/app/collaborators/alice/permission", headers=auth(token))
    client.post(f"/repos/octo/app/issues/comments/{comment['id']}/reactions", headers=auth(token),
                json={"content": "eyes"})
    client.post(f"/repos/octo/app/issues/comments/{comment['id']}/reactions", headers=auth(token),
                json={"content": "eyes"})
    posted = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": "hi"}).json()
    client.patch(f"/repos/octo/app/issues/comments/{posted['id']}", headers=auth(token), json={"body": "yo"})
    client.get(f"/repos/octo/app/issues/comments/{posted['id']}", headers=auth(token))
    client.get("/repos/octo/app/issues/1/comments", headers=auth(token))
    run = client.post("/repos/octo/app/check-runs", headers=auth(token), json={
        "name": "Preview", "head_sha": SHA, "status": "in_progress", "external_id": "pr-1",
        "output": {"title": "Deploying", "summary": "..."},
        "actions": [{"label": "Redeploy", "description": "Deploy again", "identifier": "redeploy"}]}).json()
    client.patch(f"/repos/octo/app/check-runs/{run['id']}", headers=auth(token), json={"conclusion": "success"})
    client.get(f"/repos/octo/app/check-runs/{run['id']}", headers=auth(token))
    client.get(f"/repos/octo/app/commits/{SHA}/check-runs", headers=auth(token))
    deployment = client.post("/repos/octo/app/deployments", headers=auth(token),
                             json={"ref": "feature", "environment": "pr-1", "payload": {"pr": 1}}).json()
    client.post(f"/repos/octo/app/deployments/{deployment['id']}/statuses", headers=auth(token),
                json={"state": "success", "log_url": "https://ci.example.test/1"})
    client.get(f"/repos/octo/app/deployments/{deployment['id']}/statuses", headers=auth(token))
    client.get("/repos/octo/app/deployments", headers=auth(token))
    client.post("/app/installations/1/access_tokens", json={"repositories": ["app"]}, headers=bearer)
    fake.add_file("octo/app", ".github/preview.yml", "environments: {}\n")
    client.get("/repos/octo/app/contents/.github/preview.yml", params={"ref": "main"}, headers=auth(token))
    # Sign in with GitHub: a user access token from the OAuth web flow reads the user's installations.
    fake.set_permission("octo/app", "alice", "write")
    fake.signed_in_login = "alice"
    authorized = client.get("/login/oauth/authorize", params={"client_id": fake.client_id, "redirect_uri": "http://127.0.0.1:1/cb", "state": "s"})
    oauth_code = parse_qs(urlsplit(authorized.headers["location"]).query)["code"][0]
    user_token = client.post("/login/oauth/access_token", headers={"Accept": "application/json"}, data={
        "client_id": fake.client_id, "client_secret": fake.client_secret, "code": oauth_code}).json()["access_token"]
    client.get("/user", headers=auth(user_token))
    client.get("/user/installations", headers=auth(user_token))
    client.get("/user/installations/1/repositories", headers=auth(user_token))
    # Last: trading a manifest's code makes the fake the new App.
    manifest = {"name": "x", "url": "https://previewbot.example.test", "hook_attributes": {"url": "https://previewbot.example.test/hook"},
                "redirect_url": "http://127.0.0.1:1/cb", "default_permissions": {"checks": "write"}}
    form = client.post("/settings/apps/new?state=s", data={"manifest": json.dumps(manifest)})
    code = parse_qs(urlsplit(form.headers["location"]).query)["code"][0]
    client.post(f"/app-manifests/{code}/conversions")

    assert fake.violations == []
    checked = set()
    for call in fake.calls:
        if MANIFEST_FORM_PATH.fullmatch(call.path):
            continue  # GitHub's web page, not its REST API
        assert 200 <= call.status < 300, str(call)
        op, _ = fake.spec.find(call.method, call.path)
        validator = op.response_validator(call.status)
        assert validator is not None, f"{call}: no documented {call.status} response"
        problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(call.response)
                    if not _known_spec_quirk(op.template, e)]
        assert problems == [], f"{call}:\n" + "\n".join(problems[:20])
        checked.add((op.method, op.template))
    # Every operation with a JSON answer (the tarball's is a redirect, tested on its own).
    answering = {(op.method, op.template) for op in fake.spec.operations if any(s.startswith("2") for s in op.responses)}
    assert checked == answering and len(answering) == len(fake.spec.operations) - 1 == 25


def test_oauth_web_flow_and_user_endpoints(fake, client):
    """The OAuth web flow as GitHub runs it: the authorize page sends the browser back with a code
    and the state, a code is traded once and only with the App's secret, and a user access token
    lists only the installations' repositories its user can reach, with their permissions."""
    fake.set_permission("octo/app", "alice", "read")
    fake.signed_in_login = "alice"
    authorized = client.get("/login/oauth/authorize", params={
        "client_id": fake.client_id, "redirect_uri": "http://127.0.0.1:1/cb", "state": "xyz"})
    back = parse_qs(urlsplit(authorized.headers["location"]).query)
    assert authorized.status_code == 302 and back["state"] == ["xyz"]

    def trade(secret: str) -> dict:
        return client.post("/login/oauth/access_token", headers={"Accept": "application/json"}, data={
            "client_id": fake.client_id, "client_secret": secret, "code": back["code"][0]}).json()

    assert trade("wrong") == {"error": "incorrect_client_credentials"}
    token = trade(fake.client_secret)["access_token"]
    assert trade(fake.client_secret) == {"error": "bad_verification_code"}
    user = {"Authorization": f"Bearer {token}"}
    assert client.get("/user", headers=user).json()["login"] == "alice"
    assert [i["id"] for i in client.get("/user/installations", headers=user).json()["installations"]] == [1]
    repos = client.get("/user/installations/1/repositories", headers=user).json()["repositories"]
    assert [(r["full_name"], r["permissions"]["pull"], r["permissions"]["push"]) for r in repos] == [("octo/app", True, False)]
    assert client.get("/user/installations/2/repositories", headers=user).status_code == 404
    assert fake.violations == []
    assert client.get("/user", headers={"Authorization": "Bearer ghu_unknown"}).status_code == 401
    assert len(fake.violations) == 1


def _known_spec_quirk(template: str, error) -> bool:
    """Errors that real GitHub answers would have too, because the description is wrong.

    GET /app/installations declares ``account`` as ``allOf [Simple User,
    Enterprise]`` (GET /repos/{owner}/{repo}/installation says ``anyOf``): no
    real user or organization account has an Enterprise's slug and timestamps.
    """
    path = list(error.absolute_path)
    return template == "/app/installations" and path[1:] == ["account"]


# --------------------------------------------------------------------------
# Fault injection, recording, waiting
# --------------------------------------------------------------------------


def test_fault_injection_with_retry_after(fake, client, token):
    fake.fail("POST", r"/repos/octo/app/issues/\d+/comments", 429, headers={"Retry-After": "1"})
    throttled = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": "hi"})
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "1"
    assert "secondary rate limit" in throttled.json()["message"]
    retried = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": "hi"})
    assert retried.status_code == 201
    assert [c.status for c in fake.calls_to("POST", r"/repos/octo/app/issues/1/comments")] == [429, 201]
    assert len(fake.comments["octo/app"][1]) == 1
    assert fake.violations == []


def test_fault_injection_rate_limit_and_5xx(fake, client, token):
    reset = str(int(time.time()) + 30)
    fake.fail("*", r"/repos/octo/app/pulls/1", 403, times=2,
              headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset})
    for _ in range(2):
        limited = client.get("/repos/octo/app/pulls/1", headers=auth(token))
        assert limited.status_code == 403
        assert (limited.headers["x-ratelimit-remaining"], limited.headers["x-ratelimit-reset"]) == ("0", reset)
        assert "rate limit" in limited.json()["message"]
    assert client.get("/repos/octo/app/pulls/1", headers=auth(token)).status_code == 200
    fake.fail("GET", r".*/pulls/1", 502, body={"message": "Server Error"})
    assert client.get("/repos/octo/app/pulls/1", headers=auth(token)).status_code == 502
    fake.down = True
    assert client.get("/repos/octo/app/pulls/1", headers=auth(token)).status_code == 503
    fake.down = False
    assert client.get("/repos/octo/app/pulls/1", headers=auth(token)).status_code == 200
    assert fake.violations == []


def test_calls_are_recorded(fake, client, token):
    client.post("/repos/octo/app/issues/1/comments?x=1", headers=auth(token), json={"body": "hi"})
    call = fake.calls[-1]
    assert (call.method, call.path, call.query, call.json, call.status) == (
        "POST", "/repos/octo/app/issues/1/comments", {"x": "1"}, {"body": "hi"}, 201)
    assert call.headers["authorization"] == f"token {token}"
    assert call.response["body"] == "hi"
    assert fake.calls_to("post", r"/repos/octo/app/issues/\d+/comments") == [call]
    assert fake.calls_to("GET", r"/repos/octo/app/issues/\d+/comments") == []


def test_wait_for_returns_when_a_call_arrives(fake, token):
    def later():
        with httpx.Client(base_url=fake.url, headers=HEADERS) as other:
            other.get("/repos/octo/app/pulls/1", headers=auth(token))

    thread = threading.Thread(target=later)
    thread.start()
    calls = fake.wait_for(lambda: fake.calls_to("GET", r"/repos/octo/app/pulls/1"), timeout=10)
    thread.join()
    assert calls[0].status == 200


def test_wait_for_timing_out_raises(fake, client, token):
    client.get("/repos/octo/app/pulls/1", headers=auth(token))
    started = time.monotonic()
    with pytest.raises(AssertionError) as excinfo:
        fake.wait_for(lambda: fake.calls_to("POST", r".*/check-runs"), timeout=0.3, message="a check run")
    assert 0.3 <= time.monotonic() - started < 5
    text = str(excinfo.value)
    assert "a check run" in text and "GET /repos/octo/app/pulls/1 -> 200" in text


# --------------------------------------------------------------------------
# The real client library against the fake
# --------------------------------------------------------------------------


def test_gidgethub_against_the_fake(fake, private_pem):
    """gidgethub's own requests are accepted: proves the fake is not stricter than GitHub."""

    async def scenario():
        async with httpx.AsyncClient() as http:
            app = gidgethub.httpx.GitHubAPI(http, "test", base_url=fake.url)
            access = await gidgethub.apps.get_installation_access_token(
                app, installation_id="1", app_id=str(APP_ID), private_key=private_pem.decode())
            gh = gidgethub.httpx.GitHubAPI(http, "test", oauth_token=access["token"], base_url=fake.url)
            for i in range(3):
                await gh.post("/repos/octo/app/issues/1/comments", data={"body": f"c{i}"})
            bodies = [c["body"] async for c in gh.getiter("/repos/octo/app/issues/1/comments?per_page=2")]
            run = await gh.post("/repos/octo/app/check-runs", data={"name": "Preview", "head_sha": SHA})
            with pytest.raises(gidgethub.BadRequest) as excinfo:
                await gh.post("/repos/octo/app/check-runs", data={
                    "name": "Preview", "head_sha": SHA,
                    "actions": [{"label": "x" * 21, "description": "d", "identifier": "i"}]})
            return access, bodies, run, excinfo.value, gh.rate_limit

    access, bodies, run, error, rate_limit = asyncio.run(scenario())
    assert access["token"].startswith("ghs_")
    assert bodies == ["c0", "c1", "c2"]
    assert run["status"] == "queued"
    assert error.status_code == 422
    assert rate_limit is not None and rate_limit.limit == 5000
    assert fake.tokens_issued == 1
    assert len(fake.violations) == 1  # only the deliberate 21-char label


# --------------------------------------------------------------------------
# Webhook helpers
# --------------------------------------------------------------------------


def test_webhook_builders_start_from_real_examples():
    comment = webhooks.issue_comment("octo/app", pr_number=7, body="/preview", user="bob", comment_id=55,
                                     installation_id=3)
    assert comment["issue"]["number"] == 7 and "pull_request" in comment["issue"]
    assert comment["issue"]["pull_request"]["url"].endswith("/repos/octo/app/pulls/7")
    assert comment["comment"]["id"] == 55 and comment["comment"]["user"]["login"] == "bob"
    assert comment["sender"]["id"] == stable_id("user", "bob")
    assert comment["installation"]["id"] == 3 and comment["repository"]["owner"]["login"] == "octo"
    # Fields no builder touches come from the real example.
    assert set(webhooks.load_example("issue_comment.created")["comment"]) <= set(comment["comment"])

    fork = webhooks.pull_request("opened", "octo/app", 3, "patch-1", FORK_SHA, head_repo="mallory/app")
    assert fork["pull_request"]["head"]["repo"]["fork"] is True
    assert fork["pull_request"]["head"]["label"] == "mallory:patch-1"
    merged = webhooks.pull_request("closed", "octo/app", 3, "f", SHA, merged=True)
    assert merged["pull_request"]["merged"] is True and merged["pull_request"]["state"] == "closed"
    sync = webhooks.pull_request("synchronize", "octo/app", 3, "f", SHA)
    assert sync["after"] == SHA and sync["before"]

    run = webhooks.check_run("requested_action", "octo/app", SHA, 9, app_id=APP_ID, identifier="redeploy",
                             pr_number=3, head_ref="f")
    assert run["check_run"]["app"]["id"] == APP_ID and run["requested_action"] == {"identifier": "redeploy"}
    assert run["check_run"]["pull_requests"][0]["number"] == 3
    assert "requested_action" not in webhooks.check_run("rerequested", "octo/app", SHA, 9, app_id=1)

    inst = webhooks.installation("created", 5, repos=["octo/app", "octo/web"])
    assert [r["full_name"] for r in inst["repositories"]] == ["octo/app", "octo/web"]
    added = webhooks.installation_repositories("added", 5, added=["octo/new"])
    assert added["repositories_added"][0]["full_name"] == "octo/new"
    assert webhooks.ping(app_id=APP_ID)["hook"]["app_id"] == APP_ID

    for payload in (comment, fork, merged, sync, run, inst, added):
        text = json.dumps(payload)
        for leftover in ("Codertocat", "Hello-World", "electron"):
            assert leftover not in text


def test_deliver_signs_like_github():
    received = {}

    def app(environ, start_response):
        request = Request(environ)
        received["headers"] = dict(request.headers)
        received["body"] = request.get_data()
        return Response("{}", status=200, content_type="application/json")(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        payload = webhooks.issue_comment()
        response = webhooks.deliver(f"http://127.0.0.1:{server.server_port}", "issue_comment", payload, "s3cret",
                                    delivery_id="abc")
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 200
    headers = {k.lower(): v for k, v in received["headers"].items()}
    assert headers["user-agent"].startswith("GitHub-Hookshot/")
    assert headers["x-hub-signature-256"] == webhooks.sign(received["body"], "s3cret")
    event = gidgethub.sansio.Event.from_http(headers, received["body"], secret="s3cret")
    assert (event.event, event.delivery_id, event.data) == ("issue_comment", "abc", payload)


# --------------------------------------------------------------------------
# Faults after performing: the resource exists, the client sees a failure
# --------------------------------------------------------------------------


def test_a_fault_after_performing_creates_the_resource_and_answers_502(fake, client, token):
    fake.fail_after_performing("POST", r"/repos/octo/app/issues/\d+/comments", nth=2)
    first = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": "one"})
    failed = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": "two"})
    third = client.post("/repos/octo/app/issues/1/comments", headers=auth(token), json={"body": "three"})
    assert (first.status_code, failed.status_code, third.status_code) == (201, 502, 201)
    assert failed.json()["message"] == "Server Error" and "location" not in failed.headers
    # The failed one was performed all the same: it is there, and listed like any other.
    assert [c["body"] for c in fake.comments["octo/app"][1]] == ["one", "two", "three"]
    listed = client.get("/repos/octo/app/issues/1/comments", headers=auth(token)).json()
    assert [c["body"] for c in listed] == ["one", "two", "three"]
    assert [c.status for c in fake.calls_to("POST", r"/repos/octo/app/issues/1/comments")] == [201, 502, 201]
    assert fake.violations == []


def test_a_fault_after_performing_can_drop_the_connection(fake, client, token):
    fake.fail_after_performing("POST", r"/repos/octo/app/check-runs", drop_connection=True)
    body = {"name": "Preview", "head_sha": SHA, "status": "in_progress", "external_id": "1:preview"}
    with pytest.raises(httpx.RemoteProtocolError):  # not a byte of answer
        client.post("/repos/octo/app/check-runs", headers=auth(token), json=body)
    [run] = fake.check_runs.values()
    assert (run["name"], run["external_id"], run["status"]) == ("Preview", "1:preview", "in_progress")
    [call] = fake.calls_to("POST", r"/repos/octo/app/check-runs")
    assert call.status == DROPPED and str(call).endswith("-> dropped")
    # The fault is spent; the fake serves as usual afterwards.
    assert client.post("/repos/octo/app/check-runs", headers=auth(token), json=body).status_code == 201
    assert len(fake.check_runs) == 2 and fake.violations == []


def test_a_fault_after_performing_waits_for_a_call_the_endpoint_accepts(fake, client, token, private_pem):
    fake.fail_after_performing("POST", r"/repos/octo/app/deployments", times=2)
    fake.expire_tokens()
    refused = client.post("/repos/octo/app/deployments", headers=auth(token), json={"ref": "feature"})
    assert refused.status_code == 401 and fake.deployments == {}  # nothing performed, the fault kept
    fresh = get_token(client, private_pem)
    answers = [client.post("/repos/octo/app/deployments", headers=auth(fresh), json={"ref": "feature"}).status_code
               for _ in range(3)]
    assert answers == [502, 502, 201]
    assert len(fake.deployments) == 3 and fake.violations == []


# --------------------------------------------------------------------------
# Source archives
# --------------------------------------------------------------------------


def test_the_tarball_endpoint_redirects_to_a_short_lived_link_never_the_token(fake, client, token):
    """What the ec2 provisioner's VM gets is this link, so it must carry no installation token."""
    by_sha = client.get(f"/repos/octo/app/tarball/{SHA}", headers=auth(token))
    by_branch = client.get("/repos/octo/app/tarball/feature", headers=auth(token))
    assert (by_sha.status_code, by_branch.status_code) == (302, 302)
    assert by_sha.content == b"" and by_sha.headers["location"] != by_branch.headers["location"]
    assert by_sha.headers["location"].startswith(f"https://codeload.example/octo/app/legacy.tar.gz/{SHA}?token=short")
    assert by_branch.headers["location"].startswith("https://codeload.example/octo/app/legacy.tar.gz/feature?token=")
    assert fake.archive_links == [by_sha.headers["location"], by_branch.headers["location"]]
    assert not any(token in link for link in fake.archive_links)
    # A commit the repository does not have is GitHub's 404, which a correct client can meet.
    assert client.get(f"/repos/octo/app/tarball/{'c' * 40}", headers=auth(token)).status_code == 404
    assert fake.violations == [] and len(fake.archive_links) == 2


def test_the_tarball_endpoint_needs_an_installation_token_with_contents_read(fake, client, private_pem):
    assert client.get(f"/repos/octo/app/tarball/{SHA}").status_code == 401
    no_contents = get_token(client, private_pem, permissions={"pull_requests": "read"})
    refused = client.get(f"/repos/octo/app/tarball/{SHA}", headers=auth(no_contents))
    assert refused.status_code == 403 and "contents:read" in fake.violations[-1]
    bearer = {"Authorization": f"Bearer {make_jwt(private_pem)}"}
    assert client.get(f"/repos/octo/app/tarball/{SHA}", headers=bearer).status_code == 401
    assert fake.archive_links == []


def test_gidgethub_meets_the_tarball_redirect_with_its_location(fake, private_pem):
    """The bot asks through gidgethub, which does not follow redirects: the link is in the
    RedirectionException's headers."""

    async def scenario() -> gidgethub.RedirectionException:
        async with httpx.AsyncClient() as http:
            app = gidgethub.httpx.GitHubAPI(http, "test", base_url=fake.url)
            access = await gidgethub.apps.get_installation_access_token(
                app, installation_id="1", app_id=str(APP_ID), private_key=private_pem.decode())
            gh = gidgethub.httpx.GitHubAPI(http, "test", oauth_token=access["token"], base_url=fake.url)
            with pytest.raises(gidgethub.RedirectionException) as redirected:
                await gh.getitem("/repos/{owner}/{repo}/tarball/{ref}", {"owner": "octo", "repo": "app", "ref": SHA})
            return redirected.value

    redirect = asyncio.run(scenario())
    assert redirect.status_code == 302 and [redirect.headers["location"]] == fake.archive_links
    assert fake.violations == []
