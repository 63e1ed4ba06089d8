"""After the soak's traffic: drain, settle, then the invariants, with the evidence for every
finding (the deployment's events from the API, Redis state, RQ job, the bot's log lines and
what the soak itself sent to that pull request)."""

from __future__ import annotations

import json
import time

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

FINAL = {"deployed", "failed", "idle"}
LIVE_JOB = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
# What the Preview check run shows for each API status (see worker/render.py).
EXPECTED_CHECK = {
    "deployed": ("completed", "success"),
    "failed": ("completed", "failure"),
    "idle": ("completed", "neutral"),
    "deploying": ("in_progress", None),
}


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


class Checker:
    def __init__(self, world: World, redis_url: str, *, lease_seconds: float, reconcile_seconds: float, redis_persists: bool = True):
        self.world = world
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
        response = self.api.get(f"/api/repos/{repo}/pull-requests/{number}/deployments")
        response.raise_for_status()
        return response.json()["deployments"]

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
            out["pendingFollowUp"] = lock.pending_follow_up()
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
            notes.append("it is no longer its pull request's current deployment in Redis"
                         + (f" (replaced by {successor['id']} [{successor['trigger']}] created {successor['createdAt']})" if successor else "")
                         + ", and the reconciler only looks at each pull request's current deployment (previewbot:active holds PR keys)")
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
                if job is None and not self.redis_persists and accepted_at is not None and any(
                        start - 1.0 <= accepted_at <= (end if end is not None else accepted_at) + 1.0 for start, end in world.outages):
                    lost_with_memory.append({"delivery": delivery.id, "kind": delivery.kind, "acceptedAt": accepted_at})
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
        for key in self.conn.scan_iter(f"{state.PREFIX}:next:*"):
            branch = _text(key)[len(f"{state.PREFIX}:next:"):]
            follow = json.loads(self.conn.get(key) or "null")
            holder = _text(self.conn.get(f"{state.PREFIX}:lock:{branch}"))
            pull_key = f"{follow['repository']}#{follow['prNumber']}" if follow else None
            entry = {"what": f"queued follow-up ({(follow or {}).get('action')}) never started", "branch": branch, "followUp": follow,
                     "lockHolder": holder, "pull": pull_key, "evidence": self.evidence(pull_key=pull_key)}
            if holder is None and follow:
                latest = current.get(pull_key) or {}
                repairs = [line for line in self.log_lines(f"({pull_key})", limit=200) if "reconcile:" in line]
                entry["diagnosis"] = (
                    "the branch lock is free, so nothing will start it until some later job of this branch releases the lock "
                    f"(then it runs, late); the pull request's deployment is {latest.get('id')} ({latest.get('status')}: {latest.get('error')})"
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
        return result

    def check_runs(self, current: dict) -> dict:
        world = self.world
        with world.fake.lock:
            runs = {rid: dict(r) for rid, r in world.fake.check_runs.items() if r["name"] == CHECK_NAME and r["app"]["id"] == APP_ID}
            # The last write to a Preview check run of each pull request, in the order GitHub got them.
            last_write: dict[str, int] = {}
            for call in world.fake.calls:
                run_id = None
                if call.method == "POST" and call.status == 201 and call.path.endswith("/check-runs"):
                    run_id = (call.response or {}).get("id")
                elif call.method == "PATCH" and call.status == 200 and "/check-runs/" in call.path:
                    run_id = int(call.path.rsplit("/", 1)[1])
                if run_id in runs:
                    run = runs[run_id]
                    last_write[f"{run['repository']}#{run['external_id']}"] = run_id

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

        agree, disagree_last, disagree_own = 0, [], []
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
            if ok_last:
                agree += 1
            else:
                entry["explained"] = explain(status, last, own, sha)
                entry["journal"] = pull.journal[-12:]
                disagree_last.append(entry)
            if not ok_own:
                entry = {**entry, "evidence": self.evidence(deployment_id=api.get("id") or None, pull_key=pull.key)}
                disagree_own.append(entry)
        return {"agree": agree, "disagreeWithLastCheckRun": disagree_last, "disagreeWithOwnCheckRun": disagree_own}


def explain(status, last, own, sha) -> str:
    if last is not None and own is not None and last["id"] != own["id"] and EXPECTED_CHECK[status][1] == own["conclusion"]:
        return (f"the check run of the deployment's own commit agrees ({own['conclusion']}); the last one written is on "
                f"commit {last['head_sha'][:8]} ({last['status']}/{last['conclusion']})")
    return "the check run of the deployment's own commit disagrees too"
