"""The web process's few GitHub calls: the REST deploy checks the pull request's head branch.
(The webhook receiver makes none; workers do the rest.)"""

from __future__ import annotations

import asyncio

import gidgethub

from worker.github import find_installation, github_session

from .store import Store


class WebGitHub:
    def __init__(self, settings, store: Store):
        self.settings = settings
        self.store = store

    def pull_request_head(self, repository: str, pr_number: int) -> dict | None:
        """The open pull request's head as GitHub has it now, or None if it is not one."""
        return asyncio.run(self._pull_request_head(repository, pr_number))

    async def _pull_request_head(self, repository: str, pr_number: int) -> dict | None:
        installation_id = self.store.installation_for(repository) or await find_installation(self.settings, repository)
        if installation_id is None:
            return None
        async with github_session(self.settings, installation_id) as session:
            try:
                pull = await session.call("GET", "/repos/{+repository}/pulls/{number}", url_vars={"repository": repository, "number": pr_number})
            except gidgethub.BadRequest as exc:
                if exc.status_code in (404, 410):
                    return None
                raise
        if pull.get("state") != "open":
            return None
        head_repo = pull["head"].get("repo")
        return {
            "ref": pull["head"]["ref"],
            "sha": pull["head"]["sha"],
            "repository": head_repo["full_name"] if head_repo else None,
            "installationId": installation_id,
            "title": pull.get("title"),
            "author": (pull.get("user") or {}).get("login"),
        }
