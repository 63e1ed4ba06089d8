"""Soak test: previewbot as a GitHub App under a steady mix of traffic and scheduled faults.

    python -m tests.soak [--seconds 180] [--volatile-seconds N] [--rate 3] [--seed S] [--strict]

Everything is on loopback and stops by itself: its own Redis (EmbeddedRedis on a free port),
a FakeGitHub with 20 open pull requests on two repositories, the real `previewbot web`
(2 gunicorn workers) and three `previewbot worker` processes, one of which reaches Redis
through a TCP proxy, with the `command` provisioner (a script in the phase's directory that
journals every run, sleeps 0.3-2.5 s in a child process and prints a URL; see
tests/soak_checks.py), a 3 s branch lease, a 1 s stop grace and a 2 s reconcile period.

Traffic: `/preview`, `/preview destroy`, `/preview status`, chatter and refused commands,
check-run buttons (deploy/redeploy/destroy/retry and Re-run), pushes with new head commits,
closes and reopens, REST deploys and redeliveries of accepted deliveries (same id). Each
delivery is a real, signed payload with its own id; one answered 503 (Redis down) or not at
all is redelivered later with the same id, as GitHub lets you, and counts once accepted.

Faults: GitHub 502s, 429s with Retry-After and 403s with the rate limit exhausted; GitHub
write-only outages (5xx to every POST/PATCH/PUT/DELETE for 5-9 s, GETs answered); a worker
SIGKILLed while it runs a deploy (and a new one started); Redis stopped and started again on
the same port; the proxied worker partitioned from Redis (blackholed for 9 s, three leases,
preferably while it runs a deploy) and healed. Phase "persistent" runs Redis with an
append-only file; phase "volatile" (shorter, `--volatile-seconds 0` skips it) runs it without,
so a restart loses what Redis held.

A sampler looks at the provisioner's processes every ~20 ms for the whole phase. Then traffic
and faults stop, the queue drains, things settle (up to 2 x lease + reconcile, plus the
reconciler's grace) and the invariants are checked: stuck deployments (API status `deploying`),
lost requests (accepted with no outcome, or intents left waiting), branch locks left without a
job, each pull request's API state against its Preview check run, the fake GitHub's violations,
doubled provisioners (two deploy processes of one branch key alive at once), leaked
environments (built by a deploy run, neither live in the API nor destroyed since) and, once the
bot is stopped, provisioner processes left alive. A table is printed and test-output/soak.json
written (logs, a per-PR journal of what was sent and the provisioner's journal under
test-output/soak/). The exit status is 1 when the persistent phase has a finding (stuck, lost,
doubled, leaked, a provisioner left, an answer 500, a violation, or a bot process that exited by
itself), and the volatile phase too with `--strict`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.embedded_redis import EmbeddedRedis, free_port

from .fakegithub import FakeGitHub
from .harness import Bot
from .soak_checks import PROVISIONER_SCRIPT, Checker, Journal, ProvisionerSampler, process_alive, surviving_processes
from .soak_faults import Faults, schedule, spawned
from .soak_traffic import APP_ID, SECRET, Traffic, World
from .tcpproxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"
LEASE_SECONDS = 3
CANCEL_GRACE_SECONDS = 1
RECONCILE_SECONDS = 2
PROVISION_SECONDS = "0.3-2.5"
WORKERS = 3
PROXIED_WORKERS = 1  # of WORKERS, reach Redis through the TCP proxy that partitions cut
PARTITION_SECONDS = 9.0
WEB_WORKERS = 2


def private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


def say(message: str) -> None:
    print(message, flush=True)


def run_phase(name: str, *, persist: bool, seconds: float, rate: float, seed: int, pem: str, drain_timeout: float, keep: Path) -> dict:
    rng = random.Random(seed)
    say(f"\n== phase {name}: {seconds:.0f}s of traffic at ~{rate}/s, Redis persist={persist}, seed {seed}")
    with tempfile.TemporaryDirectory(prefix=f"previewbot-soak-{name}-") as tmp_name:
        tmp = Path(tmp_name)
        server = EmbeddedRedis(tmp / "redis", port=free_port(), persist=persist)
        fake = FakeGitHub(APP_ID, pem)
        bot = None
        world = None
        traffic = None
        proxy = None
        sampler = None
        script = tmp / "provision.py"
        journal = Journal(tmp / "provisioner.journal")
        try:
            server.start()
            fake.start()
            proxy = TcpProxy("127.0.0.1", urlsplit(server.url).port)
            script.write_text(PROVISIONER_SCRIPT)
            command = f"{sys.executable} -S {script} {journal.path} {PROVISION_SECONDS}"
            (tmp / "bot").mkdir()
            bot = Bot(tmp / "bot", server.url, {
                "APP_ID": str(APP_ID),
                "PRIVATE_KEY": pem,
                "WEBHOOK_SECRET": SECRET,
                "GITHUB_API_URL": fake.url,
                "PREVIEW_PROVISIONER": "command",
                "PREVIEW_DEPLOY_COMMAND": command,
                "PREVIEW_DESTROY_COMMAND": command,
                "PREVIEW_LEASE_SECONDS": str(LEASE_SECONDS),
                "PREVIEW_CANCEL_GRACE_SECONDS": str(CANCEL_GRACE_SECONDS),
                "PREVIEW_RECONCILE_SECONDS": str(RECONCILE_SECONDS),
                # The REST API's per-token write limit is not under test here.
                "PREVIEW_API_RATE_LIMIT": "100000",
            })
            sampler = ProvisionerSampler(journal)
            sampler.start()
            world = World(fake, bot, rng=rng, t0=time.monotonic())
            world.create_pulls()
            faults = Faults(world, bot, server, proxy=proxy, sampler=sampler, partition_seconds=PARTITION_SECONDS)
            for i in range(WORKERS):
                faults.start_worker(proxied=i < PROXIED_WORKERS)
            bot.start_web(workers=WEB_WORKERS)
            spawned(world, bot, bot.web)
            world.announce()

            plan = schedule(seconds)
            traffic = Traffic(world, seconds=seconds, rate=rate).start()
            started = time.monotonic()
            samples, next_sample, next_print = [], 0.0, 15.0
            while traffic.thread.is_alive():
                elapsed = time.monotonic() - started
                while plan and plan[0][0] <= elapsed:
                    _, kind = plan.pop(0)
                    faults.run(kind)
                faults.tick()
                if faults.redis_up:
                    world.redeliver_pending()
                faults.watch_processes()
                if elapsed >= next_sample:
                    samples.append({"t": round(elapsed, 1), "queue": faults.queue_depth(), "pendingRedelivery": world.pending_count()})
                    next_sample += 5
                if elapsed >= next_print:
                    say(progress(name, elapsed, world, bot, faults, sampler))
                    next_print += 15
                time.sleep(0.1)
            traffic.join(30)
            traffic_seconds = time.monotonic() - started
            say(progress(name, traffic_seconds, world, bot, faults, sampler) + "  (traffic stopped)")

            # Faults off (outages end, partitions heal); every delivery GitHub saw fail is
            # redelivered until accepted.
            faults.end_all()
            deadline = time.monotonic() + 30
            while world.pending_count() and time.monotonic() < deadline:
                world.redeliver_pending(min_age=0)
                faults.watch_processes()
                time.sleep(0.5)

            checker = Checker(world, server.url, lease_seconds=LEASE_SECONDS, reconcile_seconds=RECONCILE_SECONDS,
                              redis_persists=persist, journal=journal)
            settle = checker.settle(drain_timeout=drain_timeout)
            faults.watch_processes()
            say(f"[{name}] settled: {settle}")
            checks = checker.check()
            result = summarize(name, persist, seconds, traffic_seconds, world, bot, faults, checker, settle, checks, samples, traffic, sampler)

            # The bot stops; no provisioner process may outlive it.
            bot.stop()
            result["provisionersLeft"] = surviving_processes(journal, script, wait=CANCEL_GRACE_SECONDS + 5)
            sampler.stop()
            result["provisioners"] = sampler.report()
            result["doubled"] = result["provisioners"]["doubled"]
            partitions_report(result, sampler, journal)
            save_journal(keep, world)
            return result
        finally:
            if traffic is not None:
                traffic.stop.set()
                traffic.join(20)
            if bot is not None:
                bot.stop()
            if sampler is not None:
                sampler.stop()
            if proxy is not None:
                proxy.close()
            fake.stop()
            server.stop()
            kill_leftovers(journal)
            keep.mkdir(parents=True, exist_ok=True)
            for old in list(keep.glob("*.log")) + list(keep.glob("*.journal")):
                old.unlink()
            for path in list(bot.logs if bot else []) + [tmp / "redis" / "redis.log", journal.path]:
                if path.exists():
                    shutil.copy(path, keep / path.name)
            if bot is not None and Path(bot.env["DATABASE_PATH"]).exists():
                # A consistent copy of the web's SQLite file, for looking at findings afterwards.
                source = sqlite3.connect(bot.env["DATABASE_PATH"])
                target = sqlite3.connect(keep / "previewbot.db")
                source.backup(target)
                source.close()
                target.close()


def partitions_report(result: dict, sampler: ProvisionerSampler, journal: Journal) -> None:
    """For each partition that caught a deploy: when that deploy's provisioner was last seen
    alive after the cut (it must stop within a lease), and how the deployment ended."""
    runs = journal.all()
    for fault in result["faultLog"]:
        if fault["kind"] != "partition" or not fault.get("runningDeploy"):
            continue
        mine = [r for r in runs if r.deployment == fault["runningDeploy"] and r.action == "deploy"]
        seen = [sampler.last_seen.get(r.ident) for r in mine if sampler.last_seen.get(r.ident)]
        fault["provisionerRuns"] = [r.brief() for r in mine]
        fault["provisionerLastSeenAfterCut"] = round(max(seen) - fault["cutAt"], 3) if seen else None
        # Gone before the lease (counted from the cut, later than the last renewal) ran out.
        fault["stoppedWithinLease"] = bool(seen) and max(seen) - fault["cutAt"] < LEASE_SECONDS
        fault["stoppedByFence"] = any((r.outcome or "").startswith("signal") or r.outcome is None for r in mine)


def kill_leftovers(journal: Journal) -> None:
    """The soak never leaves a provisioner behind itself, whatever the finding."""
    for run in journal.all():
        for pid, start in ((run.pid, run.start), (run.child, run.child_start)):
            if process_alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def progress(name: str, elapsed: float, world: World, bot, faults: Faults, sampler: ProvisionerSampler) -> str:
    s = world.stats
    try:
        deployed = bot.store.db.execute("SELECT count(DISTINCT deployment_id) FROM deployment_events WHERE status = 'deployed'").fetchone()[0]
    except Exception:  # the database may be busy; progress is only a hint
        deployed = "?"
    faults_n = sum(v for k, v in s.prefixed("faults.").items() if not k.endswith("skipped"))
    return (f"[{name} {elapsed:5.0f}s] deliveries {s.get('deliveries.sent')} (503: {s.get('attempts.status.503')}, "
            f"waiting for redelivery: {world.pending_count()}), REST {s.get('rest.sent')}, deployed {deployed}, "
            f"queue {faults.queue_depth()}, faults {faults_n}, doubled {len(sampler.report()['doubled'])}")


def summarize(name, persist, seconds, traffic_seconds, world: World, bot, faults: Faults, checker: Checker, settle, checks, samples, traffic, sampler) -> dict:
    s = world.stats
    db = bot.store.db
    deliveries = list(world.deliveries.values())
    statuses = dict(sorted(Counter(str(d.first_status) for d in deliveries).items()))
    by_status = dict(db.execute("SELECT status, count(*) FROM deployments GROUP BY status").fetchall())
    reached_deployed = db.execute("SELECT count(DISTINCT deployment_id) FROM deployment_events WHERE status = 'deployed'").fetchone()[0]
    failures = Counter()
    for (error,) in db.execute("SELECT error_message FROM deployments WHERE status = 'failed'").fetchall():
        failures[(error or "").split(":")[0].split(".")[0][:60]] += 1
    triggers = dict(db.execute("SELECT trigger, count(*) FROM deployments GROUP BY trigger").fetchall())
    kills = []
    for fault in faults.injected:
        if fault["kind"] == "worker_kill":
            detail = checker.api_deployment(fault["deployment"])
            kills.append({**fault, "finalStatus": detail["status"] if detail else None, "error": detail["error"] if detail else None,
                          "repairedByReconcile": bool(detail and any((e["message"] or "").startswith("reconcile:") for e in detail["events"]))})
        if fault["kind"] == "partition" and fault.get("runningDeploy"):
            detail = checker.api_deployment(fault["runningDeploy"])
            fault["finalStatus"] = detail["status"] if detail else None
            fault["error"] = detail["error"] if detail else None
    duplicates = Counter(f"{d['status']} {d['answer']}" for d in world.duplicates)
    check_runs = checks["checkRuns"]
    return {
        "phase": name,
        "redisPersist": persist,
        "seconds": seconds,
        "trafficSeconds": round(traffic_seconds, 1),
        "actions": s.prefixed("actions."),
        "actionErrors": traffic.errors[:20],
        "deliveries": {
            "sent": len(deliveries),
            "byKind": dict(sorted(Counter(d.kind for d in deliveries).items())),
            "firstAttemptStatus": statuses,
            "attemptStatus": s.prefixed("attempts.status."),
            "attempts503": s.prefixed("attempts.503."),
            "accepted": sum(1 for d in deliveries if d.accepted),
            "acceptedAs": s.prefixed("deliveries.accepted."),
            "acceptedOnRedelivery": sum(1 for d in deliveries if d.redelivered_after_failure),
            "neverAccepted": sum(1 for d in deliveries if not d.accepted),
            "duplicateRedeliveries": {"sent": len(world.duplicates), "answers": dict(duplicates)},
        },
        "rest": {"sent": s.get("rest.sent"), "status": s.prefixed("rest.status."), "answers503": s.prefixed("rest.503.")},
        "deployments": {"total": sum(by_status.values()), "finalStatus": by_status, "reachedDeployed": reached_deployed,
                        "failedBy": dict(failures.most_common()), "byTrigger": triggers},
        "faults": {k: v for k, v in s.prefixed("faults.").items()},
        "faultLog": faults.injected,
        "killedDeploys": kills,
        "githubFaultAnswers": faults.github_faults_answered(),
        "unexpectedExits": faults.unexpected_exits,
        "queueSamples": samples,
        "settle": settle,
        "stuck": checks["stuck"],
        "lost": checks["lost"],
        "lostWithRedisMemory": checks["lostWithRedisMemory"],
        "locksLeft": checks["locksLeft"],
        "locksWithoutJob": checks["locksWithoutJob"],
        "checkRuns": check_runs,
        "staleDeployed": checks["staleDeployed"],
        "commandsWithoutFinalReaction": checks["commandsWithoutFinalReaction"],
        "violations": checks["violations"],
        "environments": checks["environments"],
        "leaked": checks["environments"]["leaked"],
        "serverErrors": server_errors(world, bot),
        "jobsThatLostTheirLockInTheQueue": checker.log_lines("lost its branch lock while queued", limit=1000),
        "githubCalls": len(world.fake.calls),
        "redisOutages": world.outages,
        "proxiedWorkers": sorted(faults.proxied_pids),
    }


def server_errors(world: World, bot) -> list[dict]:
    """Answers 500 from the bot (503 means Redis is down and 502 that GitHub could not be
    reached: both designed answers; 500 is a crash), with the web log's tracebacks."""
    found = []
    for delivery in world.deliveries.values():
        found += [{"what": f"webhook {delivery.kind}", "delivery": delivery.id, "t": t} for t, status, _ in delivery.attempts if status == 500]
    found += [{"what": "same-id redelivery", "delivery": d["delivery"], "t": d["t"]} for d in world.duplicates if d["status"] == 500]
    found += [{"what": "REST deploy", "pull": r["pull"], "t": r["t"]} for r in world.rest_deploys if r["status"] == 500]
    if found:
        tracebacks = []
        for path in bot.logs:
            if path.exists() and path.name.startswith("web"):
                lines = path.read_text(errors="replace").splitlines()
                for i, line in enumerate(lines):
                    if line.startswith("Traceback"):
                        tracebacks.append("\n".join(lines[max(0, i - 1):i + 40]))
        found.append({"what": "web log tracebacks", "tracebacks": tracebacks[:5]})
    return found


def save_journal(keep: Path, world: World) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    journal = {p.key: {"branch": p.branch, "open": p.open, "head": p.sha, "events": p.journal} for p in world.pulls}
    (keep / "journal.json").write_text(json.dumps(journal, indent=1))


def failed(result: dict) -> bool:
    """Stuck or lost requests, doubled provisioners, leaked environments, a provisioner process
    left after the bot stopped, answers 500, GitHub violations, or a bot process that did not survive a fault
    it should have ridden out (the processes must reconnect to a restarted Redis, a partitioned
    worker must carry on once healed)."""
    return bool(result["stuck"] or result["lost"] or result["violations"] or result["unexpectedExits"]
                or result.get("doubled") or result.get("leaked") or result.get("provisionersLeft") or result.get("serverErrors")
                or (result.get("provisioners") or {}).get("deployAndDestroy"))


def table(results: dict) -> str:
    names = list(results)

    def row(label, fn):
        values = []
        for n in names:
            try:
                values.append(str(fn(results[n])))
            except (KeyError, TypeError):
                values.append("-")
        return (label, values)

    def fmt(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "0"

    rows = [
        row("Redis persistence (AOF)", lambda r: r["redisPersist"]),
        row("traffic seconds", lambda r: r["trafficSeconds"]),
        row("actions", lambda r: sum(v for k, v in r["actions"].items() if k not in ("error", "skipped"))),
        row("webhook deliveries sent (unique)", lambda r: r["deliveries"]["sent"]),
        row("  first answer by status", lambda r: fmt(r["deliveries"]["firstAttemptStatus"])),
        row("  every attempt by status", lambda r: fmt(r["deliveries"]["attemptStatus"])),
        row("  503 answers: when", lambda r: fmt(r["deliveries"]["attempts503"])),
        row("  received (accepted once)", lambda r: r["deliveries"]["accepted"]),
        row("  accepted as", lambda r: fmt(r["deliveries"]["acceptedAs"])),
        row("  accepted only on redelivery", lambda r: r["deliveries"]["acceptedOnRedelivery"]),
        row("  never accepted", lambda r: r["deliveries"]["neverAccepted"]),
        row("  same-id redeliveries: answers", lambda r: f"{r['deliveries']['duplicateRedeliveries']['sent']}: " + fmt(r["deliveries"]["duplicateRedeliveries"]["answers"])),
        row("REST deploys by status", lambda r: f"{r['rest']['sent']}: " + fmt(r["rest"]["status"])),
        row("  REST 503 answers: when", lambda r: fmt(r["rest"]["answers503"])),
        row("deployments started", lambda r: r["deployments"]["total"]),
        row("deploys completed (reached deployed)", lambda r: r["deployments"]["reachedDeployed"]),
        row("  final status", lambda r: fmt(r["deployments"]["finalStatus"])),
        row("  failed because", lambda r: fmt(r["deployments"]["failedBy"])),
        row("  deploys that found their branch lock gone on leaving the queue", lambda r: len(r["jobsThatLostTheirLockInTheQueue"])),
        row("faults injected", lambda r: fmt(r["faults"])),
        row("  GitHub error answers given", lambda r: fmt(r["githubFaultAnswers"])),
        row("  killed deploys ended", lambda r: fmt(Counter(k["finalStatus"] for k in r["killedDeploys"]))),
        row("  partitions: deploy caught / its provisioner stopped by the fence / gone within a lease of the cut", lambda r: "{} / {} / {}".format(
            sum(1 for f in r["faultLog"] if f["kind"] == "partition" and f.get("runningDeploy")),
            sum(1 for f in r["faultLog"] if f["kind"] == "partition" and f.get("stoppedByFence")),
            sum(1 for f in r["faultLog"] if f["kind"] == "partition" and f.get("stoppedWithinLease")))),
        row("  partitioned deploys ended", lambda r: fmt(Counter(f.get("finalStatus") for f in r["faultLog"] if f["kind"] == "partition" and f.get("runningDeploy")))),
        row("provisioner runs", lambda r: fmt(r["environments"]["runs"]["byOutcome"])),
        row("  sampler: samples / longest gap (s)", lambda r: f"{r['provisioners']['samples']} / {r['provisioners']['maxGapSeconds']}"),
        row("unexpected process exits", lambda r: len(r["unexpectedExits"])),
        row("answers 500 (the bot crashed on a request)", lambda r: sum(1 for e in r["serverErrors"] if "t" in e)),
        row("settle: drained (s) / quiet", lambda r: f"{r['settle']['drained']} ({r['settle']['drainSeconds']}) / {r['settle']['quiet']}"),
        row("STUCK (API deploying)", lambda r: len(r["stuck"])),
        row("LOST (accepted, no outcome)", lambda r: len(r["lost"])),
        row("  lost by kind", lambda r: fmt(Counter(x["what"].split(":")[0] for x in r["lost"]))),
        row("queued in Redis's memory when it restarted without persistence (expected loss)", lambda r: len(r["lostWithRedisMemory"])),
        row("branch locks left / without job", lambda r: f"{len(r['locksLeft'])} / {len(r['locksWithoutJob'])}"),
        row("PR state = last check run", lambda r: f"{r['checkRuns']['agree']}/{r['checkRuns']['agree'] + len(r['checkRuns']['disagreeWithLastCheckRun'])}"
            + f" (last report refused by GitHub: {r['checkRuns']['lastReportRefusedByGitHub']})"),
        row("PR state != own commit's check run", lambda r: len(r["checkRuns"]["disagreeWithOwnCheckRun"])),
        row("deployed at an old head (info)", lambda r: len(r["staleDeployed"])),
        row("/preview w/o rocket|confused (info)", lambda r: len(r["commandsWithoutFinalReaction"])),
        row("DOUBLED provisioners", lambda r: len(r["doubled"])),
        row("  deploy and destroy of a branch at once", lambda r: len(r["provisioners"]["deployAndDestroy"])),
        row("environments built: live / destroyed since / failed", lambda r: "{} / {} / {}".format(
            r["environments"]["live"], r["environments"]["destroyedAfterLastDeploy"], len(r["environments"]["failedButBuilt"]))),
        row("LEAKED environments", lambda r: len(r["leaked"])),
        row("  deployed in the API, nothing built (info)", lambda r: len(r["environments"]["deployedWithoutEnvironment"])),
        row("PROVISIONERS LEFT after the bot stopped", lambda r: len(r["provisionersLeft"])),
        row("fake GitHub violations", lambda r: len(r["violations"])),
        row("RESULT", lambda r: "FAIL" if failed(r) else "ok"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    col = max([12] + [len(v) for _, values in rows for v in values]) + 2
    col = min(col, 64)
    lines = ["".ljust(width) + "".join(n.ljust(col - 2) + "  " for n in names)]
    for label, values in rows:
        lines.append(label.ljust(width) + "".join(v.ljust(col - 2) + "  " for v in values))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180, help="traffic seconds of the persistent phase (default 180)")
    parser.add_argument("--volatile-seconds", type=float, default=None, help="traffic seconds of the phase without Redis persistence (default: a third of --seconds, at most 60; 0 skips it)")
    parser.add_argument("--rate", type=float, default=3.0, help="actions per second (default 3)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--drain-timeout", type=float, default=120, help="longest wait for the queue to drain after the traffic")
    parser.add_argument("--strict", action="store_true", help="the volatile phase's findings fail the run too")
    parser.add_argument("--output", type=Path, default=OUTPUT / "soak.json")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.seconds > 3600:
        parser.error("--seconds must be in (0, 3600]")
    if not 0 < args.rate <= 50:
        parser.error("--rate must be in (0, 50]")
    if args.volatile_seconds is not None and not 0 <= args.volatile_seconds <= 3600:
        parser.error("--volatile-seconds must be in [0, 3600]")
    volatile = min(60.0, args.seconds / 3) if args.volatile_seconds is None else args.volatile_seconds
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    pem = private_key()
    phases = [("persistent", True, args.seconds)] + ([("volatile", False, volatile)] if volatile > 0 else [])
    results = {}
    for i, (name, persist, seconds) in enumerate(phases):
        results[name] = run_phase(name, persist=persist, seconds=seconds, rate=args.rate, seed=seed + i, pem=pem,
                                  drain_timeout=args.drain_timeout, keep=OUTPUT / "soak" / name)
    failing = [n for n, r in results.items() if failed(r) and (n == "persistent" or args.strict)]
    report = {
        "config": {"seconds": args.seconds, "volatileSeconds": volatile, "rate": args.rate, "seed": seed, "workers": WORKERS,
                   "proxiedWorkers": PROXIED_WORKERS, "webWorkers": WEB_WORKERS, "leaseSeconds": LEASE_SECONDS,
                   "cancelGraceSeconds": CANCEL_GRACE_SECONDS, "reconcileSeconds": RECONCILE_SECONDS, "provisioner": "command",
                   "provisionSeconds": PROVISION_SECONDS, "partitionSeconds": PARTITION_SECONDS, "pullRequests": 20, "strict": args.strict},
        "ok": not failing,
        "phases": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str))
    say("\n" + table(results))
    for name, result in results.items():
        exits = [{k: v for k, v in e.items() if k != "log"} | {"lastLine": e["log"].splitlines()[-1] if e["log"] else ""} for e in result["unexpectedExits"]]
        for what, items in (("stuck", result["stuck"]), ("lost", result["lost"]), ("violation", result["violations"]), ("process exit", exits),
                            ("doubled", result.get("doubled", [])), ("leaked", result.get("leaked", [])),
                            ("deploy+destroy", (result.get("provisioners") or {}).get("deployAndDestroy", [])),
                            ("provisioner left", result.get("provisionersLeft", [])),
                            ("answer 500", [e for e in result.get("serverErrors", []) if "t" in e])):
            for item in items[:10]:
                say(f"[{name}] {what}: " + (item if isinstance(item, str) else json.dumps({k: v for k, v in item.items() if k not in ("evidence", "attempts")}, default=str)))
    say(f"\nwrote {args.output} (logs and journals under {OUTPUT / 'soak'})")
    if failing:
        say(f"soak FAILED: {', '.join(failing)}")
        return 1
    say("soak ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
