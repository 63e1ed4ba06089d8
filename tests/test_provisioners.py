"""The provisioners, run for real: the command one starts real processes, never a shell."""

import sys

import pytest

from .harness import process_alive, wait_for

from worker.provisioners import CommandProvisioner, ProvisionError, ProvisionRequest, SimulatedProvisioner, branch_slug, render_url

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
    assert provisioner.deploy(request(branch="Feat/Login_Page")) == "https://feat-login-page.octo.example.com"


def test_a_lost_lock_stops_the_simulated_provisioner_and_the_command(tmp_path):
    stopped = request()
    stopped.cancelled.set()
    with pytest.raises(ProvisionError, match="lock was lost"):
        SimulatedProvisioner((600.0, 600.0), TEMPLATE).deploy(stopped)
    command = script(tmp_path, "import time\ntime.sleep(600)\n")
    with pytest.raises(ProvisionError, match="lock was lost"):
        CommandProvisioner(command, None, timeout=600, url_template=TEMPLATE).deploy(stopped)


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
    url = provisioner.deploy(request(branch="feat/$(reboot);a"))
    assert url == "https://one.example.test"
    import json

    env = json.loads(out.read_text())
    assert env["PREVIEW_BRANCH"] == "feat/$(reboot);a"
    assert env["PREVIEW_ACTION"] == "deploy" and env["PREVIEW_REPOSITORY"] == "octo/app"
    assert env["PREVIEW_PR_NUMBER"] == "7" and env["PREVIEW_SHA"] == "a" * 40 and env["PREVIEW_DEPLOYMENT_ID"] == "dep1"
    assert env["OPERATOR_VAR"] == "passed"
    assert "WEBHOOK_SECRET" not in env and "PREVIEW_URL" not in env


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
    assert CommandProvisioner(two, None, timeout=30, url_template=TEMPLATE).deploy(request()) == "https://second.test"
    none = script(tmp_path, "print('no url')\n")
    assert CommandProvisioner(none, None, timeout=30, url_template=TEMPLATE).deploy(request()) == "https://preview-7.app.example.com"


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
