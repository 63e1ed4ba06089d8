"""A worker cut off from Redis while its provisioner runs: the branch never has two provisioners.

Worker A reaches Redis through a TCP proxy (`tests.tcpproxy`); the web process and worker B
reach it directly. While A's provisioner runs, the proxy blackholes A. A cannot renew its branch
lease, so by its own clock it stops its provisioner (and everything under it); the lease runs
out, B's reconciler fails the deployment, and a Retry runs on B. A sampler watches every
provisioner process of the branch meanwhile: never two alive at once. A itself survives the
partition and carries on once the proxy heals.

Two more scenarios at PREVIEW_LEASE_SECONDS=12 pin two ways it once broke: a renewal hanging
on the cut-off connection for the socket timeout delayed the give-up (the deadline is now watched
by a thread of its own), and the reconciler freed the branch when the worker's heartbeat key
expired although its lease was still held (it now waits for the lease).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from worker.jobs import LEASE_LOST
from worker.reconcile import GRACE_SECONDS as RECONCILE_GRACE_SECONDS
from worker.reconcile import WORKER_LOST, alive_key

from .harness import Bot, process_alive, wait_for
from .tcpproxy import TcpProxy

pytestmark = pytest.mark.slow

# The deploy command. It notes in the journal, in one line: its pid, its child's pid, its
# deployment, when it started and which provisioners noted before it were still alive at that
# moment (its own, exact, overlap check). Then it waits, with a child process (`sleep`) in its
# process group, until the test creates `release/<deployment id>`. "stubborn" ignores SIGTERM,
# and so does its child (the disposition is inherited): only the SIGKILL after the grace stops
# them.
SCRIPT = """\
import os, pathlib, signal, subprocess, sys, time

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False

journal, release, mode = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
if os.environ["PREVIEW_ACTION"] != "deploy":
    sys.exit(0)
at = time.time()
earlier = [int(p) for line in (journal.read_text().splitlines() if journal.exists() else []) for p in line.split()[1:3]]
overlap = ",".join(str(p) for p in earlier if alive(p)) or "-"
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "60"])
deployment = os.environ["PREVIEW_DEPLOYMENT_ID"]
with journal.open("a") as f:
    f.write(f"start {os.getpid()} {child.pid} {deployment} {at:.6f} {overlap}\\n")
while not (release / deployment).exists():
    time.sleep(0.02)
child.kill()
child.wait()
"""


@dataclass(frozen=True)
class Started:
    pid: int
    child: int
    deployment: str
    at: float
    overlap: str  # pids of earlier provisioners alive when this one started, or "-"

    @property
    def alive(self) -> bool:
        return process_alive(self.pid) or process_alive(self.child)


def journal_entries(journal: Path) -> list[Started]:
    if not journal.exists():
        return []
    entries = []
    for line in journal.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] == "start":  # a line being written is skipped
            entries.append(Started(int(parts[1]), int(parts[2]), parts[3], float(parts[4]), parts[5]))
    return entries


def started(journal: Path, deployment_id: str) -> Started | None:
    return next((e for e in journal_entries(journal) if e.deployment == deployment_id), None)


class Sampler(threading.Thread):
    """Every ~20 ms: which provisioners of the branch (script or child) are alive."""

    def __init__(self, journal: Path):
        super().__init__(name="provisioner-sampler", daemon=True)
        self.journal = journal
        self.max_alive = 0
        self.samples = 0
        self.last_seen: dict[str, float] = {}  # deployment -> last time seen alive
        self.timeline: list[tuple[float, tuple[str, ...]]] = []  # each change of who is alive
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            alive = tuple(e.deployment for e in journal_entries(self.journal) if e.alive)
            now = time.time()
            for deployment in alive:
                self.last_seen[deployment] = now
            if not self.timeline or self.timeline[-1][1] != alive:
                self.timeline.append((now, alive))
            self.max_alive = max(self.max_alive, len(alive))
            self.samples += 1
            self._stop_event.wait(0.02)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


@pytest.fixture
def proxy(redis_url):
    # Requested before `make_bot`, so it closes after the bot's processes are stopped.
    target = urlsplit(redis_url)
    with TcpProxy(target.hostname, target.port) as proxy:
        yield proxy


def spawn_worker(bot: Bot, name: str, redis_url: str) -> subprocess.Popen:
    """`previewbot worker` as `Bot.start_worker` starts it, but on `redis_url`; stopped with the bot."""
    log_path = bot.directory / f"{name}-{len(bot.logs)}.log"
    bot.logs.append(log_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "worker"],
        cwd=bot.directory,
        env={**bot.env, "REDIS_URL": redis_url},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    bot.workers.append(process)
    process.log_path = log_path
    return process


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def worker_name(process: subprocess.Popen) -> str:
    return f"previewbot-{os.uname().nodename}-{process.pid}"


def ran_on(conn: redis.Redis, deployment_id: str) -> str | None:
    return Job.fetch(f"deploy-{deployment_id}", connection=conn, serializer=JSONSerializer).worker_name


class TwoProvisioners(AssertionError):
    """The branch had two provisioners alive at once."""


@dataclass(frozen=True)
class Scenario:
    lease: float  # PREVIEW_LEASE_SECONDS
    grace: float  # PREVIEW_CANCEL_GRACE_SECONDS
    provisioner: str  # "polite" (dies on SIGTERM) or "stubborn" (only SIGKILL stops it)
    # Cut once the deployment is old enough for the reconciler to judge it by the worker's
    # heartbeat, and just before A's next heartbeat (its key then expires soonest).
    late_cut: bool = False


SCENARIOS = [
    pytest.param(Scenario(4, 1, "polite"), id="sigterm-honoured"),
    pytest.param(Scenario(4, 1, "stubborn"), id="sigterm-ignored"),
    # Give-up at 7.3 s, but the renewals (0.5 s tick + 3 s socket timeout) are looked at after
    # 3.5, 7 and 10.5 s: the SIGKILL comes 14.2 s after the last renewal, of a 12 s lease.
    pytest.param(Scenario(12, 3.7, "stubborn"), id="renewal-hangs-for-the-socket-timeout"),
    # A's heartbeat expires ~8 s after the cut; A stops its provisioner 11.5 s after its last renewal.
    pytest.param(Scenario(12, 4.5, "stubborn", late_cut=True), id="heartbeat-expires-before-the-lease"),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_partitioned_worker_stops_its_provisioner_before_another_can_start(proxy, make_bot, redis_url, redis_conn, tmp_path, scenario):
    script, journal, release = tmp_path / "provision.py", tmp_path / "journal", tmp_path / "release"
    script.write_text(SCRIPT)
    release.mkdir()
    command = f"{sys.executable} {script} {journal} {release} {scenario.provisioner}"
    bot = make_bot(
        {
            "PREVIEW_PROVISIONER": "command",
            "PREVIEW_DEPLOY_COMMAND": command,
            "PREVIEW_DESTROY_COMMAND": command,
            "PREVIEW_LEASE_SECONDS": str(scenario.lease),
            "PREVIEW_CANCEL_GRACE_SECONDS": str(scenario.grace),
            "PREVIEW_RECONCILE_SECONDS": "1",
        }
    ).start_web()
    worker_a = spawn_worker(bot, "worker-a", proxy.url_for(redis_url))
    try:
        _partition_and_retry(bot, proxy, redis_conn, journal, release, worker_a, scenario)
    finally:
        proxy.heal()
        for entry in journal_entries(journal):  # nothing waits for its grace at teardown
            (release / entry.deployment).touch()


def _partition_and_retry(bot, proxy, redis_conn, journal, release, worker_a, scenario):
    # 1. The deploy runs on A (the only worker yet), then B joins, directly on Redis.
    first = bot.deploy("octo/app", 1, "feat/split").json()
    a_run = wait_for(lambda: started(journal, first["id"]), message="the provisioner to start on worker A")
    assert ran_on(redis_conn, first["id"]) == worker_name(worker_a)
    worker_b = spawn_worker(bot, "worker-b", bot.env["REDIS_URL"])
    wait_for(lambda: redis_conn.exists(f"rq:worker:{worker_name(worker_b)}"), timeout=30, message="worker B to be up")
    if scenario.late_cut:
        beat_every = scenario.lease / 3
        expires_after_cut = scenario.lease - beat_every
        wait_for(lambda: time.time() + expires_after_cut - epoch(first["updatedAt"]) > RECONCILE_GRACE_SECONDS + 0.3,
                 timeout=RECONCILE_GRACE_SECONDS + 5, message="the deployment to be past the reconciler's grace")
        key = alive_key(worker_name(worker_a))
        # A beats when its key has lease - beat_every left: cut within the 250 ms before that.
        due = (scenario.lease - beat_every) * 1000
        wait_for(lambda: due + 40 < redis_conn.pttl(key) < due + 250, timeout=beat_every + 5, interval=0.005,
                 message="worker A's heartbeat to be due")

    # 2. A is cut off; the sampler watches the branch's provisioners from now on.
    sampler = Sampler(journal)
    sampler.start()
    try:
        proxy.cut()  # blackhole: A's calls hang until their socket timeout, nothing is refused
        cut_at = time.time()

        # 3. The lease runs out, B's reconciler fails the deployment, and people retry.
        failed = bot.wait_status("octo/app", 1, "failed", timeout=scenario.lease + 20)
        assert failed["id"] == first["id"]
        assert failed["error"] in (WORKER_LOST, LEASE_LOST), failed["error"]
        retry = bot.deploy("octo/app", 1, "feat/split")
        assert retry.status_code == 202, retry.text
        second = retry.json()
        b_run = wait_for(lambda: started(journal, second["id"]), timeout=20, message="the retry's provisioner to start")
        assert ran_on(redis_conn, second["id"]) == worker_name(worker_b)
        wait_for(lambda: second["id"] in sampler.last_seen, timeout=5, message="the sampler to see the retry's provisioner")
    finally:
        sampler.stop()

    # 4. A's provisioner, and its child, were gone before B's started.
    report = (
        f"cut at {cut_at:.3f}; A's provisioner last seen alive {sampler.last_seen.get(first['id'], 0) - cut_at:.3f}s "
        f"after the cut, B's started {b_run.at - cut_at:.3f}s after; "
        f"timeline {[(round(t - cut_at, 3), who) for t, who in sampler.timeline]}"
    )
    print(f"failed with {failed['error']!r}; {report}")
    assert sampler.samples > 10, report
    if b_run.overlap != "-" or sampler.max_alive != 1 or sampler.last_seen.get(first["id"], 0) >= b_run.at:
        raise TwoProvisioners(f"provisioners alive when B's started: {b_run.overlap}; max alive at once {sampler.max_alive}; {report}")
    assert not process_alive(a_run.pid) and not process_alive(a_run.child)
    # ... and A stopped it itself: A is alive, and kept trying to reach Redis during the cut.
    assert worker_a.poll() is None, "worker A exited"
    assert proxy.attempts_while_cut > 0
    assert "stopping the provisioner" in worker_a.log_path.read_text(errors="replace")

    # 5. The partition heals: A carries on. It beats again, and takes the next deploy (B is busy).
    proxy.heal()
    wait_for(lambda: redis_conn.exists(alive_key(worker_name(worker_a))), timeout=20, message="worker A's heartbeat after the heal")
    other = bot.deploy("octo/app", 2, "feat/after")
    assert other.status_code == 202, other.text
    other = other.json()
    (release / other["id"]).touch()
    assert bot.wait_status("octo/app", 2, "deployed", timeout=60)["id"] == other["id"]
    assert ran_on(redis_conn, other["id"]) == worker_name(worker_a)
    # A's late outcome changed nothing: the first deployment stays failed, the retry runs on.
    with bot.client() as c:
        assert c.get(f"/api/deployments/{first['id']}").json()["status"] == "failed"
    assert bot.deployment("octo/app", 1).json()["id"] == second["id"]

    # 6. The retry finishes.
    (release / second["id"]).touch()
    assert bot.wait_status("octo/app", 1, "deployed", timeout=30)["id"] == second["id"]
    assert worker_a.poll() is None and worker_b.poll() is None
    log_a = worker_a.log_path.read_text(errors="replace")
    assert "Traceback" not in log_a, log_a
