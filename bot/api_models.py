"""The REST API's requests and answers as pydantic models: spectree validates requests with them
and generates the OpenAPI document (GET /api/openapi.json) from them.

Request fields are checked by `bot.validation`, so its rules stay the only ones. Answers about
deployments are `bot.model.Deployment` as `to_json()` and `to_state_json()` shape it, plus what
each route adds; they forbid other fields, so the document lists every field sent.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from . import livelogs, validation
from .model import DEFAULT_ENVIRONMENT, Deployment, EnvironmentState, RecordStatus

PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
# Log line numbers fit SQLite's integers and Redis's stream ids with room to spare.
MAX_SEQ = 2**53
MAX_TITLE_LENGTH = 256


class _Answer(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="forbid")


# -- requests ----------------------------------------------------------------------------------


class DeployRequest(BaseModel):
    """Other fields are ignored."""

    model_config = ConfigDict(alias_generator=to_camel)

    branch_name: Annotated[str, BeforeValidator(validation.branch_name)] = Field(
        description="The pull request's head branch: a name `git check-ref-format --branch` accepts (no "
        "control characters, space, `~ ^ : ? * [ \\`, `..`, `@{` or `//`; not starting with `-`, `/` or `.`; "
        "not ending with `/`, `.` or `.lock`). Shell metacharacters are allowed. With the GitHub App "
        "configured it must be the pull request's current head branch.",
        examples=["feature/login"],
        json_schema_extra={"minLength": 1, "maxLength": validation.MAX_BRANCH_LENGTH},
    )
    head_sha: str | None = Field(
        None,
        description="The commit to deploy; defaults to the pull request's head commit.",
        json_schema_extra={"pattern": f"^{validation.SHA.pattern}$"},
    )
    trigger: str | None = Field(
        None, description="`dashboard` marks deploys started from the dashboard; anything else is recorded as `api`."
    )
    environment: Annotated[str, BeforeValidator(validation.environment_name)] = Field(
        DEFAULT_ENVIRONMENT,
        description="The environment to deploy to; one of those the operator lists in PREVIEW_ENVIRONMENTS.",
        json_schema_extra={"pattern": validation.ENVIRONMENT_NAME.pattern},
    )
    title: str | None = Field(
        None,
        max_length=MAX_TITLE_LENGTH,
        description="The pull request's title, shown on the dashboard. Kept until a later deploy sends another; "
        "with the GitHub App configured, GitHub's title is used instead.",
    )

    @field_validator("title", mode="before")
    @classmethod
    def _title(cls, value: object) -> object:
        return value.strip() or None if isinstance(value, str) else value

    @field_validator("head_sha", mode="before")
    @classmethod
    def _commit(cls, value: object) -> object:
        return value if value is None else validation.commit_sha(value)


class EnvironmentQuery(BaseModel):
    environment: Annotated[str, BeforeValidator(validation.environment_name)] = Field(
        DEFAULT_ENVIRONMENT,
        description="The pull request's environment; any name with a record (a name the operator no longer "
        "lists included).",
        json_schema_extra={"pattern": validation.ENVIRONMENT_NAME.pattern},
    )


class HistoryQuery(EnvironmentQuery):
    limit: Annotated[int, BeforeValidator(partial(validation.page_limit, default=PAGE_SIZE, most=MAX_PAGE_SIZE))] = Field(
        PAGE_SIZE,
        description="How many deployments to answer with at most.",
        json_schema_extra={"minimum": 1, "maximum": MAX_PAGE_SIZE},
    )
    before: str | None = Field(None, description="The `next` of the previous page: answer the deployments after it.")


class LogQuery(BaseModel):
    after: int | None = Field(
        None,
        ge=0,
        le=MAX_SEQ,
        description="Answer the lines after this one (a `seq`, e.g. the `lastSeq` of the previous answer); "
        "without it, the last lines of the log.",
    )
    limit: Annotated[
        int, BeforeValidator(partial(validation.page_limit, default=livelogs.TAIL_LINES, most=livelogs.MAX_PAGE_LINES))
    ] = Field(
        livelogs.TAIL_LINES,
        description="How many lines to answer with at most.",
        json_schema_extra={"minimum": 1, "maximum": livelogs.MAX_PAGE_LINES},
    )

    @field_validator("after", mode="before")
    @classmethod
    def _no_after(cls, value: object) -> object:
        return value if value != "" else None


# A query's `repository`: `owner/repo`, or empty or absent for every one.
RepositoryFilter = Annotated[str | None, BeforeValidator(lambda value: validation.full_repository_name(value) if value else None)]


class PullRequestQuery(BaseModel):
    repository: RepositoryFilter = Field(None, description="Only this repository (`owner/repo`); an empty value means all.")
    status: EnvironmentState | None = Field(
        None, description="Only pull requests whose preview is in this state; an empty value means all."
    )

    @field_validator("status", mode="before")
    @classmethod
    def _every_state(cls, value: object) -> object:
        return value or None


class SessionRequest(BaseModel):
    """Other fields are ignored."""

    code: str = Field(
        min_length=1,
        description="The code of a one-time sign-in link (`/?code=…`, printed by `previewbot run` and "
        "`make signin` or `.venv/bin/previewbot signin`).",
    )


# -- answers -----------------------------------------------------------------------------------


class ErrorBody(_Answer):
    """Every error: a JSON object whose `error` says what went wrong."""

    error: str = Field(min_length=1)


class Conflict(ErrorBody):
    deployment_id: str | None = Field(description="The deployment that holds the branch.")


class NotFound(ErrorBody):
    """`status` is `idle` when the pull request has no live deployment; a path no route
    matches answers with `error` alone."""

    status: Literal["idle"] | None = None


class Health(_Answer):
    status: Literal["ok", "unavailable"]
    database: str = Field(description="`ok` or `down: <error type>`.")
    redis: str = Field(description="`ok` or `down: <error type>`.")
    github: bool = Field(description="Whether the GitHub App is configured.")


class AuthMethods(_Answer):
    github: bool = Field(
        description="Whether people may sign in with GitHub (`/auth/github`): GITHUB_CLIENT_ID and "
        "GITHUB_CLIENT_SECRET are set."
    )


class Session(_Answer):
    token: str = Field(
        min_length=1, description="A session token, used like an API token; listed and revocable as `session-…` "
        "(`github-…` for a GitHub sign-in)."
    )
    expires_at: str = Field(
        description="When the token stops being accepted (UTC, ISO 8601): 30 days on, 8 hours for a GitHub sign-in."
    )


class OpenApiDocument(BaseModel):
    """This document."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict
    paths: dict


class DeploymentRecord(Deployment):
    """A deployment record (`Deployment.to_json()`)."""

    # `to_json()` sends every field, so the document marks those with defaults required too.
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    deployment_id: str = Field(description="The same as `id`.")
    cost: float | None = Field(
        description="USD so far: `hourlyCost` for every hour from `createdAt` until the record ended, or until now "
        "while it runs; null when the hourly cost is unknown."
    )


class DeploymentState(DeploymentRecord):
    """A deployment as its environment's latest record (`Deployment.to_state_json()`)."""

    status: EnvironmentState = Field(description="The environment's state: `idle` once the record ended it.")
    record_status: RecordStatus = Field(description="The record's own status.")


class DestroyAccepted(DeploymentState):
    destroy: Literal["started", "queued"] = Field(
        description="`queued` when a job holds the branch: the teardown runs after it."
    )


class EnvironmentOfPullRequest(_Answer):
    environment: str = Field(description="The environment's name.")
    status: EnvironmentState = Field(description="The environment's state.")
    deployable: bool = Field(description="Whether it takes new deploys: false for a name the operator no longer lists.")
    deployment: DeploymentState | None = Field(description="Its latest deployment; null when it never had one.")


class EnvironmentList(_Answer):
    environments: list[EnvironmentOfPullRequest] = Field(
        description="The environments the operator lists, in that order, then any other with a record."
    )


class HistoryRecord(DeploymentRecord):
    """A deployment record in a pull request's history."""

    finished_at: str | None = Field(
        description="When the deploy itself ended (`deployed`, `failed` or `cancelled`); null while it runs."
    )


class ExtendAccepted(_Answer):
    expires_at: str | None = Field(description="The preview's new expiry (now + its TTL); null when it never expires.")


class DeployRefused(ErrorBody):
    code: Literal["budget_exceeded"] | None = Field(
        None, description="`budget_exceeded`: the repository's PREVIEW_MONTHLY_BUDGET is spent this month and this would be a new preview."
    )


class CostQuery(BaseModel):
    repository: RepositoryFilter = Field(None, description="Only this repository (`owner/repo`); unset, every one the token may see.")
    month: Annotated[str | None, BeforeValidator(lambda value: validation.month(value) if value else None)] = Field(
        None, description="`YYYY-MM`, a UTC month; unset, the current one."
    )


class PullRequestCost(_Answer):
    pr_number: int
    total: float = Field(description="USD spent on the pull request's previews in the month.")


class RepositoryCost(_Answer):
    repository: str
    total: float = Field(description="USD spent on the repository's previews in the month.")
    budget: float | None = Field(description="PREVIEW_MONTHLY_BUDGET, USD; null when there is none.")
    pull_requests: list[PullRequestCost] = Field(description="By pull request number.")


class CostReport(_Answer):
    month: str = Field(description="The UTC month, `YYYY-MM`.")
    total: float = Field(description="USD over every repository listed.")
    repositories: list[RepositoryCost] = Field(description="Those with a cost in the month, by name.")


class DeploymentPage(_Answer):
    deployments: list[HistoryRecord] = Field(max_length=MAX_PAGE_SIZE, description="Newest first.")
    next: str | None = Field(description="The `before` of the next page; null on the last one.")


class DeploymentEvent(_Answer):
    # Events recorded before records had statuses of their own say `idle` for `destroyed`.
    status: Literal[RecordStatus, "idle"]
    message: str | None
    at: str | None


class LogLine(_Answer):
    seq: int = Field(ge=1, description="The line's number in its deployment's log, from 1.")
    line: str
    at: str | None


class LogPage(_Answer):
    lines: list[LogLine] = Field(max_length=livelogs.MAX_PAGE_LINES, description="In `seq` order.")
    last_seq: int = Field(
        ge=0,
        description="The `seq` of the last line answered (`after`, or 0, when there is none): pass it as "
        "`after` to get the lines that follow.",
    )


class DeploymentDetail(DeploymentRecord):
    """A deployment with its status changes and log lines."""

    events: list[DeploymentEvent]
    logs: list[LogLine] = Field(max_length=1000)


class PullRequestCard(_Answer):
    """An open pull request the bot has seen, with its latest deployment."""

    repository: str
    pr_number: int
    title: str | None
    branch_name: str | None
    head_sha: str | None
    author: str | None
    created_at: str | None
    status: EnvironmentState = Field(description="The default environment's state (`preview`).")
    deployment: DeploymentState | None = Field(description="The default environment's latest deployment.")
    environments: list[EnvironmentOfPullRequest] = Field(
        description="Every environment: those the operator lists, in that order, then any other with a record."
    )
    can_write: bool = Field(
        description="Whether this token may deploy, redeploy, destroy and cancel here: a GitHub sign-in may only "
        "where the person can push."
    )


class PullRequestList(_Answer):
    pull_requests: list[PullRequestCard]
