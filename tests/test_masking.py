"""Secrets masked everywhere (design §4.18): the masker itself, the settings it is built from
(which also feed the log filter), the command provisioner's lines and errors, the jobs that
publish them, and the rendering for GitHub as a safety net. Real processes, Redis and logging;
the one fake is a provisioner that leaks on purpose."""

from __future__ import annotations

import logging
import sys

import pytest

from bot import previews, state
from bot.config import load_settings
from bot.logs import RedactSecrets
from bot.masking import MASK, Masker
from bot.model import Deployment
from bot.render import check_run_fields, deployment_status_fields, render_status_comment
from worker import jobs
from worker.context import NullReporter, WorkerContext, set_context
from worker.provisioners import ProvisionError, ProvisionRequest, make_provisioner

CLOUD_TOKEN = "cloud-token-5f2a9c1e"
STAGING_TOKEN = "staging-token-77d0b3"
HOOK_SECRET = "hook-secret-0c4e8a2b"
# Shaped like the App's key (nothing here signs with it).
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1y2z3\nQWERTYUIOPasdfghjkl0\n-----END RSA PRIVATE KEY-----\n"


def settings_with_secrets(**env):
    return load_settings(
        {
            "APP_ID": "42",
            "PRIVATE_KEY": PRIVATE_KEY,
            "WEBHOOK_SECRET": HOOK_SECRET,
            "PREVIEW_COMMAND_ENV": "CLOUD_TOKEN,REGION",
            "CLOUD_TOKEN": CLOUD_TOKEN,
            "REGION": "eu-1",  # under 8 characters: an ordinary word, not masked
            "PREVIEW_ENVIRONMENTS": "preview,staging",
            "PREVIEW_ENV_STAGING_COMMAND_ENV": "STAGING_TOKEN",
            "STAGING_TOKEN": STAGING_TOKEN,
            **env,
        }
    )


def test_the_masker_masks_secrets_of_eight_characters_or_more_and_tokens():
    key = PRIVATE_KEY
    mask = Masker([CLOUD_TOKEN, "short", CLOUD_TOKEN + "-long", key])
    assert mask(f"a {CLOUD_TOKEN} b {CLOUD_TOKEN}-long c short") == f"a {MASK} b {MASK} c short"
    # A PEM key printed line by line is masked a line at a time; whole, it is masked whole.
    assert mask("QWERTYUIOPasdfghjkl0") == MASK
    assert mask(f"key: {key}") == f"key: {MASK}"
    # Tokens no setting names, e.g. an installation token a command was given.
    assert mask("git clone https://x-access-token:ghs_abcdefghijklmnopqrstuvwx@github.com/o/r") == f"git clone https://x-access-token:{MASK}@github.com/o/r"
    assert Masker()("nothing secret") == "nothing secret"


def test_settings_name_every_environments_command_values_as_secrets_for_the_log_filter():
    settings = settings_with_secrets()
    assert set(settings.secrets()) == {PRIVATE_KEY.strip(), HOOK_SECRET, CLOUD_TOKEN, STAGING_TOKEN}
    assert "eu-1" not in settings.secrets()
    record = logging.LogRecord("previewbot", logging.ERROR, __file__, 1, "deploy failed: %s / %s", (CLOUD_TOKEN, STAGING_TOKEN), None)
    RedactSecrets(settings.secrets()).filter(record)
    assert CLOUD_TOKEN not in record.getMessage() and STAGING_TOKEN not in record.getMessage()


def test_the_command_provisioner_masks_its_lines_its_url_and_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUD_TOKEN", CLOUD_TOKEN)
    script = tmp_path / "deploy.py"
    # The error is the end of stderr, cut to 1,000 characters: here the cut falls inside the
    # secret, which must have been masked before.
    script.write_text(
        "import os, sys\n"
        "token = os.environ['CLOUD_TOKEN']\n"
        "print(f'logging in with {token}')\n"
        f"print('hook secret: {HOOK_SECRET}')\n"
        "print(f'https://app.example.com/?t={token}')\n"
        "sys.stderr.write(token + 'x' * (1000 - len(token) // 2) + '\\n')\n"
        "sys.stderr.write(f'denied: {token}\\n')\n"
        "sys.exit(3)\n"
    )
    settings = settings_with_secrets(PREVIEW_PROVISIONER="command", PREVIEW_DEPLOY_COMMAND=f"{sys.executable} {script}")
    lines: list[str] = []
    request = ProvisionRequest(repository="octo/app", pr_number=1, branch="feat/x", sha=None, deployment_id="d1", log=lines.append)
    with pytest.raises(ProvisionError) as failed:
        make_provisioner(settings).deploy(request)
    error = str(failed.value)
    assert error.endswith(f"denied: {MASK}")
    output = "\n".join(lines) + error
    assert f"logging in with {MASK}" in lines and f"hook secret: {MASK}" in lines and f"https://app.example.com/?t={MASK}" in lines
    for secret in (CLOUD_TOKEN, HOOK_SECRET):
        assert secret not in output and secret[len(secret) // 2:] not in output


class LeakyProvisioner:
    """A provisioner that prints and fails with a secret, as a careless one would."""

    name = "leaky"

    def deploy(self, request: ProvisionRequest) -> str:
        request.log(f"token={CLOUD_TOKEN}")
        raise ProvisionError(f"the cloud refused {CLOUD_TOKEN}")

    def destroy(self, request: ProvisionRequest) -> None:
        request.log(f"destroying with {STAGING_TOKEN}")


def test_the_deploy_job_masks_any_provisioners_log_lines_and_error(tmp_path, redis_url, redis_conn):
    settings = settings_with_secrets(REDIS_URL=redis_url, DATABASE_PATH=str(tmp_path / "p.db"))
    set_context(WorkerContext(settings, redis_conn, NullReporter(), provisioners={"preview": LeakyProvisioner()}))
    try:
        deployment = Deployment.new(repository="octo/app", pr_number=3, branch_name="feat/leak")
        assert previews.request_deploy(redis_conn, settings, deployment).started
        result = jobs.deploy_preview(deployment=deployment.to_json(), lock_id=deployment.id)
    finally:
        set_context(None)
    assert result["status"] == "failed" and result["error"] == f"the cloud refused {MASK}"
    assert state.record(redis_conn, deployment.id).error == f"the cloud refused {MASK}"
    logged = [entry[b"line"].decode() for _id, entry in redis_conn.xrange(state.LOG_STREAM.format(deployment.id))]
    assert logged == [f"token={MASK}"]


def test_rendering_for_github_masks_what_reached_it_unmasked():
    settings = settings_with_secrets()
    deployment = Deployment.new(repository="octo/app", pr_number=1, branch_name=f"feat/{CLOUD_TOKEN}", head_sha="1" * 40)
    failed = deployment.changed(status="failed", error=f"login with {CLOUD_TOKEN} failed", teardown_error=f"no {STAGING_TOKEN}")
    deployed = deployment.changed(status="deployed", preview_url=f"https://p.example.com/?hook={HOOK_SECRET}")
    written = [
        render_status_comment({"preview": failed}, settings=settings, note=f"asked with {HOOK_SECRET}"),
        render_status_comment({"preview": deployed}, settings=settings),
        str(check_run_fields(failed, settings=settings)),
        str(check_run_fields(deployed, settings=settings)),
        str(deployment_status_fields(failed, "failure", settings=settings)),
        str(deployment_status_fields(deployed, "success", settings=settings)),
    ]
    for body in written:
        for secret in (CLOUD_TOKEN, STAGING_TOKEN, HOOK_SECRET):
            assert secret not in body, body
    assert f"login with {MASK} failed" in written[0]
