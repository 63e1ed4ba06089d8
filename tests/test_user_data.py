"""The default EC2 user data, rendered and run for real under bash: stand-ins for `curl` (it
serves a real tarball shaped like GitHub's) and `docker` record how they were called, and the
real `tar` unpacks the archive."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bot.config import USER_DATA_PLACEHOLDERS
from worker.provisioners import ProvisionError, ProvisionRequest
from worker.provisioners.user_data import DEFAULT_USER_DATA, render_user_data

LINK = "https://codeload.example.test/octo/app/legacy.tar.gz/abc?token=SHORT-lived"
# Records its argv and the variables the script exported, as JSON lines.
RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"argv": [os.path.basename(sys.argv[0])] + sys.argv[1:], "cwd": os.getcwd(),
                        "env": {{k: v for k, v in os.environ.items() if k.startswith(("FEATURE", "QUOTE"))}}}}) + "\\n")
"""
CURL = RECORDER + f"""
output = sys.argv[sys.argv.index("--output") + 1]
open(output, "wb").write(open(os.environ["ARCHIVE"], "rb").read())
"""


def archive(path: Path, files: dict[str, str]) -> Path:
    """A tarball like GitHub's: everything under one `owner-repo-sha/` directory."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"octo-app-abc1234/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def run_user_data(tmp_path: Path, files: dict[str, str], *, link: str | None = LINK, **request_fields) -> tuple[subprocess.CompletedProcess, list[dict]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("curl", CURL), ("docker", RECORDER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    request = ProvisionRequest(repository="octo/app", pr_number=7, branch="feat/x';touch pwned;'", sha="a" * 40, deployment_id="d1", **request_fields)
    script = tmp_path / "user-data.sh"
    script.write_text(render_user_data(DEFAULT_USER_DATA, request, link))
    record = tmp_path / "calls.jsonl"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PREVIEW_APP_DIR": str(tmp_path / "srv"),
        "RECORD": str(record),
        "ARCHIVE": str(archive(tmp_path / "source.tar.gz", files)),
    }
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return done, calls


def test_it_downloads_the_short_lived_link_unpacks_it_and_starts_docker_compose_with_the_vars(tmp_path):
    done, calls = run_user_data(tmp_path, {"compose.yaml": "services: {}\n"}, vars={"FEATURE_X": "1", "QUOTE": "it's $(not) run"})
    assert done.returncode == 0, done.stderr
    curl, docker = calls
    assert curl["argv"][0] == "curl" and curl["argv"][-1] == LINK
    assert docker["argv"] == ["docker", "compose", "-f", "compose.yaml", "up", "-d"]
    assert docker["cwd"] == str(tmp_path / "srv") and (tmp_path / "srv" / "compose.yaml").exists()
    assert docker["env"] == {"FEATURE_X": "1", "QUOTE": "it's $(not) run"}
    assert not (tmp_path / "srv" / ".source.tar.gz").exists()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "srv" / "pwned").exists()


def test_the_repositorys_start_command_runs_in_the_unpacked_source(tmp_path):
    files = {"compose.yaml": "services: {}\n", "bin/serve": RECORDER}
    done, calls = run_user_data(tmp_path, files, start="bin/serve --port 8080 'two words'", vars={"FEATURE_Y": "on"})
    assert done.returncode == 0, done.stderr
    assert calls[-1]["argv"] == ["serve", "--port", "8080", "two words"]
    assert calls[-1]["env"] == {"FEATURE_Y": "on"}
    assert not any(call["argv"][0] == "docker" for call in calls)  # `start` wins over the compose file


def test_without_a_compose_file_or_a_start_command_it_fails_and_says_why(tmp_path):
    done, calls = run_user_data(tmp_path, {"README.md": "hi\n"}, link=None)
    assert done.returncode == 1
    assert "nothing to start" in done.stderr
    assert calls == []  # local mode: no download


def test_every_placeholder_is_rendered_and_values_are_quoted():
    template = " ".join(f"{{{{{name}}}}}" for name in USER_DATA_PLACEHOLDERS)
    request = ProvisionRequest(repository="octo/app", pr_number=7, branch="a b", sha=None, deployment_id="d1", start="make up", vars={"A": "1"})
    assert render_user_data(template, request, "https://x.test/a?b") == "'https://x.test/a?b' 'make up' export A=1 octo/app 7 preview 'a b' '' d1"


def test_bad_variable_names_and_oversized_user_data_are_refused():
    request = ProvisionRequest(repository="octo/app", pr_number=7, branch="b", sha=None, deployment_id="d1", vars={"1BAD": "x"})
    with pytest.raises(ProvisionError, match="not a variable name"):
        render_user_data(DEFAULT_USER_DATA, request, None)
    big = ProvisionRequest(repository="octo/app", pr_number=7, branch="b", sha=None, deployment_id="d1", start="x" * 17000)
    with pytest.raises(ProvisionError, match="at most 16384"):
        render_user_data(DEFAULT_USER_DATA, big, None)
