"""What the bot writes on GitHub, as pure functions of a deployment: the PR comment, the
check run and the deployment status."""

from __future__ import annotations

import html
import re
from typing import Mapping

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
}

HELP = """\
**previewbot commands** (at the start of a line in a pull-request comment):

| command | what it does |
| --- | --- |
| `/preview` | deploy this branch to its preview, or redeploy it |
| `/preview ENV` | the same in environment ENV (e.g. `staging`) |
| `/preview destroy [ENV]` | tear the preview down |
| `/preview cancel [ENV]` | stop the deploy in progress and tear down what it built |
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


def text(value: object) -> str:
    """Untrusted text (branch names, errors) made inert in GitHub Markdown: HTML-escaped and
    with Markdown punctuation backslash-escaped, so `<img onerror=…>` or `[x](javascript:…)`
    show as the characters they are."""
    escaped = html.escape(str(value), quote=True)
    out = []
    for char in escaped:
        if char in "\\`*_{}[]()#+-.!|~":
            out.append("\\" + char)
        elif char in "\r\n":
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def render_status_comment(environments: Mapping[str, Deployment | None], *, note: str | None = None, show_help: bool = False) -> str:
    """The one bot comment per pull request, found again by its hidden marker: a section per
    environment (name -> its current deployment, None when it never had one), in order."""
    lines = [COMMENT_MARKER, "### Preview environment" if list(environments) == [DEFAULT_ENVIRONMENT] else "### Preview environments", ""]
    for name, deployment in environments.items():
        if len(environments) > 1:
            lines += [f"#### {text(name)}", ""]
        lines += _environment_section(name, deployment) + [""]
    if note:
        lines += [f"> {note}", ""]
    if show_help:
        lines += [HELP, ""]
    lines += ["<sub>Commands: `/preview [ENV]`, `/preview destroy [ENV]`, `/preview cancel [ENV]`, `/preview status`, `/preview help`</sub>"]
    return "\n".join(lines)


def _environment_section(name: str, deployment: Deployment | None) -> list[str]:
    if deployment is None:
        command = "/preview" if name == DEFAULT_ENVIRONMENT else f"/preview {name}"
        return [f"No preview has been deployed here yet. Comment `{command}` to deploy one."]
    status = deployment.state
    rows = [
        ("Status", STATUS_WORDS[status]),
        ("Branch", f"<code>{text(deployment.branch_name)}</code>"),
    ]
    if status == "deployed" and deployment.preview_url:
        rows.append(("Preview", _link(deployment.preview_url)))
    if deployment.head_sha:
        rows.append(("Commit", f"<code>{text(deployment.head_sha[:12])}</code>"))
    rows.append(("Updated", text(deployment.updated_at)))
    if status == "failed" and deployment.error:
        rows.append(("Error", text(_shorten(deployment.error, 1000))))
    if status == "idle" and deployment.status == "cancelled":
        rows.append(("Cancelled", text(deployment.updated_at)))
    if status == "idle" and deployment.destroyed_at:
        rows.append(("Destroyed", text(deployment.destroyed_at)))
    if deployment.teardown_error:
        rows.append(("Teardown", f"failed, retrying: {text(_shorten(deployment.teardown_error, 500))}"))
    return ["| | |", "| --- | --- |"] + [f"| **{k}** | {v} |" for k, v in rows]


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


def check_run_fields(deployment: Deployment | None) -> dict:
    """Status, conclusion, output and buttons of the Preview check run for a deployment."""
    status = deployment.state if deployment else "idle"
    branch = text(deployment.branch_name) if deployment else ""
    if status == "deploying":
        return {
            "status": "in_progress",
            "output": {"title": "Deploying preview", "summary": f"Deploying <code>{branch}</code>…"},
            "actions": [ACTIONS["cancel"]],
        }
    if status == "deployed":
        url = deployment.preview_url or ""
        return {
            "status": "completed",
            "conclusion": "success",
            "details_url": url if url.startswith("https://") or url.startswith("http://") else None,
            "output": {"title": "Preview deployed", "summary": f"The preview of <code>{branch}</code> is live at {_link(url)}{_teardown_note(deployment)}"},
            "actions": [ACTIONS["redeploy"], ACTIONS["destroy"]],
        }
    if status == "failed":
        error = text(_shorten(deployment.error or "unknown error", 2000))
        return {
            "status": "completed",
            "conclusion": "failure",
            "output": {"title": "Preview failed", "summary": f"The deploy of <code>{branch}</code> failed:\n\n{error}{_teardown_note(deployment)}"},
            "actions": [ACTIONS["retry"]],
        }
    summary = "No preview is running. Click **Deploy preview** or comment `/preview`."
    if deployment and deployment.status == "cancelled":
        summary = f"The deploy was cancelled. {summary}"
    elif deployment and deployment.destroyed_at:
        summary = f"The preview was destroyed. {summary}"
    return {
        "status": "completed",
        "conclusion": "neutral",
        "output": {"title": "No preview running", "summary": summary},
        "actions": [ACTIONS["deploy"]],
    }


def _teardown_note(deployment: Deployment) -> str:
    if not deployment.teardown_error:
        return ""
    return f"\n\n**Teardown failed; previewbot keeps retrying:** {text(_shorten(deployment.teardown_error, 1000))}"


def environment_name(key: PreviewKey) -> str:
    """The GitHub deployment's environment: `NAME-pr-N`."""
    return f"{key.environment}-pr-{int(key.pr_number)}"


def _link(url: str) -> str:
    if not (url.startswith("https://") or url.startswith("http://")):
        return text(url)
    safe = html.escape(url, quote=True)
    return f'<a href="{safe}">{safe}</a>'


def _shorten(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"
