"""Secrets masked and untrusted text inert, end to end (design §4.18): the real `previewbot web`
and `previewbot worker` processes, a real Redis and SQLite, the `command` provisioner running a
script that prints secrets and hostile text, and the fake GitHub recording every request."""

from __future__ import annotations

import json
import sys

import pytest

from bot import state

from . import webhooks
from .fakegithub import FakeGitHub
from .github_markdown import problems, shown
from .harness import wait_for

pytestmark = pytest.mark.slow

APP_ID = 4242
INSTALLATION = 77
REPO = "octo/app"
SHA = "1" * 40
HOOK_SECRET = "webhook-secret-for-the-security-test"
CLOUD_TOKEN = "cloud-token-3b9d0e71a4"
# A valid git branch name that mentions a team, references an issue and names a host.
BRANCH = "@org/team/fixes-#1/www.evil.test"
HOSTILE = "@org/team fixes #1 [x](https://evil.test) https://evil.test"
EVIL_URL = "https://evil.test/preview"


@pytest.fixture
def fake(private_key_pem):
    with FakeGitHub(APP_ID, private_key_pem) as github:
        github.add_installation(INSTALLATION, "octo")
        github.add_repo(REPO, INSTALLATION)
        github.add_pull(REPO, 1, BRANCH, SHA)
        github.set_permission(REPO, "alice", "write")
        yield github
        assert github.violations == [], github.violations


def leaky_script(tmp_path) -> str:
    """Fails once, printing the secrets and hostile text on both streams, then deploys to a URL
    outside the allowed hosts that carries the secret."""
    marker = tmp_path / "failed-once"
    script = tmp_path / "deploy.py"
    script.write_text(
        "import os, pathlib, sys\n"
        "token = os.environ['CLOUD_TOKEN']\n"
        f"print(f'logging in with {{token}} and {HOOK_SECRET}')\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        f"    sys.stderr.write({HOSTILE!r} + '\\n```\\n</pre>\\n')\n"
        f"    sys.stderr.write(f'denied: {{token}} / {HOOK_SECRET}\\n')\n"
        "    sys.exit(1)\n"
        f"print({EVIL_URL!r} + '?token=' + token)\n"
    )
    return f"{sys.executable} {script}"


def check_run(fake) -> dict:
    """The Preview check run ({} until there is one)."""
    with fake.lock:
        return dict(next(iter(fake.check_runs.values()), {}))


def bot_comment(fake) -> str:
    """The bot's comment ("" until there is one)."""
    with fake.lock:
        return next((c["body"] for c in fake.comments.get(REPO, {}).get(1, []) if "previewbot:status" in c["body"]), "")


def deployment_statuses(fake) -> list[dict]:
    with fake.lock:
        return [dict(s) for d in fake.deployments.values() for s in d["statuses"]]


def sent_to_github(fake) -> str:
    with fake.lock:
        return "\n".join(json.dumps(call.json) for call in fake.calls if call.json is not None)


def assert_masked(where: str, value: str) -> None:
    for secret in (CLOUD_TOKEN, HOOK_SECRET):
        assert secret not in value, f"{where} holds a secret: {value[:2000]}"


def test_secrets_are_masked_and_hostile_text_is_inert_everywhere(make_bot, fake, private_key_pem, tmp_path, redis_conn):
    bot = make_bot(
        {
            "APP_ID": str(APP_ID),
            "PRIVATE_KEY": private_key_pem,
            "WEBHOOK_SECRET": HOOK_SECRET,
            "GITHUB_API_URL": fake.url,
            "PREVIEW_PROVISIONER": "command",
            "PREVIEW_DEPLOY_COMMAND": leaky_script(tmp_path),
            "PREVIEW_COMMAND_ENV": "CLOUD_TOKEN",
            "CLOUD_TOKEN": CLOUD_TOKEN,
        }
    ).start()
    seeded = fake.add_comment(REPO, 1, "/preview", user="alice")
    webhooks.deliver(bot.url, "issue_comment", webhooks.issue_comment(REPO, 1, body="/preview", user="alice", comment_id=seeded["id"], installation_id=INSTALLATION), HOOK_SECRET)

    # The failed deploy: its error and log lines hold `***` where the secrets were.
    failed = bot.wait_status(REPO, 1, "failed")
    assert failed["error"].endswith("denied: *** / ***") and "@org/team fixes #1" in failed["error"]
    fake.wait_for(lambda: check_run(fake).get("conclusion") == "failure", message="the failed check run")
    fake.wait_for(lambda: "Failed" in bot_comment(fake) and [s for s in deployment_statuses(fake) if s["state"] == "failure"], message="the failure reported")
    with bot.client() as api:
        logged = wait_for(lambda: (lines := api.get(f"/api/deployments/{failed['id']}").json()["logs"]) and len(lines) == 5 and lines, message="the log lines recorded")
    assert {"logging in with *** and ***", "denied: *** / ***"} <= {line["line"] for line in logged}
    stored = list(bot.store.db["deployment_logs"].rows_where("deployment_id = ?", [failed["id"]]))
    assert len(stored) == 5
    streamed = [entry[b"line"].decode() for _id, entry in redis_conn.xrange(state.LOG_STREAM.format(failed["id"]))]
    assert_masked("the REST answer", json.dumps(failed) + json.dumps(logged))
    assert_masked("SQLite", json.dumps(stored) + json.dumps(bot.store.db["deployments"].get(failed["id"])))
    assert_masked("the Redis log stream", json.dumps(streamed))

    # On GitHub: the hostile branch and error mention, reference and link nothing.
    run = check_run(fake)
    assert problems(run["output"]["summary"]) == [] and problems(run["output"]["title"]) == []
    assert problems(bot_comment(fake)) == []
    [failure] = [s for s in deployment_statuses(fake) if s["state"] == "failure"]
    assert failure["description"].startswith("Failed: ") and "***" in failure["description"]

    # Retried: deployed to a URL outside the allowed hosts, which is shown but never linked.
    retry = webhooks.check_run("requested_action", REPO, SHA, run["id"], app_id=APP_ID, identifier="retry", pr_number=1, head_ref=BRANCH, installation_id=INSTALLATION)
    webhooks.deliver(bot.url, "check_run", retry, HOOK_SECRET)
    deployed = bot.wait_status(REPO, 1, "deployed")
    assert deployed["previewUrl"] == f"{EVIL_URL}?token=***"
    fake.wait_for(lambda: check_run(fake).get("conclusion") == "success" and "Deployed" in bot_comment(fake), message="the deployed report")
    run = check_run(fake)
    assert "evil.test" not in (run.get("details_url") or "")
    for markdown in (run["output"]["summary"], bot_comment(fake)):
        assert problems(markdown) == [], markdown
        assert f"{EVIL_URL}?token=***" in shown(markdown)

    # Nothing the bot sent GitHub, and nothing it logged, holds a secret.
    assert_masked("a request to GitHub", sent_to_github(fake))
    assert_masked("the processes' logs", bot.log_text())
