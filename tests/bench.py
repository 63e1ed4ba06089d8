"""Benchmarks of previewbot on this machine, over loopback, with the real processes.

    python -m tests.bench            (what `make bench` runs; about 8-10 minutes)
    python -m tests.bench --only webhooks,comments

1. deploy overhead: one web (2 gevent gunicorn workers, the CLI defaults) and one worker,
   simulated provisioner at 0 s. Sequential deploys of distinct pull requests through the REST
   API; each is timed from the POST to the `deployed` message on the /ws feed.
2. 200 branches: four worker processes, the command provisioner running a tiny script that
   appends $PREVIEW_DEPLOYMENT_ID to a file; 200 deploys of distinct pull requests fired at
   once; wall time until the feed has shown all 200 `deployed`, then checks that every
   deployment ran exactly once (the script's file, and each pull request's history in the API).
3. webhook acknowledgement: GitHub mode against the fake GitHub, `previewbot web --workers 2
   (gevent)`, no worker (so the measurement is the receiver's alone; the queued jobs are
   left in Redis). Signed real payloads paced at 100/s for 10 s, a new connection each, a mix
   of plain comments (acknowledged, no job), `/preview` comments and pull_request.synchronize.
   Then maximum throughput with wrk (keep-alive, 16 connections) against our endpoint and a
   bare Flask endpoint that only checks the signature (tests/bench_bare.py), same gunicorn
   settings, alternating rounds.
4. comment -> reaction and check run: GitHub mode, one web and one worker; sequential `/preview`
   comments on distinct pull requests; time from sending the webhook to the fake GitHub
   answering the `eyes` reaction and the `in_progress` check run.
5. WebSocket clients: GitHub mode, `previewbot web --workers 2 --connections 10000` (gevent), 4
   workers, simulated provisioner 1 s. A second process (tests/bench_ws.py, asyncio and the
   `websockets` library) holds the clients. First a control without clients (webhooks paced at
   100/s for 5 s, 25 of them `/preview`); then 1,000 clients connected while webhooks are paced
   at 100/s for 10 s, 50 of them `/preview` comments (50 deploys): the acknowledgement latency,
   GET /api/health every 100 ms, and for every client and every `deployment:update` the delay
   from the worker's `updatedAt` stamp (taken just before it publishes) to the client's receipt,
   both on this machine's clock. Then a ramp of idle clients (2k, 4k, 8k, 12k, 16k, 20k, bounded
   by the open-files limit, raised here to 65,536 where allowed and inherited by both processes,
   and by the two workers' 10,000 connections each) until
   a step fails (connect failures, dropped clients, unanswered pings, failed health checks),
   with the web workers' RSS at each step (memory per idle connection), their idle CPU and
   /api/health; last, one deploy fanned out to every client held.
6. burst: GitHub mode, 1 web (2 gevent workers), 4 workers, simulated provisioner 0 s; 5,000
   signed deliveries (chatter, `/preview`, pushes in turn over 500 pull requests) sent by 4
   threads as fast as they go; counts what was not acknowledged with a 2xx, times the `eyes`
   reaction of the `/preview` sent in the middle (and of every `/preview`), and how long the
   queue takes to drain.
7. logs (`--only logs`; not part of the default run): 1 web (2 gevent workers), 2 workers, the
   command provisioner. One deploy prints LOG_LINES lines as fast as Python prints them, each
   stamped with the time it was printed; a WebSocket client follows its log
   (`{"type": "subscribe", "logs": …}`) from a process of its own that reads frames straight off
   the socket (`tests.bench_log_client`), and notes each line's lag (receipt minus stamp, this
   machine's clock) and whether any seq is missing or repeated. Meanwhile other pull requests
   are deployed one after another (their command, a shell line, prints a URL at once, so their
   time is previewbot's and not a Python start-up's on a busy machine): how long each `deployed`
   update takes from its publication (its `updatedAt`) to a /ws client, and POST -> `deployed`,
   both compared with the same deploys before the flood. Last, how many lines SQLite holds
   (every one, up to its cap) and the log's Redis stream length (capped at LOG_STREAM_MAXLEN).
8. ec2 (`--only ec2`; not part of the default run): previewbot's own time around the `ec2`
   provisioner. moto in server mode, behind a forwarding proxy that notes when each AWS call
   arrives and when its answer leaves; a fake Price List API; 1 web (2 gevent workers), 1
   worker, loopback preview URLs and no health check. Sequential deploys of distinct pull
   requests through the REST API: the POST -> the first AWS call (previewbot before the
   provisioner's work in AWS), and the last AWS answer -> `deployed` on a /ws feed (after it).
   Their sum is previewbot's overhead; boto3's own time on the first and last call counts in it.

The websockets scenario needs the `websockets` package (the `test` extras).

Results are printed as a table and written to test-output/bench.json. Timing goals are
reported, not asserted: this is a measurement, not a test. The exit status is non-zero only
when a scenario could not run.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import itertools
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qs

import boto3
import httpx
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.embedded_redis import EmbeddedRedis, free_port, redis_executable
from bot.store import MAX_LOG_LINES

from . import webhooks
from .awsfakes import CREDENTIALS, FakePricing, MotoServer
from .bench_load import (
    FeedListener,
    MachineMonitor,
    Request,
    Sent,
    children_of,
    closed_loop,
    command_version,
    cpu_by_group,
    cpu_model,
    memory_gb,
    open_files,
    paced,
    post,
    process_cpu_seconds,
    raise_open_files,
    rss_kb,
    run_wrk,
    runqueue_wait_by_group,
    session_cpu_seconds,
    summary_ms,
    usable_cpus,
    write_wrk_inputs,
    wrk_available,
)
from .fakegithub import FakeGitHub
from .harness import Bot, wait_for

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(os.environ.get("PREVIEWBOT_TEST_OUTPUT", ROOT / "test-output"))
WEBHOOK_PATH = "/api/github/webhooks"

APP_ID = 4242
INSTALLATION = 77
SECRET = "webhook-secret-for-benchmarks"
GITHUB_REPO = "octo/app"
LOCAL_REPO = "bench/app"

# Sizes; each scenario also has time limits on every wait.
DEPLOYS = 100
DEPLOY_WARMUP = 5
BRANCHES = 200
BRANCH_WORKERS = 4
WEBHOOK_RATE = 100
WEBHOOK_SECONDS = 10
WEBHOOK_WARMUP = 60
WRK_BODIES = 300
WRK_CONNECTIONS = 16
WRK_SECONDS = 6
WRK_ROUNDS = 3
COMMENTS = 30
COMMENT_WARMUP = 2
# 5. WebSocket clients (tests/bench_ws.py, a process of their own) while webhooks and deploys run.
WS_CLIENTS = 1000
WS_DEPLOYS = 50  # /preview comments among the paced deliveries, one every 20
WS_WORKERS = 4
WS_SIMULATED_SECONDS = "1"
WS_RATE = 100
WS_SECONDS = 10
WS_CONTROL_SECONDS = 5  # the same load without clients first, as a control
WS_CONTROL_DEPLOYS = 25
WS_CONNECTIONS_PER_WORKER = 10_000  # gunicorn --worker-connections: the CLI's default (WEB_CONNECTIONS)
WS_RAMP = (2000, 4000, 8000, 12000, 16000, 20000)  # while they hold, up to the open-files limit and 2 x --worker-connections
WS_CONNECT_CONCURRENCY = 100  # handshakes in flight at once
WS_HANDSHAKE_TIMEOUT = 30
HEALTH_INTERVAL = 0.1
# 6. A burst of deliveries as fast as a few senders can, workers running against the fake GitHub.
BURST = 5000
BURST_THREADS = 4
BURST_WORKERS = 4
BURST_PRS = 500
BURST_DRAIN_TIMEOUT = 300

# 7. A chatty build's log followed live while other deployments' updates go on.
LOG_LINES = 100_000
LOG_OTHER_DEPLOYS = 40
LOG_TIMEOUT = 600

# 8. The ec2 provisioner against moto.
EC2_DEPLOYS = 30
EC2_WARMUP = 3

GOALS = {
    "deploy_p50_ms": 20,
    "webhook_p99_ms": 50,
    "throughput_ratio": 0.5,
    "comment_p50_ms": 1000,
    "ws_webhook_p99_ms": 100,
    "ws_delivery_p99_ms": 250,
    "burst_eyes_s": 2.0,
    "log_lag_p99_ms": 500,
    "log_update_delay_ms": 100,
    "ec2_overhead_p50_ms": 50,
}


# -- shared set-up -------------------------------------------------------------------------------


class Context:
    def __init__(self, run_dir: Path, redis_url: str, private_key: str, redis_pid: int):
        self.run_dir = run_dir
        self.redis_url = redis_url
        self.private_key = private_key
        self.redis_pid = redis_pid

    def flush(self) -> None:
        conn = redis.Redis.from_url(self.redis_url)
        conn.flushall()
        conn.close()

    def directory(self, name: str) -> Path:
        path = self.run_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def github_env(self, fake: FakeGitHub, **extra) -> dict:
        return {
            "APP_ID": str(APP_ID),
            "PRIVATE_KEY": self.private_key,
            "WEBHOOK_SECRET": SECRET,
            "GITHUB_API_URL": fake.url,
            **extra,
        }


def start_fake(ctx: Context) -> FakeGitHub:
    fake = FakeGitHub(APP_ID, ctx.private_key).start()
    fake.add_installation(INSTALLATION, "octo")
    fake.add_repo(GITHUB_REPO, INSTALLATION)
    fake.set_permission(GITHUB_REPO, "alice", "write")
    return fake


def sha_for(*parts) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


def delivery(event: str, payload: dict, kind: str = "") -> Request:
    """A signed delivery with the headers GitHub sends (see tests.webhooks.deliver)."""
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/bench",
        "Accept": "*/*",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "109948940",
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": str(APP_ID),
        "X-Hub-Signature": "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": webhooks.sign(body, SECRET),
    }
    return Request(headers, body, kind or event)


def mixed_deliveries(count: int, *, first_pr: int = 1) -> list[Request]:
    """Real payloads, in turn: a comment without a command (acknowledged, no job), a `/preview`
    comment (queued) and a pull_request.synchronize (queued). Every body differs (comment text
    or id, head sha), so each carries its own valid signature."""
    requests = []
    for i in range(count):
        pr = first_pr + i % 500
        kind = ("comment", "/preview", "synchronize")[i % 3]
        if kind == "comment":
            payload = webhooks.issue_comment(GITHUB_REPO, pr, body=f"Looks good to me, thanks! ({i})", user="alice", author_association="COLLABORATOR", installation_id=INSTALLATION)
            requests.append(delivery("issue_comment", payload, kind))
        elif kind == "/preview":
            payload = webhooks.issue_comment(GITHUB_REPO, pr, body="/preview", user="alice", author_association="COLLABORATOR", installation_id=INSTALLATION)
            requests.append(delivery("issue_comment", payload, kind))
        else:
            payload = webhooks.pull_request("synchronize", GITHUB_REPO, pr, f"bench/branch-{pr}", sha_for("sync", i), installation_id=INSTALLATION)
            requests.append(delivery("pull_request", payload, kind))
    return requests


def auth(bot: Bot) -> dict:
    return {"Authorization": f"Bearer {bot.token}", "Content-Type": "application/json"}


def wait_workers(redis_url: str, count: int, timeout: float = 30) -> None:
    from rq import Worker

    conn = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: len(Worker.all(connection=conn)) >= count, timeout=timeout, message=f"{count} RQ workers")
    finally:
        conn.close()


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# -- 1. deploy overhead --------------------------------------------------------------------------


def bench_deploy_overhead(ctx: Context) -> dict:
    bot = Bot(ctx.directory("deploy"), ctx.redis_url, {"PREVIEW_SIMULATED_SECONDS": "0", "PREVIEW_API_RATE_LIMIT": "100000"})
    feed = client = None
    try:
        bot.start_worker(1).start_web(workers=2)
        wait_workers(ctx.redis_url, 1)
        feed = FeedListener(bot.ws_url())
        client = httpx.Client(base_url=bot.url, headers=auth(bot), timeout=10)
        totals, acks, announced = [], [], []
        for i in range(DEPLOY_WARMUP + DEPLOYS):
            pr = i + 1
            started = time.perf_counter()
            response = client.post(f"/api/repos/{LOCAL_REPO}/pull-requests/{pr}/deploy", json={"branchName": f"bench/overhead-{pr}"})
            acked = time.perf_counter()
            if response.status_code != 202:
                raise RuntimeError(f"deploy #{pr} answered {response.status_code}: {response.text}")
            deployment_id = response.json()["deploymentId"]
            deployed = feed.arrival(deployment_id, "deployed", timeout=30 if i < DEPLOY_WARMUP else 10)
            if i < DEPLOY_WARMUP:
                continue
            totals.append(deployed - started)
            acks.append(acked - started)
            deploying = feed.arrivals.get((deployment_id, "deploying"))
            if deploying is not None:
                announced.append(deploying - started)
        return {
            "setup": f"1 web (2 gevent gunicorn workers), 1 worker, simulated provisioner 0 s; {DEPLOYS} sequential deploys after {DEPLOY_WARMUP} warm-up",
            "post_to_deployed": summary_ms(totals),
            "post_answered": summary_ms(acks),
            "post_to_deploying_on_feed": summary_ms(announced),
            "samples_ms": [round(x * 1000, 2) for x in totals],
        }
    finally:
        if client:
            client.close()
        if feed:
            feed.close()
        bot.stop()


# -- 2. 200 branches at once ---------------------------------------------------------------------


def bench_branches(ctx: Context) -> dict:
    directory = ctx.directory("branches")
    runs = directory / "runs.txt"
    script = directory / "provision.sh"
    script.write_text('printf "%s\\n" "$PREVIEW_DEPLOYMENT_ID" >> "$1"\n')
    bot = Bot(
        directory,
        ctx.redis_url,
        {
            "PREVIEW_PROVISIONER": "command",
            "PREVIEW_DEPLOY_COMMAND": f"/bin/sh {script} {runs}",
            "PREVIEW_API_RATE_LIMIT": "100000",
        },
    )
    feed = None
    try:
        bot.start_worker(BRANCH_WORKERS).start_web(workers=2)
        wait_workers(ctx.redis_url, BRANCH_WORKERS)
        feed = FeedListener(bot.ws_url())
        headers = auth(bot)
        # Warm-up: one deploy, so the first request of the burst pays no import or connection.
        status, body = post(bot.port, f"/api/repos/{LOCAL_REPO}/pull-requests/9999/deploy", json.dumps({"branchName": "bench/warm-up"}).encode(), headers)
        if status != 202:
            raise RuntimeError(f"warm-up deploy answered {status}: {body!r}")
        warm_id = json.loads(body)["deploymentId"]
        feed.arrival(warm_id, "deployed", timeout=30)

        barrier = threading.Barrier(BRANCHES + 1)

        def fire(pr: int):
            payload = json.dumps({"branchName": f"bench/branch-{pr:03d}"}).encode()
            barrier.wait(timeout=60)
            begun = time.perf_counter()
            status, body = post(bot.port, f"/api/repos/{LOCAL_REPO}/pull-requests/{pr}/deploy", payload, headers, timeout=60)
            return pr, begun, time.perf_counter(), status, body

        with ThreadPoolExecutor(BRANCHES, thread_name_prefix="fire") as pool:
            futures = [pool.submit(fire, pr) for pr in range(1, BRANCHES + 1)]
            barrier.wait(timeout=60)
            start = time.perf_counter()
            answers = [f.result() for f in futures]
        refused = [(pr, status, body[:200]) for pr, _, _, status, body in answers if status != 202]
        if refused:
            raise RuntimeError(f"{len(refused)} deploys refused, e.g. {refused[:3]}")
        ids = {json.loads(body)["deploymentId"]: pr for pr, _, _, _, body in answers}
        all_acked = max(a[2] for a in answers) - start

        def all_deployed(f: FeedListener):
            failed = [i for i in ids if (i, "failed") in f.arrivals]
            if failed:
                raise RuntimeError(f"{len(failed)} deployments failed")
            return all((i, "deployed") in f.arrivals for i in ids)

        feed.wait(all_deployed, timeout=120)
        finished = [feed.arrivals[(i, "deployed")] for i in ids]
        wall = max(finished) - start
        per_deploy = [feed.arrivals[(i, "deployed")] - answers[ids[i] - 1][1] for i in ids]

        # Exactly once: the provisioner's own record, and the history the API shows.
        lines = [line for line in runs.read_text().split() if line != warm_id]
        counts = Counter(lines)
        ran_twice = sorted(i for i, n in counts.items() if n > 1)
        never_ran = sorted(set(ids) - set(counts))
        strangers = sorted(set(counts) - set(ids))
        with httpx.Client(base_url=bot.url, headers=auth(bot), timeout=10) as client:
            wait_for(
                lambda: len([p for p in client.get("/api/pull-requests", params={"repository": LOCAL_REPO, "status": "deployed"}).json()["pullRequests"] if p["prNumber"] != 9999]) == BRANCHES,
                timeout=60,
                message="the API to list all 200 as deployed",
            )
            histories = {pr: client.get(f"/api/repos/{LOCAL_REPO}/pull-requests/{pr}/deployments").json()["deployments"] for pr in range(1, BRANCHES + 1)}
        not_single = {pr: [(d["id"], d["status"]) for d in h] for pr, h in histories.items() if len(h) != 1 or h[0]["status"] != "deployed" or h[0]["id"] not in ids}
        conn = redis.Redis.from_url(ctx.redis_url)
        failed_jobs = conn.zcard("rq:failed:previewbot")
        conn.close()
        return {
            "setup": f"1 web (2 gevent workers), {BRANCH_WORKERS} workers, command provisioner (/bin/sh script appending the deployment id); {BRANCHES} deploys of distinct PRs fired at once",
            "wall_s": round(wall, 3),
            "throughput_per_s": round(BRANCHES / wall, 1),
            "all_posts_answered_s": round(all_acked, 3),
            "post_to_deployed": summary_ms(per_deploy),
            "provisioner_runs": len(lines),
            "ran_twice": len(ran_twice),
            "never_ran": len(never_ran),
            "unknown_runs": len(strangers),
            "api_histories_not_exactly_one_deployed": len(not_single),
            "failed_jobs": failed_jobs,
            "exactly_once": not ran_twice and not never_ran and not strangers and not not_single and len(lines) == BRANCHES,
        }
    finally:
        if feed:
            feed.close()
        bot.stop()


# -- 3. webhook acknowledgement and throughput ---------------------------------------------------


def start_bare(directory: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = (directory / "bare.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN", "WEB_"))}
    env.update(WEBHOOK_SECRET=SECRET, WEBHOOK_PATH=WEBHOOK_PATH, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "2", "--threads", "8",
            "--bind", f"127.0.0.1:{port}", "--keep-alive", "5", "--timeout", "60", "--graceful-timeout", "5",
            "--no-control-socket", "tests.bench_bare:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200, message="bare Flask app")
    except BaseException:
        stop_process(process)
        raise
    return process, port


def paced_summary(sent, start: float, measured: list[Request]) -> dict:
    answered = [s for s in sent if s.status in (200, 202)]
    last = max(s.finished for s in sent)
    return {
        "latency": summary_ms([s.finished - s.started for s in answered]),
        "latency_from_due_time": summary_ms([s.finished - s.scheduled for s in answered]),
        "offered_rate_per_s": round(len(measured) / (max(s.scheduled for s in sent) - start + 1 / WEBHOOK_RATE), 1),
        "achieved_rate_per_s": round(len(answered) / (last - start), 1),
        "status_codes": dict(Counter(str(s.status) for s in sent)),
        "errors": sorted({s.error for s in sent if s.error}),
    }


def bench_webhooks(ctx: Context) -> dict:
    directory = ctx.directory("webhooks")
    fake = start_fake(ctx)
    bot = Bot(directory, ctx.redis_url, ctx.github_env(fake))
    bare = None
    try:
        bot.start_web(workers=2)
        bare, bare_port = start_bare(directory)
        requests = mixed_deliveries(WEBHOOK_WARMUP + WEBHOOK_RATE * WEBHOOK_SECONDS)
        warmup, measured = requests[:WEBHOOK_WARMUP], requests[WEBHOOK_WARMUP:]
        for port in (bot.port, bare_port):
            for request in warmup:
                status, body = post(port, WEBHOOK_PATH, request.body, request.headers)
                if status not in (200, 202):
                    raise RuntimeError(f"warm-up delivery answered {status}: {body[:300]!r}")

        # Paced at 100/s: ours, then the same load on the bare endpoint as a control for what
        # the machine itself adds (gunicorn, loopback, scheduling, other processes).
        cpu_before = session_cpu_seconds(bot.web.pid)
        sent, start = paced(bot.port, WEBHOOK_PATH, measured, WEBHOOK_RATE)
        web_cpu = session_cpu_seconds(bot.web.pid) - cpu_before
        control_sent, control_start = paced(bare_port, WEBHOOK_PATH, [Request({**r.headers, "X-GitHub-Delivery": str(uuid.uuid4())}, r.body, r.kind) for r in measured], WEBHOOK_RATE)

        answered = [s for s in sent if s.status in (200, 202)]
        expected_codes = {"comment": 200, "/preview": 202, "synchronize": 202}
        conn = redis.Redis.from_url(ctx.redis_url)
        queued = conn.llen("rq:queue:previewbot")
        conn.close()
        with fake.lock:
            github_calls = len(fake.calls)
        acknowledgement = {
            "setup": f"GitHub mode, previewbot web --workers 2 (gevent), no worker; {len(measured)} signed deliveries paced at {WEBHOOK_RATE}/s from 32 sender threads, new connection each; {WEBHOOK_WARMUP} warm-up deliveries before",
            **paced_summary(sent, start, measured),
            "by_kind": {kind: summary_ms([s.finished - s.started for s in answered if s.kind == kind]) for kind in expected_codes},
            "unexpected_status": sum(1 for s in sent if s.status != expected_codes[s.kind]),
            "web_cpu_ms_per_delivery": round(1000 * web_cpu / len(measured), 3),
            "jobs_queued_in_redis": queued,
            "github_calls_by_receiver": github_calls,
            "bare_flask_same_load": paced_summary(control_sent, control_start, measured),
        }

        # Maximum throughput: ours and the bare endpoint, same load tool, alternating rounds.
        bodies = mixed_deliveries(WRK_BODIES, first_pr=1000)
        targets = {"previewbot": (bot.port, bot.web.pid), "bare_flask": (bare_port, bare.pid)}
        rounds: dict[str, list[dict]] = {name: [] for name in targets}
        tool = wrk_available()
        if tool:
            write_wrk_inputs(directory / "wrk", bodies)

        def load(port: int, session: int, seconds: float, tag: str) -> dict:
            server_before, redis_before = session_cpu_seconds(session), process_cpu_seconds(ctx.redis_pid)
            if tool:
                result = run_wrk(port, WEBHOOK_PATH, directory / "wrk", tag=tag, seconds=seconds, connections=WRK_CONNECTIONS)
            else:
                result = closed_loop(port, WEBHOOK_PATH, bodies, connections=WRK_CONNECTIONS, seconds=seconds, tag=tag)
            served = max(1, result["requests"])
            result["server_cpu_ms_per_request"] = round(1000 * (session_cpu_seconds(session) - server_before) / served, 3)
            result["redis_cpu_ms_per_request"] = round(1000 * (process_cpu_seconds(ctx.redis_pid) - redis_before) / served, 3)
            return result

        for name, (port, session) in targets.items():
            load(port, session, 2, f"warm-{name}-{uuid.uuid4().hex[:8]}")
        for n in range(WRK_ROUNDS):
            for name, (port, session) in targets.items():
                rounds[name].append(load(port, session, WRK_SECONDS, f"r{n}-{name}-{uuid.uuid4().hex[:8]}"))

        def mean(name: str, field: str) -> float:
            return round(sum(r[field] for r in rounds[name]) / len(rounds[name]), 3)

        mean_rps = {name: round(mean(name, "rps"), 1) for name in targets}
        throughput = {
            "setup": f"{rounds['previewbot'][0]['tool']} x {WRK_ROUNDS} rounds each, alternating, after a 2 s warm-up each; keep-alive; {WRK_BODIES} pre-signed bodies of the same mix, unique X-GitHub-Delivery per request; ours by gunicorn gevent 2 workers, the bare endpoint by gthread 2 workers x 8 threads",
            "rounds": rounds,
            "mean_rps": mean_rps,
            "ratio_ours_to_bare": round(mean_rps["previewbot"] / mean_rps["bare_flask"], 3),
            "server_cpu_ms_per_request": {name: mean(name, "server_cpu_ms_per_request") for name in targets},
            "redis_cpu_ms_per_request": {name: mean(name, "redis_cpu_ms_per_request") for name in targets},
        }
        return {"acknowledgement": acknowledgement, "throughput": throughput}
    finally:
        if bare is not None:
            stop_process(bare)
        bot.stop()
        fake.stop()


# -- 4. comment -> reaction and in-progress check run --------------------------------------------


def bench_comments(ctx: Context) -> dict:
    directory = ctx.directory("comments")
    fake = start_fake(ctx)
    # When the fake answered each call: a parallel list to fake.calls, appended under its lock.
    answered_at: list[float] = []
    handle = fake._handle

    def timed_handle(request, raw_path):
        result = handle(request, raw_path)
        answered_at.append(time.perf_counter())
        return result

    fake._handle = timed_handle
    bot = Bot(directory, ctx.redis_url, ctx.github_env(fake, PREVIEW_SIMULATED_SECONDS="0"))
    try:
        bot.start_worker(1).start_web(workers=2)
        wait_workers(ctx.redis_url, 1)
        to_eyes, to_in_progress, to_completed, acks = [], [], [], []
        for i in range(COMMENT_WARMUP + COMMENTS):
            pr = 100 + i
            sha = sha_for("comment", pr)
            fake.add_pull(GITHUB_REPO, pr, f"bench/comment-{pr}", sha)
            seeded = fake.add_comment(GITHUB_REPO, pr, "/preview", user="alice")
            comment_id = seeded["id"]
            request = delivery("issue_comment", webhooks.issue_comment(GITHUB_REPO, pr, body="/preview", user="alice", author_association="COLLABORATOR", comment_id=comment_id, installation_id=INSTALLATION))
            with fake.lock:
                first = len(fake.calls)

            def find(match):
                with fake.lock:
                    for index in range(first, len(fake.calls)):
                        if match(fake.calls[index]):
                            return index + 1  # truthy even for index 0
                return None

            def eyes(call):
                return (call.method == "POST" and call.path == f"/repos/{GITHUB_REPO}/issues/comments/{comment_id}/reactions"
                        and (call.json or {}).get("content") == "eyes" and call.status in (200, 201))

            def in_progress(call):
                match = re.fullmatch(rf"/repos/{GITHUB_REPO}/check-runs(?:/(\d+))?", call.path)
                if not match or call.method not in ("POST", "PATCH") or call.status not in (200, 201):
                    return False
                if (call.json or {}).get("status") != "in_progress":
                    return False
                if call.method == "POST":
                    return call.json.get("head_sha") == sha
                run = fake.check_runs.get(int(match.group(1)))
                return run is not None and run["head_sha"] == sha

            def completed(call):
                return (call.method == "POST" and call.path == f"/repos/{GITHUB_REPO}/issues/comments/{comment_id}/reactions"
                        and (call.json or {}).get("content") in ("rocket", "confused"))

            timeout = 30 if i < COMMENT_WARMUP else 15
            started = time.perf_counter()
            status, body = post(bot.port, WEBHOOK_PATH, request.body, request.headers)
            acked = time.perf_counter()
            if status != 202:
                raise RuntimeError(f"comment on #{pr} answered {status}: {body[:300]!r}")
            eyes_at = fake.wait_for(lambda: find(eyes), timeout=timeout, message=f"eyes on #{pr}")
            progress_at = fake.wait_for(lambda: find(in_progress), timeout=timeout, message=f"in_progress check run on #{pr}")
            # The next comment starts only after this deploy has been reported, so none overlap.
            done_at = fake.wait_for(lambda: find(completed), timeout=timeout, message=f"rocket on #{pr}")
            if i < COMMENT_WARMUP:
                continue
            with fake.lock:
                times = list(answered_at)
            acks.append(acked - started)
            to_eyes.append(times[eyes_at - 1] - started)
            to_in_progress.append(times[progress_at - 1] - started)
            to_completed.append(times[done_at - 1] - started)
        with fake.lock:
            violations = list(fake.violations)
            calls = len(fake.calls)
        return {
            "setup": f"GitHub mode, 1 web (2 gevent workers), 1 worker, simulated provisioner 0 s; {COMMENTS} sequential /preview comments on distinct PRs after {COMMENT_WARMUP} warm-up; fake GitHub in the benchmark process",
            "webhook_answered": summary_ms(acks),
            "to_eyes_reaction": summary_ms(to_eyes),
            "to_in_progress_check_run": summary_ms(to_in_progress),
            "to_rocket_reaction": summary_ms(to_completed),
            "samples_ms": {
                "eyes": [round(x * 1000, 1) for x in to_eyes],
                "in_progress": [round(x * 1000, 1) for x in to_in_progress],
                "rocket": [round(x * 1000, 1) for x in to_completed],
            },
            "github_calls": calls,
            "fake_github_violations": violations[:5],
        }
    finally:
        bot.stop()
        fake.stop()


# -- 5. WebSocket clients: a thousand during webhooks and deploys, then as many as hold ----------


def http_get(port: int, path: str, timeout: float = 15) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class HealthSampler:
    """GET /api/health every HEALTH_INTERVAL on a thread of its own, a new connection each."""

    def __init__(self, port: int, interval: float = HEALTH_INTERVAL):
        self.port = port
        self.interval = interval
        self.samples: list[float] = []
        self.failures: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-sampler", daemon=True)

    def start(self) -> "HealthSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status, _ = http_get(self.port, "/api/health")
                if status == 200:
                    self.samples.append(time.perf_counter() - started)
                else:
                    self.failures[str(status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                self.failures[type(exc).__name__] += 1
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - started)))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=20)
        return {"latency": summary_ms(self.samples), "failures": dict(self.failures)}


def health_probe(port: int, count: int = 10) -> dict:
    sampler = HealthSampler(port)
    for _ in range(count):
        started = time.perf_counter()
        try:
            status, _ = http_get(port, "/api/health")
            if status == 200:
                sampler.samples.append(time.perf_counter() - started)
            else:
                sampler.failures[str(status)] += 1
        except (OSError, http.client.HTTPException) as exc:
            sampler.failures[type(exc).__name__] += 1
    return {"latency": summary_ms(sampler.samples), "failures": dict(sampler.failures)}


class WsClients:
    """The WebSocket client process (tests/bench_ws.py), driven by one JSON line at a time."""

    def __init__(self, url: str, log_path: Path):
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench_ws", url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_path.open("wb"),
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, name="ws-clients-stdout", daemon=True).start()
        self.hello = self._read(60)

    def _pump(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the WebSocket client process did not answer in {timeout} s") from None
        if line is None:
            raise RuntimeError(f"the WebSocket client process exited ({self.process.poll()}): {self.log_path.read_text()[-2000:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"WebSocket client process: {answer['error']}")
        return answer

    def call(self, op: str, timeout: float = 120, **fields) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.process.stdin.flush()
                self._read(90)
        except (OSError, TimeoutError, RuntimeError, ValueError):
            pass
        stop_process(self.process)


def web_memory(master: int) -> dict:
    """RSS of the gunicorn master and each worker, and the sockets each worker holds."""
    workers = children_of(master)
    kb = [rss_kb(pid) for pid in workers]
    files = [open_files(pid) for pid in workers]
    return {
        "master_rss_mb": round(rss_kb(master) / 1024, 1),
        "workers_rss_mb": [round(k / 1024, 1) for k in kb],
        "workers_total_kb": sum(kb),
        "sockets_per_worker": [f["sockets"] for f in files],
        "sqlite_files_per_worker": [f["sqlite"] for f in files],
    }


def idle_cores(session: int, seconds: float = 3.0) -> float:
    """CPU the web process uses while nothing happens but its open connections, in cores."""
    before = session_cpu_seconds(session)
    time.sleep(seconds)
    return round((session_cpu_seconds(session) - before) / seconds, 3)


def preview_delivery(fake: FakeGitHub, pr: int) -> Request:
    """A `/preview` comment on pull request `pr`, seeded on the fake GitHub so the bot can react."""
    seeded = fake.add_comment(GITHUB_REPO, pr, "/preview", user="alice")
    payload = webhooks.issue_comment(GITHUB_REPO, pr, body="/preview", user="alice", author_association="COLLABORATOR", comment_id=seeded["id"], installation_id=INSTALLATION)
    request = delivery("issue_comment", payload, "/preview")
    request.headers["X-Bench-Comment-Id"] = str(seeded["id"])
    return request


def chatter_delivery(pr: int, n: int) -> Request:
    payload = webhooks.issue_comment(GITHUB_REPO, pr, body=f"Looks good to me, thanks! ({n})", user="alice", author_association="COLLABORATOR", installation_id=INSTALLATION)
    return delivery("issue_comment", payload, "comment")


def push_delivery(fake: FakeGitHub, pr: int, sha: str, branch: str | None = None) -> Request:
    """A pull_request.synchronize to `sha`, a commit the fake GitHub knows (check runs need one).
    On the branch of a live preview (see add_pulls), it redeploys."""
    fake.add_commit(GITHUB_REPO, sha)
    payload = webhooks.pull_request("synchronize", GITHUB_REPO, pr, branch or f"bench/branch-{pr}", sha, installation_id=INSTALLATION)
    return delivery("pull_request", payload, "synchronize")


def add_pulls(fake: FakeGitHub, prs, tag: str) -> None:
    for pr in prs:
        fake.add_pull(GITHUB_REPO, pr, f"bench/{tag}-{pr}", sha_for(tag, "pull", pr))


def ws_deliveries(fake: FakeGitHub, count: int, preview_prs: list[int], *, other_first_pr: int, tag: str) -> list[Request]:
    """`count` deliveries: one `/preview` on each of `preview_prs`, evenly spread; the rest
    alternate chatter comments (acknowledged, no job) and pushes to pull requests without a
    preview (a job that updates a check run)."""
    every = max(1, count // max(1, len(preview_prs)))
    previews = iter(preview_prs)
    requests = []
    for i in range(count):
        pr = next(previews, None) if i % every == every // 2 else None
        if pr is not None:
            requests.append(preview_delivery(fake, pr))
        elif i % 2:
            requests.append(chatter_delivery(other_first_pr + i % 200, i))
        else:
            requests.append(push_delivery(fake, other_first_pr + i % 200, sha_for(tag, "push", i)))
    return requests


def ack_summary(sent: list[Sent], start: float, count: int, rate: float) -> dict:
    expected = {"comment": 200, "/preview": 202, "synchronize": 202}
    answered = [s for s in sent if 200 <= s.status < 300]
    return {
        "deliveries": count,
        "latency": summary_ms([s.finished - s.started for s in answered]),
        "by_kind": {kind: summary_ms([s.finished - s.started for s in answered if s.kind == kind]) for kind in expected},
        "achieved_rate_per_s": round(len(answered) / max(1e-6, max(s.finished for s in sent) - start), 1),
        "offered_rate_per_s": rate,
        "status_codes": dict(Counter(str(s.status) for s in sent)),
        "unexpected_status": sum(1 for s in sent if s.status != expected[s.kind]),
        "errors": sorted({s.error for s in sent if s.error}),
    }


class CpuAccount:
    """CPU used by each part of the set-up between two marks, in cores: the web process, the
    workers, the WebSocket client process, Redis and this benchmark process (the paced senders,
    the health sampler and the fake GitHub)."""

    def __init__(self, ctx: Context, bot: Bot, clients: "WsClients | None" = None):
        self.ctx, self.bot, self.clients = ctx, bot, clients

    def read(self) -> dict:
        groups = {"web": [self.bot.web.pid], "workers": [w.pid for w in self.bot.workers]}
        if self.clients is not None:
            groups["ws_clients"] = [self.clients.process.pid]
        totals = cpu_by_group(groups)
        totals["redis"] = process_cpu_seconds(self.ctx.redis_pid)
        times = os.times()
        totals["benchmark_and_fake_github"] = times.user + times.system
        waits = runqueue_wait_by_group({"web": groups["web"]})
        return {"cpu": totals, "web_runqueue_wait": waits["web"], "at": time.monotonic()}

    @staticmethod
    def cores(before: dict, after: dict) -> dict:
        """Cores used by each part, and how long the web process's threads waited for a CPU
        (in thread-seconds per second: 0.5 means half a thread always runnable and not running)."""
        elapsed = max(1e-6, after["at"] - before["at"])
        cores = {k: round((after["cpu"][k] - before["cpu"][k]) / elapsed, 2) for k in before["cpu"]}
        cores["total"] = round(sum(cores.values()), 2)
        cores["web_waiting_for_cpu"] = round((after["web_runqueue_wait"] - before["web_runqueue_wait"]) / elapsed, 2)
        cores["seconds"] = round(elapsed, 1)
        return cores


def per_second(sent: list[Sent], start: float) -> list[dict]:
    """Acknowledgement latency by the second it was due in: p50 and max, in ms."""
    buckets: dict[int, list[float]] = {}
    for s in sent:
        if 200 <= s.status < 300:
            buckets.setdefault(int(s.scheduled - start), []).append(s.finished - s.started)
    return [{"second": k, "n": len(v), "p50_ms": summary_ms(v)["p50_ms"], "max_ms": summary_ms(v)["max_ms"]} for k, v in sorted(buckets.items())]


def deployed_prs(bot: Bot, prs: set[int]) -> set[int]:
    """Which of `prs` have their preview deployed (the API lists only pull requests it learnt
    of from pull_request deliveries, so each is asked for)."""
    with httpx.Client(base_url=bot.url, headers=auth(bot), timeout=10) as client:
        return {pr for pr in prs if client.get(f"/api/repos/{GITHUB_REPO}/pull-requests/{pr}/deployment").json().get("status") == "deployed"}


def bench_websockets(ctx: Context) -> dict:
    directory = ctx.directory("websockets")
    soft, hard = raise_open_files()  # inherited by the web process and the client process
    bound = min(max(WS_RAMP), hard - 1024, 2 * WS_CONNECTIONS_PER_WORKER - 512)
    fake = start_fake(ctx)
    bot = Bot(directory, ctx.redis_url, ctx.github_env(fake, PREVIEW_SIMULATED_SECONDS=WS_SIMULATED_SECONDS, PREVIEW_API_RATE_LIMIT="100000"))
    clients = None
    result: dict = {
        "setup": (
            f"GitHub mode against the fake GitHub; previewbot web --workers 2 --connections {WS_CONNECTIONS_PER_WORKER} (gevent), "
            f"{WS_WORKERS} workers, simulated provisioner {WS_SIMULATED_SECONDS} s; WebSocket clients in their own asyncio process "
            f"(tests/bench_ws.py, the websockets library, permessage-deflate offered as browsers do, no client pings); "
            f"open-files limit {soft}/{hard}"
        ),
    }
    try:
        bot.start_worker(WS_WORKERS).start_web(workers=2, connections=WS_CONNECTIONS_PER_WORKER)
        wait_workers(ctx.redis_url, WS_WORKERS)
        master = bot.web.pid
        control_prs = list(range(101, 101 + WS_CONTROL_DEPLOYS))
        measured_prs = list(range(1, 1 + WS_DEPLOYS))
        fanout_pr, warm_prs = 300, [301, 302]
        add_pulls(fake, [*control_prs, *measured_prs, fanout_pr, *warm_prs], "ws")

        # Warm-up: every kind of delivery, and two deploys all the way through.
        warm = [preview_delivery(fake, pr) for pr in warm_prs] + ws_deliveries(fake, 40, [], other_first_pr=2000, tag="ws-warm")
        for request in warm:
            status, body = post(bot.port, WEBHOOK_PATH, request.body, request.headers)
            if status not in (200, 202):
                raise RuntimeError(f"warm-up delivery answered {status}: {body[:300]!r}")
        wait_for(lambda: deployed_prs(bot, set(warm_prs)) == set(warm_prs), timeout=60, interval=0.5, message="the warm-up deploys")
        time.sleep(1)
        memory_empty = web_memory(master)
        result["no_clients"] = {"memory": memory_empty, "idle_cores": idle_cores(master), "health": health_probe(bot.port, 20)}

        # Control: the same kind of load, no WebSocket client.
        requests = ws_deliveries(fake, WS_RATE * WS_CONTROL_SECONDS, control_prs, other_first_pr=2000, tag="ws-control")
        health = HealthSampler(bot.port).start()
        account = CpuAccount(ctx, bot)
        cpu_start = account.read()
        sent, start = paced(bot.port, WEBHOOK_PATH, requests, WS_RATE)
        cpu_paced = account.read()
        wait_for(lambda: deployed_prs(bot, set(control_prs)) == set(control_prs), timeout=90, interval=0.5, message="the control deploys")
        result["control_without_clients"] = {
            "setup": f"{len(requests)} deliveries paced at {WS_RATE}/s, {len(control_prs)} of them /preview (deploys), no WebSocket client",
            "webhooks": ack_summary(sent, start, len(requests), WS_RATE),
            "webhooks_by_second": per_second(sent, start),
            "health": health.stop(),
            "cores_while_paced": CpuAccount.cores(cpu_start, cpu_paced),
        }

        # A thousand clients.
        clients = WsClients(bot.ws_url(), directory / "clients.log")
        connected = clients.call("connect", timeout=300, target=WS_CLIENTS, concurrency=WS_CONNECT_CONCURRENCY, timeout_s=WS_HANDSHAKE_TIMEOUT)
        if connected["open"] < WS_CLIENTS:
            raise RuntimeError(f"only {connected['open']} of {WS_CLIENTS} WebSocket clients connected: {connected}")
        time.sleep(2)
        memory_idle = web_memory(master)
        result["clients_1000_idle"] = {
            "connect": connected,
            "memory": memory_idle,
            "client_process_rss_mb": round(rss_kb(clients.process.pid) / 1024, 1),
            "idle_cores": idle_cores(master),
            "ping": clients.call("ping", sample=200),
            "health": health_probe(bot.port, 20),
            "rss_per_connection_kb": round((memory_idle["workers_total_kb"] - memory_empty["workers_total_kb"]) / connected["open"], 1),
        }

        # Measured: webhooks at 100/s and 50 deploys while the thousand are connected.
        requests = ws_deliveries(fake, WS_RATE * WS_SECONDS, measured_prs, other_first_pr=3000, tag="ws-measured")
        clients.call("reset")
        health = HealthSampler(bot.port).start()
        account = CpuAccount(ctx, bot, clients)
        cpu_start = account.read()
        cpu_before = session_cpu_seconds(master)
        began = time.perf_counter()
        sent, start = paced(bot.port, WEBHOOK_PATH, requests, WS_RATE)
        cpu_paced = account.read()
        deadline = time.monotonic() + 120
        seen = clients.call("seen")
        while seen["by_status"].get("deployed", 0) < WS_DEPLOYS and time.monotonic() < deadline:
            time.sleep(0.5)
            seen = clients.call("seen")
        window = time.perf_counter() - began
        web_cpu = session_cpu_seconds(master) - cpu_before
        cpu_end = account.read()
        health_during = health.stop()
        time.sleep(1)  # the last receipts of the last update
        stats = clients.call("stats", timeout=300)
        memory_after = web_memory(master)
        result["clients_1000_measured"] = {
            "setup": (f"{len(requests)} deliveries paced at {WS_RATE}/s from 32 sender threads (new connection each), "
                      f"{WS_DEPLOYS} of them /preview comments (one deploy each), the rest chatter and pushes; "
                      f"{WS_CLIENTS} clients connected throughout"),
            "webhooks": ack_summary(sent, start, len(requests), WS_RATE),
            "webhooks_by_second": per_second(sent, start),
            "cores_while_paced": CpuAccount.cores(cpu_start, cpu_paced),
            "cores_until_last_deployed": CpuAccount.cores(cpu_paced, cpu_end),
            "deploys_seen_deployed": seen["by_status"].get("deployed", 0),
            "window_s": round(window, 1),
            "web_cores_during": round(web_cpu / window, 2),
            "updates": stats,
            "health": health_during,
            "memory_after": memory_after,
        }

        # Ramp: as many idle clients as the machine holds, up to the bound.
        base = {"open": connected["open"], "kb": memory_after["workers_total_kb"]}
        held, steps = connected["open"], []
        for target in sorted({min(t, bound) for t in WS_RAMP if t > connected["open"]}):
            clients.call("reset")  # counts the clients the server closes during this step
            answer = clients.call("connect", timeout=900, target=target, concurrency=WS_CONNECT_CONCURRENCY, timeout_s=WS_HANDSHAKE_TIMEOUT)
            time.sleep(2)
            memory = web_memory(master)
            step = {
                "target": target,
                "connect": answer,
                "memory": memory,
                "client_process_rss_mb": round(rss_kb(clients.process.pid) / 1024, 1),
                "idle_cores": idle_cores(master),
                "health": health_probe(bot.port, 10),
                "ping": clients.call("ping", timeout=300, sample=200),
            }
            seen = clients.call("seen")
            step["open_after"], step["closed_by_server"] = seen["open"], seen["closed"]
            added = step["open_after"] - base["open"]
            step["rss_per_idle_connection_kb"] = round((memory["workers_total_kb"] - base["kb"]) / added, 1) if added > 0 else None
            steps.append(step)
            print(f"   {target} clients: {step['open_after']} open, {answer['failed']} failed, connect p99 {answer['connect'].get('p99_ms')} ms, "
                  f"workers RSS {memory['workers_rss_mb']} MB, idle {step['idle_cores']} cores, health p99 {step['health']['latency'].get('p99_ms')} ms", flush=True)
            holds = (answer["failed"] <= 0.01 * max(1, answer["attempted"]) and step["open_after"] >= 0.99 * target
                     and step["ping"]["answered"] >= 0.99 * step["ping"]["sampled"] and not step["health"]["failures"])
            if not holds:
                break
            held = step["open_after"]
        result["ramp"] = {"bound": bound, "steps": steps, "held": held}

        # One deploy fanned out to every client held, and what an update costs each connection.
        clients.call("reset")
        before = web_memory(master)
        cpu_before = session_cpu_seconds(master)
        request = preview_delivery(fake, fanout_pr)
        status, body = post(bot.port, WEBHOOK_PATH, request.body, request.headers)
        if status != 202:
            raise RuntimeError(f"fan-out /preview answered {status}: {body[:300]!r}")
        deadline = time.monotonic() + 120
        open_now = clients.call("seen")["open"]
        while time.monotonic() < deadline:
            seen = clients.call("seen")
            if seen["by_status"].get("deployed", 0) >= 1 and seen["receipts"] >= 2 * open_now:
                break
            time.sleep(0.5)
        web_cpu = session_cpu_seconds(master) - cpu_before
        time.sleep(1)
        fanout = clients.call("stats", timeout=300)
        after = web_memory(master)
        result["fanout_at_max"] = {
            "clients": open_now,
            "updates": fanout,
            "memory_before": before,
            "memory_after": after,
            "rss_per_connection_after_first_updates_kb": round((after["workers_total_kb"] - before["workers_total_kb"]) / max(1, open_now), 1),
            # The web process's CPU from the /preview to the last receipt, over the receipts:
            # nearly all of it is the fan-out (JSON, per-connection deflate, the socket write).
            "web_cpu_ms_per_receipt": round(1000 * web_cpu / max(1, fanout["receipts"]), 3),
            "client_process_rss_mb": round(rss_kb(clients.process.pid) / 1024, 1),
        }
        with fake.lock:
            result["fake_github_violations"] = list(fake.violations)[:5]
        return result
    finally:
        if clients is not None:
            clients.close()
        bot.stop()
        fake.stop()


# -- 6. a burst of 5,000 deliveries ---------------------------------------------------------------


REACTION_PATH = re.compile(r"/repos/[^/]+/[^/]+/issues/comments/(\d+)/reactions")


def watch_eyes(fake: FakeGitHub) -> tuple[dict[int, float], list[int]]:
    """Note when the fake GitHub answered each comment's first `eyes` reaction (perf_counter),
    without scanning its call list: a wrapper around its handler, called with its lock held."""
    eyes: dict[int, float] = {}
    calls = [0]
    handle = fake._handle

    def timed_handle(request, raw_path):
        result = handle(request, raw_path)
        now = time.perf_counter()
        calls[0] += 1
        call = fake.calls[-1]
        if call.method == "POST" and call.status in (200, 201) and (call.json or {}).get("content") == "eyes":
            match = REACTION_PATH.fullmatch(call.path)
            if match:
                eyes.setdefault(int(match.group(1)), now)
        return result

    fake._handle = timed_handle
    return eyes, calls


def queue_idle(conn: redis.Redis) -> bool:
    from rq import Queue, Worker
    from rq.registry import StartedJobRegistry

    q = Queue("previewbot", connection=conn)
    return q.count == 0 and StartedJobRegistry(queue=q).count == 0 and all(w.get_state() != "busy" for w in Worker.all(connection=conn))


def bench_burst(ctx: Context) -> dict:
    directory = ctx.directory("burst")
    fake = start_fake(ctx)
    eyes, fake_calls = watch_eyes(fake)
    bot = Bot(directory, ctx.redis_url, ctx.github_env(fake, PREVIEW_SIMULATED_SECONDS="0"))
    conn = redis.Redis.from_url(ctx.redis_url)
    try:
        bot.start_worker(BURST_WORKERS).start_web(workers=2)
        wait_workers(ctx.redis_url, BURST_WORKERS)
        middle_pr, warm_pr = 9001, 9000
        add_pulls(fake, [*range(1, BURST_PRS + 1), middle_pr, warm_pr], "burst")

        # Warm-up, then the queue emptied.
        warm = [preview_delivery(fake, warm_pr), chatter_delivery(warm_pr, 0), push_delivery(fake, 8000, sha_for("burst-warm", 1))]
        for request in warm:
            status, body = post(bot.port, WEBHOOK_PATH, request.body, request.headers)
            if status not in (200, 202):
                raise RuntimeError(f"warm-up delivery answered {status}: {body[:300]!r}")
        wait_for(lambda: queue_idle(conn), timeout=60, interval=0.2, message="the warm-up jobs")

        # Chatter, /preview and pushes in turn over 500 pull requests; the one in the middle is a
        # /preview on a pull request of its own.
        middle = BURST // 2
        requests = []
        for i in range(BURST):
            pr = 1 + i % BURST_PRS
            kind = ("comment", "/preview", "synchronize")[i % 3]
            if i == middle:
                requests.append(preview_delivery(fake, middle_pr))
            elif kind == "comment":
                requests.append(chatter_delivery(pr, i))
            elif kind == "/preview":
                requests.append(preview_delivery(fake, pr))
            else:
                requests.append(push_delivery(fake, pr, sha_for("burst", "push", i), f"bench/burst-{pr}"))
        middle_comment = int(requests[middle].headers["X-Bench-Comment-Id"])
        calls_before = fake_calls[0]

        results: list[Sent | None] = [None] * BURST
        counter = itertools.count()
        counter_lock = threading.Lock()

        def sender() -> None:
            while True:
                with counter_lock:
                    i = next(counter)
                if i >= BURST:
                    return
                request = requests[i]
                started = time.perf_counter()
                try:
                    status, _ = post(bot.port, WEBHOOK_PATH, request.body, request.headers, timeout=30)
                    error = None
                except (OSError, http.client.HTTPException) as exc:
                    status, error = 0, type(exc).__name__
                results[i] = Sent(request.kind, started, started, time.perf_counter(), status, error)

        threads = [threading.Thread(target=sender, name=f"burst-{n}") for n in range(BURST_THREADS)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent_all = time.perf_counter()
        sent = [r for r in results if r is not None]
        middle_sent = results[middle]

        deadline = time.monotonic() + 60
        while middle_comment not in eyes and time.monotonic() < deadline:
            time.sleep(0.05)
        middle_eyes = eyes[middle_comment] - middle_sent.started if middle_comment in eyes else None

        drained = None
        deadline = time.monotonic() + BURST_DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            if queue_idle(conn):
                drained = time.perf_counter() - sent_all
                break
            time.sleep(0.5)
        waiting = conn.llen("rq:queue:previewbot")

        previews = [(i, int(r.headers["X-Bench-Comment-Id"])) for i, r in enumerate(requests) if r.kind == "/preview"]
        to_eyes = [eyes[c] - results[i].started for i, c in previews if c in eyes and results[i] is not None]
        first_half = [eyes[c] - results[i].started for i, c in previews if c in eyes and i < middle]
        second_half = [eyes[c] - results[i].started for i, c in previews if c in eyes and i > middle]
        with fake.lock:
            violations = list(fake.violations)
        answered = [s for s in sent if 200 <= s.status < 300]
        return {
            "setup": (f"GitHub mode against the fake GitHub (in the benchmark process); previewbot web --workers 2 (gevent), "
                      f"{BURST_WORKERS} workers, simulated provisioner 0 s; {BURST} deliveries (chatter, /preview, push in turn over "
                      f"{BURST_PRS} pull requests) sent by {BURST_THREADS} threads as fast as they go, a new connection each; "
                      f"delivery #{middle} is a /preview on a pull request of its own"),
            "sent_in_s": round(sent_all - start, 2),
            "rate_per_s": round(len(sent) / (sent_all - start), 1),
            "acknowledged_2xx": len(answered),
            "non_2xx": len(sent) - len(answered),
            "status_codes": dict(Counter(str(s.status) for s in sent)),
            "errors": dict(Counter(s.error for s in sent if s.error)),
            "ack_latency": summary_ms([s.finished - s.started for s in answered]),
            "middle_preview": {
                "sent_at_s": round(middle_sent.started - start, 3),
                "acknowledged_ms": round((middle_sent.finished - middle_sent.started) * 1000, 1),
                "status": middle_sent.status,
                "to_eyes_s": round(middle_eyes, 3) if middle_eyes is not None else None,
            },
            "every_preview_to_eyes": summary_ms(to_eyes),
            "previews_with_eyes": f"{len(to_eyes)} of {len(previews)}",
            "to_eyes_sent_before_middle": summary_ms(first_half),
            "to_eyes_sent_after_middle": summary_ms(second_half),
            "queue_drained_after_s": round(drained, 1) if drained is not None else None,
            "jobs_still_queued": waiting,
            "failed_jobs": conn.zcard("rq:failed:previewbot"),
            "fake_github_calls": fake_calls[0] - calls_before,
            "fake_github_violations": len(violations),
            "fake_github_violation_examples": violations[:5],
        }
    finally:
        conn.close()
        bot.stop()
        fake.stop()


# -- report --------------------------------------------------------------------------------------


# -- 7. a 100,000-line log, followed live ----------------------------------------------------------

# The flood (pull request 1) prints from Python as fast as it goes; the other deploys print their
# URL from the shell, so that their time is previewbot's and not a Python interpreter's start on
# a machine the flood keeps busy.
LOG_SCRIPT = """
import time
for n in range(1, {lines} + 1):
    print(f"{{time.time():.6f}} line {{n}}", flush=True)
print("https://pr-1.preview.example.com")
"""
LOG_COMMAND = """
if [ "$PREVIEW_PR_NUMBER" = 1 ]; then exec {python} {script}; fi
echo "https://pr-$PREVIEW_PR_NUMBER.preview.example.com"
"""


def follow_log(bot: Bot, deployment_id: str) -> subprocess.Popen:
    """The log's follower, in a process of its own (`tests.bench_log_client`), subscribed."""
    follower = subprocess.Popen(
        [sys.executable, "-m", "tests.bench_log_client", "127.0.0.1", str(bot.port), bot.token, deployment_id, str(LOG_LINES), str(LOG_TIMEOUT)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    if json.loads(follower.stdout.readline() or "{}").get("subscribed") is not True:
        raise RuntimeError("log subscription refused")
    return follower


def bench_logs(ctx: Context) -> dict:
    directory = ctx.directory("logs")
    script, command = directory / "flood.py", directory / "deploy.sh"
    script.write_text(LOG_SCRIPT.format(lines=LOG_LINES))
    command.write_text(LOG_COMMAND.format(python=sys.executable, script=script))
    bot = Bot(directory, ctx.redis_url, {
        "PREVIEW_PROVISIONER": "command", "PREVIEW_DEPLOY_COMMAND": f"/bin/sh {command}", "PREVIEW_API_RATE_LIMIT": "100000",
    })
    feed = follower = client = None
    try:
        bot.start_worker(2).start_web(workers=2)
        wait_workers(ctx.redis_url, 2)
        feed = FeedListener(bot.ws_url())
        client = httpx.Client(base_url=bot.url, headers=auth(bot), timeout=10)

        def deploy(pr: int) -> str:
            response = client.post(f"/api/repos/{LOCAL_REPO}/pull-requests/{pr}/deploy", json={"branchName": f"bench/logs-{pr}"})
            if response.status_code != 202:
                raise RuntimeError(f"deploy #{pr} answered {response.status_code}: {response.text}")
            return response.json()["deploymentId"]

        def other_deploys(first_pr: int) -> tuple[list[float], list[float]]:
            """(POST -> `deployed` on the feed, the `deployed` update's publication -> the feed)"""
            took, delivered = [], []
            for pr in range(first_pr, first_pr + LOG_OTHER_DEPLOYS):
                started = time.perf_counter()
                deployment_id = deploy(pr)
                took.append(feed.arrival(deployment_id, "deployed", timeout=60) - started)
                delivered.append(feed.delivery[(deployment_id, "deployed")])
            return took, delivered

        control, control_delivery = other_deploys(1000)
        chatty = deploy(1)
        follower = follow_log(bot, chatty)
        started = time.perf_counter()
        during, during_delivery = other_deploys(2000)
        flood_running = feed.arrivals.get((chatty, "deployed")) is None
        feed.arrival(chatty, "deployed", timeout=LOG_TIMEOUT)
        followed = json.loads(follower.stdout.readline() or "{}")
        flood_seconds = round(time.perf_counter() - started, 1)
        # SQLite keeps every line (the one with the URL too) once the recorder caught up.
        recorded = wait_for(lambda: (counts := bot.store.log_counts(chatty))["last_seq"] > LOG_LINES and counts, timeout=60, message="the log recorded")
        stream_length = redis.Redis.from_url(ctx.redis_url).xlen(f"previewbot:logs:{chatty}")
        control_ms, during_ms = summary_ms(control), summary_ms(during)
        return {
            "setup": f"1 web (2 gevent workers), 2 workers, command provisioner; one deploy prints {LOG_LINES} lines, "
            f"followed on /ws by a client process of its own; {LOG_OTHER_DEPLOYS} other deploys before and during it",
            **followed,
            "lines_in_sqlite": recorded["stored"],
            "flood_seconds": flood_seconds,
            "flood_still_running_after_other_deploys": flood_running,
            "other_deploys_without_flood": control_ms,
            "other_deploys_during_flood": during_ms,
            "update_delay_p50_ms": round(during_ms["p50_ms"] - control_ms["p50_ms"], 1),
            "update_delay_p99_ms": round(during_ms["p99_ms"] - control_ms["p99_ms"], 1),
            "update_delivery_without_flood": summary_ms(control_delivery),
            "update_delivery_during_flood": summary_ms(during_delivery),
            "update_delivery_delay_p99_ms": round(summary_ms(during_delivery)["p99_ms"] - summary_ms(control_delivery)["p99_ms"], 1),
            "redis_stream_length": stream_length,
        }
    finally:
        for closable in (client, feed):
            if closable:
                closable.close()
        if follower:
            follower.kill()
            follower.wait()
        bot.stop()


# -- 8. around the ec2 provisioner ----------------------------------------------------------------


class TimedAWS:
    """A forwarding proxy in front of moto that notes, per AWS call, when it arrived and when its
    answer left: where the provisioner's time in AWS begins and ends, as AWS sees it."""

    def __init__(self, target: str):
        self.target = target
        self.calls: list[tuple[str, float, float]] = []  # (action, arrived, answered)
        self.lock = threading.Lock()
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                arrived = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                response = httpx.post(proxy.target + self.path, content=body, headers=headers, timeout=30)
                self.send_response(response.status_code)
                self.send_header("Content-Type", response.headers.get("content-type", "text/xml"))
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)
                action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
                with proxy.lock:
                    proxy.calls.append((action, arrived, time.perf_counter()))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def between(self, start: float, end: float) -> list[tuple[str, float, float]]:
        with self.lock:
            return [call for call in self.calls if start <= call[1] and call[2] <= end]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def bench_ec2(ctx: Context) -> dict:
    directory = ctx.directory("ec2")
    moto = MotoServer(directory).start()
    proxy = TimedAWS(moto.url)
    pricing = FakePricing({("t3.small", CREDENTIALS["AWS_REGION"]): "0.0208"})
    bot = feed = client = None
    try:
        ec2 = boto3.client("ec2", endpoint_url=moto.url, region_name=CREDENTIALS["AWS_REGION"],
                           aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        bot = Bot(directory, ctx.redis_url, {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": proxy.url,
            "AWS_ENDPOINT_URL_PRICING": pricing.url,
            "AWS_CONFIG_FILE": str(directory / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(directory / "none"),
            "PREVIEW_PROVISIONER": "ec2",
            "PREVIEW_EC2_AMI": ami,
            # Loopback and never requested (no PREVIEW_HEALTH_PATH): moto's addresses are not real.
            "PREVIEW_URL_TEMPLATE": "http://127.0.0.1:9/{environment}-{pr}/",
            "PREVIEW_API_RATE_LIMIT": "100000",
        })
        bot.start_worker(1).start_web(workers=2)
        wait_workers(ctx.redis_url, 1)
        feed = FeedListener(bot.ws_url())
        client = httpx.Client(base_url=bot.url, headers=auth(bot), timeout=10)
        before, after, overhead, in_aws, totals, calls = [], [], [], [], [], []
        for i in range(EC2_WARMUP + EC2_DEPLOYS):
            pr = i + 1
            started = time.perf_counter()
            response = client.post(f"/api/repos/{LOCAL_REPO}/pull-requests/{pr}/deploy", json={"branchName": f"bench/ec2-{pr}"})
            if response.status_code != 202:
                raise RuntimeError(f"deploy #{pr} answered {response.status_code}: {response.text}")
            deployment_id = response.json()["deploymentId"]
            deployed = feed.arrival(deployment_id, "deployed", timeout=60)
            if i < EC2_WARMUP:
                continue
            aws = proxy.between(started, deployed)
            if not aws:
                raise RuntimeError(f"deploy #{pr} made no AWS call")
            first, last = min(call[1] for call in aws), max(call[2] for call in aws)
            before.append(first - started)
            after.append(deployed - last)
            overhead.append((first - started) + (deployed - last))
            in_aws.append(last - first)
            totals.append(deployed - started)
            calls.append(len(aws))
        return {
            "setup": f"moto server behind a timing proxy, fake Price List API; 1 web (2 gevent workers), 1 worker; "
            f"{EC2_DEPLOYS} sequential deploys after {EC2_WARMUP} warm-up; no health check",
            "overhead": summary_ms(overhead),
            "post_to_first_aws_call": summary_ms(before),
            "last_aws_answer_to_deployed": summary_ms(after),
            "first_to_last_aws_call": summary_ms(in_aws),
            "post_to_deployed": summary_ms(totals),
            "aws_calls_per_deploy": dict(Counter(calls)),
            "samples_ms": [round(x * 1000, 2) for x in overhead],
        }
    finally:
        for closable in (client, feed):
            if closable:
                closable.close()
        if bot:
            bot.stop()
        pricing.stop()
        proxy.stop()
        moto.stop()


def environment() -> dict:
    versions = {}
    for package in ("flask", "gunicorn", "rq", "redis", "gidgethub", "httpx", "sqlite-utils", "flask-sock"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    import sqlite3

    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_model": cpu_model(),
        "memory_gb": memory_gb(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "redis_server": command_version([redis_executable(), "--version"]),
        "wrk": command_version(["wrk", "--version"]) if wrk_available() else None,
        "packages": versions,
    }


def verdict(value, goal, *, below: bool = True) -> str:
    if value is None:
        return "n/a"
    ok = value < goal if below else value >= goal
    return "met" if ok else "MISSED"


def goal_rows(results: dict) -> list[dict]:
    rows = []

    def add(scenario, metric, value, goal, status):
        rows.append({"scenario": scenario, "metric": metric, "value": value, "goal": goal, "status": status})

    deploy = results.get("deploy_overhead", {})
    if "post_to_deployed" in deploy:
        d = deploy["post_to_deployed"]
        add("1 deploy overhead", "POST -> deployed on /ws p50 / p90 / p99", f"{d['p50_ms']:.1f} / {d['p90_ms']:.1f} / {d['p99_ms']:.1f} ms",
            f"p50 < {GOALS['deploy_p50_ms']} ms", verdict(d["p50_ms"], GOALS["deploy_p50_ms"]))
        a = deploy["post_answered"]
        add("", "POST answered (202) p50 / p99", f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms", "", "")
    branches = results.get("branches", {})
    if "wall_s" in branches:
        add("2 200 branches, 4 workers", "wall time / throughput", f"{branches['wall_s']:.2f} s / {branches['throughput_per_s']:.0f} deploys/s", "", "")
        add("", "ran exactly once (file + API history)",
            f"{branches['provisioner_runs']} runs, {branches['ran_twice']} twice, {branches['never_ran']} missing", "each once",
            "met" if branches["exactly_once"] else "MISSED")
    hooks = results.get("webhooks", {})
    if "acknowledgement" in hooks:
        a = hooks["acknowledgement"]
        lat = a["latency"]
        add("3 webhook ack at 100/s", "latency p50 / p99", f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms",
            f"p99 < {GOALS['webhook_p99_ms']} ms", verdict(lat["p99_ms"], GOALS["webhook_p99_ms"]))
        add("", "achieved rate (offered)", f"{a['achieved_rate_per_s']:.1f}/s ({a['offered_rate_per_s']:.1f}/s), {a['unexpected_status']} bad answers", "", "")
        c = a["bare_flask_same_load"]["latency"]
        add("", "control: bare Flask, same load, p50 / p99", f"{c['p50_ms']:.1f} / {c['p99_ms']:.1f} ms", "", "")
    if "throughput" in hooks:
        t = hooks["throughput"]
        add("3 max webhook throughput", "previewbot vs bare Flask", f"{t['mean_rps']['previewbot']:.0f} vs {t['mean_rps']['bare_flask']:.0f} req/s (x{t['ratio_ours_to_bare']:.2f})",
            f">= x{GOALS['throughput_ratio']}", verdict(t["ratio_ours_to_bare"], GOALS["throughput_ratio"], below=False))
        cpu, rcpu = t["server_cpu_ms_per_request"], t["redis_cpu_ms_per_request"]
        add("", "server CPU per request (+ Redis)", f"{cpu['previewbot']:.2f} (+{rcpu['previewbot']:.2f}) vs {cpu['bare_flask']:.2f} ms", "", "")
    comments = results.get("comments", {})
    if "to_eyes_reaction" in comments:
        e, p = comments["to_eyes_reaction"], comments["to_in_progress_check_run"]
        add("4 comment -> GitHub", "eyes reaction p50 / p99", f"{e['p50_ms']:.0f} / {e['p99_ms']:.0f} ms", f"p50 < {GOALS['comment_p50_ms']} ms", verdict(e["p50_ms"], GOALS["comment_p50_ms"]))
        add("", "in_progress check run p50 / p99", f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f} ms", f"p50 < {GOALS['comment_p50_ms']} ms", verdict(p["p50_ms"], GOALS["comment_p50_ms"]))
    ws = results.get("websockets", {})
    if "clients_1000_measured" in ws:
        m = ws["clients_1000_measured"]
        lat, c = m["webhooks"]["latency"], ws["control_without_clients"]["webhooks"]["latency"]
        add("5 1,000 WebSocket clients", f"webhook ack at {WS_RATE}/s + {WS_DEPLOYS} deploys, p50 / p99", f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms ({m['webhooks']['unexpected_status']} bad answers)",
            f"p99 < {GOALS['ws_webhook_p99_ms']} ms", verdict(lat["p99_ms"], GOALS["ws_webhook_p99_ms"]))
        add("", "control: same load, no clients, p50 / p99", f"{c['p50_ms']:.1f} / {c['p99_ms']:.1f} ms", "", "")
        u = m["updates"]
        d = u["publish_to_client"]
        if d.get("n"):
            add("", "update published -> each client, p50 / p99 / max", f"{d['p50_ms']:.0f} / {d['p99_ms']:.0f} / {d['max_ms']:.0f} ms ({d['n']} receipts)",
                f"p99 < {GOALS['ws_delivery_p99_ms']} ms", verdict(d["p99_ms"], GOALS["ws_delivery_p99_ms"]))
        add("", "receipts missing / clients with every update", f"{u['receipts_missing']} / {u['clients_with_every_update']} of {u['clients_recorded']}", "none missing",
            "met" if u["receipts_missing"] == 0 else "MISSED")
        lag = u["client_event_loop_lag"]
        if lag.get("n"):
            add("", "client process's own event-loop lag p99", f"{lag['p99_ms']:.0f} ms", "", "")
        cores = m.get("cores_while_paced")
        if cores:
            add("", "cores while paced: web (waiting for a CPU) / workers / clients / total",
                f"{cores['web']} ({cores['web_waiting_for_cpu']}) / {cores['workers']} / {cores.get('ws_clients')} / {cores['total']} of {usable_cpus()}", "", "")
        h = m["health"]["latency"]
        if h.get("n"):
            add("", "GET /api/health meanwhile p50 / p99 / max", f"{h['p50_ms']:.1f} / {h['p99_ms']:.1f} / {h['max_ms']:.0f} ms ({sum(m['health']['failures'].values())} failed)", "", "")
    if "ramp" in ws:
        r = ws["ramp"]
        steps = r["steps"]
        last = next((s for s in reversed(steps) if s["open_after"] <= r["held"] and s["rss_per_idle_connection_kb"]), None)
        add("5 WebSocket ramp", "clients held (bound)", f"{r['held']} ({r['bound']})", "", "")
        if last:
            add("", f"web RSS per idle connection at {last['open_after']}", f"{last['rss_per_idle_connection_kb']:.0f} KiB (workers {'+'.join(str(x) for x in last['memory']['workers_rss_mb'])} MB)", "", "")
            add("", "open files per worker: sockets / SQLite", f"{last['memory']['sockets_per_worker']} / {last['memory']['sqlite_files_per_worker']}", "", "")
            add("", f"idle web CPU / health p99 at {last['open_after']}", f"{last['idle_cores']:.2f} cores / {last['health']['latency'].get('p99_ms')} ms", "", "")
        f = ws.get("fanout_at_max")
        if f and f["updates"]["publish_to_client"].get("n"):
            d = f["updates"]["publish_to_client"]
            add("", f"one deploy to all {f['clients']}: publish -> client p50 / p99", f"{d['p50_ms']:.0f} / {d['p99_ms']:.0f} ms; +{f['rss_per_connection_after_first_updates_kb']:.0f} KiB/conn after", "", "")
    burst = results.get("burst", {})
    if "middle_preview" in burst:
        add("6 burst of 5,000 deliveries", "acknowledged (non-2xx) / send rate", f"{burst['acknowledged_2xx']} ({burst['non_2xx']}) / {burst['rate_per_s']:.0f} per s", "all 2xx",
            "met" if burst["non_2xx"] == 0 else "MISSED")
        a = burst["ack_latency"]
        add("", "ack latency p50 / p99", f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms", "", "")
        e = burst["middle_preview"]["to_eyes_s"]
        add("", "/preview in the middle -> eyes", f"{e:.2f} s" if e is not None else "never", f"< {GOALS['burst_eyes_s']:.0f} s",
            verdict(e if e is not None else float("inf"), GOALS["burst_eyes_s"]))
        every = burst["every_preview_to_eyes"]
        if every.get("n"):
            add("", "every /preview -> eyes p50 / p99 / max", f"{every['p50_ms'] / 1000:.1f} / {every['p99_ms'] / 1000:.1f} / {every['max_ms'] / 1000:.1f} s ({burst['previews_with_eyes']})", "", "")
        drained = burst["queue_drained_after_s"]
        add("", "queue drained after the burst", f"{drained} s" if drained is not None else f"not in {BURST_DRAIN_TIMEOUT} s", "", "")
    logs = results.get("logs", {})
    if "log_lag" in logs:
        lag = logs["log_lag"]
        add(f"7 a {LOG_LINES:,}-line log on /ws", "line printed -> client p50 / p99 / max",
            f"{lag['p50_ms']:.0f} / {lag['p99_ms']:.0f} / {lag['max_ms']:.0f} ms ({logs['lines_received']} lines, {logs['seq_gaps_or_repeats']} gaps or repeats)",
            f"p99 < {GOALS['log_lag_p99_ms']} ms", verdict(lag["p99_ms"], GOALS["log_lag_p99_ms"]))
        during = logs["update_delivery_during_flood"]
        add("", "other deploys' status update published -> client, p99 during the flood minus before",
            f"{logs['update_delivery_delay_p99_ms']:.0f} ms (during: p50 {during['p50_ms']:.0f}, p99 {during['p99_ms']:.0f} ms)",
            f"< {GOALS['log_update_delay_ms']} ms", verdict(logs["update_delivery_delay_p99_ms"], GOALS["log_update_delay_ms"]))
        add("", "other deploys' POST -> deployed (their provisioning included), p99 during minus before",
            f"{logs['update_delay_p99_ms']:.0f} ms (p50 {logs['update_delay_p50_ms']:.0f} ms)", "", "")
        kept = min(LOG_LINES + 1, MAX_LOG_LINES)  # every line printed (the URL's too), up to SQLite's cap
        add("", "lines kept in SQLite", str(logs["lines_in_sqlite"]), f"{kept}", "met" if logs["lines_in_sqlite"] == kept else "MISSED")
        add("", "log's Redis stream length", str(logs["redis_stream_length"]), "", "")
    ec2 = results.get("ec2", {})
    if "overhead" in ec2:
        o, b, a, t = ec2["overhead"], ec2["post_to_first_aws_call"], ec2["last_aws_answer_to_deployed"], ec2["post_to_deployed"]
        add("8 around the ec2 provisioner", "previewbot's own time p50 / p90 / p99", f"{o['p50_ms']:.1f} / {o['p90_ms']:.1f} / {o['p99_ms']:.1f} ms",
            f"p50 < {GOALS['ec2_overhead_p50_ms']} ms", verdict(o["p50_ms"], GOALS["ec2_overhead_p50_ms"]))
        add("", "POST -> first AWS call / last AWS answer -> deployed, p50", f"{b['p50_ms']:.1f} / {a['p50_ms']:.1f} ms", "", "")
        add("", "POST -> deployed on /ws p50 (AWS included)", f"{t['p50_ms']:.0f} ms", "", "")
    for name, result in results.items():
        machine = result.get("machine")
        if machine:
            add(name, "CPU in use: benchmark / other processes", f"{machine['benchmark_cores']} / {machine['other_processes_cores']} cores (others' peak {machine['other_processes_peak_cores']})", "", "")
    for name, result in results.items():
        if "error" in result:
            add(name, "could not run", result["error"].splitlines()[-1][:80], "", "ERROR")
    return rows


def print_table(env: dict, rows: list[dict], elapsed: float) -> None:
    print()
    print(f"previewbot benchmarks: {env['cpu_count']} CPUs ({env['usable_cpus']} usable, {env['cpu_model']}), "
          f"{env['memory_gb']} GB, Python {env['python']}, {env['platform']}, SQLite {env['sqlite']}")
    print(f"load average at start {env['load_average_at_start']}; whole run {elapsed:.0f} s; loopback only")
    headers = ("scenario", "metric", "value", "goal", "status")
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers] if rows else [len(h) for h in headers]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths)))
    print()


SCENARIOS = {
    "deploy": ("deploy_overhead", bench_deploy_overhead),
    "branches": ("branches", bench_branches),
    "webhooks": ("webhooks", bench_webhooks),
    "comments": ("comments", bench_comments),
    "websockets": ("websockets", bench_websockets),
    "burst": ("burst", bench_burst),
    "logs": ("logs", bench_logs),
    "ec2": ("ec2", bench_ec2),
}
# Run only when asked for (`--only logs`, `--only ec2`), so the default run stays as it was.
OPT_IN = {"logs", "ec2"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description="previewbot benchmarks")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",")] if args.only else [s for s in SCENARIOS if s not in OPT_IN]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}")

    began = time.monotonic()
    env = environment()
    print(f"previewbot benchmarks on {env['cpu_count']} CPUs, Python {env['python']}: {', '.join(chosen)}", flush=True)
    run_dir = OUTPUT / "bench-run"  # process logs and data, kept for a look after the run
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()

    results: dict[str, dict] = {}
    monitor = MachineMonitor()
    server = EmbeddedRedis(run_dir / "redis", port=free_port(), persist=False).start()
    try:
        ctx = Context(run_dir, server.url, pem, server.process.pid)
        for name in chosen:
            key_name, run = SCENARIOS[name]
            ctx.flush()
            print(f"-- {key_name} ...", flush=True)
            t0 = time.monotonic()
            mark = monitor.mark()
            try:
                results[key_name] = run(ctx)
            except Exception:
                traceback.print_exc()
                results[key_name] = {"error": traceback.format_exc()}
            results[key_name]["seconds"] = round(time.monotonic() - t0, 1)
            results[key_name]["machine"] = machine = monitor.since(mark)
            print(f"   done in {results[key_name]['seconds']} s; CPU in use: this benchmark {machine['benchmark_cores']} cores, "
                  f"other processes {machine['other_processes_cores']} cores (peak {machine['other_processes_peak_cores']})", flush=True)
    finally:
        server.stop()
        monitor.stop()

    elapsed = time.monotonic() - began
    rows = goal_rows(results)
    print_table(env, rows, elapsed)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    report = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "goals": rows,
        "results": results,
        "elapsed_s": round(elapsed, 1),
        "logs": str(run_dir),
    }
    (OUTPUT / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {OUTPUT / 'bench.json'}; process logs under {run_dir}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
