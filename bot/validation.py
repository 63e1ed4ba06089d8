"""Pure checks of what people send: repository names, pull-request numbers, branch names."""

from __future__ import annotations

import re

from .model import DEFAULT_ENVIRONMENT, ENVIRONMENT_NAME, RESERVED_NAMES

OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
MAX_PR_NUMBER = 2**31 - 1
MAX_BRANCH_LENGTH = 255
SHA = re.compile(r"[0-9a-f]{40}")


class InvalidInput(ValueError):
    """A value people sent is not acceptable; the message says which and why."""


def repository_name(owner: str, repo: str) -> str:
    if not OWNER.match(owner):
        raise InvalidInput("owner must be a GitHub user or organization name")
    if not REPO.match(repo) or repo in (".", ".."):
        raise InvalidInput("repo must be a GitHub repository name")
    return f"{owner}/{repo}"


def full_repository_name(value: object) -> str:
    if not isinstance(value, str) or value.count("/") != 1:
        raise InvalidInput("repository must look like owner/repo")
    owner, repo = value.split("/")
    return repository_name(owner, repo)


def month(value: object) -> str:
    """A UTC month, `YYYY-MM`."""
    if not isinstance(value, str) or not re.fullmatch(r"(19|20|21)\d\d-(0[1-9]|1[0-2])", value):
        raise InvalidInput("month must look like 2026-12 (YYYY-MM)")
    return value


def pr_number(value: object) -> int:
    text = str(value)
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_PR_NUMBER:
        raise InvalidInput("prNumber must be a positive whole number")
    return int(text)


def branch_name(value: object) -> str:
    """A branch name as git accepts it (`git check-ref-format --branch`), at most 255 characters.

    Shell metacharacters are allowed, as git allows them: the command provisioner passes the
    name as an environment value, never through a shell.
    """
    if not isinstance(value, str) or value == "":
        raise InvalidInput("branchName is required and must be a string")
    if len(value) > MAX_BRANCH_LENGTH:
        raise InvalidInput(f"branchName must be at most {MAX_BRANCH_LENGTH} characters")
    problem = _ref_problem(value)
    if problem:
        raise InvalidInput(f"branchName is not a valid git branch name: {problem}")
    return value


def commit_sha(value: object) -> str:
    """A full commit id as git prints it: 40 lowercase hex characters."""
    if not isinstance(value, str) or not SHA.fullmatch(value):
        raise InvalidInput("headSha must be a 40-character commit id")
    return value


def _ref_problem(name: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a control character"
    for bad in (" ", "~", "^", ":", "?", "*", "[", "\\"):
        if bad in name:
            return f"it contains {bad!r}"
    if ".." in name or "@{" in name or "//" in name:
        return "it contains '..', '@{' or '//'"
    if name.startswith(("-", "/", ".")) or name.endswith(("/", ".", ".lock")) or name == "@":
        return "it starts or ends with a character git forbids there"
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "a path component starts with '.' or ends with '.lock'"
    return None


def page_limit(value: object, *, default: int = 50, most: int = 100) -> int:
    """A page size for paginated lists: 1 to `most`, `default` when not given."""
    if value is None or value == "":
        return default
    text = str(value)
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= most:
        raise InvalidInput(f"limit must be a whole number from 1 to {most}")
    return int(text)


def environment_name(value: object) -> str:
    """An environment's name as PREVIEW_ENVIRONMENTS allows them (whether it is listed is the
    caller's question: a deploy needs a listed name, reading or tearing down only a record)."""
    if value is None or value == "":
        return DEFAULT_ENVIRONMENT
    if not isinstance(value, str) or not ENVIRONMENT_NAME.match(value) or value in RESERVED_NAMES:
        raise InvalidInput("environment must be a name of a-z, 0-9 and '-', at most 20 characters, starting with a letter")
    return value
