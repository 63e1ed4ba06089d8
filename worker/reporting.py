"""Reporting deployments on GitHub: the Preview check run, the one PR comment, the GitHub
deployment and its statuses, and reactions on the command comment.

Everything here only informs people, so a failure (after the client's retries) is logged and
swallowed: GitHub being down must never leave a deployment stuck nor drop a command, and the
next change reports the whole state again. A job's report (`deploy_started`, ...) is one
attempt that ends at its first failure; the writes handlers make (`react`, `update_comment`,
`update_check_run`) are each attempted on their own, so the handler goes on to act. What a
command decides on (the permission check, the pull request) is read outside the reporter,
and a failure there fails the handler's job for RQ to retry.

Every step is safe to repeat: a job run again (RQ's retry, a dead worker's job queued again)
finds the comment by its hidden marker, the check run by its name and external id, and the
GitHub deployment by its payload, where the first run may have created them without
remembering their ids; the client itself never sends a creating POST twice (`bot.github`).
"""

from __future__ import annotations

import asyncio
import functools
import logging

import gidgethub
import httpx
import redis

from bot import render, state
from bot.github import GitHubGaveUp, GitHubSession, find_check_run, find_deployment, github_session
from bot.model import Deployment, PreviewKey, utcnow

from .context import github_deadline

log = logging.getLogger("previewbot.reporting")

CHECK_RUNS = f"{state.PREFIX}:check-runs"  # "repo@sha" -> check run id
COMMENTS = f"{state.PREFIX}:comments"  # "repo#pr" -> comment id
GH_DEPLOYMENTS = f"{state.PREFIX}:gh-deployments"  # deployment id -> GitHub deployment id
REPORT_ERRORS = (gidgethub.GitHubException, httpx.HTTPError, redis.RedisError, KeyError, ValueError)
# One report gives up on GitHub after this long, and never after its job's timeout: a deploy job
# reports before and after its provisioner, and RQ gives a failure callback 60 s.
REPORT_SECONDS = 45.0


def best_effort(write):
    """A write that only informs people: on failure, log it and let the caller go on."""

    @functools.wraps(write)
    async def attempt(*args, **kwargs) -> None:
        try:
            await write(*args, **kwargs)
        except REPORT_ERRORS as exc:
            log.error("could not %s on GitHub: %s", write.__name__.strip("_").replace("_", " "), _describe(exc))

    return attempt


class GitHubReporter:
    def __init__(self, settings, conn: redis.Redis):
        self.settings = settings
        self.redis = conn

    # The jobs are synchronous; each report runs its own short event loop.
    def deploy_started(self, deployment: Deployment) -> None:
        self._run(deployment, self.report_started)

    def deploy_finished(self, deployment: Deployment) -> None:
        self._run(deployment, self.report_finished)

    def destroyed(self, deployment: Deployment, *, reason: str) -> None:
        self._run(deployment, self.report_destroyed)

    def expiry_changed(self, deployment: Deployment) -> None:
        self._run(deployment, self.report_expiry)

    def _run(self, deployment: Deployment, report) -> None:
        if not deployment.installation_id:
            return

        async def go():
            async with github_session(self.settings, deployment.installation_id) as session:
                await report(session, deployment)

        try:
            with github_deadline(at_most=REPORT_SECONDS):
                asyncio.run(go())
        except REPORT_ERRORS as exc:
            log.error("could not report deployment %s to GitHub: %s", deployment.id, _describe(exc))

    # -- the reports -------------------------------------------------------------------------

    async def report_started(self, session: GitHubSession, deployment: Deployment) -> None:
        await self._update_check_run(session, deployment)
        github_id = self._github_deployment_id(deployment) or await self._create_github_deployment(session, deployment)
        if github_id:
            await self._deployment_status(session, deployment, github_id, "in_progress")
        await self._update_comment(session, deployment.key)

    async def report_finished(self, session: GitHubSession, deployment: Deployment) -> None:
        await self._update_check_run(session, deployment)
        github_id = self._github_deployment_id(deployment) or await self._find_github_deployment(session, deployment)
        if github_id is None and deployment.status == "deployed":
            github_id = await self._create_github_deployment(session, deployment)
        if github_id:
            await self._deployment_status(
                session, deployment, github_id, "success" if deployment.status == "deployed" else "failure"
            )
        await self._update_comment(session, deployment.key, note=self._kept_note(deployment))
        if deployment.comment_id:
            await self._react(session, deployment.repository, deployment.comment_id, "rocket" if deployment.status == "deployed" else "confused")

    async def report_expiry(self, session: GitHubSession, deployment: Deployment) -> None:
        """The check run and the comment as of now (the warning, the Extend button); the
        deployment and its GitHub statuses are unchanged, so nothing else is written."""
        current = state.current(self.redis, deployment.key)
        if current is None or current.id != deployment.id or current.status != "deployed":
            return  # it changed since: that change was reported
        await self._update_check_run(session, current)
        await self._update_comment(session, current.key)

    def _kept_note(self, deployment: Deployment) -> str | None:
        """A redeploy that failed or was cancelled while the last good preview kept running: the
        comment shows that preview and says what became of the redeploy."""
        if deployment.status not in ("failed", "cancelled"):
            return None
        current = state.current(self.redis, deployment.key)
        if current is None or current.id == deployment.id or current.status != "deployed":
            return None
        return render.kept_preview_note(deployment)

    async def report_destroyed(self, session: GitHubSession, deployment: Deployment) -> None:
        await self._update_check_run(session, deployment)
        for github_id in await self._github_deployments_of_pr(session, deployment):
            await self._deployment_status(session, deployment, github_id, "inactive")
        await self._update_comment(session, deployment.key)

    # -- check runs --------------------------------------------------------------------------

    async def _update_check_run(
        self, session: GitHubSession, deployment: Deployment | None, *, key: PreviewKey | None = None, head_sha: str | None = None, config_error: str | None = None
    ) -> None:
        """Create or update the environment's Preview check run on the head commit; `config_error`
        fails an idle one with what is wrong in `.github/preview.yml`."""
        key = key or deployment.key
        repository, pr_number = key.repository, key.pr_number
        head_sha = head_sha or (deployment.head_sha if deployment else None)
        if not head_sha:
            return
        fields = {k: v for k, v in render.check_run_fields(deployment, settings=self.settings, config_error=config_error).items() if v is not None}
        if fields["status"] == "completed":
            fields["completed_at"] = utcnow()
        name = render.check_name(key.environment)
        # The external id tells a button's handler which pull request and environment it acts
        # on (GitHub lists no pull requests on check runs of forks).
        external_id = f"{pr_number}:{key.environment}"
        cache_key = f"{repository}@{head_sha}#{key.environment}"
        check_run_id = _text(self.redis.hget(CHECK_RUNS, cache_key)) or await self._find_check_run(session, repository, head_sha, name, external_id)
        if check_run_id:
            await session.call(
                "PATCH", "/repos/{+repository}/check-runs/{id}", url_vars={"repository": repository, "id": check_run_id}, data=fields
            )
        else:
            created = await session.call(
                "POST",
                "/repos/{+repository}/check-runs",
                url_vars={"repository": repository},
                data={"name": name, "head_sha": head_sha, "external_id": external_id, **fields},
            )
            check_run_id = str(created["id"])
        self.redis.hset(CHECK_RUNS, cache_key, check_run_id)

    async def _find_check_run(self, session: GitHubSession, repository: str, head_sha: str, name: str, external_id: str) -> str | None:
        run = await find_check_run(session, repository, head_sha, name, app_id=self.settings.app_id, external_id=external_id)
        return str(run["id"]) if run else None

    # -- the PR comment ----------------------------------------------------------------------

    async def _update_comment(self, session: GitHubSession, key: PreviewKey, *, note: str | None = None, show_help: bool = False) -> None:
        """Edit the bot's one comment on the pull request, a section per environment, creating it
        the first time."""
        repository, pr_number = key.repository, key.pr_number
        body = render.render_status_comment(self._environments(key), note=note, show_help=show_help, settings=self.settings)
        cache_key = f"{repository}#{pr_number}"
        # One writer per pull request at a time, so two jobs never both create the comment.
        guard = self.redis.lock(f"{state.PREFIX}:comment-lock:{cache_key}", timeout=60, blocking_timeout=30)
        if not guard.acquire():
            raise ValueError("could not take the comment lock")
        try:
            comment_id = _text(self.redis.hget(COMMENTS, cache_key)) or await self._find_comment(session, repository, pr_number)
            if comment_id:
                try:
                    await session.call(
                        "PATCH", "/repos/{+repository}/issues/comments/{id}", url_vars={"repository": repository, "id": comment_id}, data={"body": body}
                    )
                    self.redis.hset(COMMENTS, cache_key, comment_id)
                    return
                except gidgethub.BadRequest as exc:
                    if exc.status_code != 404:  # someone deleted it: write a new one
                        raise
            created = await session.call(
                "POST", "/repos/{+repository}/issues/{number}/comments", url_vars={"repository": repository, "number": pr_number}, data={"body": body}
            )
            self.redis.hset(COMMENTS, cache_key, str(created["id"]))
        finally:
            try:
                guard.release()
            except redis.exceptions.LockError:
                pass

    def _environments(self, key: PreviewKey) -> dict:
        """The pull request's environments for its comment: the operator's, in order, then any
        other that has had a deployment."""
        known = state.environments_of(self.redis, key.repository, key.pr_number)
        names = list(self.settings.environments) + sorted(set(known) - set(self.settings.environments))
        return {name: known.get(name) for name in names}

    async def _find_comment(self, session: GitHubSession, repository: str, pr_number: int) -> str | None:
        async for comment in session.getiter(
            "/repos/{+repository}/issues/{number}/comments{?per_page}", {"repository": repository, "number": pr_number, "per_page": 100}
        ):
            if render.COMMENT_MARKER in (comment.get("body") or ""):
                return str(comment["id"])
        return None

    # -- reactions ---------------------------------------------------------------------------

    async def _react(self, session: GitHubSession, repository: str, comment_id: int, content: str) -> None:
        await session.call(
            "POST",
            "/repos/{+repository}/issues/comments/{id}/reactions",
            url_vars={"repository": repository, "id": comment_id},
            data={"content": content},
        )

    # -- GitHub deployments ------------------------------------------------------------------

    async def _create_github_deployment(self, session: GitHubSession, deployment: Deployment) -> int | None:
        data = await session.call(
            "POST",
            "/repos/{+repository}/deployments",
            url_vars={"repository": deployment.repository},
            data={
                "ref": _ref(deployment),
                "environment": render.environment_name(deployment.key),
                "description": f"Preview of PR #{deployment.pr_number}",
                "transient_environment": True,
                "production_environment": False,
                "auto_merge": False,
                "required_contexts": [],
                "payload": _payload(deployment),
            },
        )
        if "id" not in data:  # 202: GitHub is merging; nothing to attach statuses to
            return None
        self.redis.hset(GH_DEPLOYMENTS, deployment.id, str(data["id"]))
        return int(data["id"])

    def _github_deployment_id(self, deployment: Deployment) -> int | None:
        raw = _text(self.redis.hget(GH_DEPLOYMENTS, deployment.id))
        return int(raw) if raw else None

    async def _find_github_deployment(self, session: GitHubSession, deployment: Deployment) -> int | None:
        """The GitHub deployment an earlier report created without remembering its id."""
        found = await find_deployment(
            session, deployment.repository, ref=_ref(deployment), environment=render.environment_name(deployment.key), payload=_payload(deployment)
        )
        if found is None:
            return None
        self.redis.hset(GH_DEPLOYMENTS, deployment.id, str(found["id"]))
        return int(found["id"])

    async def _github_deployments_of_pr(self, session: GitHubSession, deployment: Deployment) -> list[int]:
        ids = []
        async for item in session.getiter(
            "/repos/{+repository}/deployments{?environment,per_page}",
            {"repository": deployment.repository, "environment": render.environment_name(deployment.key), "per_page": 100},
            limit=100,
        ):
            ids.append(int(item["id"]))
        return ids

    async def _deployment_status(self, session: GitHubSession, deployment: Deployment, github_id: int, status: str) -> None:
        data = render.deployment_status_fields(deployment, status, settings=self.settings)
        await session.call(
            "POST",
            "/repos/{+repository}/deployments/{id}/statuses",
            url_vars={"repository": deployment.repository, "id": github_id},
            data=data,
        )

    # -- what handlers report, each write on its own -----------------------------------------

    update_check_run = best_effort(_update_check_run)
    update_comment = best_effort(_update_comment)
    react = best_effort(_react)


def _ref(deployment: Deployment) -> str:
    return deployment.head_sha or deployment.branch_name


def _payload(deployment: Deployment) -> dict:
    """What marks a GitHub deployment as this deployment's."""
    return {"previewbotDeploymentId": deployment.id}


def _describe(exc: Exception) -> str:
    """What went wrong, without the request or the answer (a token could be in either)."""
    if isinstance(exc, gidgethub.HTTPException):
        return f"GitHub answered {int(exc.status_code)}"
    if isinstance(exc, GitHubGaveUp):
        return str(exc)  # our own words: the path, the wait, the deadline
    return type(exc).__name__


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
