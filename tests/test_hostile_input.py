"""Hostile input through the real Flask app as a GitHub App (real Redis and SQLite): oversize,
deeply nested, mistyped, unsigned or empty webhook deliveries, huge comments, branch names full
of shell and HTML metacharacters. Each is refused with a 4xx or acknowledged with a 2xx, never
a 5xx; nothing hostile is queued, and names that reach GitHub are shown, never interpreted."""

from __future__ import annotations

import html
import json
import re
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rq.job import Job
from rq.serializers import JSONSerializer

from bot import acks
from bot.app import create_app
from bot.commands import parse_command
from bot.config import load_settings
from bot.model import Deployment
from bot.queue import QUEUE_NAME
from bot.render import check_run_fields, render_status_comment
from bot.webhooks import MAX_JSON_DEPTH, MAX_WEBHOOK_BYTES

from . import webhooks
from .fakegithub import FakeGitHub

SECRET = "s"
APP_ID = 4242
QUEUE = f"rq:queue:{QUEUE_NAME}"


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


def github_settings(tmp_path, redis_url, private_key_pem, api_url="http://127.0.0.1:9"):
    return load_settings(
        {
            "REDIS_URL": redis_url,
            "DATABASE_PATH": str(tmp_path / "previewbot.db"),
            "PREVIEW_SIMULATED_SECONDS": "0",
            "APP_ID": str(APP_ID),
            "PRIVATE_KEY": private_key_pem,
            "WEBHOOK_SECRET": SECRET,
            "GITHUB_API_URL": api_url,  # nothing listens there: the receiver must not call GitHub
        }
    )


@pytest.fixture
def app(tmp_path, redis_url, private_key_pem):
    app = create_app(github_settings(tmp_path, redis_url, private_key_pem), start_feed=False)
    assert app.extensions["previewbot"].settings.github_enabled
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def deliveries(app) -> int:
    """Deliveries the receiver accepted (it remembers their ids in Redis)."""
    return len(app.extensions["previewbot"].redis.keys("previewbot:delivery:*"))


def queued_job(conn, delivery_id: str) -> Job:
    """The RQ job the receiver queued for one delivery."""
    return Job.fetch(f"webhook-{delivery_id}", connection=conn, serializer=JSONSerializer)


def queued(conn) -> int:
    """Work waiting: RQ jobs."""
    return conn.llen(QUEUE)


@pytest.fixture
def untouched(app, redis_conn):
    """Asserts after the test that nothing was queued and no deployment started."""
    yield
    assert queued(redis_conn) == 0
    assert not redis_conn.keys("rq:job:*")
    assert not redis_conn.keys("previewbot:lock:*")
    assert app.extensions["previewbot"].store.db["deployments"].count == 0


def post(client, body: bytes, *, event: str | None = "issue_comment", delivery: str | None = "auto",
         content_type: str | None = "application/json", signature: str | None = "auto", headers: dict | None = None):
    sent = {}
    if event is not None:
        sent["X-GitHub-Event"] = event
    if delivery is not None:
        sent["X-GitHub-Delivery"] = str(uuid.uuid4()) if delivery == "auto" else delivery
    if signature is not None:
        sent["X-Hub-Signature-256"] = webhooks.sign(body, SECRET) if signature == "auto" else signature
    if content_type is not None:
        sent["Content-Type"] = content_type
    sent.update(headers or {})
    return client.post("/api/github/webhooks", data=body, headers=sent)


def refused(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    answer = response.get_json()
    assert isinstance(answer, dict) and answer["error"], answer
    return answer


# -- webhook deliveries ------------------------------------------------------------------------

# Real deliveries (GitHub's examples) the bot acts on: a command, a button, an opened pull request.
BUILDERS = {
    "issue_comment": lambda: webhooks.issue_comment(body="/preview"),
    "check_run": lambda: webhooks.check_run("requested_action", identifier="deploy", app_id=APP_ID, pr_number=1, head_ref="f"),
    "pull_request": lambda: webhooks.pull_request("opened"),
}


@pytest.mark.usefixtures("untouched")
def test_a_body_over_the_size_limit_is_413(client, app):
    payload = webhooks.issue_comment(body="/preview")
    payload["padding"] = ""
    body = json.dumps(payload).encode()
    body = body[:-2] + b"x" * (MAX_WEBHOOK_BYTES + 1 - len(body)) + body[-2:]
    assert len(body) == MAX_WEBHOOK_BYTES + 1
    refused(post(client, body), 413)
    refused(post(client, b"x" * (MAX_WEBHOOK_BYTES * 3)), 413)
    assert deliveries(app) == 0


def test_a_body_exactly_at_the_size_limit_is_accepted(client, app, redis_conn):
    payload = webhooks.issue_comment(body="no command here")
    payload["padding"] = ""
    body = json.dumps(payload).encode()
    body = body[:-2] + b"x" * (MAX_WEBHOOK_BYTES - len(body)) + body[-2:]
    assert len(body) == MAX_WEBHOOK_BYTES
    response = post(client, body)
    assert response.status_code == 200 and response.get_json() == {"status": "acknowledged"}
    assert queued(redis_conn) == 0


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        ('{"action":"created","issue":' + '{"x":' * 10_000 + "1" + "}" * 10_001).encode(),
        b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
    ],
    ids=["arrays", "objects", "inside-a-payload", "just-over-the-limit"],
)
def test_deeply_nested_json_is_400(client, app, body):
    assert "nested" in refused(post(client, body), 400)["error"]
    assert deliveries(app) == 0


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("content_type", ["text/plain", None, "", "application/xml", "multipart/form-data; boundary=x", "application/jsonx"])
def test_wrong_content_types_are_400(client, app, content_type):
    body = json.dumps(webhooks.issue_comment(body="/preview")).encode()
    response = post(client, body, content_type=content_type)
    assert "Content-Type" in refused(response, 400)["error"]
    assert deliveries(app) == 0


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    "body",
    [b"payload=", b"other=1", b"payload=%7Bnot+json", b"payload=%5B1%2C2%5D"],
    ids=["empty-payload", "no-payload-field", "not-json", "an-array"],
)
def test_bad_form_encoded_deliveries_are_400(client, app, body):
    refused(post(client, body, content_type="application/x-www-form-urlencoded"), 400)
    assert deliveries(app) == 0


# Each handled event with a valid signature but without the fields the bot relies on. The
# actions are the ones the bot acts on, so the payload cannot be ignored as uninteresting.
EMPTY_PAYLOADS = [
    (event, payload)
    for event, actions in {
        "issue_comment": ["created", "edited"],
        "check_run": ["requested_action", "rerequested", "created"],
        "pull_request": ["opened", "reopened", "synchronize", "closed", "labeled"],
    }.items()
    for payload in [{}, *({"action": a} for a in actions)]
]


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("event, payload", EMPTY_PAYLOADS, ids=[f"{e}-{p.get('action', 'empty')}" for e, p in EMPTY_PAYLOADS])
def test_signed_payloads_missing_every_field_are_400(client, app, event, payload):
    body = json.dumps(payload).encode()
    assert "payload field" in refused(post(client, body, event=event), 400)["error"]
    assert deliveries(app) == 0


def _hollowed(event: str) -> list[tuple[str, dict]]:
    """A real delivery the bot acts on, with one required part removed or of the wrong type."""
    required = {
        "issue_comment": [("repository",), ("installation",), ("sender",), ("issue", "number"), ("comment", "id"), ("comment", "user"), ("comment", "user", "login"), ("repository", "full_name"), ("installation", "id")],
        "check_run": [("check_run",), ("check_run", "id"), ("repository",), ("installation", "id"), ("sender", "login")],
        "pull_request": [("pull_request",), ("pull_request", "head"), ("pull_request", "head", "ref"), ("pull_request", "head", "sha"), ("pull_request", "number"), ("repository", "full_name")],
    }
    cases = []
    for path in required[event]:
        for replacement in (None, "x", 1.5, [], True, {}):
            payload = BUILDERS[event]()
            parent = payload
            for key in path[:-1]:
                parent = parent[key]
            if type(replacement) is type(parent[path[-1]]):
                continue  # the right type: not a hollowed payload
            if replacement is None:
                del parent[path[-1]]
            else:
                parent[path[-1]] = replacement
            cases.append((".".join(path) + f"={replacement!r}", payload))
    return cases


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("event", ["issue_comment", "check_run", "pull_request"])
def test_signed_real_payloads_with_a_required_part_missing_are_400(client, app, event):
    for label, payload in _hollowed(event):
        response = post(client, json.dumps(payload).encode(), event=event)
        assert response.status_code == 400, (label, response.get_data(as_text=True))
    assert deliveries(app) == 0


ODD_VALUES = {
    "pull-number-over-64-bits": ("pull_request", ("pull_request", "number"), 2**63),
    "installation-id-over-64-bits": ("pull_request", ("installation", "id"), 10**30),
    "comment-id-over-64-bits": ("issue_comment", ("comment", "id"), -(2**63) - 1),
    "check-run-id-over-64-bits": ("check_run", ("check_run", "id"), 2**64),
    "action-object": ("pull_request", ("action",), {"opened": True}),
    "action-list": ("issue_comment", ("action",), ["created"]),
}


def _with(event: str, path: tuple, value) -> bytes:
    payload = BUILDERS[event]()
    parent = payload
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return json.dumps(payload).encode()


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("event, path, value", list(ODD_VALUES.values()), ids=list(ODD_VALUES))
def test_signed_payloads_with_odd_values_are_400_not_5xx(client, app, event, path, value):
    """Integers SQLite cannot store and actions that are not strings used to end in a 500 or a
    503 (after recording the delivery, so GitHub's redelivery was then ignored)."""
    refused(post(client, _with(event, path, value), event=event), 400)
    assert deliveries(app) == 0


@pytest.mark.usefixtures("untouched")
def test_a_check_run_whose_app_is_not_an_object_is_ignored(client, app):
    response = post(client, _with("check_run", ("check_run", "app"), [APP_ID]), event="check_run")
    assert response.status_code == 200 and response.get_json() == {"status": "acknowledged"}


def test_a_pull_request_whose_user_is_not_an_object_is_refused(client, app, redis_conn):
    # Handlers get the payload as GitHub sent it, so the receiver refuses what they could not read.
    response = post(client, _with("pull_request", ("pull_request", "user"), "alice"), event="pull_request", delivery="odd-user")
    assert response.status_code == 400 and "user" in response.get_json()["error"]
    assert queued(redis_conn) == 0


@pytest.mark.usefixtures("untouched")
def test_installation_events_with_odd_ids_are_acknowledged_not_5xx(client, app):
    payload = {"action": "created", "installation": {"id": 2**70, "account": {"login": "octo"}}, "repositories": [{"full_name": "octo/app"}]}
    response = post(client, json.dumps(payload).encode(), event="installation")
    assert response.status_code == 200 and response.get_json() == {"status": "acknowledged"}
    assert app.extensions["previewbot"].store.db["installations"].count == 0


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("body", [b"[]", b"[{}]", b'"issue_comment"', b"42", b"-1.5e300", b"null", b"true", b"", b"{", b"\xff\xfe"])
@pytest.mark.parametrize("event", ["issue_comment", "check_run", "pull_request", "ping"])
def test_non_object_payloads_are_400(client, app, event, body):
    refused(post(client, body, event=event), 400)
    assert deliveries(app) == 0


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize(
    "missing",
    [{"event": None}, {"delivery": None}, {"event": None, "delivery": None}, {"event": ""}, {"delivery": ""}, {"delivery": "d" * 101}],
    ids=["no-event", "no-delivery", "neither", "empty-event", "empty-delivery", "delivery-too-long"],
)
def test_missing_event_or_delivery_headers_are_400(client, app, missing):
    body = json.dumps(webhooks.issue_comment(body="/preview")).encode()
    assert "X-GitHub-Event" in refused(post(client, body, **missing), 400)["error"]
    assert deliveries(app) == 0


def _signatures(body: bytes) -> dict:
    right = webhooks.sign(body, SECRET)
    import hashlib
    import hmac

    return {
        "none": None,
        "empty": "",
        "prefix-only": "sha256=",
        "other-secret": webhooks.sign(body, "not-the-secret"),
        "other-body": webhooks.sign(body + b" ", SECRET),
        "truncated": right[:-1],
        "uppercase-hex": "sha256=" + right.removeprefix("sha256=").upper(),
        "sha1-only": "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest(),
        "no-prefix": right.removeprefix("sha256="),
        "garbage": "sha256=" + "z" * 64,
        "non-ascii": "sha256=" + "é" * 64,
        "doubled": right + right,
    }


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("kind", list(_signatures(b"")))
def test_unsigned_or_wrongly_signed_bodies_are_401_and_not_recorded(client, app, kind):
    body = json.dumps(webhooks.issue_comment(body="/preview")).encode()
    signature = _signatures(body)[kind]
    response = post(client, body, signature=signature)
    assert "X-Hub-Signature-256" in refused(response, 401)["error"]
    assert deliveries(app) == 0


@pytest.mark.usefixtures("untouched")
def test_a_signature_is_checked_before_anything_else(client, app):
    """An unsigned delivery gets 401 even when it is also oversize-adjacent, nested or headerless."""
    for body in (b"[" * 10_000, b"[]", b"{}"):
        refused(post(client, body, signature=None, event=None, delivery=None, content_type="text/plain"), 401)
    assert deliveries(app) == 0


# -- huge comments ---------------------------------------------------------------------------


def test_a_65536_character_comment_that_never_says_preview_is_acknowledged(client, app, redis_conn):
    body = ("lorem ipsum `/deploy` > /review " * 3000)[:65536]
    assert len(body) == 65536
    response = post(client, json.dumps(webhooks.issue_comment(body=body)).encode())
    assert response.status_code == 200 and response.get_json() == {"status": "acknowledged"}
    assert queued(redis_conn) == 0
    assert deliveries(app) == 1


def test_a_comment_that_mentions_preview_is_left_to_the_handler_to_parse(client, app, redis_conn):
    # The receiver only looks for the word; the handler parses the command, once (and finds
    # none here: quotes and inline code do not count).
    body = ("lorem ipsum `/preview` > /preview " * 3000)[:65536]
    response = post(client, json.dumps(webhooks.issue_comment(body=body)).encode(), delivery="mention")
    assert response.status_code == 202
    assert queued_job(redis_conn, "mention").kwargs["payload"]["comment"]["body"] == body
    assert parse_command(body) is None


def test_a_65536_character_comment_with_a_command_is_queued_once(client, app, redis_conn):
    body = ("/preview\n" + "x" * 65536)[:65536]
    assert len(body) == 65536
    response = post(client, json.dumps(webhooks.issue_comment(body=body)).encode(), delivery="big-comment")
    assert response.status_code == 202 and response.get_json() == {"status": "queued"}
    assert queued(redis_conn) == 1
    job = queued_job(redis_conn, "big-comment")
    assert job.kwargs["payload"]["comment"]["body"] == body
    # No deployment starts in the web process: the worker decides, after checking permissions.
    assert app.extensions["previewbot"].store.db["deployments"].count == 0
    assert not redis_conn.keys("previewbot:lock:*")


def test_strangers_comments_wait_in_line_and_a_members_command_is_acknowledged_apart(client, app, redis_conn):
    pushed = webhooks.pull_request("synchronize")
    assert post(client, json.dumps(pushed).encode(), event="pull_request", delivery="push").status_code == 202
    for n in range(3):
        stranger = webhooks.issue_comment(body="/preview status", user=f"drive-by-{n}", author_association="NONE")
        assert post(client, json.dumps(stranger).encode(), delivery=f"stranger-{n}").status_code == 202
    member = webhooks.issue_comment(body="/preview", user="mona", author_association="COLLABORATOR")
    assert post(client, json.dumps(member).encode(), delivery="member").status_code == 202
    order = [raw.decode() for raw in redis_conn.lrange(QUEUE, 0, -1)]
    assert order == ["webhook-push", "webhook-stranger-0", "webhook-stranger-1", "webhook-stranger-2", "webhook-member"]
    [waiting] = acks.claim(redis_conn, now_ms=0, limit=10)
    assert (waiting.repository, waiting.installation_id, waiting.comment_id) == ("octo/app", member["installation"]["id"], member["comment"]["id"])
    # The same delivery again is a duplicate: no second acknowledgement.
    assert post(client, json.dumps(member).encode(), delivery="member").status_code == 200
    assert acks.claim(redis_conn, now_ms=0, limit=10) == []


@pytest.mark.parametrize("body", ["I will run /preview later", "```\n/preview\n```", "> /preview"])
def test_a_members_comment_without_a_command_gets_no_acknowledgement(client, app, redis_conn, body):
    member = webhooks.issue_comment(body=body, user="mona", author_association="OWNER")
    assert post(client, json.dumps(member).encode(), delivery="no-command").status_code == 202
    assert [raw.decode() for raw in redis_conn.lrange(QUEUE, 0, -1)] == ["webhook-no-command"]
    assert acks.claim(redis_conn, now_ms=0, limit=10) == []


def test_a_longer_comment_reaches_the_job_as_github_sent_it(client, app, redis_conn):
    body = "/preview\n" + "y" * 200_000
    response = post(client, json.dumps(webhooks.issue_comment(body=body)).encode(), delivery="huge-comment")
    assert response.status_code == 202
    job = queued_job(redis_conn, "huge-comment")
    assert job.kwargs["payload"]["comment"]["body"] == body  # the command parser reads the first 65,536


# -- branch names through the REST deploy ----------------------------------------------------

VALID_BRANCHES = {
    "command-substitution": "feat/$(reboot)",
    "semicolon": "fix;rm${IFS}-rf${IFS}$HOME",
    "backticks": "`reboot`",
    "pipes-and-redirects": "a|b&c>d<e'f\"g",
    "unicode": "fonctionnalité/日本語-🚀",
    "html": "<img/src=x/onerror=alert(1)>",
    "255-characters": "b" * 255,
    "255-unicode-characters": "é" * 255,
}
INVALID_BRANCHES = {
    "semicolon-with-spaces": ";rm -rf /",
    "newline": "feature\nrm -rf /",
    "carriage-return": "feature\r",
    "tab": "a\tb",
    "nul": "a\x00b",
    "256-characters": "b" * 256,
    "markdown-link": "[x](javascript:alert(1))",
    "dot-dot": "a/../b",
    "leading-dash": "-rf",
    "empty": "",
}


@pytest.fixture(params=["local", "github"])
def deploy_app(request, tmp_path, redis_url, private_key_pem, monkeypatch):
    """An app in local mode, and one as a GitHub App whose pull requests live on a fake GitHub;
    `open_pull(number, branch)` makes the pull request exist with that head branch."""
    if request.param == "local":
        settings = load_settings({"REDIS_URL": redis_url, "DATABASE_PATH": str(tmp_path / "local.db"), "PREVIEW_API_RATE_LIMIT": "1000"})
        app = create_app(settings, start_feed=False)
        app.open_pull = lambda number, branch: None
        yield app
        return
    # Installation tokens are cached per process; this test's fake GitHub knows none of them.
    monkeypatch.setattr("bot.github._tokens", None)
    with FakeGitHub(APP_ID, private_key_pem) as fake:
        fake.add_installation(77, "octo")
        fake.add_repo("octo/app", 77)
        settings = github_settings(tmp_path, redis_url, private_key_pem, api_url=fake.url)
        app = create_app(settings, start_feed=False)
        app.open_pull = lambda number, branch: fake.add_pull("octo/app", number, branch, "1" * 40)
        yield app
        assert fake.violations == []


def _deploy(app, token, number, branch):
    return app.test_client().post(
        f"/api/repos/octo/app/pull-requests/{number}/deploy", json={"branchName": branch}, headers={"Authorization": f"Bearer {token}"}
    )


@pytest.mark.parametrize("branch", list(VALID_BRANCHES.values()), ids=list(VALID_BRANCHES))
def test_valid_git_branch_names_with_metacharacters_are_deployed_verbatim(deploy_app, redis_conn, branch):
    token = deploy_app.extensions["previewbot"].store.create_token("t")
    deploy_app.open_pull(7, branch)
    response = _deploy(deploy_app, token, 7, branch)
    assert response.status_code == 202, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["branchName"] == branch
    # Queued as data (JSON), exactly as sent; no worker runs here, so nothing is executed.
    assert queued(redis_conn) == 1
    job = Job.fetch(f"deploy-{answer['id']}", connection=redis_conn, serializer=JSONSerializer)
    assert job.kwargs["deployment"]["branchName"] == branch
    token_headers = {"Authorization": f"Bearer {token}"}
    shown = deploy_app.test_client().get("/api/repos/octo/app/pull-requests/7/deployment", headers=token_headers).get_json()
    assert shown["branchName"] == branch


@pytest.mark.parametrize("branch", list(INVALID_BRANCHES.values()), ids=list(INVALID_BRANCHES))
def test_invalid_git_branch_names_are_400_before_anything_happens(deploy_app, redis_conn, branch):
    token = deploy_app.extensions["previewbot"].store.create_token("t")
    deploy_app.open_pull(7, branch)
    response = _deploy(deploy_app, token, 7, branch)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "branchName" in response.get_json()["error"]
    assert queued(redis_conn) == 0 and not redis_conn.keys("previewbot:lock:*")
    assert deploy_app.extensions["previewbot"].store.db["deployments"].count == 0


# -- HTML and Markdown in what the bot writes on GitHub --------------------------------------

INJECTIONS = ["<img/src=x/onerror=alert(1)>", "[x](javascript:alert(1))", "![x](https://evil.example/p.png)", "<script>alert(1)</script>", "a|b`c`*d*_e_"]
# An unescaped Markdown link or image: `[text](` not preceded by a backslash.
LIVE_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\((?!https?://[^/\s]+/deployments/[0-9a-f]{32}/logs\))")  # not our own log page


def _deployment(status: str, branch: str) -> Deployment:
    return Deployment(
        id="d" * 32,
        repository="octo/app",
        pr_number=1,
        branch_name=branch,
        head_sha="1" * 40,
        status="destroyed" if status == "idle" else status,
        preview_url="https://preview-1.app.example.com" if status == "deployed" else None,
        error=f"could not build {branch}" if status == "failed" else None,
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:00.000Z",
        destroyed_at="2026-01-01T00:00:00.000Z" if status == "idle" else None,
    )


def _shown(rendered: str) -> str:
    """What a reader sees of rendered text: entities decoded, Markdown escapes dropped."""
    return html.unescape(re.sub(r"\\(.)", r"\1", rendered))


@pytest.mark.parametrize("branch", INJECTIONS)
@pytest.mark.parametrize("status", ["deploying", "deployed", "failed", "idle"])
def test_branch_names_are_shown_not_interpreted_in_comments_and_check_runs(branch, status):
    deployment = _deployment(status, branch)
    comment = render_status_comment({"preview": deployment}, note=None)
    fields = check_run_fields(deployment)
    outputs = {"comment": comment, "check summary": fields["output"]["summary"], "check title": fields["output"]["title"]}
    for where, rendered in outputs.items():
        assert "<img" not in rendered and "<script" not in rendered, where
        assert not LIVE_LINK.search(rendered), (where, rendered)
    # The reader still sees the name, character for character (the idle check run names no branch).
    assert branch in _shown(comment)
    if status != "idle":
        assert branch in _shown(fields["output"]["summary"])
    if status == "failed":
        assert f"could not build {branch}" in _shown(comment)


@pytest.mark.parametrize("branch", INJECTIONS)
def test_rendered_markdown_has_no_image_script_or_javascript_link(branch):
    """The same, through a CommonMark renderer with raw HTML on, as GitHub renders comments
    (GitHub sanitizes besides; the bot must not rely on it)."""
    markdown_it = pytest.importorskip("markdown_it")
    md = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")
    for status in ("deploying", "deployed", "failed"):
        deployment = _deployment(status, branch)
        for source in (render_status_comment({"preview": deployment}), check_run_fields(deployment)["output"]["summary"]):
            rendered = md.render(source)
            assert "<img" not in rendered and "<script" not in rendered, rendered
            assert 'href="javascript:' not in rendered.lower(), rendered
            assert branch in html.unescape(re.sub(r"<[^>]+>", "", rendered))


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", " "])
def test_a_malformed_content_length_is_400(client, untouched, length):
    body = json.dumps(webhooks.issue_comment("octo/app", 1, body="/preview")).encode()
    headers = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "d", "X-Hub-Signature-256": webhooks.sign(body, SECRET)}
    response = client.post("/api/github/webhooks", data=body, headers=headers, content_type="application/json",
                           environ_overrides={"CONTENT_LENGTH": length})
    assert refused(response, 400)["error"].startswith("Content-Length")


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def test_only_post_reaches_the_receiver(client, untouched, method):
    response = client.open("/api/github/webhooks", method=method)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    if method != "HEAD":
        assert response.get_json()["error"]
