"""A pull request as GitHub shows it: fetched, its head repository, and the repository's
`.github/preview.yml` that applies to it. Used by every handler that deploys and by the jobs."""

from __future__ import annotations

import base64
import logging
import re

import gidgethub

from bot import state
from bot.repo_config import CONFIG_PATH, MAX_CONFIG_BYTES, RepoConfig, RepoConfigError, parse_repo_config

log = logging.getLogger("previewbot.pulls")

# `.github/preview.yml` as read at a commit does not change: kept a day. Read at a branch (a
# fork's base), it does: kept a minute.
CONFIG_AT_COMMIT_SECONDS = 24 * 3600
CONFIG_AT_BRANCH_SECONDS = 60


async def fetch_pull(session, repository: str, pr_number: int) -> dict | None:
    try:
        return await session.call("GET", "/repos/{+repository}/pulls/{number}", url_vars={"repository": repository, "number": pr_number})
    except gidgethub.BadRequest as exc:
        if exc.status_code == 404:
            return None
        raise


def head_repository(pull: dict) -> str:
    repo = pull["head"].get("repo")
    # A fork that was deleted has no head repository; it is still not ours.
    return repo["full_name"] if repo else f"(deleted fork)/{pull['head']['ref']}"


def is_fork(pull: dict, repository: str) -> bool:
    return head_repository(pull) != repository



def config_ref(pull: dict, repository: str) -> str:
    """Where a pull request's `.github/preview.yml` is read: its head commit, or for a fork the
    base branch (a fork never configures its own preview)."""
    return pull["base"]["ref"] if is_fork(pull, repository) else pull["head"]["sha"]


async def read_repo_config(ctx, session, repository: str, ref: str) -> RepoConfig:
    """The repository's `.github/preview.yml` at `ref`, checked against the operator's
    environments; no file is no configuration. Raises RepoConfigError for a file that does not
    parse or match the schema. The text is cached in Redis by repository and ref."""
    cache_key = f"{state.PREFIX}:repo-config:{repository}@{ref}"
    cached = ctx.redis.get(cache_key)
    if cached is not None:
        text = cached.decode()
    else:
        text = await fetch_repo_file(session, repository, CONFIG_PATH, ref=ref) or ""
        seconds = CONFIG_AT_COMMIT_SECONDS if re.fullmatch(r"[0-9a-f]{40}", ref) else CONFIG_AT_BRANCH_SECONDS
        ctx.redis.set(cache_key, text, ex=seconds)
    return parse_repo_config(text, environments=ctx.settings.environments)


async def fetch_repo_file(session, repository: str, path: str, *, ref: str) -> str | None:
    """A text file through the contents API; None when it does not exist at `ref`."""
    try:
        item = await session.call(
            "GET", "/repos/{+repository}/contents/{+path}{?ref}", url_vars={"repository": repository, "path": path, "ref": ref}
        )
    except gidgethub.BadRequest as exc:
        if exc.status_code == 404:
            return None
        if exc.status_code == 403:
            # An installation that has not accepted the App's `contents: read` yet: the
            # operator's defaults apply, as without a file.
            log.warning("cannot read %s of %s: the installation has not granted contents: read", path, repository)
            return None
        raise
    if not isinstance(item, dict) or item.get("type") != "file":
        raise RepoConfigError([f"{path}: not a file"])
    if item.get("encoding") != "base64" or int(item.get("size") or 0) > MAX_CONFIG_BYTES:
        raise RepoConfigError([f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB"])
    try:
        return base64.b64decode(item.get("content") or "").decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise RepoConfigError([f"{path}: not UTF-8 text"]) from None
