"""Settings are read once and a bad value names its variable."""

import pytest

from bot.config import ConfigError, load_settings


def test_defaults_are_local_mode():
    settings = load_settings({})
    assert not settings.github_enabled
    assert (settings.host, settings.port, settings.webhook_path) == ("127.0.0.1", 3001, "/api/github/webhooks")
    assert settings.simulated_seconds == (5.0, 10.0)
    assert settings.redis_url is None and settings.database_path == "previewbot.db"


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"PREVIEW_SIMULATED_SECONDS": "ten"}, "PREVIEW_SIMULATED_SECONDS"),
        ({"PREVIEW_SIMULATED_SECONDS": "10-5"}, "PREVIEW_SIMULATED_SECONDS"),
        ({"PREVIEW_PROVISIONER": "docker"}, "PREVIEW_PROVISIONER"),
        ({"PREVIEW_PROVISIONER": "command"}, "PREVIEW_DEPLOY_COMMAND"),
        ({"PREVIEW_DEPLOY_COMMAND": "echo 'unterminated"}, "PREVIEW_DEPLOY_COMMAND"),
        ({"PREVIEW_LEASE_SECONDS": "0"}, "PREVIEW_LEASE_SECONDS"),
        ({"PREVIEW_LEASE_SECONDS": "59"}, "PREVIEW_LEASE_SECONDS"),  # under twice the 30 s grace
        ({"PREVIEW_LEASE_SECONDS": "10", "PREVIEW_CANCEL_GRACE_SECONDS": "6"}, "PREVIEW_CANCEL_GRACE_SECONDS"),
        ({"PREVIEW_CANCEL_GRACE_SECONDS": "0"}, "PREVIEW_CANCEL_GRACE_SECONDS"),
        ({"PREVIEW_ENVIRONMENTS": "preview,Staging"}, "PREVIEW_ENVIRONMENTS"),
        ({"PREVIEW_ENVIRONMENTS": "preview,cancel"}, "PREVIEW_ENVIRONMENTS"),
        ({"PREVIEW_ENVIRONMENTS": "a-very-long-environment-name"}, "PREVIEW_ENVIRONMENTS"),
        ({"PREVIEW_ENVIRONMENTS": " , "}, "PREVIEW_ENVIRONMENTS"),
        ({"PREVIEW_ENVIRONMENTS": "preview,staging", "PREVIEW_ENV_STAGING_PROVISIONER": "docker"}, "PREVIEW_ENV_STAGING_PROVISIONER"),
        ({"PREVIEW_ENVIRONMENTS": "preview,qa-2", "PREVIEW_ENV_QA_2_COMMAND_TIMEOUT": "soon"}, "PREVIEW_ENV_QA_2_COMMAND_TIMEOUT"),
        ({"PREVIEW_RECONCILE_SECONDS": "-1"}, "PREVIEW_RECONCILE_SECONDS"),
        ({"PREVIEW_COMMAND_TIMEOUT": "nan"}, "PREVIEW_COMMAND_TIMEOUT"),
        ({"PREVIEW_URL_TEMPLATE": "https://{nope}.example.com"}, "PREVIEW_URL_TEMPLATE"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"GITHUB_API_URL": "ftp://github"}, "GITHUB_API_URL"),
        ({"WEBHOOK_PATH": "hooks"}, "WEBHOOK_PATH"),
        ({"APP_ID": "abc"}, "APP_ID"),
        ({"APP_ID": "12"}, "PRIVATE_KEY"),
        ({"APP_ID": "12", "PRIVATE_KEY": "not a key", "WEBHOOK_SECRET": "s"}, "PRIVATE_KEY"),
        ({"PRIVATE_KEY_PATH": "/nonexistent/key.pem"}, "PRIVATE_KEY_PATH"),
        ({"PREVIEW_AUTO_DEPLOY": "maybe"}, "PREVIEW_AUTO_DEPLOY"),
        ({"PREVIEW_COMMAND_ENV": "OK,1BAD"}, "PREVIEW_COMMAND_ENV"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(variable) or variable in str(info.value)
    assert "\n" not in str(info.value)


def test_secret_values_are_not_echoed():
    with pytest.raises(ConfigError) as info:
        load_settings({"APP_ID": "12", "PRIVATE_KEY": "not a key but a secret", "WEBHOOK_SECRET": "s3cr3t"})
    assert "s3cr3t" not in str(info.value) and "secret" not in str(info.value).split(":")[-1]


def test_range_and_github_mode(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----\n")
    settings = load_settings(
        {"APP_ID": "42", "PRIVATE_KEY_PATH": str(key), "WEBHOOK_SECRET": "s", "PREVIEW_SIMULATED_SECONDS": "1-2.5",
         "GITHUB_API_URL": "https://ghe.example.com/api/v3/"}
    )
    assert settings.github_enabled and settings.simulated_seconds == (1.0, 2.5)
    assert settings.github_api_url == "https://ghe.example.com/api/v3"
    assert "PRIVATE KEY" not in repr(settings)


def test_dotenv_is_read_and_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("PORT=4000\nPREVIEW_URL_TEMPLATE=https://{branch}.example.test\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORT", "4001")
    settings = load_settings()
    assert settings.port == 4001
    assert settings.url_template == "https://{branch}.example.test"


def test_each_environment_takes_its_prefixed_settings_over_the_plain_ones():
    settings = load_settings(
        {
            "PREVIEW_ENVIRONMENTS": "preview, staging,qa-2",
            "PREVIEW_URL_TEMPLATE": "https://{environment}-{pr}.example.com",
            "PREVIEW_ENV_STAGING_PROVISIONER": "command",
            "PREVIEW_ENV_STAGING_DEPLOY_COMMAND": "./deploy staging",
            "PREVIEW_ENV_QA_2_SIMULATED_SECONDS": "3",
        }
    )
    assert settings.environments == ("preview", "staging", "qa-2")
    staging, qa = settings.for_environment("staging"), settings.for_environment("qa-2")
    assert (staging.provisioner, staging.deploy_command) == ("command", "./deploy staging")
    assert qa.simulated_seconds == (3.0, 3.0) and qa.provisioner == "simulated"
    assert staging.url_template == settings.url_template == "https://{environment}-{pr}.example.com"
    # The plain values for the default environment, and for a name that is no longer listed.
    assert settings.for_environment("preview").provisioner == "simulated"
    assert settings.for_environment("removed") is settings
