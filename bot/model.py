"""The one deployment model, used alike by the REST API, RQ jobs, Redis, SQLite and the WebSocket.

A preview is identified by (repository, pull request, environment): "1 branch = 1 VM" per named
environment. A deployment is one attempt to give that environment a branch's commit; its record
keeps a status for ever (the history). What people see of an environment, its state, is one of
the seed's four values and is derived from its latest record.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from .costs import cost_of
from .times import timestamp

DEFAULT_ENVIRONMENT = "preview"
# Environment names: short slugs, never a subcommand word or alias (`/preview destroy` must not
# deploy an environment called "destroy").
ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
RESERVED_NAMES = frozenset({"deploy", "redeploy", "destroy", "cancel", "status", "help", "extend", "up", "down", "stop"})

# The status of a deployment record (its history).
RecordStatus = Literal["deploying", "deployed", "failed", "cancelled", "superseded", "destroyed"]
# The state of an environment: what the dashboard, `GET .../deployment` and the WebSocket show.
EnvironmentState = Literal["idle", "deploying", "deployed", "failed"]
# Why an environment went back to idle, on WebSocket messages.
Outcome = Literal["cancelled", "destroyed", "expired"]

# A record in one of these is its environment's state; the others mean the environment is idle.
LIVE_STATUSES = ("deploying", "deployed", "failed")
# Records a job still works on.
ACTIVE_STATUSES = ("deploying",)


def utcnow() -> str:
    """Timestamps are ISO 8601 in UTC with milliseconds, which also sort as text."""
    return timestamp(datetime.now(timezone.utc))


def new_deployment_id() -> str:
    """Deployment ids are made where a deployment starts (web or worker), never by the database."""
    return uuid.uuid4().hex


class PreviewKey(NamedTuple):
    """The identity of a preview: one environment of one pull request."""

    repository: str
    pr_number: int
    environment: str = DEFAULT_ENVIRONMENT

    def __str__(self) -> str:
        return f"{self.repository}#{self.pr_number}:{self.environment}"


class Resource(BaseModel):
    """Something a provisioner made for a deployment, so people can find it in their cloud."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True, use_attribute_docstrings=True)

    kind: str
    """What it is, e.g. `ec2:instance`."""
    id: str
    """The cloud's id, e.g. `i-0abc…`."""
    type: str | None = None
    """Its size, e.g. `t3.small`."""
    region: str | None = None
    """Where it runs, e.g. `eu-west-1`."""


class Deployment(BaseModel):
    """One deployment of a branch to a preview environment. Python names are snake_case; the
    JSON form (API, Redis, RQ, WebSocket) is camelCase, the seed's field names."""

    # The attribute docstrings describe the fields in the API's OpenAPI document (bot.api).
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    id: str
    """The deployment's id (32 hex characters), made where it started."""
    repository: str
    """The base repository, `owner/repo`."""
    head_repository: str | None = None
    """The repository the branch lives in (a fork's name for fork pull requests)."""
    pr_number: int
    """The pull request's number."""
    environment: str = DEFAULT_ENVIRONMENT
    """The pull request's preview environment this deploys to."""
    branch_name: str
    """The pull request's head branch, as sent (not escaped)."""
    head_sha: str | None = None
    """The commit deployed, when known."""
    status: RecordStatus
    """The record's status: `superseded` once a newer deployment replaced it, `destroyed` once torn down."""
    preview_url: str | None = None
    """The preview's address once deployed."""
    error: str | None = None
    """Why the deployment failed."""
    provisioner: str | None = None
    """`simulated` or `command`."""
    trigger: str | None = None
    """What started it: `api`, `dashboard`, `comment`, `check_run`, `push`…"""
    requested_by: str | None = None
    """`token:<name>` or a GitHub login."""
    installation_id: int | None = None
    """The GitHub App installation serving the repository."""
    comment_id: int | None = None
    """The `/preview` comment that asked for it, when one did."""
    created_at: str
    """ISO 8601 in UTC with milliseconds, like every timestamp."""
    updated_at: str
    destroyed_at: str | None = None
    """When the preview was torn down."""
    replaces: str | None = None
    """The deployment whose environment this one took over; its job tears that down first when
    it was another branch."""
    teardown_error: str | None = None
    """Why tearing the environment down failed; the reconciler retries until it succeeds."""
    resources: tuple[Resource, ...] = ()
    """What the provisioner made for it, e.g. its EC2 instance."""
    hourly_cost: float | None = None
    """USD an hour while the preview runs, when known."""
    expires_at: str | None = None
    """When the deployed preview is destroyed unless someone extends it; null: never."""
    expired: bool = False
    """True once the preview was destroyed because it expired (its outcome is `expired`)."""
    # What the repository's `.github/preview.yml` says of the environment (bot.repo_config), as
    # read at the commit deployed; None (or empty) where the operator's setting applies.
    ttl_seconds: float | None = None
    """The repository's `ttl` in seconds, 0 = never expires."""
    vars: dict[str, str] = {}
    """The repository's non-secret `vars`; the provisioner gets them as `PREVIEW_VAR_<NAME>`."""
    start: str | None = None
    """The repository's `start` command, run on the preview VM (the EC2 provisioner's user data)."""
    health_check_path: str | None = None
    """The repository's `health_check.path`, requested on the preview URL before it is deployed."""
    health_check_timeout: float | None = None
    """The repository's `health_check.timeout` in seconds."""

    @classmethod
    def new(cls, *, repository: str, pr_number: int, branch_name: str, environment: str = DEFAULT_ENVIRONMENT, id: str | None = None, **fields) -> Deployment:
        """A new deployment, `deploying`, made where it starts."""
        now = utcnow()
        return cls(
            id=id or new_deployment_id(),
            repository=repository,
            pr_number=int(pr_number),
            environment=environment,
            branch_name=branch_name,
            head_repository=fields.pop("head_repository", None) or repository,
            status="deploying",
            created_at=now,
            updated_at=now,
            **fields,
        )

    @property
    def key(self) -> PreviewKey:
        return PreviewKey(self.repository, self.pr_number, self.environment)

    @property
    def state(self) -> EnvironmentState:
        """The state of the environment when this is its latest record."""
        return self.status if self.status in LIVE_STATUSES else "idle"

    @property
    def outcome(self) -> Outcome | None:
        """Why the environment is idle, when this record ended it."""
        if self.status == "destroyed" and self.expired:
            return "expired"
        return self.status if self.status in ("cancelled", "destroyed") else None

    def changed(self, **changes) -> Deployment:
        """A copy with `changes` (snake_case names), validated, stamped with a new `updated_at`."""
        if changes.get("status") in ("deploying", "deployed"):
            changes.setdefault("error", None)
        return Deployment.model_validate({**self.model_dump(), "updated_at": utcnow(), **changes})

    def to_json(self) -> dict:
        """The camelCase JSON object, with the seed's `deploymentId` beside `id` and the `cost` so far."""
        return {**self.model_dump(by_alias=True), "deploymentId": self.id, "cost": cost_of(self, now=datetime.now(timezone.utc))}

    def to_state_json(self) -> dict:
        """The JSON object where `status` means the environment's state (§ statuses)."""
        return {**self.to_json(), "status": self.state, "recordStatus": self.status}

    @classmethod
    def from_json(cls, data: dict | str | bytes) -> Deployment:
        if isinstance(data, (str, bytes)):
            return cls.model_validate_json(data)
        return cls.model_validate(data)

    def dumps(self) -> str:
        return self.model_dump_json(by_alias=True)

    # -- SQLite rows keep the seed's column names ------------------------------------------

    def to_row(self) -> dict:
        return {
            "id": self.id,
            "pr_id": self.pr_number,
            "environment": self.environment,
            "branch_name": self.branch_name,
            "status": self.status,
            "preview_url": self.preview_url,
            "error_message": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "repository": self.repository,
            "head_repository": self.head_repository,
            "head_sha": self.head_sha,
            "provisioner": self.provisioner,
            "trigger": self.trigger,
            "requested_by": self.requested_by,
            "installation_id": self.installation_id,
            "destroyed_at": self.destroyed_at,
            "replaces": self.replaces,
            "teardown_error": self.teardown_error,
            "resources": json.dumps([r.model_dump(by_alias=True) for r in self.resources]) if self.resources else None,
            "hourly_cost": self.hourly_cost,
            "expires_at": self.expires_at,
            "expired": int(self.expired),
        }

    @classmethod
    def from_row(cls, row: dict) -> Deployment:
        return cls(
            id=row["id"],
            pr_number=row["pr_id"],
            environment=row.get("environment") or DEFAULT_ENVIRONMENT,
            branch_name=row["branch_name"],
            status=row["status"],
            preview_url=row.get("preview_url"),
            error=row.get("error_message"),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            repository=row["repository"],
            head_repository=row.get("head_repository"),
            head_sha=row.get("head_sha"),
            provisioner=row.get("provisioner"),
            trigger=row.get("trigger"),
            requested_by=row.get("requested_by"),
            installation_id=row.get("installation_id"),
            destroyed_at=row.get("destroyed_at"),
            replaces=row.get("replaces"),
            teardown_error=row.get("teardown_error"),
            resources=json.loads(row["resources"]) if row.get("resources") else (),
            hourly_cost=row.get("hourly_cost"),
            expires_at=row.get("expires_at"),
            expired=bool(row.get("expired")),
        )

    def ws_message(self) -> dict:
        """The seed's WebSocket message (prNumber as a string), plus a few extras."""
        message = {
            "type": "deployment:update",
            "prNumber": str(self.pr_number),
            "branchName": self.branch_name,
            "repository": self.repository,
            "environment": self.environment,
            "status": self.state,
            "deploymentId": self.id,
            "headSha": self.head_sha,
            "updatedAt": self.updated_at,
        }
        if self.preview_url and self.state == "deployed":
            message["previewUrl"] = self.preview_url
        if self.error and self.state == "failed":
            message["error"] = self.error
        if self.outcome:
            message["outcome"] = self.outcome
        if self.state == "deployed":
            message["expiresAt"] = self.expires_at
        if self.hourly_cost is not None:
            message["hourlyCost"] = self.hourly_cost
            message["cost"] = cost_of(self, now=datetime.now(timezone.utc))
        return message
