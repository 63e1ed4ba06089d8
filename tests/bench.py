"""Benchmarks of previewbot on this machine, over loopback, with the real processes.

    python -m tests.bench            (what `make bench` runs; about 2-3 minutes)
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

Results are printed as a table and written to test-output/bench.json. Timing goals are
reported, not asserted: this is a measurement, not a test. The exit status is non-zero only
when a scenario could not run.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
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
from importlib import metadata
from pathlib import Path

import httpx
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.embedded_redis import EmbeddedRedis, free_port, redis_executable

from . import webhooks
from .bench_load import (
    FeedListener,
    MachineMonitor,
    Request,
    closed_loop,
    command_version,
    cpu_model,
    memory_gb,
    paced,
    post,
    process_cpu_seconds,
    run_wrk,
    session_cpu_seconds,
    summary_ms,
    usable_cpus,
    wrk_available,
    write_wrk_inputs,
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

GOALS = {
    "deploy_p50_ms": 100,
    "webhook_p99_ms": 50,
    "throughput_ratio": 0.5,
    "comment_p50_ms": 1000,
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
            payload = webhooks.issue_comment(GITHUB_REPO, pr, body=f"Looks good to me, thanks! ({i})", user="alice", installation_id=INSTALLATION)
            requests.append(delivery("issue_comment", payload, kind))
        elif kind == "/preview":
            payload = webhooks.issue_comment(GITHUB_REPO, pr, body="/preview", user="alice", installation_id=INSTALLATION)
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
            request = delivery("issue_comment", webhooks.issue_comment(GITHUB_REPO, pr, body="/preview", user="alice", comment_id=comment_id, installation_id=INSTALLATION))
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


# -- report --------------------------------------------------------------------------------------


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
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description="previewbot benchmarks")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SCENARIOS)
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
