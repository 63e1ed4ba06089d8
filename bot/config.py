"""Settings: read once from the environment (and `.env`), checked at start-up.

Everything else receives a `Settings` object; nothing reads `os.environ` on its own.
A bad value raises `ConfigError` whose message names the variable, and the command line
prints that one line and exits.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from .model import ENVIRONMENT_NAME, RESERVED_NAMES
from .repo_config import parse_duration


class ConfigError(Exception):
    """A configuration value is missing or malformed; the message names the variable."""


# Values of PREVIEW_COMMAND_ENV variables shorter than this are not secrets worth masking: they
# are too likely to be ordinary words ("true", "eu-west") in the text people read.
MIN_SECRET_LENGTH = 8
# One entry of PREVIEW_URL_ALLOWED_HOSTS: the end of a host name, `.example.com` or `example.com`.
HOST_SUFFIX = re.compile(r"\.?[a-z0-9-]+(?:\.[a-z0-9-]+)*")
# A URL that may become a link: http(s), a plain host name (no user info: browsers and parsers
# disagree on the host of `https://a.example.com\@evil.test`), an optional port, and nothing
# that could end an HTML attribute or a table cell.
LINKABLE_URL = re.compile(r"https?://(?P<host>[A-Za-z0-9.-]+)(?::\d{1,5})?(?:[/?#][^\s\\<>\"'`|]*)?")
# The provisioners `worker.provisioners` registers, by name; each has its own section below.
PROVISIONERS = ("simulated", "command", "ec2")
# What a PREVIEW_EC2_USER_DATA template may say as `{{name}}`; each value is put in shell-quoted.
USER_DATA_PLACEHOLDERS = ("source_url", "start", "vars", "repository", "pr", "environment", "branch", "sha", "deployment_id")
USER_DATA_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")


@dataclasses.dataclass(frozen=True)
class EC2Settings:
    """The `ec2` provisioner's section: PREVIEW_EC2_*. Credentials are boto3's own."""

    ami: str | None = None
    instance_type: str = "t3.small"
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    key_name: str | None = None
    instance_profile: str | None = None  # a name or an ARN
    # AWS_REGION, which the AWS SDKs share; unset, boto3's own chain (AWS_DEFAULT_REGION, profile).
    region: str | None = None
    # The text of the PREVIEW_EC2_USER_DATA template, read at start; None: the default script.
    user_data: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class Settings:
    app_id: str | None = None
    private_key: str | None = dataclasses.field(default=None, repr=False)
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)
    webhook_path: str = "/api/github/webhooks"
    github_api_url: str = "https://api.github.com"
    github_url: str = "https://github.com"  # GITHUB_URL: GitHub's web pages (the manifest flow), Enterprise too
    app_slug: str | None = None  # APP_SLUG, written by `previewbot setup`
    github_client_id: str | None = None  # GITHUB_CLIENT_ID / GITHUB_CLIENT_SECRET: the App's OAuth pair
    github_client_secret: str | None = dataclasses.field(default=None, repr=False)
    redis_url: str | None = None
    database_path: str = "previewbot.db"
    host: str = "127.0.0.1"
    port: int = 3001
    provisioner: str = "simulated"
    simulated_seconds: tuple[float, float] = (5.0, 10.0)
    url_template: str = "https://{environment}-{pr}.{repo}.example.com"
    url_allowed_hosts: tuple[str, ...] = (".example.com",)
    deploy_command: str | None = None
    destroy_command: str | None = None
    command_env: tuple[str, ...] = ()
    # The values of the variables `command_env` names, MIN_SECRET_LENGTH or longer: masked in output.
    command_secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    command_timeout: float = 1800.0
    lease_seconds: float = 60.0
    cancel_grace_seconds: float = 30.0
    reconcile_seconds: float = 60.0
    auto_deploy: bool = False
    health_path: str | None = None  # PREVIEW_HEALTH_PATH; unset, no health check (see worker.health)
    health_timeout: float = 300.0  # PREVIEW_HEALTH_TIMEOUT, a duration
    rate_limit_per_minute: int = 60
    public_api_url: str | None = None
    public_url: str | None = None  # PUBLIC_URL; see base_url
    webhook_proxy_url: str | None = None  # WEBHOOK_PROXY_URL: a smee.io-like relay, see bot.relay
    worker_nice: int = 5  # WORKER_NICE: workers yield the CPU to the web process when both want it
    environments: tuple[str, ...] = ("preview",)
    ec2: EC2Settings = EC2Settings()
    hourly_cost: float | None = None  # PREVIEW_HOURLY_COST, USD, when nothing better is known
    ttl_seconds: float = 72 * 3600.0  # PREVIEW_TTL, a duration; 0: previews never expire (bot.expiry)
    ttl_warning_seconds: float = 2 * 3600.0  # PREVIEW_TTL_WARNING: how long before the end people are warned
    monthly_budget: float | None = None  # PREVIEW_MONTHLY_BUDGET, USD per repository per UTC month (bot.costs)
    # Each named environment's settings where the operator set PREVIEW_ENV_<NAME>_* values.
    overrides: Mapping[str, "Settings"] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def base_url(self) -> str:
        """Where people and GitHub reach previewbot: PUBLIC_URL behind a proxy, else HOST:PORT."""
        return self.public_url or f"http://{self.host}:{self.port}"

    def for_environment(self, name: str) -> "Settings":
        """The settings of environment `name`: its PREVIEW_ENV_<NAME>_* values over the plain
        PREVIEW_* ones (an environment no longer listed keeps the plain ones)."""
        return self.overrides.get(name, self)

    @property
    def github_enabled(self) -> bool:
        """True when the GitHub App is configured; otherwise the bot runs in local mode."""
        return bool(self.app_id and self.private_key and self.webhook_secret)

    def secrets(self) -> list[str]:
        """Values that must never be logged nor shown: the App's private key, webhook secret and
        OAuth client secret, and the values of the variables PREVIEW_COMMAND_ENV names, in every
        environment. Used by the log redaction filter and by `bot.masking.Masker`."""
        values = [s for s in (self.private_key, self.webhook_secret, self.github_client_secret) if s]
        for settings in (self, *self.overrides.values()):
            values += settings.command_secrets
        return list(dict.fromkeys(values))

    def allows_url(self, url: str) -> bool:
        """Whether the preview URL may be a link: http(s), with a host ending in one of
        PREVIEW_URL_ALLOWED_HOSTS. Any other URL is shown as text."""
        match = LINKABLE_URL.fullmatch(url)
        return bool(match) and match.group("host").lower().endswith(self.url_allowed_hosts)


GITHUB_VARIABLES = "APP_ID, PRIVATE_KEY (or PRIVATE_KEY_PATH) and WEBHOOK_SECRET"


def load_settings(environ: Mapping[str, str] | None = None, *, dotenv: str | None = ".env") -> Settings:
    """Build settings from `environ` (default: the process environment plus `.env`)."""
    if environ is None:
        env = dict(_read_dotenv(dotenv)) if dotenv else {}
        env.update(os.environ)
    else:
        env = dict(environ)
    settings = _load(env)
    environments = _environments(env.get("PREVIEW_ENVIRONMENTS"))
    overrides = {name: _load_environment(env, name) for name in environments if any(k.startswith(_prefix(name)) for k in env)}
    return dataclasses.replace(settings, environments=environments, overrides=overrides)


def _prefix(name: str) -> str:
    return f"PREVIEW_ENV_{name.upper().replace('-', '_')}_"


def _load_environment(env: dict, name: str) -> Settings:
    """One environment's settings: its prefixed values stand in for the plain ones, and an
    error names the variable the operator wrote."""
    prefix = _prefix(name)
    given = {"PREVIEW_" + key[len(prefix):]: key for key in env if key.startswith(prefix)}
    try:
        return _load({**env, **{plain: env[key] for plain, key in given.items()}})
    except ConfigError as exc:
        message = str(exc)
        for plain, key in given.items():
            message = re.sub(rf"\b{plain}\b", key, message)
        raise ConfigError(message) from None


def _environments(raw: str | None) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (raw or "preview").split(",") if n.strip())
    for name in names:
        if not ENVIRONMENT_NAME.match(name) or name in RESERVED_NAMES:
            raise ConfigError(
                f"PREVIEW_ENVIRONMENTS: {name!r} is not an environment name (a-z, 0-9 and '-', at most 20, "
                "starting with a letter, not a /preview subcommand)"
            )
    if not names:
        raise ConfigError("PREVIEW_ENVIRONMENTS must name at least one environment")
    return tuple(dict.fromkeys(names))


def _load(env: dict) -> Settings:
    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    app_id = get("APP_ID")
    if app_id is not None and not app_id.isdigit():
        raise ConfigError(f"APP_ID must be the GitHub App's numeric id, got {app_id!r}")
    private_key = _private_key(get("PRIVATE_KEY"), get("PRIVATE_KEY_PATH"))
    webhook_secret = env.get("WEBHOOK_SECRET") or None
    given = [n for n, v in (("APP_ID", app_id), ("PRIVATE_KEY", private_key), ("WEBHOOK_SECRET", webhook_secret)) if v]
    if given and len(given) < 3:
        missing = [n for n in ("APP_ID", "PRIVATE_KEY", "WEBHOOK_SECRET") if n not in given]
        raise ConfigError(f"{missing[0]} is required when {', '.join(given)} is set (the GitHub App needs {GITHUB_VARIABLES})")

    webhook_path = get("WEBHOOK_PATH") or Settings.webhook_path
    if not webhook_path.startswith("/"):
        raise ConfigError(f"WEBHOOK_PATH must start with '/', got {webhook_path!r}")

    provisioner = (get("PREVIEW_PROVISIONER") or "simulated").lower()
    if provisioner not in PROVISIONERS:
        raise ConfigError(f"PREVIEW_PROVISIONER must be one of {', '.join(PROVISIONERS)}, got {provisioner!r}")
    deploy_command = get("PREVIEW_DEPLOY_COMMAND")
    if provisioner == "command" and not deploy_command:
        raise ConfigError("PREVIEW_DEPLOY_COMMAND is required when PREVIEW_PROVISIONER=command")
    for name in ("PREVIEW_DEPLOY_COMMAND", "PREVIEW_DESTROY_COMMAND"):
        _check_command(name, get(name))

    url_template = get("PREVIEW_URL_TEMPLATE") or Settings.url_template
    _check_url_template(url_template, provisioner)
    command_env = _names("PREVIEW_COMMAND_ENV", get("PREVIEW_COMMAND_ENV"))

    lease_seconds = _number("PREVIEW_LEASE_SECONDS", get("PREVIEW_LEASE_SECONDS"), 60.0, float, low=1)
    cancel_grace_seconds = _number("PREVIEW_CANCEL_GRACE_SECONDS", get("PREVIEW_CANCEL_GRACE_SECONDS"), 30.0, float, low=0.1)
    if lease_seconds < 2 * cancel_grace_seconds:
        # A worker cut off from Redis stops its provisioner (SIGTERM, then SIGKILL after the
        # grace) before its lease runs out; a shorter lease leaves it no time to.
        raise ConfigError(
            f"PREVIEW_LEASE_SECONDS ({lease_seconds:g}) must be at least twice PREVIEW_CANCEL_GRACE_SECONDS ({cancel_grace_seconds:g})"
        )

    return Settings(
        app_id=app_id,
        private_key=private_key,
        webhook_secret=webhook_secret,
        webhook_path=webhook_path,
        github_api_url=_url("GITHUB_API_URL", get("GITHUB_API_URL") or Settings.github_api_url).rstrip("/"),
        github_url=_url("GITHUB_URL", get("GITHUB_URL") or Settings.github_url).rstrip("/"),
        app_slug=get("APP_SLUG"),
        github_client_id=get("GITHUB_CLIENT_ID"),
        github_client_secret=get("GITHUB_CLIENT_SECRET"),
        redis_url=_redis_url(get("REDIS_URL")),
        database_path=get("DATABASE_PATH") or Settings.database_path,
        host=get("HOST") or Settings.host,
        port=_number("PORT", get("PORT"), 3001, int, low=1, high=65535),
        provisioner=provisioner,
        simulated_seconds=_seconds_range(get("PREVIEW_SIMULATED_SECONDS")),
        url_template=url_template,
        url_allowed_hosts=_allowed_hosts(get("PREVIEW_URL_ALLOWED_HOSTS"), url_template),
        deploy_command=deploy_command,
        destroy_command=get("PREVIEW_DESTROY_COMMAND"),
        command_env=command_env,
        command_secrets=tuple(value for name in command_env if len(value := env.get(name) or "") >= MIN_SECRET_LENGTH),
        command_timeout=_duration("PREVIEW_COMMAND_TIMEOUT", get("PREVIEW_COMMAND_TIMEOUT"), 1800.0, low=1),
        lease_seconds=lease_seconds,
        cancel_grace_seconds=cancel_grace_seconds,
        reconcile_seconds=_number("PREVIEW_RECONCILE_SECONDS", get("PREVIEW_RECONCILE_SECONDS"), 60.0, float, low=1),
        auto_deploy=_boolean("PREVIEW_AUTO_DEPLOY", get("PREVIEW_AUTO_DEPLOY")),
        health_path=_health_path(get("PREVIEW_HEALTH_PATH")),
        health_timeout=_duration("PREVIEW_HEALTH_TIMEOUT", get("PREVIEW_HEALTH_TIMEOUT"), 300.0, low=1),
        rate_limit_per_minute=_number("PREVIEW_API_RATE_LIMIT", get("PREVIEW_API_RATE_LIMIT"), 60, int, low=1),
        public_api_url=_optional_url("NEXT_PUBLIC_API_URL", get("NEXT_PUBLIC_API_URL")),
        public_url=_optional_url("PUBLIC_URL", get("PUBLIC_URL")),
        webhook_proxy_url=_optional_url("WEBHOOK_PROXY_URL", get("WEBHOOK_PROXY_URL")),
        worker_nice=_number("WORKER_NICE", get("WORKER_NICE"), 5, int, low=0, high=19),
        ec2=_ec2_settings(get, required=provisioner == "ec2"),
        hourly_cost=_number("PREVIEW_HOURLY_COST", get("PREVIEW_HOURLY_COST"), None, float, low=0),
        ttl_seconds=_duration("PREVIEW_TTL", get("PREVIEW_TTL"), Settings.ttl_seconds, low=0),
        ttl_warning_seconds=_duration("PREVIEW_TTL_WARNING", get("PREVIEW_TTL_WARNING"), Settings.ttl_warning_seconds, low=0),
        monthly_budget=_number("PREVIEW_MONTHLY_BUDGET", get("PREVIEW_MONTHLY_BUDGET"), None, float, low=0),
    )


def _read_dotenv(path: str) -> dict[str, str]:
    from dotenv import dotenv_values

    if not Path(path).is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _private_key(inline: str | None, path: str | None) -> str | None:
    if inline:
        # Hosting platforms often store the PEM on one line with literal "\n".
        key = inline.replace("\\n", "\n")
        if "PRIVATE KEY-----" not in key:
            raise ConfigError("PRIVATE_KEY must be the GitHub App's PEM private key")
        return key
    if path:
        try:
            key = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"PRIVATE_KEY_PATH cannot be read: {exc.strerror}") from None
        if "PRIVATE KEY-----" not in key:
            raise ConfigError("PRIVATE_KEY_PATH does not hold a PEM private key")
        return key
    return None


def _number(name, raw, default, kind, *, low=None, high=None):
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a {'whole ' if kind is int else ''}number, got {raw!r}") from None
    if value != value or (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"{name} must be {bounds}, got {raw!r}")
    return value


def _duration(name: str, raw: str | None, default: float, *, low: float) -> float:
    """A duration: seconds, or a number with s, m, h or d (`bot.repo_config.parse_duration`)."""
    if raw is None:
        return default
    try:
        seconds = parse_duration(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a duration (seconds, or a number with s, m, h or d), got {raw!r}") from None
    if seconds < low:
        raise ConfigError(f"{name} must be at least {low:g}s, got {raw!r}")
    return seconds


def _health_path(raw: str | None) -> str | None:
    if raw is not None and not re.fullmatch(r"/\S*", raw):
        raise ConfigError(f"PREVIEW_HEALTH_PATH must be a path starting with /, got {raw!r}")
    return raw


def _seconds_range(raw: str | None) -> tuple[float, float]:
    if raw is None:
        return Settings.simulated_seconds
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?)\s*)?", raw)
    if not match:
        raise ConfigError(f"PREVIEW_SIMULATED_SECONDS must be a number or a range like 5-10, got {raw!r}")
    low = float(match.group(1))
    high = float(match.group(2)) if match.group(2) else low
    if high < low:
        raise ConfigError(f"PREVIEW_SIMULATED_SECONDS range must go from low to high, got {raw!r}")
    return (low, high)


def _boolean(name: str, raw: str | None) -> bool:
    if raw is None:
        return False
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(name: str, raw: str) -> str:
    if not re.match(r"^https?://[^\s/]+", raw):
        raise ConfigError(f"{name} must be an http(s) URL, got {raw!r}")
    return raw


def _optional_url(name: str, raw: str | None) -> str | None:
    return _url(name, raw).rstrip("/") if raw else None


def _redis_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not re.match(r"^(redis|rediss|unix)://", raw):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
    return raw


def _names(name: str, raw: str | None) -> tuple[str, ...]:
    """A list of environment variable names, separated by commas or spaces."""
    if raw is None:
        return ()
    names = tuple(n for n in re.split(r"[,\s]+", raw) if n)
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]
    if bad:
        raise ConfigError(f"{name} must list environment variable names, got {bad[0]!r}")
    return names


def _allowed_hosts(raw: str | None, url_template: str) -> tuple[str, ...]:
    """PREVIEW_URL_ALLOWED_HOSTS, a comma list of host suffixes; unset, the template's host after
    its last placeholder (`.example.com` for `https://{environment}-{pr}.{repo}.example.com`),
    and none when the host ends with a placeholder."""
    if raw is None:
        try:
            host = urlsplit(url_template).hostname or ""
        except ValueError:  # e.g. an unclosed `[` of an IPv6 address
            raise ConfigError("PREVIEW_URL_TEMPLATE is not a URL whose host can be read; set PREVIEW_URL_ALLOWED_HOSTS") from None
        suffix = host.rpartition("}")[2]
        return (suffix,) if suffix else ()
    suffixes = tuple(part.strip().lower() for part in raw.split(","))
    bad = [s for s in suffixes if not HOST_SUFFIX.fullmatch(s)]
    if bad:
        raise ConfigError(f"PREVIEW_URL_ALLOWED_HOSTS must be a comma list of host suffixes like .example.com, got {bad[0]!r}")
    return suffixes


def _check_command(name: str, raw: str | None) -> None:
    if raw is None:
        return
    import shlex

    try:
        shlex.split(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} cannot be split into words: {exc}") from None


def _check_url_template(template: str, provisioner: str) -> None:
    # Only an EC2 instance has a public address to put in the URL.
    addresses = {"public_dns": "d", "public_ip": "1"} if provisioner == "ec2" else {}
    try:
        template.format(environment="preview", pr="1", repo="r", owner="o", branch="b", **addresses)
    except (KeyError, IndexError, ValueError) as exc:
        extra = ", {public_dns}, {public_ip} (ec2 only)"
        raise ConfigError(
            f"PREVIEW_URL_TEMPLATE may use only {{environment}}, {{pr}}, {{repo}}, {{owner}}, {{branch}}{extra}: {exc!r}"
        ) from None


AWS_ID = {
    "PREVIEW_EC2_AMI": re.compile(r"ami-[0-9a-f]{8,17}"),
    "PREVIEW_EC2_SUBNET_ID": re.compile(r"subnet-[0-9a-f]{8,17}"),
    "PREVIEW_EC2_SECURITY_GROUP_IDS": re.compile(r"sg-[0-9a-f]{8,17}"),
    "PREVIEW_EC2_INSTANCE_TYPE": re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+"),
    # An instance profile's name, or its ARN.
    "PREVIEW_EC2_INSTANCE_PROFILE": re.compile(r"[\w+=,.@-]{1,128}|arn:aws[\w-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]{1,128}"),
}


def _ec2_settings(get, *, required: bool) -> EC2Settings:
    """PREVIEW_EC2_*: checked whenever given, the AMI required when the provisioner is `ec2`."""

    def checked(name: str, value: str | None) -> str | None:
        if value is not None and not AWS_ID[name].fullmatch(value):
            raise ConfigError(f"{name} is not valid: {value!r}")
        return value

    ami = checked("PREVIEW_EC2_AMI", get("PREVIEW_EC2_AMI"))
    if required and ami is None:
        raise ConfigError("PREVIEW_EC2_AMI is required when PREVIEW_PROVISIONER=ec2 (the image previews boot from)")
    groups = tuple(g.strip() for g in (get("PREVIEW_EC2_SECURITY_GROUP_IDS") or "").split(",") if g.strip())
    for group in groups:
        checked("PREVIEW_EC2_SECURITY_GROUP_IDS", group)
    return EC2Settings(
        ami=ami,
        instance_type=checked("PREVIEW_EC2_INSTANCE_TYPE", get("PREVIEW_EC2_INSTANCE_TYPE")) or EC2Settings.instance_type,
        subnet_id=checked("PREVIEW_EC2_SUBNET_ID", get("PREVIEW_EC2_SUBNET_ID")),
        security_group_ids=groups,
        key_name=get("PREVIEW_EC2_KEY_NAME"),
        instance_profile=checked("PREVIEW_EC2_INSTANCE_PROFILE", get("PREVIEW_EC2_INSTANCE_PROFILE")),
        region=get("AWS_REGION"),
        user_data=_user_data_template(get("PREVIEW_EC2_USER_DATA")),
    )


def _user_data_template(path: str | None) -> str | None:
    """The operator's user-data template, read at start so a bad path stops start-up."""
    if path is None:
        return None
    try:
        template = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"PREVIEW_EC2_USER_DATA cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    unknown = sorted(set(USER_DATA_PLACEHOLDER.findall(template)) - set(USER_DATA_PLACEHOLDERS))
    if unknown:
        raise ConfigError(f"PREVIEW_EC2_USER_DATA may use only {{{{{'}}, {{'.join(USER_DATA_PLACEHOLDERS)}}}}}, not {{{{{unknown[0]}}}}}")
    return template
