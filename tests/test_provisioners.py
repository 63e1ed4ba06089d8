"""The provisioners, run for real: the command one starts real processes, never a shell."""

import os
import signal
import sys
import threading
import time

import pytest

from .harness import process_alive, wait_for

from bot.config import PROVISIONERS, load_settings
from worker.provisioners import REGISTRY, ProvisionError, ProvisionRequest, branch_slug, make_provisioner, render_url
from worker.provisioners.command import CommandProvisioner
from worker.provisioners.simulated import SimulatedProvisioner

TEMPLATE = "https://preview-{pr}.{repo}.example.com"


def request(branch="feat/x", lines=None, **kw):
    return ProvisionRequest(
        repository="octo/app", pr_number=7, branch=branch, sha="a" * 40, deployment_id="dep1",
        log=(lines.append if lines is not None else (lambda line: None)), **kw,
    )


def script(tmp_path, body):
    path = tmp_path / "provision.py"
    path.write_text("import os, sys, json\n" + body)
    return f"{sys.executable} {path}"


def test_simulated_waits_and_answers_the_template():
    provisioner = SimulatedProvisioner((0.0, 0.0), "https://{branch}.{owner}.example.com")
    assert provisioner.deploy(request(branch="Feat/Login_Page")).url == "https://feat-login-page.octo.example.com"


def test_a_lost_lock_stops_the_simulated_provisioner_and_the_command(tmp_path):
    stopped = request()
    stopped.cancelled.set()
    with pytest.raises(ProvisionError, match="lock was lost"):
        SimulatedProvisioner((600.0, 600.0), TEMPLATE).deploy(stopped)
    command = script(tmp_path, "import time\ntime.sleep(600)\n")
    with pytest.raises(ProvisionError, match="lock was lost"):
        CommandProvisioner(command, None, timeout=600, url_template=TEMPLATE).deploy(stopped)


def test_the_registry_holds_every_provisioner_the_settings_accept():
    assert set(REGISTRY) == set(PROVISIONERS)
    assert make_provisioner(load_settings({"PREVIEW_SIMULATED_SECONDS": "0"})).name == "simulated"
    assert make_provisioner(load_settings({"PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": "true"})).name == "command"


def test_slugs():
    assert branch_slug("feat/$(reboot)") == "feat-reboot"
    assert branch_slug("///") == "branch"
    assert render_url(TEMPLATE, request()) == "https://preview-7.app.example.com"


def test_command_gets_only_the_documented_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "do-not-leak")
    monkeypatch.setenv("OPERATOR_VAR", "passed")
    out = tmp_path / "env.json"
    command = script(tmp_path, f"json.dump(dict(os.environ), open({str(out)!r}, 'w'))\nprint('https://one.example.test')\nprint('done')\n")
    provisioner = CommandProvisioner(command, None, timeout=30, url_template=TEMPLATE, passthrough=("OPERATOR_VAR",))
    url = provisioner.deploy(request(branch="feat/$(reboot);a")).url
    assert url == "https://one.example.test"
    import json

    env = json.loads(out.read_text())
    assert env["PREVIEW_BRANCH"] == "feat/$(reboot);a"
    assert env["PREVIEW_ACTION"] == "deploy" and env["PREVIEW_REPOSITORY"] == "octo/app"
    assert env["PREVIEW_PR_NUMBER"] == "7" and env["PREVIEW_SHA"] == "a" * 40 and env["PREVIEW_DEPLOYMENT_ID"] == "dep1"
    assert env["OPERATOR_VAR"] == "passed" and env["PREVIEW_ENVIRONMENT"] == "preview"
    assert "WEBHOOK_SECRET" not in env and "PREVIEW_URL" not in env


def test_the_environment_reaches_the_command_and_the_url_template(tmp_path):
    out = tmp_path / "environment"
    command = script(tmp_path, f"open({str(out)!r}, 'w').write(os.environ['PREVIEW_ENVIRONMENT'])\n")
    provisioner = CommandProvisioner(command, None, timeout=30, url_template="https://{environment}-{pr}.{repo}.example.com")
    assert provisioner.deploy(request(environment="staging")).url == "https://staging-7.app.example.com"
    assert out.read_text() == "staging"


def test_branch_is_never_interpreted_by_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    command = script(tmp_path, "print(os.environ['PREVIEW_BRANCH'])\n")
    provisioner = CommandProvisioner(command, None, timeout=30, url_template=TEMPLATE)
    lines = []
    provisioner.deploy(request(branch=f"x$(touch {marker})", lines=lines))
    assert not marker.exists()
    assert lines == [f"x$(touch {marker})"]


def test_last_url_line_wins_and_template_is_the_fallback(tmp_path):
    two = script(tmp_path, "print('http://first.test')\nprint('see https://not-alone.test here')\nprint('https://second.test')\n")
    assert CommandProvisioner(two, None, timeout=30, url_template=TEMPLATE).deploy(request()).url == "https://second.test"
    none = script(tmp_path, "print('no url')\n")
    assert CommandProvisioner(none, None, timeout=30, url_template=TEMPLATE).deploy(request()).url == "https://preview-7.app.example.com"


def test_failure_carries_the_end_of_stderr(tmp_path):
    command = script(tmp_path, "print('out')\nsys.stderr.write('line1\\nquota exceeded\\n')\nsys.exit(4)\n")
    lines = []
    with pytest.raises(ProvisionError) as info:
        CommandProvisioner(command, None, timeout=30, url_template=TEMPLATE).deploy(request(lines=lines))
    assert "exited with 4" in str(info.value) and "quota exceeded" in str(info.value)
    assert "out" in lines and "quota exceeded" in lines


def test_timeout_kills_the_command_and_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    command = script(tmp_path, f"import subprocess, time\np = subprocess.Popen(['sleep', '60'])\nopen({str(pidfile)!r}, 'w').write(str(p.pid))\ntime.sleep(60)\n")
    with pytest.raises(ProvisionError, match="timed out"):
        CommandProvisioner(command, None, timeout=1, url_template=TEMPLATE).deploy(request())
    child = int(pidfile.read_text())
    wait_for(lambda: not process_alive(child), timeout=5, message="the command's child to die")


def test_destroy_gets_the_preview_url(tmp_path):
    out = tmp_path / "destroy.txt"
    command = script(tmp_path, f"open({str(out)!r}, 'w').write(os.environ['PREVIEW_ACTION'] + ' ' + os.environ['PREVIEW_URL'])\n")
    CommandProvisioner("true", command, timeout=30, url_template=TEMPLATE).destroy(request(preview_url="https://p.test"))
    assert out.read_text() == "destroy https://p.test"


def test_missing_command_is_a_clear_failure():
    with pytest.raises(ProvisionError, match="could not start"):
        CommandProvisioner("/nonexistent/deploy", None, timeout=30, url_template=TEMPLATE).deploy(request())


# For the commands below: `write_pids` publishes pids at once (a rename), `daemon()` starts a
# `sleep 60` the way daemonizing tools do (double fork, own session) and answers its pid.
PROCESSES = """
import signal, subprocess, time

def write_pids(path, *pids):
    with open(path + '.tmp', 'w') as f:
        f.write(' '.join(map(str, pids)))
    os.rename(path + '.tmp', path)

def daemon():
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.execvp('sleep', ['sleep', '60'])
        os._exit(0)
    os.close(w)
    os.wait()
    return int(os.read(r, 20))
"""


def cancel_when_written(path, stopped):
    """Cancel `stopped` (as a lost lock does) once the command wrote `path`; answers a list that
    then holds the moment of the cancel."""
    cancelled_at = []

    def cancel():
        wait_for(path.exists, message=f"the command to write {path}")
        cancelled_at.append(time.monotonic())
        stopped.cancelled.set()

    threading.Thread(target=cancel, daemon=True).start()
    return cancelled_at


def pids_in(path):
    return [int(pid) for pid in path.read_text().split()]


def assert_gone(pids):
    try:
        wait_for(lambda: not any(process_alive(pid) for pid in pids), timeout=5, message=f"processes {pids} to be gone")
    finally:
        for pid in pids:  # a failed run must not leave them to the next tests
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_cancel_stops_background_and_daemonized_grandchildren(tmp_path):
    pidfile = tmp_path / "pids"
    command = script(tmp_path, PROCESSES + f"child = subprocess.Popen(['sleep', '60'])\nwrite_pids({str(pidfile)!r}, os.getpid(), child.pid, daemon())\ntime.sleep(60)\n")
    stopped = request()
    cancel_when_written(pidfile, stopped)
    with pytest.raises(ProvisionError, match="lock was lost"):
        CommandProvisioner(command, None, timeout=600, url_template=TEMPLATE, grace=1).deploy(stopped)
    assert_gone(pids_in(pidfile))


def test_a_cancelled_command_that_traps_sigterm_gets_to_clean_up(tmp_path):
    pidfile, cleaned = tmp_path / "pids", tmp_path / "cleaned"
    command = script(
        tmp_path,
        PROCESSES
        + f"def clean_up(*_):\n    open({str(cleaned)!r}, 'w').write('cleaned up')\n    sys.exit(0)\n"
        + f"signal.signal(signal.SIGTERM, clean_up)\nwrite_pids({str(pidfile)!r}, os.getpid())\ntime.sleep(60)\n",
    )
    stopped = request()
    cancel_when_written(pidfile, stopped)
    started = time.monotonic()
    with pytest.raises(ProvisionError, match="lock was lost"):
        CommandProvisioner(command, None, timeout=600, url_template=TEMPLATE, grace=10).deploy(stopped)
    assert cleaned.read_text() == "cleaned up"
    assert time.monotonic() - started < 10  # done when the command is: the grace is not waited out


def test_a_cancelled_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    pidfile = tmp_path / "pids"
    # The child inherits the ignored SIGTERM: SIGKILL must reach it too.
    command = script(
        tmp_path,
        PROCESSES + f"signal.signal(signal.SIGTERM, signal.SIG_IGN)\nchild = subprocess.Popen(['sleep', '60'])\n"
        f"write_pids({str(pidfile)!r}, os.getpid(), child.pid)\ntime.sleep(60)\n",
    )
    stopped = request()
    cancelled_at = cancel_when_written(pidfile, stopped)
    with pytest.raises(ProvisionError, match="lock was lost"):
        CommandProvisioner(command, None, timeout=600, url_template=TEMPLATE, grace=1).deploy(stopped)
    assert time.monotonic() - cancelled_at[0] >= 1
    assert_gone(pids_in(pidfile))


def test_a_timeout_sends_sigterm_then_sigkill_after_the_grace(tmp_path):
    pidfile, termed = tmp_path / "pids", tmp_path / "termed"
    # It notes the SIGTERM and carries on; its daemon must go too.
    command = script(
        tmp_path,
        PROCESSES + f"signal.signal(signal.SIGTERM, lambda *_: open({str(termed)!r}, 'w').write('got SIGTERM'))\n"
        f"write_pids({str(pidfile)!r}, os.getpid(), daemon())\ntime.sleep(60)\n",
    )
    started = time.monotonic()
    with pytest.raises(ProvisionError, match="deploy command timed out after 1s"):
        CommandProvisioner(command, None, timeout=1, url_template=TEMPLATE, grace=1).deploy(request())
    assert termed.read_text() == "got SIGTERM"
    assert time.monotonic() - started >= 2  # the timeout, then the grace
    assert_gone(pids_in(pidfile))


def test_processes_a_finished_command_leaves_behind_are_stopped(tmp_path):
    pidfile = tmp_path / "pids"
    command = script(
        tmp_path,
        PROCESSES + f"child = subprocess.Popen(['sleep', '60'])\nwrite_pids({str(pidfile)!r}, child.pid, daemon())\nprint('https://done.test')\n",
    )
    assert CommandProvisioner(command, None, timeout=30, url_template=TEMPLATE, grace=1).deploy(request()).url == "https://done.test"
    assert_gone(pids_in(pidfile))


def test_a_command_killed_by_a_signal_says_which(tmp_path):
    command = script(tmp_path, "import signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    with pytest.raises(ProvisionError, match="exited with -15"):
        CommandProvisioner(command, None, timeout=30, url_template=TEMPLATE).deploy(request())


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="this kernel groups no CPU time by session")
def test_a_worker_in_a_session_of_its_own_gives_its_session_and_its_commands_worker_nice(make_bot):
    # Where the kernel shares the CPU between sessions first, a nice value alone ranks a process
    # only within its session: each worker (and each command's reaper) leads one in these tests.
    bot = make_bot({"WORKER_NICE": "7", "PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": "cat /proc/self/autogroup"}).start()
    wait_for(lambda: open(f"/proc/{bot.workers[0].pid}/autogroup").read().strip().endswith("nice 7"), message="the worker's session at nice 7")
    deployment = bot.deploy("octo/app", 1, "feat/nice").json()
    bot.wait_status("octo/app", 1, "deployed")
    lines = [row["line"] for row in bot.store.deployment_logs(deployment["id"])]
    assert len(lines) == 1 and lines[0].endswith("nice 7"), lines
