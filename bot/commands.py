"""Parsing `/preview` commands out of pull-request comments. Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass

SUBCOMMANDS = ("deploy", "destroy", "status", "help")
COMMAND_LINE = re.compile(r"^[ \t]{0,3}/preview(?![\w-])[ \t]*(?P<rest>.*)$", re.IGNORECASE)
FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")


@dataclass(frozen=True)
class Command:
    action: str  # deploy, destroy, status or help
    unknown: str | None = None  # the subcommand we did not understand (the help is the answer)


def mentions_command(body: object) -> bool:
    """Whether a comment may hold a command: a cheap look for the word, for the webhook receiver,
    which queues a job only for such comments. The handler parses the command."""
    return isinstance(body, str) and "/preview" in body[:65536].lower()


def parse_command(body: str | None) -> Command | None:
    """The first `/preview` command in a comment, or None.

    A command counts only at the start of a line, outside code blocks, inline code and quotes;
    case and spacing are forgiven. `/preview` alone deploys (or redeploys); an unknown
    subcommand asks for help.
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
        words = match.group("rest").split()
        if not words:
            return Command("deploy")
        word = words[0].lower()
        if word in ("redeploy", "up"):
            word = "deploy"
        if word in ("down", "stop"):
            word = "destroy"
        if word in SUBCOMMANDS:
            return Command(word)
        return Command("help", unknown=words[0][:50])
    return None
