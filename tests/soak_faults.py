"""The soak's faults, on a schedule: a worker SIGKILLed mid-deploy (and replaced), Redis
stopped and started again on the same port, GitHub answering 502, 429 (Retry-After) and 403
(rate limit exhausted). Also watches the bot's processes for exits nobody asked for.

Faults run on the soak's main thread on purpose: EmbeddedRedis starts redis-server with
PR_SET_PDEATHSIG, which fires when the *thread* that started it ends."""

from __future__ import annotations

import os
import signal
import time

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bot import state

from .soak_traffic import World

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


def schedule(seconds: float, *, github_every: float = 4.0, kill_every: float = 30.0, redis_every: float = 50.0) -> list[tuple[float, str]]:
    """(offset, kind) for a phase of `seconds`: GitHub faults often, a worker kill every
    `kill_every` from 12 s, a Redis restart every `redis_every` from 30 s (none in the last 8 s)."""
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
    return sorted(plan)


class Faults:
    def __init__(self, world: World, bot, redis_server, *, redis_down_seconds: float = 2.5):
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

    def record(self, kind: str, **info) -> None:
        self.world.stats.inc(f"faults.{kind}")
        self.injected.append({"t": self.world.now(), "at": self.world.wall(), "kind": kind, **info})

    def run(self, kind: str) -> None:
        if kind.startswith("github_"):
            self.github(kind)
        elif kind == "worker_kill":
            self.kill_worker()
        elif kind == "redis_restart":
            self.restart_redis()

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
        with self.world.fake.lock:
            for fault in self.github_faults:
                fault.remaining = 0

    def github_faults_answered(self) -> int:
        with self.world.fake.lock:
            return sum(1 for c in self.world.fake.calls if c.status in (502, 429) or (c.status == 403 and "rate limit" in str(c.response)))

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
                self.bot.workers.remove(process)
                self.bot.start_worker()
                spawned(self.world, self.bot, self.bot.workers[-1])
                self.world.fault_log_pids[process.pid] = f"was SIGKILLed by the soak at t={self.world.now()}"
                self.record("worker_kill", pid=process.pid, job=job_id, deployment=job_id.removeprefix("deploy-"))
                return
            time.sleep(0.05)
        self.world.stats.inc("faults.worker_kill_skipped")
        self.injected.append({"t": self.world.now(), "kind": "worker_kill_skipped", "why": "no worker was running a deploy"})

    def _worker_mid_deploy(self):
        if not self.redis_up:
            return None
        live = {p.pid: p for p in self.bot.workers if p.poll() is None}
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
                self.bot.workers.remove(process)
                self.bot.start_worker()
                spawned(self.world, self.bot, self.bot.workers[-1])
        web = self.bot.web
        if web is not None and web.poll() is not None:
            self.unexpected_exits.append({"t": self.world.now(), "process": "web", "pid": web.pid, "returncode": web.returncode,
                                          "log": _log_of(self.world, web)})
            self.world.stats.inc("unexpected_exits.web")
            self.bot.web = None
            self.bot.start_web(workers=2, threads=16)
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
