"""The command provisioner's examples (examples/), run as previewbot runs them: through
`CommandProvisioner`, with only the environment it passes, and stand-in `git`, `ssh`, `rsync`,
`kubectl` and `helm` on PATH that write each call to a journal."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from worker.provisioners import ProvisionError, ProvisionRequest
from worker.provisioners.command import CommandProvisioner

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHA = "1" * 40
NEXT_SHA = "2" * 40
# Each of these would leave a file called `pwned` behind if any shell ran it.
HOSTILE_BRANCH = "feat/$(touch${IFS}pwned);`touch${IFS}pwned`|touch${IFS}pwned"

# One stand-in for every tool: it knows which it is by its name, records its arguments, and
# answers what the examples read from it. A file `fail-TOOL` beside the journal makes TOOL fail.
STANDIN = r'''
import io, json, os, sys, tarfile

tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
call = {"tool": tool, "argv": args}
if tool == "git" and "init" in args:
    os.makedirs(args[-1])
elif tool == "git" and "archive" in args:
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
        data = b"services: {web: {build: .}}\n"
        info = tarfile.TarInfo("compose.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
elif tool == "rsync":
    call["files"] = sorted(os.listdir(args[-2]))
elif tool == "kubectl" and "create" in args:
    print("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + args[args.index("namespace") + 1])
elif tool == "kubectl" and "apply" in args:
    call["stdin"] = sys.stdin.read()
with open(os.path.join(home, "journal.jsonl"), "a") as journal:
    journal.write(json.dumps(call) + "\n")
failure = os.path.join(home, "fail-" + tool)
if os.path.exists(failure):
    sys.stderr.write(open(failure).read())
    sys.exit(1)
'''


class Tools:
    """The stand-ins' directory and what they recorded."""

    def __init__(self, home: Path):
        self.home = home
        self.journal = home / "journal.jsonl"

    def calls(self) -> list[dict]:
        calls = [json.loads(line) for line in self.journal.read_text().splitlines()] if self.journal.exists() else []
        self.journal.unlink(missing_ok=True)
        return calls

    def fail(self, tool: str, stderr: str) -> None:
        (self.home / f"fail-{tool}").write_text(stderr)


@pytest.fixture
def tools(tmp_path, monkeypatch) -> Tools:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "ssh", "rsync", "kubectl", "helm"):
        path = bin_dir / tool
        path.write_text(f"#!{sys.executable}\n{STANDIN}")
        path.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # where an injected `touch pwned` would land
    return Tools(tmp_path)


def provisioner(example: str, **settings: str) -> CommandProvisioner:
    """The example as an operator configures it: non-secret settings given with `env` in the
    command itself (PREVIEW_COMMAND_ENV values are masked in logs, the URL's domain with them)."""
    prefix = ["env", *(f"{name}={value}" for name, value in settings.items())]
    deploy, destroy = (shlex.join([*prefix, str(EXAMPLES / example / script)]) for script in ("deploy.sh", "destroy.sh"))
    return CommandProvisioner(deploy, destroy, timeout=60, url_template="https://{environment}-{pr}.template.test")


def request(*, sha: str | None = SHA, branch: str = "feat/login", environment: str = "preview", log=None, **kw) -> ProvisionRequest:
    return ProvisionRequest(
        repository="Octo/App.js", pr_number=7, branch=branch, sha=sha, deployment_id="d" * 32,
        environment=environment, log=log or (lambda line: None), **kw,
    )


def argvs(calls: list[dict]) -> list[list[str]]:
    return [[call["tool"], *call["argv"]] for call in calls]


def nothing_executed(tmp_path: Path) -> bool:
    return not list(tmp_path.rglob("pwned*"))


# -- docker compose over SSH --------------------------------------------------------------------

COMPOSE = dict(DEPLOY_SSH_HOST="deploy@vm.example.net", DEPLOY_DOMAIN="previews.example.net")
PROJECT = "preview-7-octo-app-js"
SSH = ["ssh", "-o", "BatchMode=yes", "--", "deploy@vm.example.net"]


def compose_deploy_commands(work: str, ref: str, project: str = PROJECT) -> list[list[str]]:
    return [
        ["git", "init", "--quiet", "--bare", f"{work}/source.git"],
        ["git", f"--git-dir={work}/source.git", "fetch", "--quiet", "--depth=1", "--", "https://github.com/Octo/App.js.git", ref],
        ["git", f"--git-dir={work}/source.git", "archive", "--format=tar", "FETCH_HEAD"],
        [*SSH, f"mkdir -p 'previews/{project}'"],
        ["rsync", "-a", "--delete", "-e", "ssh -o BatchMode=yes", "--", f"{work}/tree/", f"deploy@vm.example.net:previews/{project}/"],
        [*SSH, f"cd 'previews/{project}' && PREVIEW_HOST='{project}.previews.example.net' "
               f"docker compose -p '{project}' up -d --build --remove-orphans"],
    ]


def work_dir(calls: list[dict]) -> str:
    """The deploy's scratch directory, named by mktemp: the first call (git init) shows it."""
    return calls[0]["argv"][-1].removesuffix("/source.git")


def test_compose_deploy_uploads_the_commit_and_starts_the_project(tools):
    lines = []
    url = provisioner("compose-over-ssh", **COMPOSE).deploy(request(log=lines.append)).url

    assert url == f"https://{PROJECT}.previews.example.net"
    assert lines[-1] == url
    calls = tools.calls()
    work = work_dir(calls)
    assert argvs(calls) == compose_deploy_commands(work, SHA)
    assert calls[4]["files"] == ["compose.yaml"]  # the commit's tree is what is uploaded
    assert not Path(work).exists()  # the scratch copy is gone


def test_compose_redeploy_updates_the_same_project_in_place(tools):
    compose = provisioner("compose-over-ssh", **COMPOSE)
    compose.deploy(request())
    tools.calls()

    assert compose.deploy(request(sha=NEXT_SHA)).url == f"https://{PROJECT}.previews.example.net"
    calls = tools.calls()
    assert argvs(calls) == compose_deploy_commands(work_dir(calls), NEXT_SHA)


def test_compose_environments_are_projects_of_their_own(tools):
    provisioner("compose-over-ssh", **COMPOSE).deploy(request(environment="staging"))
    calls = tools.calls()
    assert argvs(calls) == compose_deploy_commands(work_dir(calls), SHA, project="staging-7-octo-app-js")


def test_compose_destroy_removes_containers_volumes_and_files(tools):
    provisioner("compose-over-ssh", **COMPOSE).destroy(request(preview_url=f"https://{PROJECT}.previews.example.net"))

    assert argvs(tools.calls()) == [
        [*SSH, f"if [ -d 'previews/{PROJECT}' ]; then (cd 'previews/{PROJECT}' && "
               f"docker compose -p '{PROJECT}' down -v --remove-orphans) && rm -rf 'previews/{PROJECT}'; fi"],
    ]


def test_compose_hostile_branch_is_one_argument_and_never_runs(tools, tmp_path):
    lines = []
    # Without a commit (a local-mode REST deploy) the branch names what to fetch.
    provisioner("compose-over-ssh", **COMPOSE).deploy(request(sha=None, branch=HOSTILE_BRANCH, log=lines.append))

    calls = tools.calls()
    assert argvs(calls) == compose_deploy_commands(work_dir(calls), f"refs/heads/{HOSTILE_BRANCH}")
    assert any(HOSTILE_BRANCH in line for line in lines)
    assert nothing_executed(tmp_path)


def test_compose_failure_reports_the_end_of_stderr(tools):
    tools.fail("ssh", "no space left on device\n")
    with pytest.raises(ProvisionError, match="no space left on device"):
        provisioner("compose-over-ssh", **COMPOSE).deploy(request())


def test_compose_missing_setting_is_named(tools):
    with pytest.raises(ProvisionError, match="DEPLOY_SSH_HOST"):
        provisioner("compose-over-ssh", DEPLOY_DOMAIN="previews.example.net").deploy(request())
    assert tools.calls() == []


# -- Kubernetes namespace per pull request ---------------------------------------------------

KUBE = dict(DEPLOY_HELM_CHART="oci://registry.example.net/charts/app", DEPLOY_DOMAIN="previews.example.net")
NAMESPACE = "preview-7-octo-app-js"


def kube_deploy_commands(sha: str, branch: str = "feat/login", namespace: str = NAMESPACE, environment: str = "preview") -> list[list[str]]:
    return [
        ["kubectl", "create", "namespace", namespace, "--dry-run=client", "-o", "yaml"],
        ["kubectl", "apply", "-f", "-"],
        ["kubectl", "label", "namespace", namespace, "--overwrite",
         "app.kubernetes.io/managed-by=previewbot", f"previewbot/environment={environment}", "previewbot/pr=7"],
        ["kubectl", "annotate", "namespace", namespace, "--overwrite",
         "previewbot/repository=Octo/App.js", f"previewbot/branch={branch}", f"previewbot/commit={sha}",
         f"previewbot/deployment={'d' * 32}"],
        ["helm", "upgrade", "--install", "preview", "oci://registry.example.net/charts/app", "--namespace", namespace,
         "--set-string", f"image.tag={sha}", "--set-string", f"ingress.host={namespace}.previews.example.net",
         "--atomic", "--timeout", "10m"],
    ]


def test_kubernetes_deploy_makes_the_namespace_and_installs_the_release(tools):
    lines = []
    url = provisioner("kubernetes", **KUBE).deploy(request(log=lines.append)).url

    assert url == f"https://{NAMESPACE}.previews.example.net"
    assert lines[-1] == url
    calls = tools.calls()
    assert argvs(calls) == kube_deploy_commands(SHA)
    assert calls[1]["stdin"] == f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"


def test_kubernetes_redeploy_upgrades_the_same_release_in_place(tools):
    kube = provisioner("kubernetes", **KUBE)
    kube.deploy(request())
    tools.calls()

    kube.deploy(request(sha=NEXT_SHA))
    assert argvs(tools.calls()) == kube_deploy_commands(NEXT_SHA)


def test_kubernetes_settings_reach_both_tools(tools):
    kube = provisioner("kubernetes", **KUBE, DEPLOY_KUBE_CONTEXT="previews", DEPLOY_HELM_VALUES="/etc/previewbot/values.yaml", DEPLOY_HELM_TIMEOUT="20m")
    kube.deploy(request(environment="staging"))

    commands = argvs(tools.calls())
    assert all(c[:2] == ["kubectl", "--context=previews"] for c in commands if c[0] == "kubectl")
    assert commands[-1] == [
        "helm", "--kube-context=previews", "upgrade", "--install", "preview", "oci://registry.example.net/charts/app",
        "--namespace", "staging-7-octo-app-js", "--values=/etc/previewbot/values.yaml",
        "--set-string", f"image.tag={SHA}", "--set-string", "ingress.host=staging-7-octo-app-js.previews.example.net",
        "--atomic", "--timeout", "20m",
    ]


def test_kubernetes_destroy_deletes_the_namespace_and_waits(tools):
    provisioner("kubernetes", **KUBE).destroy(request())
    assert argvs(tools.calls()) == [["kubectl", "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait"]]


def test_kubernetes_hostile_branch_is_one_argument_and_never_runs(tools, tmp_path):
    provisioner("kubernetes", **KUBE).deploy(request(branch=HOSTILE_BRANCH))

    assert argvs(tools.calls()) == kube_deploy_commands(SHA, branch=HOSTILE_BRANCH)
    assert nothing_executed(tmp_path)


def test_kubernetes_needs_the_commit(tools):
    with pytest.raises(ProvisionError, match="PREVIEW_SHA"):
        provisioner("kubernetes", **KUBE).deploy(request(sha=None))
    assert tools.calls() == []
