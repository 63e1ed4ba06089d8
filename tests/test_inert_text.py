"""Untrusted text is inert on GitHub (design §4.18): branch names, errors and URLs in the PR
comment, the check run and the deployment status mention nobody, reference no issue, link
nowhere but to a preview on a host the operator allows, and errors stay inside their block.
Pure rendering, read through a model of GitHub's Markdown (`tests.github_markdown`)."""

from __future__ import annotations

import html
import re

import pytest

from bot.config import ConfigError, load_settings
from bot.links import log_page_url
from bot.model import Deployment
from bot.render import check_run_fields, deployment_status_fields, kept_preview_note, render_status_comment, text

from .github_markdown import problems, rendered, shown

# A valid git branch name that mentions a team, references an issue and names a host.
BRANCH = "@org/team/fixes-#1/www.evil.test"
ERROR = (
    "@org/team fixes #1: see [x](https://evil.test) or https://evil.test, mail a@evil.test\n"
    "```\n</pre><img src=x onerror=alert(1)>\n```\n`inline` $x$ :smile:"
)
ALLOWED_URL = "https://preview-1.app.example.com"


def deployment(status: str, *, preview_url: str | None = ALLOWED_URL, environment: str = "preview") -> Deployment:
    return Deployment(
        id="d" * 32,
        repository="octo/app",
        pr_number=1,
        environment=environment,
        branch_name=BRANCH,
        head_sha="1" * 40,
        status=status,
        preview_url=preview_url if status == "deployed" else None,
        error=ERROR if status == "failed" else None,
        teardown_error=f"teardown: {ERROR}",
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:00.000Z",
    )


@pytest.mark.parametrize("status", ["deploying", "deployed", "failed"])
def test_branch_names_and_errors_mention_reference_and_link_nothing(status):
    settings = load_settings({})
    shown_deployment = deployment(status)
    comment = render_status_comment({"preview": shown_deployment}, settings=settings)
    fields = check_run_fields(shown_deployment, settings=settings)
    links = (ALLOWED_URL,) if status == "deployed" else ()
    for where, markdown in {"comment": comment, "check title": fields["output"]["title"], "check summary": fields["output"]["summary"]}.items():
        assert problems(markdown, links=links) == [], (where, markdown)
    # What was made inert is still there to read, character for character.
    assert BRANCH in shown(comment) and BRANCH in shown(fields["output"]["summary"])
    if status == "failed":
        assert ERROR in shown(comment) and ERROR in shown(fields["output"]["summary"])
    assert f"teardown: {ERROR}" in shown(comment)


def test_an_error_stays_inside_its_block():
    summary = rendered(check_run_fields(deployment("failed"))["output"]["summary"])
    blocks = re.findall(r"<pre>(.*?)</pre>", summary, re.DOTALL)
    assert [html.unescape(block) for block in blocks] == [ERROR, f"teardown: {ERROR}"]
    assert "<img" not in summary and "<code>inline</code>" not in summary


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.test/x",
        "https://preview-1.app.example.com.evil.test",
        "https://preview-1.app.example.com\\@evil.test",
        "https://user@preview-1.app.example.com",
        "javascript:alert(1)//.example.com",
        "https://preview-1.app.example.com/\" onmouseover=\"x",
        "https://preview-1.app.example.com/a|b",
    ],
)
def test_a_preview_url_outside_the_allowed_hosts_is_shown_but_not_linked(url):
    settings = load_settings({})
    deployed = deployment("deployed", preview_url=url)
    comment = render_status_comment({"preview": deployed}, settings=settings)
    fields = check_run_fields(deployed, settings=settings)
    for markdown in (comment, fields["output"]["summary"]):
        assert problems(markdown) == [], markdown
        assert url in shown(markdown)
    assert fields["details_url"] == log_page_url(settings, deployed.id)  # the log page, never the preview
    assert "environment_url" not in deployment_status_fields(deployed, "success", settings=settings)


def test_a_preview_url_on_an_allowed_host_is_a_link_everywhere():
    settings = load_settings({})
    deployed = deployment("deployed")
    comment = render_status_comment({"preview": deployed}, settings=settings)
    fields = check_run_fields(deployed, settings=settings)
    for markdown in (comment, fields["output"]["summary"]):
        assert problems(markdown, links=(ALLOWED_URL,)) == []
        assert f'<a href="{ALLOWED_URL}">' in rendered(markdown)
    assert fields["details_url"] == log_page_url(settings, deployed.id)
    assert deployment_status_fields(deployed, "success", settings=settings)["environment_url"] == ALLOWED_URL


def test_each_environment_links_only_to_its_own_allowed_hosts():
    settings = load_settings(
        {
            "PREVIEW_ENVIRONMENTS": "preview,staging",
            "PREVIEW_URL_TEMPLATE": "https://{pr}.{repo}.previews.test",
            "PREVIEW_ENV_STAGING_URL_ALLOWED_HOSTS": ".staging.test",
        }
    )
    staging_url, preview_url = "https://1.app.staging.test", "https://1.app.previews.test"
    staging = deployment("deployed", preview_url=staging_url, environment="staging")
    preview = deployment("deployed", preview_url=preview_url)
    assert preview_url in rendered(check_run_fields(preview, settings=settings)["output"]["summary"]).split('href="')[1]
    # The other environment's host is not allowed.
    assert 'href="' + preview_url not in rendered(check_run_fields(staging.model_copy(update={"preview_url": preview_url}), settings=settings)["output"]["summary"])
    comment = render_status_comment({"preview": preview, "staging": staging}, settings=settings)
    assert problems(comment, links=(staging_url, preview_url)) == []


def test_the_deployment_status_description_is_one_short_line_that_mentions_nobody():
    failed = deployment("failed").model_copy(update={"error": ERROR * 3})
    description = deployment_status_fields(failed, "failure")["description"]
    assert len(description) <= 140 and "\n" not in description
    assert description.startswith("Failed: @\u200dorg/team fixes #\u200d1")
    assert not re.search(r"@\w|#\d", description)
    assert deployment_status_fields(failed, "inactive") == {"state": "inactive", "description": "Preview destroyed", "auto_inactive": False,
                                                            "log_url": log_page_url(load_settings({}), failed.id)}


def test_text_is_inert_outside_code_too():
    """`text()` is what the bot's notes put untrusted words in (e.g. an unknown command)."""
    words = "@org/team fixes #1 [x](https://evil.test) https://evil.test www.evil.test a@evil.test"
    assert problems(f"> `/preview {text(words)}` is not a command I know.") == []
    assert problems(f"> No preview is running in {text(words)}.") == []
    assert words in shown(text(words))


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (".example.com",)),
        ({"PREVIEW_URL_TEMPLATE": "https://{pr}-preview.Acme.io:8443/{branch}"}, ("-preview.acme.io",)),
        ({"PREVIEW_URL_TEMPLATE": "https://previews.acme.io/{repo}/{pr}"}, ("previews.acme.io",)),
        ({"PREVIEW_URL_TEMPLATE": "https://{repo}.{branch}"}, ()),
        ({"PREVIEW_URL_ALLOWED_HOSTS": ".a.test, B.test"}, (".a.test", "b.test")),
    ],
)
def test_allowed_hosts_default_to_the_templates_host_after_its_last_placeholder(env, expected):
    assert load_settings(env).url_allowed_hosts == expected


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"PREVIEW_URL_ALLOWED_HOSTS": "https://a.test"}, "PREVIEW_URL_ALLOWED_HOSTS"),
        ({"PREVIEW_URL_ALLOWED_HOSTS": ".a.test,,b.test"}, "PREVIEW_URL_ALLOWED_HOSTS"),
        ({"PREVIEW_URL_ALLOWED_HOSTS": "*.a.test"}, "PREVIEW_URL_ALLOWED_HOSTS"),
        ({"PREVIEW_ENVIRONMENTS": "preview,staging", "PREVIEW_ENV_STAGING_URL_ALLOWED_HOSTS": "a.test/x"}, "PREVIEW_ENV_STAGING_URL_ALLOWED_HOSTS"),
    ],
)
def test_a_bad_allowed_hosts_value_stops_start_up_naming_the_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(variable) and "\n" not in str(info.value)


def test_the_note_of_a_redeploy_that_left_the_last_good_preview_running():
    redeploy = Deployment.new(repository="octo/app", pr_number=1, branch_name="feat", environment="staging", head_sha="b" * 40)
    failed = kept_preview_note(redeploy.changed(status="failed", error="unhealthy"))
    assert failed == f"The redeploy of {'b' * 12} to staging failed (see its check run and log); the last good preview is still running."
    assert "was cancelled;" in kept_preview_note(redeploy.changed(status="cancelled"))
