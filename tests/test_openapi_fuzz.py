"""The REST API against its own OpenAPI document, and the input parsers against arbitrary input.

Schemathesis reads the document the app serves at /api/openapi.json (spectree generates it from
the routes and the models of `bot.api_models`), generates requests for every operation, valid
and invalid, and sends them to the real Flask app (real Redis and SQLite): every answer must be
documented, never a 5xx, with the documented content type and body schema. Every documented
answer is also reached on purpose and checked. Plain Hypothesis tests then throw arbitrary bytes
and JSON at the deploy endpoint, the webhook parser and the webhook receiver.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bot import previews, validation
from bot.app import create_app
from bot.config import load_settings
from bot.model import Deployment
from bot.queue import QUEUE_NAME
from bot.webhooks import InvalidPayload, needs_work, parse_payload

from . import webhooks as payloads

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

FUZZ = hypothesis_settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture
def app(settings):
    # A rate limit the fuzzer cannot reach, so that deploys get past it to the deeper answers
    # (202, 409); the 429 itself is tested in test_api.py.
    return create_app(dataclasses.replace(settings, rate_limit_per_minute=1_000_000), start_feed=False)


@pytest.fixture
def token(app):
    return app.extensions["previewbot"].store.create_token("fuzz")


def served_document() -> dict:
    """The document as the app serves it. Serving it touches neither Redis nor the database's
    contents, so an app with no Redis behind it will do, before any fixture exists."""
    with tempfile.TemporaryDirectory() as directory:
        settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_PATH": f"{directory}/openapi.db"})
        response = create_app(settings, start_feed=False).test_client().get("/api/openapi.json")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


DOCUMENT = served_document()

# Each operation is one (sub)test; requests go to the test's own app through WSGI.
# (`schemathesis.pytest.from_fixture` would load the document from the test's app instead, but
# fails under pytest 9 with "'Function' object has no attribute '_nodeid'".)
schema = schemathesis.openapi.from_dict(DOCUMENT)

SEED_ID = "9f1c0e4b2d6a4f3e8b7c5a1d2e3f4a5b"


@pytest.fixture
def seeded_app(app):
    """The app with octo/app#1 deployed, with events and log lines, so that generated requests
    reach the success answers too."""
    svc = app.extensions["previewbot"]
    deployment = Deployment.new(
        id=SEED_ID, repository="octo/app", pr_number=1, branch_name="feat/x", trigger="api", requested_by="token:seed",
        provisioner="simulated",
    )
    assert previews.request_deploy(svc.redis, svc.settings, deployment).started
    svc.store.upsert_pull_request({"repository": "octo/app", "number": 1, "branch_name": "feat/x", "state": "open", "title": "Seed"})
    svc.store.record_deployment(deployment, "1-0", "deploy requested")
    svc.store.record_log("1-1", SEED_ID, "building", deployment.created_at)
    deployed = deployment.changed(status="deployed", preview_url="https://preview-1.app.example.com")
    svc.store.record_deployment(deployed, "1-2", "deployed")
    return app


# spectree documents path parameters as plain strings, without examples, so generated ones
# hardly ever name the seeded pull request or deployment: half of them are pointed there, so
# that the success answers are fuzzed too.
SEEDED_PATH = {"owner": "octo", "repo": "app", "prNumber": "1", "deploymentId": SEED_ID}


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    if not path_parameters:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, **{name: SEEDED_PATH[name] for name in path_parameters}}])


@schema.parametrize()
@FUZZ
def test_every_answer_is_documented(case, seeded_app, token):
    case.call_and_validate(app=seeded_app, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)


# -- the document itself -------------------------------------------------------------------


def test_document_is_valid_openapi_and_served_as_is(app):
    import jsonschema
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    served = app.test_client().get("/api/openapi.json")
    assert served.status_code == 200 and served.mimetype == "application/json"
    assert served.get_json() == DOCUMENT
    assert DOCUMENT["openapi"] == "3.1.0"
    jsonschema.validate(served.get_json(), OPENAPI_31)


def test_document_covers_every_api_route(app):
    """Every method of every /api route but OPTIONS, which the blueprint answers for every
    route before it is reached (see the preflight test below), and HEAD, which is GET's."""
    documented = {(path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item}
    routed = {
        (re.sub(r"<(\w+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routed


def test_documented_limits_are_the_validators():
    deploy = DOCUMENT["components"]["schemas"]["DeployRequest"]["properties"]
    assert deploy["branchName"]["maxLength"] == validation.MAX_BRANCH_LENGTH
    for sha in ("0" * 40, "a" * 40, "A" * 40, "0" * 39, "0" * 41):
        assert bool(re.search(deploy["headSha"]["pattern"], sha)) == bool(validation.SHA.fullmatch(sha)), sha


# -- arbitrary input at the deploy endpoint ------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([2**63, -(2**63) - 1, 10**30]) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
BRANCHY = st.one_of(
    JSON,
    st.text(max_size=300),
    st.sampled_from(["main", "feat/$(reboot)", "a..b", "x" * 255, "x" * 256, "a\nb", "-x", "x.lock", "ü/ñ"]),
)
DEPLOY_BODIES = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"branchName": BRANCHY},
        optional={"headSha": st.one_of(JSON, st.text("0123456789abcdefABCDEF", min_size=39, max_size=41)), "trigger": JSON},
    ).map(lambda v: json.dumps(v).encode()),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", "", "multipart/form-data; boundary=x"]
)


@given(body=DEPLOY_BODIES, content_type=CONTENT_TYPES, pr=st.integers(1, 3))
@hypothesis_settings(
    max_examples=150, derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_deploy_answers_arbitrary_bodies_with_2xx_or_4xx(app, token, redis_conn, body, content_type, pr):
    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    queued = redis_conn.llen(f"rq:queue:{QUEUE_NAME}")
    response = app.test_client().post(f"/api/repos/octo/app/pull-requests/{pr}/deploy", data=body, headers=headers)
    assert response.status_code in (202, 400, 409), response.get_data(as_text=True)
    answer = response.get_json()
    assert isinstance(answer, dict)
    if response.status_code == 202:
        # Only a valid branch name gets through, and then exactly one job is queued.
        sent = json.loads(body)
        assert validation.branch_name(sent["branchName"]) == answer["branchName"]
        assert redis_conn.llen(f"rq:queue:{QUEUE_NAME}") == queued + 1
    else:
        assert answer["error"]
        assert redis_conn.llen(f"rq:queue:{QUEUE_NAME}") == queued


# -- arbitrary input at the webhook parser ---------------------------------------------------

EVENTS = st.sampled_from(["issue_comment", "check_run", "pull_request", "ping", "installation", "push", ""]) | st.text(max_size=20)


@given(body=st.binary(max_size=400) | JSON.map(lambda v: json.dumps(v).encode()), content_type=CONTENT_TYPES)
@hypothesis_settings(max_examples=300, derandomize=True, deadline=None, database=None)
def test_parse_payload_returns_an_object_or_raises_invalid_payload(body, content_type):
    try:
        payload = parse_payload(body, content_type)
    except InvalidPayload:
        return
    assert isinstance(payload, dict)


def test_parse_payload_refuses_deep_nesting_without_recursing():
    for body in (b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, b"[" * 1_000_000):
        with pytest.raises(InvalidPayload):
            parse_payload(body, "application/json")


@given(event=EVENTS, payload=st.dictionaries(st.text(max_size=15), JSON, max_size=6), app_id=st.none() | st.sampled_from(["1", "4242"]))
@hypothesis_settings(max_examples=300, derandomize=True, deadline=None, database=None)
def test_needs_work_on_arbitrary_objects(event, payload, app_id):
    _plan(event, payload, app_id)


EXAMPLES = {
    "issue_comment": lambda: payloads.issue_comment(body="/preview"),
    "check_run": lambda: payloads.check_run("requested_action", identifier="deploy", app_id=4242, pr_number=1, head_ref="feature"),
    "pull_request": lambda: payloads.pull_request("opened"),
}


def _paths(node, prefix=()):
    """Every (path, value) inside a payload, down to the depth the bot reads."""
    if len(prefix) >= 4:
        return
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


@st.composite
def mutated_payloads(draw):
    """A real delivery with a few of its fields replaced by arbitrary JSON or removed."""
    event = draw(st.sampled_from(sorted(EXAMPLES)))
    payload = EXAMPLES[event]()
    payload["action"] = draw(st.sampled_from([payload["action"], "created", "opened", "synchronize", "closed", "requested_action", "rerequested"]))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(payload))
        path = draw(st.sampled_from(paths))
        parent = payload
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return event, payload


@given(mutated_payloads())
@hypothesis_settings(max_examples=400, derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
def test_needs_work_on_mutated_real_deliveries(delivery):
    event, payload = delivery
    _plan(event, copy.deepcopy(payload), "4242")


@pytest.fixture
def github_app(tmp_path, redis_url, private_key_pem):
    from bot.config import load_settings

    settings = load_settings(
        {
            "REDIS_URL": redis_url,
            "DATABASE_PATH": str(tmp_path / "gh.db"),
            "APP_ID": "4242",
            "PRIVATE_KEY": private_key_pem,
            "WEBHOOK_SECRET": "s",
            "GITHUB_API_URL": "http://127.0.0.1:9",  # the receiver must not call GitHub
        }
    )
    return create_app(settings, start_feed=False)


@given(delivery=mutated_payloads(), number=st.integers(0, 2**32))
@hypothesis_settings(
    max_examples=150, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_receiver_answers_signed_mutated_deliveries_with_2xx_or_400(github_app, redis_conn, delivery, number):
    """Signed (as if GitHub, or whoever holds the secret, sent them) and only half right: the
    receiver acknowledges, queues or refuses them, and never fails."""
    event, payload = delivery
    body = json.dumps(payload).encode()
    queued = redis_conn.llen(f"rq:queue:{QUEUE_NAME}")
    response = github_app.test_client().post(
        "/api/github/webhooks",
        data=body,
        headers={
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": f"fuzz-{number}-{len(body)}",
            "X-Hub-Signature-256": payloads.sign(body, "s"),
            "Content-Type": "application/json",
        },
    )
    assert response.status_code in (200, 202, 400), response.get_data(as_text=True)
    assert redis_conn.llen(f"rq:queue:{QUEUE_NAME}") == queued + (response.status_code == 202)


def _plan(event, payload, app_id):
    try:
        work = needs_work(event, payload, app_id=app_id)
    except InvalidPayload:
        return
    assert isinstance(work, bool)
    if work:
        json.dumps(payload)  # what is queued must serialize
        assert isinstance(payload["repository"]["full_name"], str) and isinstance(payload["installation"]["id"], int)


# -- every documented answer, reached on purpose and checked against the document ------------

SCHEMA_CHECKS = [*CHECKS, response_headers_conformance]
PR = "/api/repos/{owner}/{repo}/pull-requests/{prNumber}"
OCTO_APP_1 = {"owner": "octo", "repo": "app", "prNumber": 1}


def call(app, method, path, token=None, *, server_error_expected=False, **case_fields):
    """Send one request built from the document's operation and check the answer against it."""
    case = schema[path][method].Case(**case_fields)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = case.call(app=app, headers=headers)
    checks = [c for c in SCHEMA_CHECKS if not (server_error_expected and c is not_a_server_error)]
    case.validate_response(response, checks=checks, headers=headers)
    return response.status_code, json.loads(response.content)


def test_documented_answers_of_a_deployment_lifecycle(app, token):
    store = app.extensions["previewbot"].store
    status, deployed = call(app, "POST", PR + "/deploy", token, path_parameters=OCTO_APP_1, body={"branchName": "feat/x", "trigger": "dashboard"})
    assert status == 202 and deployed["trigger"] == "dashboard"
    status, conflict = call(app, "POST", PR + "/deploy", token, path_parameters=OCTO_APP_1, body={"branchName": "feat/x"})
    assert status == 409 and conflict["deploymentId"] == deployed["id"]

    # What the feed would record once a worker finished: events, log lines, a preview URL.
    deployment = Deployment.from_json(deployed)
    store.record_deployment(deployment, "1-0", "deploy requested")
    store.record_log("1-1", deployed["id"], "building", "2026-01-01T00:00:00.000Z")
    store.record_deployment(deployment.changed(status="deployed", preview_url="https://preview-1.app.example.com"), "1-2")
    assert call(app, "GET", PR + "/deployment", token, path_parameters=OCTO_APP_1)[1]["status"] == "deployed"
    status, history = call(app, "GET", PR + "/deployments", token, path_parameters=OCTO_APP_1)
    assert status == 200 and len(history["deployments"]) == 1
    status, detail = call(app, "GET", "/api/deployments/{deploymentId}", token, path_parameters={"deploymentId": deployed["id"]})
    assert status == 200 and [e["status"] for e in detail["events"]] == ["deploying", "deployed"] and detail["logs"][0]["line"] == "building"
    status, listing = call(app, "GET", "/api/pull-requests", token, query={"repository": "octo/app", "status": "deployed"})
    assert status == 200 and listing["pullRequests"][0]["deployment"]["id"] == deployed["id"]

    status, destroy = call(app, "DELETE", PR + "/deployment", token, path_parameters=OCTO_APP_1)
    assert status == 202 and destroy["destroy"] == "queued"  # the deploy job still holds the branch
    status, idle = call(app, "DELETE", PR + "/deployment", token, path_parameters={**OCTO_APP_1, "prNumber": 2})
    assert status == 404 and idle["status"] == "idle"
    assert call(app, "GET", PR + "/deployment", token, path_parameters={**OCTO_APP_1, "prNumber": 2})[0] == 404
    assert call(app, "GET", "/api/deployments/{deploymentId}", token, path_parameters={"deploymentId": "nope"})[0] == 404

    scoped = store.create_token("scoped", ["octo/other"])
    assert call(app, "GET", PR + "/deployment", scoped, path_parameters=OCTO_APP_1)[0] == 403
    assert call(app, "GET", "/api/deployments/{deploymentId}", scoped, path_parameters={"deploymentId": deployed["id"]})[0] == 404
    assert call(app, "GET", "/api/pull-requests", scoped)[1] == {"pullRequests": []}
    assert call(app, "GET", "/api/pull-requests", None)[0] == 401
    assert call(app, "GET", "/api/health")[0] == 200
    assert call(app, "GET", "/api/openapi.json")[0] == 200


def test_cors_preflight_of_every_documented_path_needs_no_token(app):
    # spectree leaves OPTIONS out of the document: preflights are answered before any route.
    for path in DOCUMENT["paths"]:
        response = app.test_client().options(path.format(**OCTO_APP_1, deploymentId="x"))
        assert response.status_code == 204, path
        assert response.headers["Access-Control-Allow-Origin"] == "*" and not response.data


def test_documented_413_and_429(settings):
    app = create_app(dataclasses.replace(settings, rate_limit_per_minute=1), start_feed=False)
    token = app.extensions["previewbot"].store.create_token("t")
    big = {"branchName": "main", "padding": "x" * (1024 * 1024)}
    assert call(app, "POST", PR + "/deploy", token, path_parameters=OCTO_APP_1, body=big)[0] == 413
    assert call(app, "POST", PR + "/deploy", token, path_parameters=OCTO_APP_1, body={"branchName": "a"})[0] == 202
    status, limited = call(app, "POST", PR + "/deploy", token, path_parameters={**OCTO_APP_1, "prNumber": 2}, body={"branchName": "b"})
    assert status == 429 and "Rate limit" in limited["error"]
    assert call(app, "DELETE", PR + "/deployment", token, path_parameters=OCTO_APP_1)[0] == 429


def test_documented_503_when_redis_is_down(tmp_path):
    """503 is the documented answer while Redis is down (the one 5xx the API gives on purpose)."""
    from bot.config import load_settings

    app = create_app(load_settings({"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_PATH": str(tmp_path / "d.db")}), start_feed=False)
    token = app.extensions["previewbot"].store.create_token("t")
    status, health = call(app, "GET", "/api/health", server_error_expected=True)
    assert status == 503 and health["status"] == "unavailable" and health["database"] == "ok"
    down = dict(server_error_expected=True, path_parameters=OCTO_APP_1)
    assert call(app, "POST", PR + "/deploy", token, body={"branchName": "main"}, **down)[1]["error"].startswith("The queue (Redis)")
    assert call(app, "DELETE", PR + "/deployment", token, **down)[0] == 503


@pytest.fixture(scope="module")
def private_key_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


def test_documented_422_and_502_with_the_github_app(tmp_path, redis_url, private_key_pem, monkeypatch):
    from bot.config import load_settings

    from .fakegithub import FakeGitHub

    # Installation tokens are cached per process; this test's fake GitHub knows none of them.
    monkeypatch.setattr("bot.github._tokens", None)

    with FakeGitHub(4242, private_key_pem) as fake:
        fake.add_installation(77, "octo")
        fake.add_repo("octo/app", 77)
        fake.add_pull("octo/app", 1, "feat/login", "1" * 40)
        settings = load_settings(
            {
                "REDIS_URL": redis_url,
                "DATABASE_PATH": str(tmp_path / "gh.db"),
                "APP_ID": "4242",
                "PRIVATE_KEY": private_key_pem,
                "WEBHOOK_SECRET": "s",
                "GITHUB_API_URL": fake.url,
            }
        )
        app = create_app(settings, start_feed=False)
        token = app.extensions["previewbot"].store.create_token("t")
        status, wrong = call(app, "POST", PR + "/deploy", token, path_parameters=OCTO_APP_1, body={"branchName": "main"})
        assert status == 422 and "head branch" in wrong["error"]
        assert call(app, "POST", PR + "/deploy", token, path_parameters={**OCTO_APP_1, "prNumber": 9}, body={"branchName": "x"})[0] == 422
        status, deployed = call(app, "POST", PR + "/deploy", token, path_parameters=OCTO_APP_1, body={"branchName": "feat/login"})
        assert status == 202 and deployed["headSha"] == "1" * 40 and deployed["installationId"] == 77
        # A refusal GitHub does not ask to retry (a 5xx is retried with backoff for seconds).
        fake.fail("GET", r"/repos/octo/app/pulls/2", 403)
        down = dict(server_error_expected=True, path_parameters={**OCTO_APP_1, "prNumber": 2})
        assert call(app, "POST", PR + "/deploy", token, body={"branchName": "x"}, **down)[0] == 502
        assert fake.violations == []
