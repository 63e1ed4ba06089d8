"""What the bot writes on GitHub, as pure functions of a deployment: the PR comment, the
check run and the deployment status.

Untrusted text (branch names, errors, URLs a provisioner printed, the words of a command) is
masked (§4.18) and made inert here: no markup, no `@` mention, no issue reference, no link but a
preview URL on a host the operator allows."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Mapping

from . import expiry
from .config import Settings
from .costs import cost_of
from .links import log_page_url
from .masking import Masker
from .model import DEFAULT_ENVIRONMENT, Deployment, PreviewKey

COMMENT_MARKER = "<!-- previewbot:status -->"
CHECK_NAME = "Preview"

# GitHub's limits: label 20, description 40, identifier 20 characters; three actions at most.
ACTIONS = {
    "deploy": {"label": "Deploy preview", "description": "Deploy this branch to a preview", "identifier": "deploy"},
    "redeploy": {"label": "Redeploy", "description": "Deploy this commit again", "identifier": "redeploy"},
    "destroy": {"label": "Destroy", "description": "Tear the preview down", "identifier": "destroy"},
    "retry": {"label": "Retry", "description": "Try the deploy again", "identifier": "retry"},
    "cancel": {"label": "Cancel", "description": "Stop this deploy and clean up", "identifier": "cancel"},
    "extend": {"label": "Extend", "description": "Keep the preview longer", "identifier": "extend"},
}

HELP = """\
**previewbot commands** (at the start of a line in a pull-request comment):

| command | what it does |
| --- | --- |
| `/preview` | deploy this branch to its preview, or redeploy it |
| `/preview ENV` | the same in environment ENV (e.g. `staging`) |
| `/preview destroy [ENV]` | tear the preview down |
| `/preview cancel [ENV]` | stop the deploy in progress and tear down what it built |
| `/preview extend [ENV]` | keep the preview for its whole time again, from now |
| `/preview status` | refresh this comment with every environment's state |
| `/preview help` | show this help |

Deploying needs write, maintain or admin permission on the repository. Each environment's \
**Preview** check run has the same actions as buttons."""

STATUS_WORDS = {
    "idle": "⚪ No preview running",
    "deploying": "🟡 Deploying…",
    "deployed": "🟢 Deployed",
    "failed": "🔴 Failed",
}


HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
BLOCK_ENTITIES = {**HTML_ENTITIES, "`": "&#96;", "[": "&#91;", "]": "&#93;"}
# Markdown's punctuation, plus `:` and `@`, where cmark-gfm's autolinks start (`https://…`,
# `a@b.c`), and `$`, where GitHub's math starts.
MARKDOWN_PUNCTUATION = frozenset("\\`*_{}[]()#+-.!|~:@$")
# After `@` or `#` it keeps GitHub from reading a mention (`@org/team`) or a reference (`fixes #1`).
ZERO_WIDTH_JOINER = "\u200d"


def text(value: object) -> str:
    """Untrusted text made inert in GitHub Markdown: `<img onerror=…>`, `[x](javascript:…)`,
    `https://evil.test`, `@org/team` and `fixes #1` show as the characters they are."""
    return _escape(value, join_after="@#")


def code(value: object) -> str:
    """Untrusted text as inline code that keeps every character (a branch name can be copied):
    GitHub makes no mention or reference inside `<code>`, and the escapes stop the markup and
    autolinks that Markdown would still make between the tags."""
    return f"<code>{_escape(value, join_after='')}</code>"


def _escape(value: object, *, join_after: str) -> str:
    out = []
    for char in str(value):
        if char in HTML_ENTITIES:
            out.append(HTML_ENTITIES[char])
        elif char in MARKDOWN_PUNCTUATION:
            out.append("\\" + char)
        elif char in "\r\n":
            out.append(" ")
        else:
            out.append(char)
        if char in join_after:
            out.append(ZERO_WIDTH_JOINER)
    return "".join(out)


def render_status_comment(
    environments: Mapping[str, Deployment | None],
    *,
    note: str | None = None,
    show_help: bool = False,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> str:
    """The one bot comment per pull request, found again by its hidden marker: a section per
    environment (name -> its current deployment, None when it never had one), in order.
    `settings` names the secrets to mask and the hosts a preview URL may link to; `now` decides
    the cost so far and whether the expiry warning shows."""
    settings = settings or Settings()
    now = now or datetime.now(timezone.utc)
    mask = Masker.from_settings(settings)
    lines = [COMMENT_MARKER, "### Preview environment" if list(environments) == [DEFAULT_ENVIRONMENT] else "### Preview environments", ""]
    for name, deployment in environments.items():
        if len(environments) > 1:
            lines += [f"#### {text(name)}", ""]
        lines += _environment_section(name, deployment, settings.for_environment(name), mask, now) + [""]
    if note:
        lines += [f"> {mask(note)}", ""]
    if show_help:
        lines += [HELP, ""]
    lines += [
        "<sub>Commands: `/preview [ENV]`, `/preview destroy [ENV]`, `/preview cancel [ENV]`, `/preview extend [ENV]`, "
        "`/preview status`, `/preview help`</sub>"
    ]
    return "\n".join(lines)


def _environment_section(name: str, deployment: Deployment | None, settings: Settings, mask: Masker, now: datetime) -> list[str]:
    if deployment is None:
        command = "/preview" if name == DEFAULT_ENVIRONMENT else f"/preview {name}"
        return [f"No preview has been deployed here yet. Comment `{command}` to deploy one."]
    status = deployment.state
    rows = [
        ("Status", STATUS_WORDS[status]),
        ("Branch", code(mask(deployment.branch_name))),
    ]
    if status == "deployed" and deployment.preview_url:
        rows.append(("Preview", _preview_link(mask(deployment.preview_url), settings)))
    if deployment.head_sha:
        rows.append(("Commit", code(deployment.head_sha[:12])))
    rows.append(("Logs", f"[deployment log]({log_page_url(settings, deployment.id)})"))
    if status == "deployed" and deployment.expires_at:
        rows.append(("Expires", text(_when(deployment.expires_at))))
    cost = cost_line(deployment, now=now)
    if cost:
        rows.append(("Cost", text(cost)))
    rows.append(("Updated", text(deployment.updated_at)))
    if status == "idle" and deployment.status == "cancelled":
        rows.append(("Cancelled", text(deployment.updated_at)))
    if status == "idle" and deployment.destroyed_at:
        rows.append(("Expired" if deployment.expired else "Destroyed", text(deployment.destroyed_at)))
    # Errors are blocks of code, which a table cell cannot hold: they follow the table.
    blocks = []
    if expiry.warning_due(deployment, now=now, warning_seconds=settings.ttl_warning_seconds):
        blocks += ["", f"> [!WARNING]\n> {expiry_warning(deployment, now=now, settings=settings)}"]
    if status == "failed" and deployment.error:
        blocks += ["", "**Error**", "", _error(deployment.error, mask, 1000)]
    if deployment.teardown_error:
        blocks += ["", "**Teardown failed; previewbot keeps retrying:**", "", _error(deployment.teardown_error, mask, 500)]
    return ["| | |", "| --- | --- |"] + [f"| **{k}** | {v} |" for k, v in rows] + blocks


def check_name(environment: str) -> str:
    """The check run of an environment: `Preview`, or `Preview (NAME)` for the others."""
    return CHECK_NAME if environment == DEFAULT_ENVIRONMENT else f"{CHECK_NAME} ({environment})"


def check_run_environment(name: str | None, external_id: str | None) -> str | None:
    """The environment a check run of ours is for: from its external id (`"<pr>:<env>"`), else
    from its name; None when it is not one of ours."""
    _pr, _, environment = str(external_id or "").partition(":")
    if environment and name == check_name(environment):
        return environment
    if name == CHECK_NAME:
        return DEFAULT_ENVIRONMENT
    match = re.fullmatch(r"Preview \(([a-z][a-z0-9-]{0,19})\)", name or "")
    return match.group(1) if match else None


def check_run_fields(
    deployment: Deployment | None, *, settings: Settings | None = None, config_error: str | None = None, now: datetime | None = None
) -> dict:
    """Status, conclusion, output and buttons of the Preview check run for a deployment.
    `settings` names the secrets to mask and the hosts a preview URL may link to. An idle
    environment whose `.github/preview.yml` is wrong (`config_error`) fails with the problems.
    From PREVIEW_TTL_WARNING before its expiry (as of `now`), a preview offers Extend."""
    settings = settings or Settings()
    now = now or datetime.now(timezone.utc)
    mask = Masker.from_settings(settings)
    status = deployment.state if deployment else "idle"
    branch = code(mask(deployment.branch_name)) if deployment else ""
    # The details link leads to the deployment's log page, live while it deploys.
    details = {"details_url": log_page_url(settings, deployment.id)} if deployment else {}
    if status == "deploying":
        return {
            **details,
            "status": "in_progress",
            "output": {"title": "Deploying preview", "summary": f"Deploying {branch}…"},
            "actions": [ACTIONS["cancel"]],
        }
    if status == "deployed":
        environment = settings.for_environment(deployment.environment)
        url = mask(deployment.preview_url or "")
        summary = f"The preview of {branch} is live at {_preview_link(url, environment)}"
        facts = [cost_line(deployment, now=now)]
        if deployment.expires_at:
            facts.append(f"Expires {_when(deployment.expires_at)}.")
        summary += "".join(f"\n\n{text(fact)}" for fact in facts if fact)
        actions = [ACTIONS["redeploy"], ACTIONS["destroy"]]
        if expiry.warning_due(deployment, now=now, warning_seconds=environment.ttl_warning_seconds):
            summary += f"\n\n**{expiry_warning(deployment, now=now, settings=environment)}**"
            actions.append(ACTIONS["extend"])
        return {
            **details,
            "status": "completed",
            "conclusion": "success",
            "output": {"title": "Preview deployed", "summary": summary + _teardown_note(deployment, mask)},
            "actions": actions,
        }
    if status == "failed":
        error = _error(deployment.error or "unknown error", mask, 2000)
        return {
            **details,
            "status": "completed",
            "conclusion": "failure",
            "output": {"title": "Preview failed", "summary": f"The deploy of {branch} failed:\n\n{error}{_teardown_note(deployment, mask)}"},
            "actions": [ACTIONS["retry"]],
        }
    if config_error:
        return {
            "status": "completed",
            "conclusion": "failure",
            "output": {"title": "Preview configuration invalid", "summary": _config_errors(config_error, mask)},
            "actions": [ACTIONS["retry"]],
        }
    summary = "No preview is running. Click **Deploy preview** or comment `/preview`."
    if deployment and deployment.status == "cancelled":
        summary = f"The deploy was cancelled. {summary}"
    elif deployment and deployment.expired:
        summary = f"The preview expired and was destroyed. {summary}"
    elif deployment and deployment.destroyed_at:
        summary = f"The preview was destroyed. {summary}"
    return {
        **details,
        "status": "completed",
        "conclusion": "neutral",
        "output": {"title": "No preview running", "summary": summary},
        "actions": [ACTIONS["deploy"]],
    }


def _config_errors(config_error: str, mask: Masker) -> str:
    return f"`.github/preview.yml` has errors, so nothing deploys until they are fixed:\n\n{_error(config_error, mask, 2000)}"


def _teardown_note(deployment: Deployment, mask: Masker) -> str:
    if not deployment.teardown_error:
        return ""
    return f"\n\n**Teardown failed; previewbot keeps retrying:**\n\n{_error(deployment.teardown_error, mask, 1000)}"


def deployment_status_fields(deployment: Deployment, state: str, *, settings: Settings | None = None) -> dict:
    """A GitHub deployment status: its state, a description (plain text, at most 140 characters,
    masked, no mention or reference) and the environment URL when its host is allowed."""
    settings = settings or Settings()
    mask = Masker.from_settings(settings)
    words = {"in_progress": "Deploying the preview", "success": "Preview deployed", "inactive": "Preview expired" if deployment.expired else "Preview destroyed"}
    if state == "failure":
        description = _plain("Failed: " + mask(deployment.error or "unknown error"))
    else:
        description = words.get(state, state)
    fields = {"state": state, "description": _shorten(description, 140), "log_url": log_page_url(settings, deployment.id)}
    url = mask(deployment.preview_url or "")
    if state == "success" and settings.for_environment(deployment.environment).allows_url(url):
        fields["environment_url"] = url
    if state == "inactive":
        fields["auto_inactive"] = False
    return fields


def kept_preview_note(deployment: Deployment) -> str:
    """What the comment says of a redeploy that failed or was cancelled while the last good
    preview kept running."""
    what = "was cancelled" if deployment.status == "cancelled" else "failed (see its check run and log)"
    commit = f" of {deployment.head_sha[:12]}" if deployment.head_sha else ""
    return f"The redeploy{commit} to {text(deployment.environment)} {what}; the last good preview is still running."


def cost_line(deployment: Deployment, *, now: datetime) -> str | None:
    """`$0.42 so far, $0.0208/h`, or None when the hourly cost is unknown."""
    if deployment.hourly_cost is None:
        return None
    spent = cost_of(deployment, now=now) or 0.0
    return f"${spent:,.2f} so far, ${deployment.hourly_cost:,.4f}/h"


def expiry_warning(deployment: Deployment, *, now: datetime, settings: Settings) -> str:
    """The warning before a preview expires, with its time and how to keep it."""
    left = expiry.describe_left(expiry.seconds_left(deployment, now=now) or 0)
    command = "/preview extend" if deployment.environment == DEFAULT_ENVIRONMENT else f"/preview extend {deployment.environment}"
    ttl = expiry.describe_left(expiry.ttl_for(deployment, settings))
    return (
        f"This preview expires {_when(deployment.expires_at)} (in {left}) and will be destroyed. "
        f"Click Extend on the check run or comment `{command}` to keep it {ttl} from now."
    )


def _when(moment: str) -> str:
    """A timestamp as people read it: `2026-12-02 14:05 UTC`."""
    return f"{moment[:10]} {moment[11:16]} UTC"


def environment_name(key: PreviewKey) -> str:
    """The GitHub deployment's environment: `NAME-pr-N`."""
    return f"{key.environment}-pr-{int(key.pr_number)}"


def _preview_link(url: str, settings: Settings) -> str:
    """The preview URL: a link when its host is one the operator allows, else inert code."""
    if not settings.allows_url(url):
        return code(url)
    return f'<a href="{"".join(HTML_ENTITIES.get(char, char) for char in url)}">{_escape(url, join_after="")}</a>'


def _error(value: str, mask: Masker, limit: int) -> str:
    """An error as a block of code: masked before it is shortened (half a secret is no mask),
    then HTML-escaped inside `<pre>`, so nothing in it can end the block, and GitHub makes no
    mention, reference or link inside. Backticks and brackets are entities too, so even a
    renderer that read Markdown there would find no code fence to break out of and no link."""
    shortened = re.sub(r"\r\n?", "\n", _shorten(mask(value), limit))
    return f"<pre>{''.join(BLOCK_ENTITIES.get(char, char) for char in shortened)}</pre>"


def _plain(value: str) -> str:
    """Text GitHub shows unrendered: one line, no mention, no reference."""
    return re.sub(r"[\r\n]+", " ", value).replace("@", "@" + ZERO_WIDTH_JOINER).replace("#", "#" + ZERO_WIDTH_JOINER)


def _shorten(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"
