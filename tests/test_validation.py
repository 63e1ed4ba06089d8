import pytest

from bot import validation


@pytest.mark.parametrize("name", ["main", "feat/$(reboot)", "a;b", "fix/ünïcode", "x" * 255, "release/1.2", "a|b&c`d`"])
def test_git_accepts_these_branch_names(name):
    assert validation.branch_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 256, "a\nb", "a b", "a..b", "-x", "x/", "x.lock", "a//b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "@", "a@{b", ".hidden", "a/.b", "\x00", 5, None])
def test_git_refuses_these_branch_names(name):
    with pytest.raises(validation.InvalidInput):
        validation.branch_name(name)


def test_pr_numbers():
    assert validation.pr_number("12") == 12
    for bad in ("0", "-1", "1.5", "²", "99999999999", "", "0x1"):
        with pytest.raises(validation.InvalidInput):
            validation.pr_number(bad)
