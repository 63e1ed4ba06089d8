"""After the soak's traffic: drain, settle, then the invariants, with the evidence for every
finding (the deployment's events from the API, Redis state, RQ job, the bot's log lines and
what the soak itself sent to that pull request).

Also the soak's provisioner: a small deploy/destroy command (PROVISIONER_SCRIPT, written into
the phase's directory) that notes every run in an append-only journal, and a sampler that
watches the runs' processes every ~20 ms, so that the end can tell whether a branch ever had
two deploy processes at once, whether an environment that was built is still known to the bot,
and whether any provisioner process outlived the bot."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.worker import Worker

from bot import state
from bot.model import PreviewKey
from bot.render import CHECK_NAME
from worker.reconcile import GRACE_SECONDS

from .harness import wait_for
from .soak_traffic import APP_ID, World

# A deployment record that is not `deploying` has an outcome.
FINAL = {"deployed", "failed", "cancelled", "superseded", "destroyed"}
LIVE_JOB = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
# What the Preview check run shows for each API status (see worker/render.py).
EXPECTED_CHECK = {
    "deployed": ("completed", "success"),
    "failed": ("completed", "failure"),
    "idle": ("completed", "neutral"),
    "deploying": ("in_progress", None),
}


# -- the provisioner ------------------------------------------------------------------------

# The soak's deploy and destroy command: `python -S provision.py JOURNAL LOW-HIGH`. Each run
# appends one JSON line when it starts and one when it ends (os.write on an O_APPEND file: lines
# never interleave). A start line has the run's pid and the kernel's start time of that pid (so a
# reused pid is never taken for it), the deployment, the branch key (repository, head repository,
# branch, environment: the soak has no forks, so the head repository is the repository; the
# command is not told it), and the deploy runs of the same branch key that were still alive at
# that moment (its own exact overlap check). A deploy sleeps LOW-HIGH seconds in a child process
# (`sleep`, in its process group, so the reaper's stop must reach it too), then prints its URL;
# a destroy sleeps a little. SIGTERM ends a run with an `end` line saying so.
PROVISIONER_SCRIPT = r"""
import json, os, random, signal, subprocess, sys, time

journal, seconds = sys.argv[1], sys.argv[2]
action = os.environ.get("PREVIEW_ACTION", "?")
repository = os.environ["PREVIEW_REPOSITORY"]
key = "|".join((repository, repository, os.environ["PREVIEW_BRANCH"], os.environ.get("PREVIEW_ENVIRONMENT", "preview")))
deployment = os.environ["PREVIEW_DEPLOYMENT_ID"]


def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def alive(pid, start):
    fields = stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X") and fields[19] == start


def note(event, **fields):
    line = json.dumps({"event": event, "action": action, "pid": os.getpid(), "start": me, "deployment": deployment,
                       "key": key, "t": round(time.time(), 6), **fields}) + "\n"
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


me = stat(os.getpid())[19]
child = None


def stopped(signum, frame):
    note("end", outcome=f"signal {signum}")
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, stopped)
if action == "deploy":
    low, _, high = seconds.partition("-")
    planned = random.uniform(float(low), float(high or low))
    child = subprocess.Popen(["sleep", f"{planned:.3f}"])
    overlap = []
    try:
        with open(journal) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e["event"] == "start" and e["action"] == "deploy" and e["key"] == key and e["pid"] != os.getpid():
                    if alive(e["pid"], e["start"]) or (e.get("child") and alive(e["child"], e.get("childStart"))):
                        overlap.append(e["deployment"])
    except OSError:
        pass
    note("start", child=child.pid, childStart=(stat(child.pid) or [None] * 20)[19], seconds=round(planned, 3), overlap=overlap)
    code = child.wait()
    if code != 0:
        note("end", outcome=f"sleep exited {code}")
        sys.exit(1)
    slug = "".join(c if c.isalnum() else "-" for c in os.environ["PREVIEW_BRANCH"].lower())
    url = f"https://{slug}.soak.example.test/{deployment[:8]}"
    print(url, flush=True)
    note("end", outcome="ok", url=url)
elif action == "destroy":
    note("start")
    time.sleep(random.uniform(0.05, 0.3))
    note("end", outcome="ok")
else:
    sys.exit(f"unknown PREVIEW_ACTION {action!r}")
"""


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def process_alive(pid: int | None, start: str | None) -> bool:
    """Whether the process `pid` that started at `start` (clock ticks since boot) still runs."""
    if not pid or not start:
        return False
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X") and fields[19] == start


@dataclass(eq=False)
class Run:
    """One run of the provisioner command, from its journal lines (`index`: line numbers)."""

    action: str
    pid: int
    start: str
    deployment: str
    key: str
    started_at: float
    start_index: int
    child: int | None = None
    child_start: str | None = None
    seconds: float | None = None  # how long a deploy run means to take
    overlap: list = field(default_factory=list)
    ended_at: float | None = None
    end_index: int | None = None
    outcome: str | None = None  # "ok", "signal 15", ... or None (no end line: SIGKILLed, or still running)
    url: str | None = None

    @property
    def ident(self) -> tuple[int, str]:
        return (self.pid, self.start)

    def alive(self) -> bool:
        return process_alive(self.pid, self.start) or process_alive(self.child, self.child_start)

    def brief(self) -> dict:
        return {"action": self.action, "deployment": self.deployment, "pid": self.pid, "child": self.child,
                "startedAt": self.started_at, "endedAt": self.ended_at, "outcome": self.outcome}


class Journal:
    """The provisioner's journal, read incrementally (a line being written is left for later)."""

    def __init__(self, path: Path):
        self.path = path
        self.runs: dict[tuple[int, str], Run] = {}
        self.order: list[Run] = []
        self.lines = 0
        self._offset = 0
        self._lock = threading.Lock()

    def read(self) -> list[Run]:
        """Read what was appended since the last call; returns the runs that started in it."""
        with self._lock:
            try:
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return []
            complete = data.rpartition(b"\n")[0]
            if not complete:
                return []
            self._offset += len(complete) + 1
            new = []
            for raw in complete.split(b"\n"):
                self.lines += 1
                try:
                    e = json.loads(raw)
                except ValueError:
                    continue
                ident = (e["pid"], e["start"])
                if e["event"] == "start":
                    run = Run(e["action"], e["pid"], e["start"], e["deployment"], e["key"], e["t"], self.lines,
                              child=e.get("child"), child_start=e.get("childStart"), seconds=e.get("seconds"), overlap=e.get("overlap") or [])
                    self.runs[ident] = run
                    self.order.append(run)
                    new.append(run)
                elif e["event"] == "end":
                    run = self.runs.get(ident)
                    if run is None:  # a run stopped before it noted its start
                        run = self.runs[ident] = Run(e["action"], e["pid"], e["start"], e["deployment"], e["key"], e["t"], self.lines)
                        self.order.append(run)
                    run.ended_at, run.end_index, run.outcome, run.url = e["t"], self.lines, e.get("outcome"), e.get("url")
            return new

    def all(self) -> list[Run]:
        self.read()
        with self._lock:
            return list(self.order)


class ProvisionerSampler(threading.Thread):
    """Every ~20 ms: which provisioner runs (the script or its child) are alive, by branch key.
    Two deploy runs of one branch key alive at once are `doubled`; a destroy alive beside a
    deploy of its branch key is an `overlap` too."""

    def __init__(self, journal: Journal, interval: float = 0.02):
        super().__init__(name="soak-provisioner-sampler", daemon=True)
        self.journal = journal
        self.interval = interval
        self.samples = 0
        self.max_gap = 0.0  # the longest time between two samples (a starved sampler sees less)
        self.watching: dict[tuple[int, str], Run] = {}
        self.last_seen: dict[tuple[int, str], float] = {}  # run -> last time seen alive
        self.incidents: dict[tuple, dict] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        previous = None
        while not self._stop_event.is_set():
            self.sample()
            now = time.monotonic()
            if previous is not None:
                self.max_gap = max(self.max_gap, now - previous)
            previous = now
            self._stop_event.wait(self.interval)

    def sample(self) -> None:
        for run in self.journal.read():
            self.watching[run.ident] = run
            if run.overlap and run.action == "deploy":
                self._incident("doubled", run.key, [run.deployment, *run.overlap], "the run's own check at its start")
        now = time.time()
        by_key: dict[str, list[Run]] = defaultdict(list)
        for ident, run in list(self.watching.items()):
            if run.alive():
                self.last_seen[ident] = now
                by_key[run.key].append(run)
            else:
                del self.watching[ident]
        for key, runs in by_key.items():
            deploys = [r for r in runs if r.action == "deploy"]
            if len(deploys) > 1:
                self._incident("doubled", key, [r.deployment for r in deploys], "sampler")
            if deploys and len(deploys) < len(runs):
                self._incident("deployAndDestroy", key, [f"{r.action}:{r.deployment}" for r in runs], "sampler")
        self.samples += 1

    def _incident(self, kind: str, key: str, deployments: list[str], seen_by: str) -> None:
        ident = (kind, key, frozenset(deployments))
        incident = self.incidents.get(ident)
        if incident is None:
            self.incidents[ident] = {"kind": kind, "key": key, "deployments": sorted(set(deployments)), "seenBy": seen_by,
                                     "firstSeen": round(time.time(), 3), "samples": 1}
        else:
            incident["samples"] += 1
            incident["lastSeen"] = round(time.time(), 3)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def alive_runs(self) -> list[Run]:
        """The runs alive at the last sample (a copy)."""
        return list(self.watching.values())

    def report(self) -> dict:
        incidents = list(self.incidents.values())
        return {"samples": self.samples, "maxGapSeconds": round(self.max_gap, 3),
                "doubled": [i for i in incidents if i["kind"] == "doubled"],
                "deployAndDestroy": [i for i in incidents if i["kind"] == "deployAndDestroy"]}


def surviving_processes(journal: Journal, script: Path, wait: float = 5.0) -> list[dict]:
    """Provisioner processes still alive (waiting up to `wait` seconds for them to go): every
    run of the journal (the script and its child) and any process whose command line names the
    script (a run that had not noted its start yet, or a reaper)."""
    deadline = time.monotonic() + wait
    while True:
        left = [{**run.brief(), "scriptAlive": process_alive(run.pid, run.start), "childAlive": process_alive(run.child, run.child_start)}
                for run in journal.all() if run.alive()]
        known = {r["pid"] for r in left} | {r["child"] for r in left}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid() or int(entry.name) in known:
                continue
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = _stat(int(entry.name))
            if str(script) in cmdline and fields and fields[0] not in ("Z", "X"):
                left.append({"pid": int(entry.name), "cmdline": cmdline[:300]})
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


class Checker:
    def __init__(self, world: World, redis_url: str, *, lease_seconds: float, reconcile_seconds: float, redis_persists: bool = True,
                 journal: Journal | None = None):
        self.world = world
        self.journal = journal
        self.redis_persists = redis_persists
        self.bot = world.bot
        self.conn = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.lease = lease_seconds
        self.reconcile = reconcile_seconds
        self.api = httpx.Client(base_url=self.bot.url, headers={"Authorization": f"Bearer {self.bot.token}"}, timeout=15)

    # -- waiting -----------------------------------------------------------------------------

    def busy_workers(self) -> list[str]:
        live = {p.pid for p in self.bot.workers if p.poll() is None}
        busy = []
        for worker in Worker.all(connection=self.conn, serializer=JSONSerializer):
            if worker is None:
                continue
            try:
                pid = int(worker.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            job_id = worker.get_current_job_id() if pid in live else None
            # A worker's record can name a job that finished while Redis was away (RQ could not
            # clear the field then): only a job still started keeps its worker busy.
            if job_id and self._started(job_id):
                busy.append(job_id)
        return busy

    def _started(self, job_id: str) -> bool:
        try:
            return Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer).get_status() == JobStatus.STARTED
        except NoSuchJobError:
            return False

    def recorder_caught_up(self) -> bool:
        if not self.conn.exists(state.EVENTS_STREAM):
            return True
        last = _text(self.conn.xinfo_stream(state.EVENTS_STREAM)["last-generated-id"])
        for group in self.conn.xinfo_groups(state.EVENTS_STREAM):
            if _text(group["name"]) == "recorders":
                return group["pending"] == 0 and _text(group["last-delivered-id"]) == last
        return False

    def drained(self) -> bool:
        return self.conn.llen("rq:queue:previewbot") == 0 and not self.busy_workers() and self.recorder_caught_up()

    def quiet(self) -> bool:
        deploying = self.bot.store.db.execute("SELECT count(*) FROM deployments WHERE status = 'deploying'").fetchone()[0]
        return (
            deploying == 0
            and self.conn.hlen(state.ACTIVE) == 0
            and not list(self.conn.scan_iter(f"{state.PREFIX}:lock:*"))
            and self.drained()
        )

    def settle(self, drain_timeout: float) -> dict:
        """Wait for the queue to drain (bounded), then up to 2 x lease + reconcile (+ the
        reconciler's grace for job-lost repairs) for everything to come to rest."""
        started = time.monotonic()
        try:
            wait_for(self.drained, timeout=drain_timeout, interval=0.25, message="the queue to drain")
            drained = True
        except AssertionError:
            drained = False
        drain_seconds = time.monotonic() - started
        undrained = None if drained else self.what_is_not_drained()
        window = 2 * self.lease + self.reconcile + GRACE_SECONDS + 2
        started = time.monotonic()
        try:
            wait_for(self.quiet, timeout=window, interval=0.25, message="no deployment deploying, no lock, nothing queued")
            quiet = True
        except AssertionError:
            quiet = False
        # A last look a reconcile period later, so nothing is still moving.
        time.sleep(self.reconcile + 0.5)
        wait_for(self.recorder_caught_up, timeout=10, interval=0.1, message="the recorder")
        return {"drained": drained, "drainSeconds": round(drain_seconds, 1), "quiet": quiet,
                "settleSeconds": round(time.monotonic() - started, 1), "settleWindow": window,
                **({"notDrained": undrained} if undrained else {})}

    def what_is_not_drained(self) -> dict:
        """The evidence when the drain timed out: queued and running jobs, and the recorder."""
        def describe(job_id: str) -> dict:
            try:
                job = Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
            except NoSuchJobError:
                return {"id": job_id, "gone": True}
            return {"id": job_id, "func": job.func_name, "status": str(job.get_status()), "worker": job.worker_name,
                    "enqueuedAt": str(job.enqueued_at), "startedAt": str(job.started_at), "meta": job.meta}

        queued = {name: [describe(_text(j)) for j in self.conn.lrange(f"rq:queue:{name}", 0, 20)]
                  for name in ("previewbot",)}
        return {"queued": queued, "running": [describe(j) for j in self.busy_workers()],
                "recorderCaughtUp": self.recorder_caught_up()}

    # -- reading -----------------------------------------------------------------------------

    def api_current(self, repo: str, number: int) -> dict:
        response = self.api.get(f"/api/repos/{repo}/pull-requests/{number}/deployment")
        if response.status_code == 404:
            return {"status": "idle"}
        response.raise_for_status()
        return response.json()

    def api_deployment(self, deployment_id: str) -> dict | None:
        response = self.api.get(f"/api/deployments/{deployment_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def api_history(self, repo: str, number: int) -> list[dict]:
        """Every deployment of the pull request's environment, newest first (all the pages)."""
        found, cursor = [], None
        while True:
            params = {"limit": 100, **({"before": cursor} if cursor else {})}
            response = self.api.get(f"/api/repos/{repo}/pull-requests/{number}/deployments", params=params)
            response.raise_for_status()
            page = response.json()
            found += page["deployments"]
            cursor = page.get("next")
            if not cursor or not page["deployments"]:
                return found

    def jobs_ok_in_logs(self) -> set[str]:
        """Job ids the workers logged as done ("Job OK (id)"): the logs outlive Redis's job keys."""
        done = set()
        for path in self.bot.logs:
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    start = line.find("Job OK (")
                    if start >= 0:
                        done.add(line[start + 8:].rstrip(")"))
        return done

    def gone_with_redis_memory(self, job_id: str, accepted_at: float | None) -> dict | None:
        """Why a job that vanished from Redis is an expected loss, or None if it is not one: Redis
        runs without persistence and restarted after the job was accepted, before any worker
        finished it (no "Job OK"), and no log line names the job after that restart (so nothing
        held it in Redis afterwards). Then it was queued, or running, in the memory that went."""
        if self.redis_persists or accepted_at is None:
            return None
        restarts = [(start, end) for start, end in self.world.outages if end is not None and start >= accepted_at - 1.0]
        if not restarts:
            return None
        start, end = restarts[0]
        seen = []
        for line in self.log_lines(f"({job_id})", limit=50):
            stamp = line.split(": ", 1)[1][:23] if ": " in line else ""
            try:
                at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            seen.append(at)
        if any(at > self.world.epoch(end) + 1.0 for at in seen):
            return None
        started = [at for at in seen if at <= self.world.epoch(start)]
        return {"restartAt": start, "inRedisAtRestart": "running" if started else "queued",
                "acceptedSecondsBeforeRestart": round(start - accepted_at, 2)}

    def job(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    # -- evidence ----------------------------------------------------------------------------

    def log_lines(self, *needles: str, limit: int = 40) -> list[str]:
        needles = tuple(n for n in needles if n)
        found = []
        for path in self.bot.logs:
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                if any(n in line for n in needles):
                    found.append(f"{path.name}: {line[:400]}")
        return found[-limit:]

    def evidence(self, *, deployment_id: str | None = None, pull_key: str | None = None, delivery_id: str | None = None) -> dict:
        out: dict = {}
        if deployment_id:
            detail = self.api_deployment(deployment_id)
            out["apiDeployment"] = detail
            job = self.job(f"deploy-{deployment_id}")
            if job is not None:
                out["deployJob"] = {"status": str(job.get_status()), "worker": job.worker_name,
                                    "enqueuedAt": str(job.enqueued_at), "startedAt": str(job.started_at), "endedAt": str(job.ended_at)}
            if detail and not pull_key:
                pull_key = f"{detail['repository']}#{detail['prNumber']}"
        if delivery_id:
            job = self.job(f"webhook-{delivery_id}")
            out["webhookJob"] = None if job is None else {"status": str(job.get_status()), "worker": job.worker_name}
        pull = next((p for p in self.world.pulls if p.key == pull_key), None)
        if pull is not None:
            current = state.current(self.conn, PreviewKey(pull.repo, pull.number))
            out["redisCurrent"] = current.to_json() if current else None
            lock = state.BranchLock(self.conn, state.branch_key(pull.repo, pull.repo, pull.branch, "preview"), lease_seconds=self.lease)
            out["lockHolder"] = lock.holder()
            out["waitingIntents"] = lock.waiting()
            out["journal"] = pull.journal[-25:]
        out["logs"] = self.log_lines(*(x for x in (deployment_id, delivery_id) if x)) if (deployment_id or delivery_id) else []
        return out

    def diagnose_stuck(self, detail: dict, evidence: dict) -> str:
        """A first reading of why a deployment stayed `deploying` (the evidence has the rest)."""
        notes = []
        job = evidence.get("deployJob")
        if job is None:
            notes.append("its deploy job is gone from Redis")
        else:
            notes.append(f"its deploy job is {job['status']} on {job['worker']}")
            pid = int(job["worker"].rsplit("-", 1)[1]) if job.get("worker") else None
            if pid is not None and (self.world.fault_log_pids.get(pid)):
                notes.append(f"that worker {self.world.fault_log_pids[pid]}")
        current = evidence.get("redisCurrent") or {}
        if current.get("id") != detail["id"]:
            history = self.api_history(detail["repository"], detail["prNumber"])
            later = [h for h in history if h["createdAt"] > detail["createdAt"]]
            successor = min(later, key=lambda h: h["createdAt"]) if later else None
            notes.append("it is no longer its environment's current deployment in Redis"
                         + (f" (replaced by {successor['id']} [{successor['trigger']}] created {successor['createdAt']})" if successor else "")
                         + f"; in {state.ACTIVE}: {bool(self.conn.hexists(state.ACTIVE, detail['id']))}")
        if evidence.get("lockHolder") != detail["id"]:
            notes.append(f"the branch lock is held by {evidence.get('lockHolder')}")
        return "; ".join(notes)

    # -- invariants --------------------------------------------------------------------------

    def check(self) -> dict:
        world = self.world
        result: dict = {}

        # Stuck: API status `deploying` after settling (every deployment the database knows).
        ids = [r[0] for r in self.bot.store.db.execute("SELECT id FROM deployments WHERE status = 'deploying'").fetchall()]
        current = {p.key: self.api_current(p.repo, p.number) for p in world.pulls}
        ids += [c["id"] for c in current.values() if c.get("status") == "deploying"]
        stuck = []
        for deployment_id in sorted(set(ids)):
            detail = self.api_deployment(deployment_id)
            if detail and detail["status"] == "deploying":
                evidence = self.evidence(deployment_id=deployment_id)
                stuck.append({"deployment": deployment_id, "pull": f"{detail['repository']}#{detail['prNumber']}",
                              "trigger": detail["trigger"], "createdAt": detail["createdAt"],
                              "diagnosis": self.diagnose_stuck(detail, evidence), "evidence": evidence})
        result["stuck"] = stuck

        # Lost: accepted requests with no outcome. Without persistence, a delivery Redis accepted
        # in the moment before it restarted is gone with its memory: that is expected, and counted apart.
        lost, lost_with_memory = [], []
        ok_in_logs = self.jobs_ok_in_logs()
        for delivery in world.deliveries.values():
            if delivery.accepted is None:
                lost.append({"what": "delivery never accepted", "delivery": delivery.id, "kind": delivery.kind,
                             "pull": delivery.pull.key if delivery.pull else None, "attempts": delivery.attempts})
            elif delivery.accepted == "queued":
                job = self.job(f"webhook-{delivery.id}")
                status = job.get_status() if job else None
                if status == JobStatus.FINISHED or f"webhook-{delivery.id}" in ok_in_logs:
                    continue
                accepted_at = next((t for t, code, _answer in delivery.attempts if code == 202), None)
                excuse = self.gone_with_redis_memory(f"webhook-{delivery.id}", accepted_at) if job is None else None
                if excuse:
                    lost_with_memory.append({"delivery": delivery.id, "kind": delivery.kind, "acceptedAt": accepted_at, **excuse})
                    continue
                why = "its job vanished from Redis" if job is None else f"its job is {status}"
                entry = {"what": f"accepted webhook delivery not handled: {why}", "delivery": delivery.id, "kind": delivery.kind,
                         "pull": delivery.pull.key if delivery.pull else None, "attempts": delivery.attempts}
                if job is not None and status == JobStatus.FAILED:
                    latest = job.latest_result()
                    entry["exception"] = (latest.exc_string if latest else "")[-1500:]
                entry["evidence"] = self.evidence(delivery_id=delivery.id, pull_key=entry["pull"])
                worker = (entry["evidence"].get("webhookJob") or {}).get("worker")
                if worker:
                    entry["diagnosis"] = f"the job ran on {worker}, which " + self.world.fault_log_pids.get(int(worker.rsplit("-", 1)[1]), "is still alive")
                lost.append(entry)
        for record in world.rest_deploys:
            if record["status"] != 202:
                continue
            detail = self.api_deployment(record["deploymentId"])
            if detail is None or detail["status"] not in FINAL:
                lost.append({"what": "REST deploy (202) with no outcome", "deployment": record["deploymentId"], "pull": record["pull"],
                             "apiStatus": detail["status"] if detail else None,
                             "evidence": self.evidence(deployment_id=record["deploymentId"], pull_key=record["pull"])})
        # Intents (a push, a command, a close that came while the branch was busy) still waiting.
        for key in self.conn.scan_iter(f"{state.PREFIX}:intents:*"):
            branch = _text(key)[len(f"{state.PREFIX}:intents:"):]
            holder = _text(self.conn.get(f"{state.PREFIX}:lock:{branch}"))
            for intent in (json.loads(raw) for raw in self.conn.lrange(key, 0, -1)):
                pull_key = f"{intent['repository']}#{intent['prNumber']}"
                entry = {"what": f"queued intent ({intent.get('action')}, {intent.get('trigger') or intent.get('reason')}) never started",
                         "branch": branch, "intent": intent, "lockHolder": holder, "pull": pull_key, "evidence": self.evidence(pull_key=pull_key)}
                if holder is None:
                    latest = current.get(pull_key) or {}
                    repairs = [line for line in self.log_lines(f"({pull_key}:", limit=200) if "reconcile:" in line]
                    entry["diagnosis"] = (
                        "the branch lock is free, so nothing will start it until some later job of this branch releases the lock "
                        f"(then it runs, late); the environment's deployment is {latest.get('id')} ({latest.get('status')}: {latest.get('error')})"
                        + (f"; the reconciler repaired this pull request: {repairs[-1]}" if repairs else ""))
                lost.append(entry)
        for pull in world.pulls:
            if pull.open:
                continue
            closes = [d for d in world.deliveries.values() if d.pull is pull and d.kind == "close" and d.accepted]
            if closes and current[pull.key].get("status") != "idle":
                lost.append({"what": "closed pull request whose preview was not torn down", "pull": pull.key,
                             "apiStatus": current[pull.key].get("status"), "deployment": current[pull.key].get("id"),
                             "evidence": self.evidence(deployment_id=current[pull.key].get("id"), pull_key=pull.key)})
        result["lost"] = lost
        result["lostWithRedisMemory"] = lost_with_memory

        # Branch locks left behind, and whether a job still runs for them.
        locks = []
        for key in self.conn.scan_iter(f"{state.PREFIX}:lock:*"):
            holder = _text(self.conn.get(key))
            jobs = {job_id: (str(j.get_status()) if (j := self.job(job_id)) else None) for job_id in (f"deploy-{holder}", f"destroy-{holder}")}
            running = any(s in {str(x) for x in LIVE_JOB} for s in jobs.values() if s)
            locks.append({"lock": _text(key), "holder": holder, "jobs": jobs, "jobRunning": running,
                          "ttlMs": self.conn.pttl(key), "evidence": self.evidence(deployment_id=holder)})
        result["locksLeft"] = locks
        result["locksWithoutJob"] = [lock for lock in locks if not lock["jobRunning"]]

        # Each pull request's API state against its Preview check run on GitHub.
        result["checkRuns"] = self.check_runs(current)

        # Informational: open PRs deployed at an older commit than GitHub's head.
        stale = []
        for pull in world.pulls:
            c = current[pull.key]
            if pull.open and c.get("status") == "deployed" and c.get("headSha") != pull.sha:
                stale.append({"pull": pull.key, "deployedSha": c.get("headSha"), "githubHead": pull.sha, "deployment": c.get("id"),
                              "journal": pull.journal[-12:]})
        result["staleDeployed"] = stale

        # Informational: accepted /preview commands by writers that got neither rocket nor confused.
        with world.fake.lock:
            reactions = {k: list(v) for k, v in world.fake.reactions.items()}
        unanswered = []
        for c in world.comments:
            delivery = world.deliveries[c["delivery"]]
            if c["kind"] != "comment:/preview" or not delivery.accepted:
                continue
            got = reactions.get(c["commentId"], [])
            if "rocket" not in got and "confused" not in got:
                pull = next(p for p in world.pulls if p.key == c["pull"])
                closed_later = any(e["action"] == "close" and e["t"] >= c["t"] for e in pull.journal)
                unanswered.append({**c, "reactions": got, "closedAfter": closed_later})
        result["commandsWithoutFinalReaction"] = unanswered

        with world.fake.lock:
            result["violations"] = list(world.fake.violations)
        if self.journal is not None:
            result["environments"] = self.check_environments(current)
        return result

    def diagnose_leak(self, entry: dict, last: Run, pull, environment: str) -> str:
        """A first reading of why an environment that was built is neither live in the API nor
        destroyed: what Redis holds, and the destroy jobs that ran after it was built."""
        notes = []
        redis_current = entry["evidence"].get("redisCurrent") or {}
        if redis_current:
            notes.append(f"Redis's current deployment of the environment is {redis_current.get('id')} ({redis_current.get('status')}), "
                         f"the API shows {entry['apiStatus']}"
                         + (" (SQLite's newest record: " + self._newest(pull, environment) + ")" if pull else ""))
        if pull is not None:
            after = []
            for line in self.log_lines(f"destroy {pull.repo}#{pull.number}:{environment} ", limit=100):
                stamp = line.split(": ", 1)[1][:23] if ": " in line else ""
                try:
                    at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    continue
                if at > (last.ended_at or 0):
                    after.append(line.split(": ", 1)[1][:160])
            if after:
                notes.append(f"{len(after)} destroy job(s) of this environment started after it was built, yet no destroy run of the "
                             f"provisioner followed: {after}")
        queued = [line for line in self.log_lines("lost its branch lock while queued", limit=200)]
        if queued:
            notes.append(f"{len(queued)} job(s) of this phase found their branch lock gone when they left the queue")
        return "; ".join(notes)

    def _newest(self, pull, environment: str) -> str:
        row = self.bot.store.db.execute(
            "SELECT id, status, created_at FROM deployments WHERE repository = ? AND pr_id = ? AND environment = ? ORDER BY created_at DESC LIMIT 1",
            [pull.repo, pull.number, environment]).fetchone()
        return f"{row[0]} {row[1]} created {row[2]}" if row else "none"

    def check_environments(self, current: dict) -> dict:
        """Leaked environments: each branch key whose last deploy run the journal shows
        succeeding (an environment was built) must, now, either be its pull request's live
        deployment, `deployed` in the API, or have had a destroy run that succeeded after that
        deploy ended. An environment whose pull request's deployment is `failed` is still the
        bot's (a destroy, a close or the closed-PR sweep tears it down; Retry redeploys it): it
        is counted apart. Also, the other way: a deployment the API shows `deployed` must have a
        successful deploy run, not torn down since."""
        runs = self.journal.all()
        by_key: dict[str, list[Run]] = defaultdict(list)
        for run in runs:
            by_key[run.key].append(run)
        pulls = {(p.repo, p.branch): p for p in self.world.pulls}
        leaked, failed_but_built, live, destroyed_after = [], [], 0, 0
        built_ok = {r.deployment for r in runs if r.action == "deploy" and r.outcome == "ok"}
        for key, key_runs in sorted(by_key.items()):
            deploys = [r for r in key_runs if r.action == "deploy" and r.outcome == "ok"]
            if not deploys:
                continue
            last = max(deploys, key=lambda r: r.end_index)
            destroys = [r for r in key_runs if r.action == "destroy" and r.outcome == "ok" and r.start_index > last.end_index]
            repository, _head, branch, environment = key.split("|")
            pull = pulls.get((repository, branch))
            api = current.get(pull.key, {}) if pull else {}
            entry = {"key": key, "pull": pull.key if pull else None, "lastDeploy": last.brief(), "apiStatus": api.get("status"),
                     "apiRecordStatus": api.get("recordStatus"), "apiDeployment": api.get("id")}
            if destroys:
                destroyed_after += 1
            elif api.get("status") == "deployed" and api.get("recordStatus") == "deployed":
                live += 1
            elif api.get("status") == "failed":
                failed_but_built.append(entry)
            else:
                entry["runs"] = [r.brief() for r in key_runs[-8:]]
                entry["evidence"] = self.evidence(deployment_id=api.get("id") or last.deployment, pull_key=entry["pull"])
                entry["diagnosis"] = self.diagnose_leak(entry, last, pull, environment)
                leaked.append(entry)
        phantom = []
        for pull in self.world.pulls:
            api = current[pull.key]
            if api.get("status") != "deployed":
                continue
            key_runs = by_key.get(f"{pull.repo}|{pull.repo}|{pull.branch}|preview", [])
            own = [r for r in key_runs if r.deployment == api.get("id") and r.action == "deploy" and r.outcome == "ok"]
            later_destroys = [r for r in key_runs if own and r.action == "destroy" and r.outcome == "ok" and r.start_index > own[-1].end_index]
            later_deploys = [r for r in key_runs if own and r.action == "deploy" and r.outcome == "ok" and r.end_index > own[-1].end_index]
            if not own or (later_destroys and not later_deploys):
                phantom.append({"pull": pull.key, "deployment": api.get("id"), "built": bool(own),
                                "tornDownSince": [r.brief() for r in later_destroys], "runs": [r.brief() for r in key_runs[-8:]]})
        return {"branchKeysBuilt": sum(1 for k in by_key.values() if any(r.action == "deploy" and r.outcome == "ok" for r in k)),
                "live": live, "destroyedAfterLastDeploy": destroyed_after, "failedButBuilt": failed_but_built,
                "leaked": leaked, "deployedWithoutEnvironment": phantom, "deployRunsOk": len(built_ok),
                "runs": {"deploy": sum(1 for r in runs if r.action == "deploy"), "destroy": sum(1 for r in runs if r.action == "destroy"),
                         "byOutcome": dict(sorted(_count(f"{r.action} {r.outcome or 'no end line'}" for r in runs).items()))}}

    def check_runs(self, current: dict) -> dict:
        world = self.world
        with world.fake.lock:
            runs = {rid: dict(r) for rid, r in world.fake.check_runs.items() if r["name"] == CHECK_NAME and r["app"]["id"] == APP_ID}
            # The last write to a Preview check run of each pull request, in the order GitHub got
            # them, and the last one tried (which GitHub may have refused: a fault, an outage).
            last_write: dict[str, int] = {}
            last_try: dict[str, dict] = {}
            for index, call in enumerate(world.fake.calls):
                pull_key = None
                if call.method == "POST" and call.path.endswith("/check-runs"):
                    body = call.json if isinstance(call.json, dict) else {}
                    if body.get("name") != CHECK_NAME:
                        continue
                    pull_key = f"{call.path.split('/')[2]}/{call.path.split('/')[3]}#{str(body.get('external_id', '')).partition(':')[0]}"
                    run_id = (call.response or {}).get("id") if call.status == 201 else None
                elif call.method == "PATCH" and "/check-runs/" in call.path:
                    run_id = int(call.path.rsplit("/", 1)[1])
                    if run_id not in runs:
                        continue
                    pull_key = f"{runs[run_id]['repository']}#{str(runs[run_id]['external_id']).partition(':')[0]}"
                    if call.status != 200:
                        run_id = None
                else:
                    continue
                last_try[pull_key] = {"call": index, "method": call.method, "status": call.status}
                if run_id in runs:
                    last_write[pull_key] = run_id

        def view(run):
            if run is None:
                return None
            return {"id": run["id"], "sha": run["head_sha"], "status": run["status"], "conclusion": run["conclusion"],
                    "actions": [a["identifier"] for a in run.get("actions") or []]}

        def matches(run, status) -> bool:
            want_status, want_conclusion = EXPECTED_CHECK[status]
            if run is None:
                return status == "idle"
            return run["status"] == want_status if want_conclusion is None else (run["status"], run["conclusion"]) == (want_status, want_conclusion)

        def run_on(repo, sha):
            found = [r for r in runs.values() if r["repository"] == repo and r["head_sha"] == sha]
            return max(found, key=lambda r: r["id"]) if found else None

        agree, disagree_last, disagree_own, refused_last = 0, [], [], 0
        for pull in world.pulls:
            api = current[pull.key]
            status = api.get("status", "idle")
            sha = api.get("headSha")
            if status == "idle":
                history = self.api_history(pull.repo, pull.number)
                sha = history[0]["headSha"] if history else None
            last = runs.get(last_write.get(pull.key))
            own = run_on(pull.repo, sha) if sha else None
            head = run_on(pull.repo, pull.sha)
            entry = {"pull": pull.key, "open": pull.open, "apiStatus": status, "apiSha": sha, "deployment": api.get("id"),
                     "githubHead": pull.sha, "lastCheckRun": view(last), "checkRunOnApiSha": view(own), "checkRunOnHead": view(head)}
            ok_last, ok_own = matches(last, status), (matches(own, status) if sha else True)
            tried = last_try.get(pull.key)
            if ok_last:
                agree += 1
            else:
                entry["explained"] = explain(status, last, own, sha)
                if tried and tried["status"] not in (200, 201):
                    # Reports only inform people: one GitHub refused (after the client's retries)
                    # is given up, and the next change of the pull request reports it all again.
                    refused_last += 1
                    entry["explained"] = f"the last report of this pull request to GitHub was refused ({tried['method']} answered {tried['status']}); " + entry["explained"]
                entry["lastTry"] = tried
                entry["journal"] = pull.journal[-12:]
                disagree_last.append(entry)
            if not ok_own:
                entry = {**entry, "evidence": self.evidence(deployment_id=api.get("id") or None, pull_key=pull.key)}
                disagree_own.append(entry)
        return {"agree": agree, "disagreeWithLastCheckRun": disagree_last, "disagreeWithOwnCheckRun": disagree_own,
                "lastReportRefusedByGitHub": refused_last}


def _count(items) -> dict:
    counts: dict = defaultdict(int)
    for item in items:
        counts[item] += 1
    return counts


def explain(status, last, own, sha) -> str:
    if last is not None and own is not None and last["id"] != own["id"] and EXPECTED_CHECK[status][1] == own["conclusion"]:
        return (f"the check run of the deployment's own commit agrees ({own['conclusion']}); the last one written is on "
                f"commit {last['head_sha'][:8]} ({last['status']}/{last['conclusion']})")
    return "the check run of the deployment's own commit disagrees too"
