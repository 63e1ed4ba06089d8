"""The soak's world and traffic: pull requests on the fake GitHub, signed webhook deliveries
(with GitHub's redelivery of failed ones), REST deploys, and a bounded random mix of them.

Used by `python -m tests.soak`; see tests/soak.py for the whole run."""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from . import webhooks

APP_ID = 4242
INSTALLATION = 77
SECRET = "soak-webhook-secret"
REPOS = ("octo/app", "octo/api")
PULLS_PER_REPO = 10
# alice and mona may deploy (write, maintain); eve may only read, so she is refused.
PERMISSIONS = {"alice": "write", "mona": "maintain", "eve": "read"}
WRITERS = ("alice", "mona")
HTTP_TIMEOUT = 15.0


def new_sha() -> str:
    return secrets.token_hex(20)


@dataclass(eq=False)
class Pull:
    repo: str
    number: int
    branch: str
    sha: str
    open: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    journal: list = field(default_factory=list, repr=False)

    @property
    def key(self) -> str:
        return f"{self.repo}#{self.number}"


@dataclass(eq=False)
class Delivery:
    """One webhook delivery as GitHub keeps it: its id, its body, every attempt."""

    id: str
    kind: str
    event: str
    payload: dict
    pull: Pull | None
    attempts: list = field(default_factory=list)  # (t, status, answer)
    accepted: str | None = None  # "queued" (202), "acknowledged" or "duplicate" (200)
    redelivered_after_failure: bool = False

    @property
    def first_status(self) -> int:
        return self.attempts[0][1] if self.attempts else 0


class Stats:
    """Thread-safe counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()

    def inc(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def get(self, key: str) -> int:
        with self._lock:
            return self.counts[key]

    def prefixed(self, prefix: str) -> dict:
        with self._lock:
            return {k[len(prefix):]: v for k, v in sorted(self.counts.items()) if k.startswith(prefix)}


class World:
    """What the soak drives and remembers: the fake GitHub, the bot, the pull requests, every
    delivery and REST call, and a journal per pull request."""

    def __init__(self, fake, bot, *, rng: random.Random, t0: float):
        self.fake = fake
        self.bot = bot
        self.rng = rng
        self.t0 = t0
        self.epoch0 = time.time() - (time.monotonic() - t0)  # soak time 0 as a Unix time
        self.stats = Stats()
        self.pulls: list[Pull] = []
        self.deliveries: dict[str, Delivery] = {}
        self.deliveries_lock = threading.Lock()
        self.pending: list[Delivery] = []  # answered 503 (or not at all): to redeliver
        self.rest_deploys: list[dict] = []
        self.rest_lock = threading.Lock()
        self.comments: list[dict] = []  # accepted /preview commands, for the reaction check
        self.duplicates: list[dict] = []  # redeliveries of accepted deliveries and their answers
        self.http = httpx.Client(timeout=HTTP_TIMEOUT)
        self.log_for: dict = {}  # pid -> the harness's log file of that process
        self.outages: list = []  # [start, end] of each Redis outage (soak time); end None while down
        self.fault_log_pids: dict = {}  # pid -> what happened to that worker (killed by the soak, exited by itself)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def epoch(self, t: float) -> float:
        """Soak time `t` as a Unix time."""
        return self.epoch0 + t

    @staticmethod
    def wall() -> str:
        """Local wall-clock time as the bot's log lines show it."""
        return datetime.now().strftime("%H:%M:%S.%f")[:-3]

    def log(self, pull: Pull | None, action: str, **info) -> None:
        if pull is not None:
            pull.journal.append({"t": self.now(), "at": self.wall(), "action": action, **info})

    # -- set-up ------------------------------------------------------------------------------

    def create_pulls(self) -> None:
        fake = self.fake
        fake.add_installation(INSTALLATION, "octo")
        for repo in REPOS:
            fake.add_repo(repo, INSTALLATION)
            for user, role in PERMISSIONS.items():
                fake.set_permission(repo, user, role)
            for n in range(1, PULLS_PER_REPO + 1):
                pull = Pull(repo, n, f"feat/soak-{repo.split('/')[1]}-{n}", new_sha())
                fake.add_pull(repo, n, pull.branch, pull.sha, title=f"Soak {n}")
                self.pulls.append(pull)

    def announce(self) -> None:
        """What GitHub sends when the App is installed and the pull requests open."""
        self.send("setup", "installation", webhooks.installation("created", INSTALLATION, repos=REPOS))
        for pull in self.pulls:
            with pull.lock:
                self.send("setup", "pull_request", self._pr_payload(pull, "opened"), pull)

    # -- deliveries --------------------------------------------------------------------------

    def send(self, kind: str, event: str, payload: dict, pull: Pull | None = None) -> Delivery:
        delivery = Delivery(str(uuid.uuid4()), kind, event, payload, pull)
        with self.deliveries_lock:
            self.deliveries[delivery.id] = delivery
        self.stats.inc("deliveries.sent")
        self.stats.inc(f"deliveries.kind.{kind}")
        status, answer = self._post(delivery)
        self.log(pull, kind, delivery=delivery.id, status=status, answer=answer)
        if delivery.accepted is None:
            with self.deliveries_lock:
                self.pending.append(delivery)
        return delivery

    def _post(self, delivery: Delivery) -> tuple[int, str]:
        try:
            response = webhooks.deliver(self.bot.url, delivery.event, delivery.payload, SECRET, delivery_id=delivery.id, timeout=HTTP_TIMEOUT)
            status = response.status_code
            try:
                answer = str(response.json().get("status") or response.json().get("error") or "")
            except ValueError:
                answer = response.text[:100]
        except httpx.HTTPError as exc:
            status, answer = 0, type(exc).__name__
        delivery.attempts.append((self.now(), status, answer))
        self.stats.inc(f"attempts.status.{status}")
        if status == 503:
            self.stats.inc("attempts.503." + ("during_redis_outage" if self.in_outage(delivery.attempts[-1][0]) else "redis_up"))
        if 200 <= status < 300:
            if delivery.accepted is None:
                accepted = "queued" if status == 202 else ("duplicate" if "duplicate" in answer else "acknowledged")
                delivery.accepted = accepted
                self.stats.inc(f"deliveries.accepted.{accepted}")
                if len(delivery.attempts) > 1:
                    delivery.redelivered_after_failure = True
                    self.stats.inc("deliveries.accepted_on_redelivery")
        return status, answer

    def in_outage(self, t: float, grace: float = 1.0) -> bool:
        """Whether soak time `t` falls in a Redis outage (or within `grace` seconds after one)."""
        return any(start <= t and (end is None or t <= end + grace) for start, end in list(self.outages))

    def redeliver_pending(self, *, min_age: float = 1.5, limit: int = 50) -> int:
        """GitHub's "Redeliver" for deliveries that got a 503 or no answer: same id, same body."""
        now = self.now()
        with self.deliveries_lock:
            due = [d for d in self.pending if now - d.attempts[-1][0] >= min_age][:limit]
        done = 0
        for delivery in due:
            if delivery.pull is not None:
                delivery.pull.lock.acquire()
            try:
                status, answer = self._post(delivery)
            finally:
                if delivery.pull is not None:
                    delivery.pull.lock.release()
            self.stats.inc("deliveries.redelivery_attempts")
            self.log(delivery.pull, "redeliver", delivery=delivery.id, kind=delivery.kind, status=status, answer=answer)
            if delivery.accepted is not None:
                with self.deliveries_lock:
                    self.pending.remove(delivery)
                done += 1
        return done

    def pending_count(self) -> int:
        with self.deliveries_lock:
            return len(self.pending)

    def redeliver_accepted(self) -> None:
        """Redeliver an accepted delivery (same id): the bot must answer it as a duplicate."""
        with self.deliveries_lock:
            candidates = [d for d in self.deliveries.values() if d.accepted and d.kind != "setup"]
        if not candidates:
            return
        delivery = self.rng.choice(candidates[-200:])
        before = delivery.accepted
        try:
            response = webhooks.deliver(self.bot.url, delivery.event, delivery.payload, SECRET, delivery_id=delivery.id, timeout=HTTP_TIMEOUT)
            status = response.status_code
            answer = str(response.json().get("status") or response.json().get("error") or "") if response.content else ""
        except (httpx.HTTPError, ValueError) as exc:
            status, answer = 0, type(exc).__name__
        self.stats.inc("duplicates.sent")
        self.stats.inc(f"duplicates.status.{status}")
        record = {"t": self.now(), "delivery": delivery.id, "kind": delivery.kind, "first": before, "status": status, "answer": answer}
        self.duplicates.append(record)
        self.log(delivery.pull, "redeliver-duplicate", delivery=delivery.id, status=status, answer=answer)

    # -- payloads ----------------------------------------------------------------------------

    def _pr_payload(self, pull: Pull, action: str, before: str | None = None) -> dict:
        return webhooks.pull_request(
            action, pull.repo, pull.number, pull.branch, pull.sha, installation_id=INSTALLATION,
            title=f"Soak {pull.number}", before=before,
        )

    # -- actions (each holds the pull request's lock: GitHub sends its events in order) ------

    def comment(self, pull: Pull, body: str, user: str, kind: str) -> None:
        with pull.lock:
            seeded = self.fake.add_comment(pull.repo, pull.number, body, user=user)
            payload = webhooks.issue_comment(pull.repo, pull.number, body=body, user=user, comment_id=seeded["id"], installation_id=INSTALLATION)
            delivery = self.send(kind, "issue_comment", payload, pull)
            self.comments.append({"commentId": seeded["id"], "pull": pull.key, "user": user, "body": body, "kind": kind,
                                  "delivery": delivery.id, "t": self.now(), "openWhenSent": pull.open})

    def button(self, pull: Pull, user: str) -> bool:
        with pull.lock:
            with self.fake.lock:
                runs = [r for r in self.fake.check_runs.values()
                        if r["repository"] == pull.repo and r["head_sha"] == pull.sha and r["name"] == "Preview"]
                run = dict(max(runs, key=lambda r: r["id"])) if runs else None
            if run is None:
                return False  # nothing to click yet
            shown = [a["identifier"] for a in run.get("actions") or []]
            if self.rng.random() < 0.1 and run["status"] == "completed":
                payload = webhooks.check_run("rerequested", pull.repo, pull.sha, run["id"], app_id=APP_ID, pr_number=pull.number,
                                             head_ref=pull.branch, sender=user, installation_id=INSTALLATION,
                                             status="completed", conclusion=run.get("conclusion"))
                kind = "button:rerun"
            else:
                # A button on the page, or (an old page) any of them.
                identifier = self.rng.choice(shown) if shown and self.rng.random() < 0.85 else self.rng.choice(["deploy", "redeploy", "destroy", "retry"])
                payload = webhooks.check_run("requested_action", pull.repo, pull.sha, run["id"], app_id=APP_ID, identifier=identifier,
                                             pr_number=pull.number, head_ref=pull.branch, sender=user, installation_id=INSTALLATION)
                kind = f"button:{identifier}"
            self.send(kind, "check_run", payload, pull)
            return True

    def push(self, pull: Pull) -> None:
        with pull.lock:
            before, pull.sha = pull.sha, new_sha()
            self.fake.update_pull(pull.repo, pull.number, head_sha=pull.sha)
            self.log(pull, "github:push", sha=pull.sha)
            self.send("push", "pull_request", self._pr_payload(pull, "synchronize", before=before), pull)

    def close(self, pull: Pull) -> None:
        with pull.lock:
            pull.open = False
            self.fake.update_pull(pull.repo, pull.number, state="closed")
            self.send("close", "pull_request", self._pr_payload(pull, "closed"), pull)

    def reopen(self, pull: Pull) -> None:
        with pull.lock:
            pull.open = True
            self.fake.update_pull(pull.repo, pull.number, state="open")
            self.send("reopen", "pull_request", self._pr_payload(pull, "reopened"), pull)

    def rest_deploy(self, pull: Pull) -> None:
        with pull.lock:
            self.stats.inc("rest.sent")
            try:
                response = self.http.post(
                    f"{self.bot.url}/api/repos/{pull.repo}/pull-requests/{pull.number}/deploy",
                    json={"branchName": pull.branch}, headers={"Authorization": f"Bearer {self.bot.token}"},
                )
                status = response.status_code
                body = response.json() if response.content else {}
            except (httpx.HTTPError, ValueError) as exc:
                status, body = 0, {"error": type(exc).__name__}
            self.stats.inc(f"rest.status.{status}")
            if status == 503:
                self.stats.inc("rest.503." + ("during_redis_outage" if self.in_outage(self.now()) else "redis_up"))
            record = {"t": self.now(), "pull": pull.key, "status": status, "deploymentId": body.get("deploymentId") if status == 202 else None,
                      "headSha": body.get("headSha"), "error": body.get("error")}
            with self.rest_lock:
                self.rest_deploys.append(record)
            self.log(pull, "rest:deploy", status=status, deployment=record["deploymentId"], error=record["error"])

    # -- the mix -----------------------------------------------------------------------------

    def open_pulls(self) -> list[Pull]:
        return [p for p in self.pulls if p.open]

    def closed_pulls(self) -> list[Pull]:
        return [p for p in self.pulls if not p.open]

    def random_action(self) -> str | None:
        """One step of the mix; returns its name, or None when nothing fitted."""
        rng = self.rng
        open_pulls, closed = self.open_pulls(), self.closed_pulls()
        mix = [
            ("comment:/preview", 22), ("comment:/preview destroy", 7), ("button", 16), ("push", 16),
            ("rest:deploy", 12), ("comment:chatter", 4), ("comment:refused", 3), ("comment:/preview status", 2),
            ("redeliver", 4),
            ("close", 5 if len(closed) < len(self.pulls) * 0.3 else 0),
            ("reopen", 6 if closed else 0),
        ]
        names, weights = zip(*[(n, w) for n, w in mix if w])
        name = rng.choices(names, weights)[0]
        if name == "reopen":
            self.reopen(rng.choice(closed))
            return name
        if name == "redeliver":
            self.redeliver_accepted()
            return name
        if not open_pulls:
            return None
        pull = rng.choice(open_pulls)
        writer = rng.choice(WRITERS)
        if name == "comment:/preview":
            self.comment(pull, rng.choice(["/preview", "/preview", "/Preview", "/preview redeploy"]), writer, "comment:/preview")
        elif name == "comment:/preview destroy":
            self.comment(pull, "/preview destroy", writer, name)
        elif name == "comment:/preview status":
            self.comment(pull, "/preview status", writer, name)
        elif name == "comment:chatter":
            self.comment(pull, "Looks good to me, `/preview` later.", writer, name)
        elif name == "comment:refused":
            self.comment(pull, "/preview", "eve", name)
        elif name == "button":
            if not self.button(pull, writer):
                return None
        elif name == "push":
            self.push(pull)
        elif name == "close":
            self.close(pull)
        elif name == "rest:deploy":
            self.rest_deploy(pull)
        return name


class Traffic:
    """The steady mix: actions at a Poisson `rate`, at most `parallel` at a time, bounded in
    count and in time; stops by itself at the deadline."""

    def __init__(self, world: World, *, seconds: float, rate: float, parallel: int = 6, max_actions: int | None = None):
        self.world = world
        self.seconds = seconds
        self.rate = rate
        self.parallel = parallel
        self.max_actions = max_actions or int(seconds * rate * 2) + 50
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="soak-traffic", daemon=True)

    def start(self) -> "Traffic":
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        world = self.world
        deadline = time.monotonic() + self.seconds
        slots = threading.BoundedSemaphore(self.parallel)
        count = 0
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="soak-action") as pool:
            while not self.stop.is_set() and count < self.max_actions:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.stop.wait(min(world.rng.expovariate(self.rate), remaining))
                if time.monotonic() >= deadline or self.stop.is_set():
                    break
                if not slots.acquire(timeout=max(0.01, deadline - time.monotonic())):
                    break
                count += 1
                pool.submit(self._one, slots)

    def _one(self, slots: threading.BoundedSemaphore) -> None:
        try:
            name = self.world.random_action()
            self.world.stats.inc(f"actions.{name or 'skipped'}")
        except Exception as exc:  # the soak must keep going; the error is reported
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.world.stats.inc("actions.error")
        finally:
            slots.release()
