"""The soak's faults, on a schedule: a worker SIGKILLed mid-deploy (and replaced), Redis
stopped and started again on the same port, GitHub answering 502, 429 (Retry-After) and 403
(rate limit exhausted) to single calls, GitHub write-only outages (5xx to every POST, PATCH,
PUT and DELETE for a few seconds while GETs work), and partitions: one worker reaches Redis
through a TCP proxy (`tests.tcpproxy`) that blackholes it for longer than a lease, preferably
while it runs a deploy, then heals. Also watches the bot's processes for exits nobody asked for.

Faults run on the soak's main thread on purpose: EmbeddedRedis starts redis-server with
PR_SET_PDEATHSIG, which fires when the *thread* that started it ends. Faults that last (an
outage, a partition) end from `tick`, called by the main loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot import state

from .soak_traffic import World
from .tcpproxy import BLACKHOLE

# Where GitHub can fail: every kind of call the bot makes.
GITHUB_ENDPOINTS = [
    ("POST", r"/repos/octo/(app|api)/check-runs"),
    ("PATCH", r"/repos/octo/(app|api)/check-runs/\d+"),
    ("GET", r"/repos/octo/(app|api)/commits/[^/]+/check-runs"),
    ("POST", r"/repos/octo/(app|api)/deployments"),
    ("GET", r"/repos/octo/(app|api)/deployments"),
    ("POST", r"/repos/octo/(app|api)/deployments/\d+/statuses"),
    ("POST", r"/repos/octo/(app|api)/issues/\d+/comments"),
    ("GET", r"/repos/octo/(app|api)/issues/\d+/comments"),
    ("PATCH", r"/repos/octo/(app|api)/issues/comments/\d+"),
    ("POST", r"/repos/octo/(app|api)/issues/comments/\d+/reactions"),
    ("GET", r"/repos/octo/(app|api)/pulls/\d+"),
    ("GET", r"/repos/octo/(app|api)/collaborators/[^/]+/permission"),
    ("POST", r"/app/installations/\d+/access_tokens"),
]
GITHUB_KINDS = ("github_502", "github_429", "github_403_ratelimit")
WRITE_OUTAGE_STATUSES = (500, 502, 503)


def schedule(seconds: float, *, github_every: float = 4.0, kill_every: float = 30.0, redis_every: float = 50.0,
             outage_every: float = 45.0, partition_every: float = 55.0) -> list[tuple[float, str]]:
    """(offset, kind) for a phase of `seconds`: GitHub faults often, a worker kill every
    `kill_every` from 12 s, a Redis restart every `redis_every` from 30 s (none in the last 8 s),
    a GitHub write-only outage every `outage_every` from 8 s (none in the last 12 s) and a
    partition of the proxied worker every `partition_every` from 18 s (none in the last 15 s)."""
    plan = []
    t, i = 3.0, 0
    while t < seconds - 2:
        plan.append((t, GITHUB_KINDS[i % len(GITHUB_KINDS)]))
        t, i = t + github_every, i + 1
    t = 12.0
    while t < seconds - 5:
        plan.append((t, "worker_kill"))
        t += kill_every
    t = min(30.0, seconds / 2)
    while t < seconds - 8:
        plan.append((t, "redis_restart"))
        t += redis_every
    t = 8.0
    while t < seconds - 12:
        plan.append((t, "github_write_outage"))
        t += outage_every
    t = 18.0
    while t < seconds - 15:
        plan.append((t, "partition"))
        t += partition_every
    return sorted(plan)


class Faults:
    def __init__(self, world: World, bot, redis_server, *, proxy=None, sampler=None, redis_down_seconds: float = 2.5,
                 outage_seconds: tuple[float, float] = (5.0, 9.0), partition_seconds: float = 9.0):
        self.world = world
        self.bot = bot
        self.redis_server = redis_server
        self.redis_down_seconds = redis_down_seconds
        self.redis_up = True
        self.injected: list[dict] = []
        self.github_faults = []  # the fake's Fault objects, to switch off at the end
        self.killed_pids: set[int] = set()
        self.unexpected_exits: list[dict] = []
        self.conn = redis.Redis.from_url(redis_server.url, socket_timeout=5, socket_connect_timeout=2)
        # Partitions: the workers that reach Redis through `proxy`, and how long a cut lasts.
        self.proxy = proxy
        self.sampler = sampler  # the provisioner sampler: which deploy runs are alive
        self.proxied_pids: set[int] = set()
        self.partition_seconds = partition_seconds
        self.outage_seconds = outage_seconds
        self.partitions = 0
        # Faults that last: (monotonic deadline, what ends them).
        self.pending: list[tuple[float, object]] = []
        self.outage_windows: list[list] = []  # [first call index, last call index or None] of each write outage

    # -- workers, direct or through the proxy ------------------------------------------------

    def start_worker(self, *, proxied: bool = False) -> subprocess.Popen:
        """`previewbot worker` as the harness starts it; with `proxied`, on the proxy's Redis URL."""
        if not proxied:
            self.bot.start_worker()
            process = self.bot.workers[-1]
        else:
            bot = self.bot
            log_path = bot.directory / f"worker-proxied-{len(bot.logs)}.log"
            bot.logs.append(log_path)
            process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "worker"],
                cwd=bot.directory,
                env={**bot.env, "REDIS_URL": self.proxy.url_for(bot.env["REDIS_URL"])},
                stdout=log_path.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            bot.workers.append(process)
            self.proxied_pids.add(process.pid)
        spawned(self.world, self.bot, process)
        return process

    def replace_worker(self, process: subprocess.Popen) -> None:
        self.bot.workers.remove(process)
        self.start_worker(proxied=process.pid in self.proxied_pids)

    def record(self, kind: str, **info) -> None:
        self.world.stats.inc(f"faults.{kind}")
        self.injected.append({"t": self.world.now(), "at": self.world.wall(), "kind": kind, **info})

    def run(self, kind: str) -> None:
        if kind == "github_write_outage":
            self.github_write_outage()
        elif kind.startswith("github_"):
            self.github(kind)
        elif kind == "worker_kill":
            self.kill_worker()
        elif kind == "redis_restart":
            self.restart_redis()
        elif kind == "partition":
            self.partition()

    def tick(self) -> None:
        """End the lasting faults whose time has come."""
        now = time.monotonic()
        due = [end for deadline, end in self.pending if deadline <= now]
        self.pending = [(deadline, end) for deadline, end in self.pending if deadline > now]
        for end in due:
            end()

    def end_all(self) -> None:
        """Every fault off: single GitHub faults, outages, partitions."""
        for _deadline, end in self.pending:
            end()
        self.pending = []
        self.github_off()

    # -- GitHub ------------------------------------------------------------------------------

    def github(self, kind: str) -> None:
        rng = self.world.rng
        method, path = rng.choice(GITHUB_ENDPOINTS)
        times = rng.randint(1, 2)
        if kind == "github_502":
            times = rng.randint(1, 3)
            fault = self.world.fake.fail(method, path, 502, times=times)
        elif kind == "github_429":
            fault = self.world.fake.fail(method, path, 429, times=times, headers={"Retry-After": "1"})
        else:
            # GitHub's primary rate limit: remaining 0 and the epoch second the window resets.
            fault = self.world.fake.fail(method, path, 403, times=times,
                                         headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 1)})
        self.github_faults.append(fault)
        self.record(kind, method=method, path=path, times=times)

    def github_off(self) -> None:
        self.world.fake.end_faults(self.github_faults)

    def github_write_outage(self) -> None:
        """Every write to GitHub (POST, PATCH, PUT, DELETE: check runs, comments, reactions,
        deployments and their statuses, installation tokens) answered 5xx for a few seconds;
        GETs work."""
        fake, rng = self.world.fake, self.world.rng
        status = rng.choice(WRITE_OUTAGE_STATUSES)
        seconds = round(rng.uniform(*self.outage_seconds), 1)
        with fake.lock:
            window = [len(fake.calls), None]
        faults = fake.fail_writes(status)
        self.outage_windows.append(window)
        self.record("github_write_outage", status=status, seconds=seconds)
        fault = self.injected[-1]

        def end() -> None:
            fake.end_faults(faults)
            with fake.lock:
                window[1] = len(fake.calls)
                calls = fake.calls[window[0]:window[1]]
            fault["endedAt"] = self.world.wall()
            fault["writesRefused"] = sum(1 for c in calls if c.method in fake.WRITE_METHODS and c.status == status)
            fault["readsAnswered"] = sum(1 for c in calls if c.method == "GET" and c.status == 200)

        self.pending.append((time.monotonic() + seconds, end))

    def github_faults_answered(self) -> dict:
        """How many error answers GitHub gave: to single calls (the 502/429/403 faults) and during
        the write-only outages."""
        fake = self.world.fake
        with fake.lock:
            calls = list(fake.calls)
        in_outage = set()
        for start, end in self.outage_windows:
            in_outage.update(range(start, end if end is not None else len(calls)))
        spot = outage = 0
        for index, c in enumerate(calls):
            if index in in_outage and c.method in fake.WRITE_METHODS and c.status >= 500:
                outage += 1
            elif c.status in (502, 429) or (c.status == 403 and "rate limit" in str(c.response)):
                spot += 1
        return {"singleCalls": spot, "writeOutages": outage}

    # -- partitions --------------------------------------------------------------------------

    def partition(self, search_seconds: float = 10.0) -> None:
        """Blackhole the proxied worker's Redis connections for `partition_seconds` (longer than
        a lease: its leases run out and its deploy must fence itself), preferably while it runs a
        deploy, then heal. Cuts alternate between closing the open connections (the client sees
        it at once, and its reconnections hang) and silencing them (its calls hang until their
        socket timeouts)."""
        if self.proxy is None:
            return
        # Best: a deploy whose provisioner has just started on the proxied worker (it is still
        # running when the fence gives up); else any deploy job it runs; else none.
        deadline = time.monotonic() + search_seconds
        found = fallback = None
        while time.monotonic() < deadline and found is None:
            found = self._provisioner_just_started()
            fallback = fallback or self._worker_mid_deploy(only=self.proxied_pids)
            if found is None:
                time.sleep(0.02)
        found = found or fallback
        close_existing = self.partitions % 2 == 0
        self.partitions += 1
        attempts_before = self.proxy.attempts_while_cut
        cut_at = time.time()
        self.proxy.cut(BLACKHOLE, close_existing=close_existing)
        live = [p.pid for p in self.bot.workers if p.pid in self.proxied_pids and p.poll() is None]
        process, job_id = found if found else (None, None)
        self.record("partition", pids=live, cutAt=cut_at, closeExisting=close_existing, seconds=self.partition_seconds,
                    runningDeploy=job_id.removeprefix("deploy-") if job_id else None)
        fault = self.injected[-1]

        def heal() -> None:
            self.proxy.heal()
            fault["healedAt"] = time.time()
            fault["cutSeconds"] = round(fault["healedAt"] - cut_at, 2)
            fault["connectionsWhileCut"] = self.proxy.attempts_while_cut - attempts_before

        self.pending.append((time.monotonic() + self.partition_seconds, heal))

    # -- workers -----------------------------------------------------------------------------

    def kill_worker(self, search_seconds: float = 6.0) -> None:
        """SIGKILL a worker while it runs a deploy job, then start a replacement."""
        deadline = time.monotonic() + search_seconds
        while time.monotonic() < deadline:
            found = self._worker_mid_deploy()
            if found:
                process, job_id = found
                os.kill(process.pid, signal.SIGKILL)
                self.killed_pids.add(process.pid)
                process.wait()
                self.replace_worker(process)
                self.world.fault_log_pids[process.pid] = f"was SIGKILLed by the soak at t={self.world.now()}"
                self.record("worker_kill", pid=process.pid, job=job_id, deployment=job_id.removeprefix("deploy-"),
                            proxied=process.pid in self.proxied_pids)
                return
            time.sleep(0.05)
        self.world.stats.inc("faults.worker_kill_skipped")
        self.injected.append({"t": self.world.now(), "kind": "worker_kill_skipped", "why": "no worker was running a deploy"})

    def _provisioner_just_started(self, left: float = 1.8):
        """(worker, deploy job id) of a deploy run of a proxied worker that means to run at least
        `left` seconds more (longer than a fence takes to give up), or None."""
        if self.sampler is None or not self.redis_up:
            return None
        live = {p.pid: p for p in self.bot.workers if p.poll() is None and p.pid in self.proxied_pids}
        now = time.time()
        for run in self.sampler.alive_runs():
            if run.action != "deploy" or run.started_at + (run.seconds or 0) - now < left:
                continue
            try:
                job = Job.fetch(f"deploy-{run.deployment}", connection=self.conn, serializer=JSONSerializer)
            except (NoSuchJobError, redis.RedisError):
                continue
            pid = int(job.worker_name.rsplit("-", 1)[1]) if job.worker_name else None
            if pid in live:
                return live[pid], job.id
        return None

    def _worker_mid_deploy(self, only: set[int] | None = None):
        if not self.redis_up:
            return None
        live = {p.pid: p for p in self.bot.workers if p.poll() is None and (only is None or p.pid in only)}
        try:
            active = state.active_deployments(self.conn)
            self.world.rng.shuffle(active)
            for deployment in active:
                try:
                    job = Job.fetch(f"deploy-{deployment.id}", connection=self.conn, serializer=JSONSerializer)
                except NoSuchJobError:
                    continue
                if job.get_status() != JobStatus.STARTED or not job.worker_name:
                    continue
                pid = int(job.worker_name.rsplit("-", 1)[1])
                if pid in live:
                    return live[pid], job.id
        except redis.RedisError:
            return None
        return None

    def watch_processes(self) -> None:
        """A worker or web process that exited without being killed is a finding; replace it so
        the soak goes on."""
        for process in list(self.bot.workers):
            if process.poll() is not None and process.pid not in self.killed_pids:
                self.unexpected_exits.append({"t": self.world.now(), "process": "worker", "pid": process.pid, "returncode": process.returncode,
                                              "log": _log_of(self.world, process)})
                self.world.stats.inc("unexpected_exits.worker")
                self.world.fault_log_pids[process.pid] = f"exited by itself (code {process.returncode}) before t={self.world.now()}"
                self.replace_worker(process)
        web = self.bot.web
        if web is not None and web.poll() is not None:
            self.unexpected_exits.append({"t": self.world.now(), "process": "web", "pid": web.pid, "returncode": web.returncode,
                                          "log": _log_of(self.world, web)})
            self.world.stats.inc("unexpected_exits.web")
            self.bot.web = None
            self.bot.start_web(workers=2)
            spawned(self.world, self.bot, self.bot.web)

    # -- Redis -------------------------------------------------------------------------------

    def restart_redis(self) -> None:
        """Stop Redis (SIGTERM: with persistence it writes its append-only file) and start it
        again on the same port and directory; the bot's processes must reconnect."""
        started = time.monotonic()
        stopped_at = self.world.wall()
        self.redis_up = False
        outage = [self.world.now(), None]
        self.world.outages.append(outage)
        self.redis_server.stop()
        time.sleep(self.redis_down_seconds)
        self.redis_server.start()
        outage[1] = self.world.now()
        self.redis_up = True
        self.record("redis_restart", stoppedAt=stopped_at, down_seconds=round(time.monotonic() - started, 2), persist=self.redis_server.persist)

    def queue_depth(self) -> int | None:
        if not self.redis_up:
            return None
        try:
            return int(self.conn.llen("rq:queue:previewbot"))
        except redis.RedisError:
            return None


def spawned(world: World, bot, process) -> None:
    """Remember which of the harness's log files belongs to `process` (the last one opened)."""
    world.log_for[process.pid] = bot.logs[-1]


def _log_of(world: World, process) -> str:
    path = world.log_for.get(process.pid)
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-40:])
