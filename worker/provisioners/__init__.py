"""Provisioners: what actually creates and removes a branch's environment.

One small interface, `deploy(request) -> ProvisionResult` and `destroy(request)`, and one
registry of provisioners by name. Each provisioner is a module of this package with a
`from_settings(settings)` function and its own section of the settings (bot/config.py), so a
new cloud is one new module, one name in `REGISTRY` and in `bot.config.PROVISIONERS`. Modules
are imported when first used: a worker that never deploys to EC2 never loads boto3.
"""

from __future__ import annotations

import importlib
import re
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, runtime_checkable

from bot.config import Settings
from bot.model import DEFAULT_ENVIRONMENT, PreviewKey, Resource

LOCK_LOST = "Deploy stopped: the branch lock was lost (its lease ran out or Redis restarted). Retry to deploy again."

# Name → module of this package. bot.config.PROVISIONERS lists the same names (bot/ never
# imports worker/), and a test keeps the two equal.
REGISTRY = {"simulated": ".simulated", "command": ".command", "ec2": ".ec2"}


class ProvisionError(Exception):
    """Provisioning failed; the message is shown to people, so it says what went wrong."""


@dataclass
class ProvisionRequest:
    repository: str
    pr_number: int
    branch: str
    sha: str | None
    deployment_id: str
    environment: str = DEFAULT_ENVIRONMENT
    preview_url: str | None = None
    log: Callable[[str], None] = field(default=lambda line: None, repr=False)
    # Set when the deploy must stop: a cancel, or the job lost its branch lock.
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    # The repository's `start` command and `vars` (.github/preview.yml), for provisioners that
    # run the code themselves (the ec2 provisioner's default user data).
    start: str | None = None
    vars: dict[str, str] = field(default_factory=dict)
    # A short-lived download link of the commit's source archive, asked for only when a
    # provisioner needs one (None in local mode, where there is no GitHub to ask).
    source_archive: Callable[[], str | None] = field(default=lambda: None, repr=False)

    @property
    def key(self) -> PreviewKey:
        return PreviewKey(self.repository, self.pr_number, self.environment)


@dataclass(frozen=True)
class ProvisionResult:
    """What a deploy built: where people reach it, what it runs on and what that costs."""

    url: str
    resources: tuple[Resource, ...] = ()
    hourly_cost: float | None = None


class Provisioner(Protocol):
    name: str

    def deploy(self, request: ProvisionRequest) -> ProvisionResult: ...

    def destroy(self, request: ProvisionRequest) -> None: ...


@runtime_checkable
class KeepsPrevious(Protocol):
    """A provisioner whose deploy builds the new preview beside the running one (EC2: a new
    instance), so a redeploy that fails, is cancelled or never gets healthy leaves the last good
    preview running. The job calls `retire` once the new one is deployed, `discard` otherwise."""

    def retire(self, request: ProvisionRequest, result: ProvisionResult) -> None: ...

    def discard(self, request: ProvisionRequest, result: ProvisionResult) -> None: ...


@dataclass(frozen=True)
class TaggedResource:
    """A resource found in the cloud by the tags a provisioner put on it."""

    id: str
    key: PreviewKey
    deployment_id: str
    created_at: float  # epoch seconds


@runtime_checkable
class TracksResources(Protocol):
    """A provisioner whose resources can be listed by their tags, so the reconciler can remove
    those that no live deployment owns (orphans)."""

    def tagged_resources(self) -> list[TaggedResource]: ...

    def remove_resources(self, ids: Iterable[str]) -> None: ...


def branch_slug(branch: str) -> str:
    """A DNS-safe label from a branch name: `feat/Login_page` → `feat-login-page`."""
    slug = re.sub(r"[^a-z0-9]+", "-", branch.lower()).strip("-")
    return slug[:50].strip("-") or "branch"


def render_url(template: str, request: ProvisionRequest, **addresses: str) -> str:
    """PREVIEW_URL_TEMPLATE for `request`; `addresses` are what only some provisioners know
    (`public_dns`, `public_ip`)."""
    owner, _, repo = request.repository.partition("/")
    return template.format(
        environment=request.environment,
        pr=request.pr_number,
        repo=branch_slug(repo),
        owner=branch_slug(owner),
        branch=branch_slug(request.branch),
        **addresses,
    )


def make_provisioner(settings: Settings) -> Provisioner:
    """The provisioner PREVIEW_PROVISIONER names, built from its settings."""
    module = importlib.import_module(REGISTRY[settings.provisioner], __package__)
    return module.from_settings(settings)
