"""No provisioner process outlives the worker that started it, however the worker ends: a real
`terraform` left behind would keep running (and billing) with nobody watching it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import httpx
import pytest

from .harness import process_alive, wait_for

pytestmark = pytest.mark.slow

# The deploy command: a background job, a daemon (its own session, as `setsid` or a double fork
# leaves it) and the script itself, all still running when the worker goes away.
DEPLOY_SCRIPT = """\
sleep 60 &
child=$!
setsid sleep 60 &
daemon=$!
echo "$$ $child $daemon" > "{pids}.tmp"
mv "{pids}.tmp" "{pids}"
wait
"""


def command_bot(make_bot, tmp_path):
    script = tmp_path / "deploy.sh"
    script.write_text(DEPLOY_SCRIPT.format(pids=tmp_path / "pids"))
    return make_bot(
        {
            "PREVIEW_PROVISIONER": "command",
            "PREVIEW_DEPLOY_COMMAND": shlex.join(["sh", str(script)]),
            "PREVIEW_CANCEL_GRACE_SECONDS": "1",
        }
    )


def start_deploy(bot, tmp_path) -> list[int]:
    """Deploy through the REST API; the pids of the command's processes once they all run."""
    assert bot.deploy("octo/app", 1, "feat/leak").status_code == 202
    pids_file = tmp_path / "pids"
    pids = [int(p) for p in wait_for(lambda: pids_file.exists() and pids_file.read_text().split(), message="the deploy command to start")]
    assert all(process_alive(pid) for pid in pids)
    script, _, daemon = pids
    assert os.getsid(daemon) != os.getsid(script)  # it really left the command's session
    return pids


def assert_all_gone(pids: list[int]) -> None:
    try:
        wait_for(lambda: not any(process_alive(pid) for pid in pids), timeout=5, message=f"the deploy command's processes {pids} to be gone")
    finally:
        for pid in pids:  # a failed run must not leave them to the next tests
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigkilled_worker_leaves_no_provisioner_process(make_bot, tmp_path):
    bot = command_bot(make_bot, tmp_path).start()
    pids = start_deploy(bot, tmp_path)
    worker = bot.workers[0]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert_all_gone(pids)


def test_sigtermed_worker_leaves_no_provisioner_process(make_bot, tmp_path):
    bot = command_bot(make_bot, tmp_path).start()
    pids = start_deploy(bot, tmp_path)
    worker = bot.workers[0]
    bot.stop_workers(signal.SIGTERM)  # a warm shutdown waits for the job; the second SIGTERM does not
    assert_all_gone(pids)
    assert worker.returncode == 0  # SIGTERM ended it, not the harness's last-resort SIGKILL


def test_ctrl_c_of_previewbot_run_leaves_no_provisioner_process(make_bot, tmp_path):
    bot = command_bot(make_bot, tmp_path)  # its database, token and environment serve `previewbot run`
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run", "--workers", "1"],
        env=bot.env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: httpx.get(f"{bot.url}/api/health", timeout=1).status_code == 200, message="web health")
        pids = start_deploy(bot, tmp_path)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        run.wait(timeout=40)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert_all_gone(pids)
