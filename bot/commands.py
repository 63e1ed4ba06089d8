"""Parsing `/preview` commands out of pull-request comments. Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .model import DEFAULT_ENVIRONMENT, ENVIRONMENT_NAME, RESERVED_NAMES

SUBCOMMANDS = ("deploy", "destroy", "cancel", "extend", "status", "help")
COMMAND_LINE = re.compile(r"^[ \t]{0,3}/preview(?![\w-])[ \t]*(?P<rest>.*)$", re.IGNORECASE)
FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")


ALIASES = {"redeploy": "deploy", "up": "deploy", "down": "destroy", "stop": "destroy"}
# These act on one environment, named after them (the default one when none is).
ENVIRONMENT_ACTIONS = ("deploy", "destroy", "cancel", "extend")


@dataclass(frozen=True)
class Command:
    action: str  # deploy, destroy, cancel, extend, status or help
    environment: str = DEFAULT_ENVIRONMENT
    unknown: str | None = None  # the words we did not understand (the help is the answer)


def mentions_command(body: object) -> bool:
    """Whether a comment may hold a command: a cheap look for the word, for the webhook receiver,
    which queues a job only for such comments. The handler parses the command."""
    return isinstance(body, str) and "/preview" in body[:65536].lower()


def parse_command(body: str | None) -> Command | None:
    """The first `/preview` command in a comment, or None.

    A command counts only at the start of a line, outside code blocks, inline code and quotes;
    case and spacing are forgiven. `/preview` alone deploys (or redeploys) the default
    environment, `/preview NAME` another; anything else asks for help. Whether NAME is an
    environment of this installation is the handler's question.
    """
    if not body or not isinstance(body, str):
        return None
    in_fence = False
    for line in body[:65536].splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence or line.lstrip().startswith(">"):
            continue
        match = COMMAND_LINE.match(line)
        if not match:
            continue
        return _command([word.lower() for word in match.group("rest").split()[:3]], match.group("rest"))
    return None


def command_in(payload: dict) -> Command | None:
    """The command of an `issue_comment.created` delivery, or None: only a person's comment on
    a pull request gives one (never a bot's, the App's own included)."""
    comment, issue = payload.get("comment") or {}, payload.get("issue") or {}
    if "pull_request" not in issue or is_bot(comment.get("user") or {}):
        return None
    return parse_command(comment.get("body"))


def is_bot(user: dict) -> bool:
    return user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")


def _command(words: list[str], rest: str) -> Command:
    """`/preview [ENV]`, `/preview destroy|cancel|extend [ENV]`, `/preview status|help`."""
    if not words:
        return Command("deploy")
    action = ALIASES.get(words[0], words[0])
    if action in SUBCOMMANDS:
        names = words[1:]
    else:
        action, names = "deploy", words  # `/preview staging`
    if action not in ENVIRONMENT_ACTIONS and names or len(names) > 1:
        return Command("help", unknown=rest.strip()[:50])
    if names and (not ENVIRONMENT_NAME.match(names[0]) or names[0] in RESERVED_NAMES):
        return Command("help", unknown=rest.strip()[:50])
    return Command(action, names[0] if names else DEFAULT_ENVIRONMENT)
