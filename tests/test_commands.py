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
        ("/preview frobnicate!", Command("help", unknown="frobnicate!")),
        ("/preview\r\n", Command("deploy")),
        ("/preview staging", Command("deploy", "staging")),
        ("/preview redeploy qa-2", Command("deploy", "qa-2")),
        ("/preview destroy staging", Command("destroy", "staging")),
        ("/preview down staging", Command("destroy", "staging")),
        ("/preview cancel", Command("cancel")),
        ("/preview Cancel Staging", Command("cancel", "staging")),
        ("/preview extend", Command("extend")),
        ("/preview extend staging", Command("extend", "staging")),
        ("/preview status staging", Command("help", unknown="status staging")),
        ("/preview destroy staging now", Command("help", unknown="destroy staging now")),
        ("/preview destroy status", Command("help", unknown="destroy status")),
        ("/preview " + "x" * 21, Command("help", unknown="x" * 21)),
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
