import pytest

from bot.commands import Command, parse_command


@pytest.mark.parametrize(
    "body, expected",
    [
        ("/preview", Command("deploy")),
        ("  /PREVIEW  ", Command("deploy")),
        ("/Preview Destroy", Command("destroy")),
        ("/preview\tstatus", Command("status")),
        ("/preview help", Command("help")),
        ("/preview redeploy", Command("deploy")),
        ("LGTM!\n/preview", Command("deploy")),
        ("/preview frobnicate", Command("help", unknown="frobnicate")),
        ("/preview destroy please", Command("destroy")),
        ("/preview\r\n", Command("deploy")),
    ],
)
def test_commands(body, expected):
    assert parse_command(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        None, "", "please /preview", "`/preview`", "> /preview", ">/preview destroy",
        "```\n/preview\n```", "~~~\n/preview destroy\n~~~", "/previews", "/preview-all", "//preview",
        "    \t/preview", "x" * 70000 + "\n/preview",
    ],
)
def test_not_commands(body):
    assert parse_command(body) is None


def test_first_command_wins_and_code_blocks_are_skipped():
    assert parse_command("```\n/preview destroy\n```\n/preview status\n/preview") == Command("status")
