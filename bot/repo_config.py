"""`.github/preview.yml`: what a repository may say about its own previews, parsed and checked.

Pure: text in, a `RepoConfig` or a `RepoConfigError` out. The file is composed into YAML nodes
(PyYAML's safe loader, so no tag can build an object) and walked by hand, which keeps every key's
line; pydantic then checks the shape, and each problem is told as
`.github/preview.yml line 4: environments.preview.ttl: not a duration ("3 days")`.

The repository configures the environments the operator allows and nothing of the bot's own:
provisioner commands, credentials and instance settings are not keys, so they are errors.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from pydantic_core import PydanticCustomError

CONFIG_PATH = ".github/preview.yml"
# Larger than any sensible configuration, small enough to parse in a moment.
MAX_CONFIG_BYTES = 64 * 1024
DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
VAR_NAME = re.compile(r"[A-Z0-9_]+")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a number with `s`, `m`, `h` or `d` (`90`, `30m`,
    `72h`, `7d`). ValueError for anything else, negative numbers and booleans included."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = DURATION.fullmatch(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r}")
        seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


class RepoConfigError(Exception):
    """The file does not parse or does not match the schema; each problem names its line and field."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise PydanticCustomError("duration", "not a duration") from None


def _var_name(value: Any) -> str:
    if not isinstance(value, str) or not VAR_NAME.fullmatch(value):
        raise PydanticCustomError("var_name", "not a variable name (A-Z, 0-9 and _)")
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
VarName = Annotated[str, BeforeValidator(_var_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthCheck(_Strict):
    path: Annotated[StrictStr, Field(pattern=r"^/[^\s]*$", max_length=1000)] | None = None
    timeout: Annotated[Duration, Field(gt=0)] | None = None


class EnvironmentConfig(_Strict):
    """One environment's settings from the file; None means the operator's default applies."""

    auto_deploy: StrictBool | None = None
    ttl: Duration | None = None
    health_check: HealthCheck | None = None
    hourly_cost: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] | None = None
    vars: dict[VarName, StrictStr] = {}
    start: Annotated[StrictStr, Field(max_length=10_000)] | None = None

    def deployment_fields(self) -> dict:
        """What a deployment carries of it (`bot.model.Deployment`'s names); the operator's
        settings stand where the file says nothing."""
        health = self.health_check or HealthCheck()
        fields = {
            "ttl_seconds": self.ttl,
            "vars": dict(self.vars),
            "start": self.start,
            "health_check_path": health.path,
            "health_check_timeout": health.timeout,
        }
        if self.hourly_cost is not None:
            fields["hourly_cost"] = self.hourly_cost
        return fields


class RepoConfig(_Strict):
    environments: dict[str, EnvironmentConfig] = {}

    def for_environment(self, name: str) -> EnvironmentConfig:
        return self.environments.get(name) or EnvironmentConfig()


NO_CONFIG = RepoConfig()

MESSAGES = {
    "extra_forbidden": "unknown key",
    "bool_type": "not true or false",
    "string_type": "not a string (quote it)",
    "float_type": "not a number",
    "float_parsing": "not a number",
    "dict_type": "not a mapping",
    "model_type": "not a mapping",
    "model_attributes_type": "not a mapping",
    "greater_than_equal": "must not be negative",
    "greater_than": "must be more than 0",
    "string_pattern_mismatch": "not a path starting with /",
    "string_too_long": "too long",
    "finite_number": "not a number",
}


def parse_repo_config(text: str, *, environments: tuple[str, ...]) -> RepoConfig:
    """Parse the file's text; `environments` are the names the operator allows. Raises
    RepoConfigError naming each problem's line and field."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise RepoConfigError([f"{CONFIG_PATH}: larger than {MAX_CONFIG_BYTES // 1024} KiB"])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RepoConfigError([f"{CONFIG_PATH}{where}: not valid YAML ({getattr(exc, 'problem', None) or 'cannot parse'})"]) from None
    if node is None:
        return NO_CONFIG
    lines: dict[tuple, int] = {}
    problems: list[tuple[int, str]] = []
    data = _plain(node, (), lines, problems)
    if not isinstance(data, dict):
        problems.append((node.start_mark.line + 1, "the file must be a mapping with the key `environments`"))
    if problems:
        raise RepoConfigError(_told(problems))
    # An empty key (`environments:`, `preview:`) says nothing, like an empty mapping.
    named = data["environments"] = {} if data.get("environments") is None else data["environments"]
    if isinstance(named, dict):
        named.update({name: {} for name, value in named.items() if value is None})
    for name in named if isinstance(named, dict) else ():
        if name not in environments:
            allowed = ", ".join(environments)
            problems.append((lines.get(("environments", name), 1), f"environments.{name}: not an environment of this installation ({allowed})"))
    try:
        config = RepoConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"] if part != "[key]")
            problems.append((_line(lines, loc), f"{'.'.join(loc)}: {_message(error)}"))
    if problems:
        raise RepoConfigError(_told(problems))
    return config


def _plain(node: yaml.Node, path: tuple, lines: dict[tuple, int], problems: list[tuple[int, str]]) -> Any:
    """Plain Python data from a YAML node, with the line of every path in `lines`."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, (str, int, float)):
                where = f"{'.'.join(path)}: " if path else ""
                problems.append((key_node.start_mark.line + 1, f"{where}keys must be plain words"))
                continue
            key = str(key)
            if key in out:
                problems.append((key_node.start_mark.line + 1, f"{'.'.join((*path, key))}: given twice"))
                continue
            out[key] = _plain(value_node, (*path, key), lines, problems)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, str(i)), lines, problems) for i, item in enumerate(node.value)]
    value = _scalar(node)
    if value is None and node.tag != "tag:yaml.org,2002:null":
        problems.append((node.start_mark.line + 1, f"{'.'.join(path)}: a value previewbot cannot read"))
    return value


def _scalar(node: yaml.ScalarNode) -> Any:
    """A scalar as the safe loader reads it; None for what it cannot read (`<<` merge keys)."""
    try:
        return yaml.SafeLoader("").construct_object(node)
    except yaml.YAMLError:
        return None


def _line(lines: dict[tuple, int], loc: tuple) -> int:
    """The line of the deepest part of `loc` the file has (a missing key is on its parent's)."""
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _message(error: dict) -> str:
    message = MESSAGES.get(error["type"], error["msg"])
    value = error.get("input")
    if error["type"] != "extra_forbidden" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        shown = str(value) if len(str(value)) <= 40 else str(value)[:39] + "…"
        message += f' ("{shown}")'
    return message


def _told(problems: list[tuple[int, str]]) -> list[str]:
    return [f"{CONFIG_PATH} line {line}: {message}" for line, message in sorted(set(problems))]
