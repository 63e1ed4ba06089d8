"""The web process's SQLite store: deployments and their history, pull requests, webhook
deliveries, API tokens (dashboard sessions included), sign-in codes and installations.

Dicts in, dicts out through sqlite-utils; the schema changes only through the migrations below.
Workers never open this file: what they do reaches it as events (see `bot.feed`).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import sqlite_utils
from sqlite_utils.migrations import Migrations

from .model import Deployment, PreviewKey, utcnow

migrations = Migrations("previewbot")

# Deployment rows keep the seed's column names; the API speaks camelCase (see `deployment_json`).
DEPLOYMENT_COLUMNS = {
    "id": str,
    "pr_id": int,
    "branch_name": str,
    "status": str,
    "preview_url": str,
    "error_message": str,
    "created_at": str,
    "updated_at": str,
    "repository": str,
    "head_repository": str,
    "head_sha": str,
    "provisioner": str,
    "trigger": str,
    "requested_by": str,
    "installation_id": int,
    "destroyed_at": str,
    "last_event_id": str,
}


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["deployments"].create(DEPLOYMENT_COLUMNS, pk="id", not_null={"pr_id", "branch_name", "status", "repository"})
    db["deployments"].create_index(["repository", "pr_id", "created_at"])
    db["deployment_events"].create(
        {"id": str, "deployment_id": str, "status": str, "message": str, "created_at": str},
        pk="id",
    )
    db["deployment_events"].create_index(["deployment_id"])
    db["deployment_logs"].create(
        {"id": str, "deployment_id": str, "line": str, "created_at": str}, pk="id"
    )
    db["deployment_logs"].create_index(["deployment_id"])
    db["pull_requests"].create(
        {
            "repository": str,
            "number": int,
            "title": str,
            "branch_name": str,
            "head_repository": str,
            "head_sha": str,
            "author": str,
            "state": str,
            "installation_id": int,
            "created_at": str,
            "updated_at": str,
        },
        pk=("repository", "number"),
    )
    db["webhook_deliveries"].create(
        {"id": str, "event": str, "action": str, "received_at": str}, pk="id"
    )
    db["api_tokens"].create(
        {"name": str, "token_hash": str, "repositories": str, "created_at": str, "revoked_at": str},
        pk="name",
    )
    db["api_tokens"].create_index(["token_hash"], unique=True)
    db["installations"].create(
        {"id": int, "account": str, "created_at": str, "deleted_at": str}, pk="id"
    )
    db["installation_repositories"].create(
        {"repository": str, "installation_id": int}, pk="repository"
    )


@migrations()
def m002_environments_and_record_statuses(db: sqlite_utils.Database) -> None:
    """A deployment belongs to one environment of its pull request, and its status is its
    record's: the old `idle` (torn down) becomes `destroyed`, and a `deployed` row that a newer
    deployment of its pull request replaced becomes `superseded`."""
    db["deployments"].add_column("environment", str, not_null_default="preview")
    db.execute("UPDATE deployments SET status = 'destroyed' WHERE status = 'idle'")
    db.execute(
        """UPDATE deployments SET status = 'superseded' WHERE status = 'deployed' AND EXISTS (
               SELECT 1 FROM deployments newer
               WHERE newer.repository = deployments.repository AND newer.pr_id = deployments.pr_id
                 AND newer.environment = deployments.environment
                 AND (newer.created_at > deployments.created_at
                      OR (newer.created_at = deployments.created_at AND newer.rowid > deployments.rowid)))"""
    )
    db["deployments"].create_index(["repository", "pr_id", "environment", "created_at"])


@migrations()
def m003_log_sequence_numbers(db: sqlite_utils.Database) -> None:
    """Log lines are numbered per deployment: `seq`, from 1, unique with the deployment id, so
    that recording a line again changes nothing and a reader can ask for the lines after one.
    Lines recorded before are numbered in the order of their stream ids (their `id`), the order
    they were produced in. `id` stays the key: a line that came on the event stream keeps its
    stream entry id, one from its deployment's own log stream is `{deployment id}:{seq}`.

    `deployment_log_counts` keeps, per deployment, the last seq recorded, how many lines are
    stored and how many were dropped: past the cap (`Store.max_log_lines`), or trimmed from
    Redis before the web process read them."""
    db["deployment_logs"].add_column("seq", int)
    db.execute(
        """UPDATE deployment_logs SET seq = numbered.seq FROM (
               SELECT rowid AS row, row_number() OVER (
                   PARTITION BY deployment_id
                   ORDER BY CAST(substr(id, 1, instr(id, '-') - 1) AS INTEGER),
                            CAST(substr(id, instr(id, '-') + 1) AS INTEGER), rowid) AS seq
               FROM deployment_logs) AS numbered
           WHERE deployment_logs.rowid = numbered.row"""
    )
    db.execute("DROP INDEX IF EXISTS idx_deployment_logs_deployment_id")  # the unique index below leads with it
    db["deployment_logs"].create_index(["deployment_id", "seq"], unique=True)
    db["deployment_log_counts"].create(
        {"deployment_id": str, "last_seq": int, "stored": int, "dropped": int}, pk="deployment_id"
    )
    db.execute(
        """INSERT INTO deployment_log_counts (deployment_id, last_seq, stored, dropped)
           SELECT deployment_id, max(seq), count(*), 0 FROM deployment_logs
           WHERE deployment_id IS NOT NULL GROUP BY deployment_id"""
    )


@migrations()
def m004_replaced_and_teardown_errors(db: sqlite_utils.Database) -> None:
    """What a deployment took its environment over from (`replaces`), and why its teardown
    failed (`teardown_error`, cleared when a retry succeeds)."""
    db["deployments"].add_column("replaces", str)
    db["deployments"].add_column("teardown_error", str)


@migrations()
def m005_current_deployments(db: sqlite_utils.Database) -> None:
    """Which deployment is each environment's current one, as Redis says (the events carry it):
    not always the newest created, since a deploy cancelled in the queue gives the environment
    back to the one it was to replace. Filled from the newest of each environment."""
    db["current_deployments"].create(
        {"repository": str, "pr_id": int, "environment": str, "deployment_id": str, "last_event_id": str},
        pk=("repository", "pr_id", "environment"),
    )
    db.execute(
        """INSERT INTO current_deployments (repository, pr_id, environment, deployment_id, last_event_id)
           SELECT repository, pr_id, environment, id, last_event_id FROM (
               SELECT d.*, row_number() OVER (
                   PARTITION BY repository, pr_id, environment ORDER BY created_at DESC, rowid DESC) AS newest
               FROM deployments d)
           WHERE newest = 1"""
    )


@migrations()
def m006_session_tokens_and_signin_codes(db: sqlite_utils.Database) -> None:
    """Tokens say what made them (`kind`: `api` from `previewbot token create`, `session` from
    a dashboard sign-in) and may expire (`expires_at`; null: until revoked). `signin_codes`
    holds the one-time codes of sign-in links, hashed like tokens, until they are exchanged."""
    db["api_tokens"].add_column("kind", str, not_null_default="api")
    db["api_tokens"].add_column("expires_at", str)
    db["signin_codes"].create({"code_hash": str, "created_at": str, "expires_at": str}, pk="code_hash")


@migrations()
def m007_resources_and_hourly_cost(db: sqlite_utils.Database) -> None:
    """What a provisioner reports of a deployment: its resources (JSON: kind, id, type, region)
    and what it costs an hour, in USD."""
    db["deployments"].add_column("resources", str)
    db["deployments"].add_column("hourly_cost", float)


@migrations()
def m008_github_sessions(db: sqlite_utils.Database) -> None:
    """Sign in with GitHub: a session (`kind = 'github'`) may read `repositories` and act only on
    `writable` (JSON; null: on all it may read). A sign-in code carries the scope its session
    will have, so the code made by the OAuth callback opens a session scoped to that user."""
    db["api_tokens"].add_column("writable", str)
    db["signin_codes"].add_column("kind", str, not_null_default="session")
    db["signin_codes"].add_column("repositories", str)
    db["signin_codes"].add_column("writable", str)


@migrations()
def m009_expiry(db: sqlite_utils.Database) -> None:
    """When a deployed preview expires (`expires_at`, null: never), and whether a destroyed one
    ended because it did (`expired`, 0 or 1)."""
    db["deployments"].add_column("expires_at", str)
    db["deployments"].add_column("expired", int, not_null_default=0)


# Each environment's current deployment: `{CURRENT} WHERE …` with `c` the current row, `d` the deployment.
CURRENT = "SELECT d.* FROM current_deployments c JOIN deployments d ON d.id = c.deployment_id"

PULL_REQUEST_FIELDS = (
    "repository", "number", "title", "branch_name", "head_repository", "head_sha", "author", "state", "installation_id",
)


# A sign-in link works once, for a few minutes; the session it opens lasts a month.
SIGNIN_CODE_TTL = timedelta(minutes=10)
SESSION_TTL = timedelta(days=30)
# A GitHub session lasts a working day: who may read and write a repository is GitHub's answer
# at sign-in, so a revoked collaborator keeps access at most this long.
GITHUB_SESSION_TTL = timedelta(hours=8)
SESSION_KINDS = {"session": SESSION_TTL, "github": GITHUB_SESSION_TTL}

LISTED_TOKEN_COLUMNS = ("name", "repositories", "created_at", "revoked_at", "kind", "expires_at")

# Lines kept in SQLite per deployment: the first ones; later ones are counted as dropped. At
# the 4,000 characters a line may have, that is at most 400 MB for one deployment.
MAX_LOG_LINES = 100_000


def stream_id_key(event_id: str | None) -> tuple[int, int]:
    """Redis stream ids ("ms-seq") compared as numbers, so replays never move a row backwards."""
    if not event_id:
        return (-1, -1)
    ms, _, seq = event_id.partition("-")
    return (int(ms), int(seq or 0))


class Store:
    """One SQLite file; one connection per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: str, *, max_log_lines: int = MAX_LOG_LINES):
        self.path = path
        self.max_log_lines = max_log_lines
        self._local = threading.local()
        self._known_repositories: dict[str, int] = {}
        self._write_lock = threading.Lock()
        self._lock_file = None

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    def release(self) -> None:
        """Close this thread's connection: a long-lived greenlet that is done with the database
        (an open WebSocket) should not hold one."""
        db = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.conn.close()

    @contextmanager
    def write(self):
        """A transaction that reads then writes. BEGIN IMMEDIATE takes the write lock up front,
        so concurrent writers wait (busy_timeout) instead of failing with 'database is locked'
        when a read snapshot turns out to be stale."""
        db = self.db
        if db.conn.in_transaction:
            with db.atomic():
                yield db
            return
        # Writers queue on a mutex (threads) and an flock (processes), which wake the next
        # writer at once; SQLite's own busy handler polls, sleeping up to 100 ms at a time.
        with self._write_lock, self._file_lock():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.conn.commit()
            except BaseException:
                db.conn.rollback()
                # What this transaction added to the cache may be gone with it: forget it all.
                self._known_repositories.clear()
                raise

    @contextmanager
    def _file_lock(self):
        if self._lock_file is None:
            self._lock_file = open(self.path + ".lock", "a+b")
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def migrate(self) -> None:
        migrations.apply(self.db)

    def ping(self) -> None:
        self.db.execute("SELECT count(*) FROM deployments LIMIT 1").fetchone()

    # -- deployments -------------------------------------------------------------------------

    def record_deployment(self, deployment: Deployment, event_id: str | None, message: str | None = None, *, current: bool = True) -> bool:
        """Upsert a deployment from an event unless a newer event already landed, and, when the
        event says so, make it its environment's current deployment.

        Returns True when the row changed. Events can arrive twice (a redelivered stream entry)
        or out of order (two web processes); the stream id decides.
        """
        row = deployment.to_row()
        row["last_event_id"] = event_id
        with self.write():
            existing = self.get_deployment(row["id"])
            if existing and stream_id_key(existing["last_event_id"]) >= stream_id_key(event_id):
                return False
            self.db["deployments"].upsert(row, pk="id", alter=False)
            if current:
                self._make_current(deployment, event_id)
            if event_id:
                self.db["deployment_events"].insert(
                    {
                        "id": event_id,
                        "deployment_id": row["id"],
                        "status": row["status"],
                        "message": message,
                        "created_at": row["updated_at"],
                    },
                    ignore=True,
                )
        return True

    def _make_current(self, deployment: Deployment, event_id: str | None) -> None:
        key = [deployment.repository, deployment.pr_number, deployment.environment]
        rows = list(self.db["current_deployments"].rows_where("repository = ? AND pr_id = ? AND environment = ?", key))
        if event_id is None and rows:
            event_id = rows[0]["last_event_id"]  # a deploy just started here, before its event
        elif rows and stream_id_key(rows[0]["last_event_id"]) > stream_id_key(event_id):
            return  # a later event already named another deployment
        self.db["current_deployments"].upsert(
            {"repository": key[0], "pr_id": key[1], "environment": key[2], "deployment_id": deployment.id, "last_event_id": event_id},
            pk=("repository", "pr_id", "environment"),
        )

    def get_deployment(self, deployment_id: str) -> dict | None:
        rows = list(self.db["deployments"].rows_where("id = ?", [deployment_id]))
        return rows[0] if rows else None

    def latest_deployment(self, key: PreviewKey) -> Deployment | None:
        """The environment's current deployment record: its state (see `Deployment.state`)."""
        rows = list(self.db.query(f"{CURRENT} WHERE c.repository = ? AND c.pr_id = ? AND c.environment = ?", list(key)))
        return Deployment.from_row(rows[0]) if rows else None

    def latest_deployments(self, repository: str, pr_number: int) -> list[Deployment]:
        """The current deployment of each environment of a pull request."""
        return [Deployment.from_row(row) for row in self.db.query(f"{CURRENT} WHERE c.repository = ? AND c.pr_id = ?", [repository, pr_number])]

    def live_deployments(self) -> list[Deployment]:
        """Each environment's current deployment where it is deployed or failed (an environment
        may exist)."""
        return [Deployment.from_row(row) for row in self.db.query(f"{CURRENT} WHERE d.status IN ('deployed', 'failed')")]

    def costing_deployments(self, *, before: str | None = None, repository: str | None = None) -> list[Deployment]:
        """Deployments with an hourly cost, created before `before` (a timestamp) if given, of one
        repository or all: what the costs of a month are made of (bot.costs)."""
        where, params = "hourly_cost IS NOT NULL", []
        if before:
            where, params = where + " AND created_at < ?", params + [before]
        if repository:
            where, params = where + " AND repository = ?", params + [repository]
        return [Deployment.from_row(r) for r in self.db["deployments"].rows_where(where, params)]

    def deployments_with_status(self, status: str, limit: int = 1000) -> list[Deployment]:
        return [Deployment.from_row(r) for r in self.db["deployments"].rows_where("status = ?", [status], order_by="updated_at", limit=limit)]

    def deployment_history(self, key: PreviewKey, *, limit: int = 50, before: str | None = None) -> tuple[list[Deployment], str | None]:
        """The environment's deployments, newest first, `limit` at a time.

        `before` is the cursor the previous page returned (a deployment id); returns the page
        and the cursor of the next one (None on the last page)."""
        where, params = "repository = ? AND pr_id = ? AND environment = ?", list(key)
        if before:
            anchor = self.get_deployment(before)
            if anchor is None:
                return [], None
            where += " AND (created_at < ? OR (created_at = ? AND rowid < (SELECT rowid FROM deployments WHERE id = ?)))"
            params += [anchor["created_at"], anchor["created_at"], before]
        rows = list(self.db["deployments"].rows_where(where, params, order_by="created_at DESC, rowid DESC", limit=limit + 1))
        page = [Deployment.from_row(r) for r in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else None)

    def deployment_events(self, deployment_id: str) -> list[dict]:
        return list(self.db["deployment_events"].rows_where("deployment_id = ?", [deployment_id], order_by="id"))

    # -- log lines ---------------------------------------------------------------------------

    def record_logs(self, deployment_id: str, lines: list[tuple[int, str, str]]) -> int:
        """Keep a deployment's log lines, given as (seq, at, line), up to `max_log_lines`.

        Safe to repeat: a line at or below the last seq recorded is skipped. Lines past the cap
        and seqs never seen (trimmed from Redis before they were read) count as dropped.
        Returns the last seq recorded."""
        with self.write():
            counts = self.log_counts(deployment_id)
            new = sorted(entry for entry in lines if entry[0] > counts["last_seq"])
            if not new:
                return counts["last_seq"]
            self._append_logs(deployment_id, counts, [(f"{deployment_id}:{seq}", seq, at, line) for seq, at, line in new])
        return new[-1][0]

    def record_log(self, event_id: str, deployment_id: str, line: str, at: str) -> None:
        """A line that came on the event stream (where workers put lines before they had
        streams of their own): numbered after the deployment's last line, once per `event_id`."""
        with self.write() as db:
            if db.execute("SELECT 1 FROM deployment_logs WHERE id = ?", [event_id]).fetchone():
                return
            counts = self.log_counts(deployment_id)
            self._append_logs(deployment_id, counts, [(event_id, counts["last_seq"] + 1, at, line)])

    def _append_logs(self, deployment_id: str, counts: dict, rows: list[tuple[str, int, str, str]]) -> None:
        """Rows (id, seq, at, line) in seq order, all after `counts["last_seq"]`."""
        kept = rows[: max(0, self.max_log_lines - counts["stored"])]
        cursor = self.db.conn.executemany(
            "INSERT OR IGNORE INTO deployment_logs (id, deployment_id, seq, line, created_at) VALUES (?, ?, ?, ?, ?)",
            [(id_, deployment_id, seq, line, at) for id_, seq, at, line in kept],
        )
        last_seq = rows[-1][1]
        self.db.execute(
            """INSERT INTO deployment_log_counts (deployment_id, last_seq, stored, dropped) VALUES (?, ?, ?, ?)
               ON CONFLICT (deployment_id) DO UPDATE SET
                   last_seq = excluded.last_seq, stored = excluded.stored, dropped = excluded.dropped""",
            [deployment_id, last_seq, counts["stored"] + max(cursor.rowcount, 0), counts["dropped"] + last_seq - counts["last_seq"] - len(kept)],
        )

    def log_counts(self, deployment_id: str) -> dict:
        """The last seq recorded of a deployment's log, and how many lines were stored and dropped."""
        row = self.db.execute(
            "SELECT last_seq, stored, dropped FROM deployment_log_counts WHERE deployment_id = ?", [deployment_id]
        ).fetchone()
        return dict(zip(("last_seq", "stored", "dropped"), row or (0, 0, 0)))

    def last_log_seqs(self, deployment_ids: list[str]) -> dict[str, int]:
        """The last seq recorded of each deployment's log that has one."""
        found = {}
        for start in range(0, len(deployment_ids), 500):
            batch = deployment_ids[start : start + 500]
            found.update(self.db.execute(
                f"SELECT deployment_id, last_seq FROM deployment_log_counts WHERE deployment_id IN ({','.join('?' * len(batch))})",
                batch,
            ).fetchall())
        return found

    def deployment_logs(self, deployment_id: str, after: int | None = None, limit: int = 1000) -> list[dict]:
        """A deployment's log lines in seq order, from the one after `after`."""
        return list(
            self.db["deployment_logs"].rows_where(
                "deployment_id = ? AND seq > ?", [deployment_id, after or 0], order_by="seq", limit=limit
            )
        )

    def last_deployment_logs(self, deployment_id: str, *, before: int | None = None, limit: int = 1000) -> list[dict]:
        """A deployment's last `limit` log lines (before seq `before`, when given), in seq order."""
        where, params = "deployment_id = ?", [deployment_id]
        if before is not None:
            where += " AND seq < ?"
            params.append(before)
        rows = list(self.db["deployment_logs"].rows_where(where, params, order_by="seq DESC", limit=limit))
        return rows[::-1]

    def deploy_ends(self, deployment_ids: list[str]) -> dict[str, str]:
        """When each deployment's deploy ended (its first `deployed`, `failed` or `cancelled`
        event), for those that did: the history's durations."""
        if not deployment_ids:
            return {}
        return dict(
            self.db.execute(
                """SELECT deployment_id, min(created_at) FROM deployment_events
                   WHERE deployment_id IN (SELECT value FROM json_each(?)) AND status IN ('deployed', 'failed', 'cancelled')
                   GROUP BY deployment_id""",
                [json.dumps(deployment_ids)],
            ).fetchall()
        )

    # -- pull requests -----------------------------------------------------------------------

    def upsert_pull_request(self, pull: dict) -> None:
        """Remember a pull request (from a webhook or an API deploy) for the dashboard."""
        # One statement, no read first: this runs for every pull_request delivery. A field the
        # delivery does not carry (None) keeps its stored value.
        fields = [k for k in PULL_REQUEST_FIELDS if k not in ("repository", "number")]
        now = utcnow()
        values = [pull["repository"], pull["number"]] + [pull.get(k) for k in fields] + [pull.get("created_at") or now, now]
        updates = ", ".join(f"{k} = coalesce(excluded.{k}, {k})" for k in fields)
        with self.write() as db:
            db.execute(
                f"INSERT INTO pull_requests (repository, number, {', '.join(fields)}, created_at, updated_at) "
                f"VALUES ({', '.join('?' * len(values))}) "
                f"ON CONFLICT (repository, number) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
                values,
            )

    def get_pull_request(self, repository: str, number: int) -> dict | None:
        rows = list(self.db["pull_requests"].rows_where("repository = ? AND number = ?", [repository, number]))
        return rows[0] if rows else None

    def list_pull_requests(self, *, repositories: list[str] | None = None, state: str = "open") -> list[dict]:
        """Pull requests, newest first, each with the latest deployment of every environment it
        has had (`environments`: name -> Deployment)."""
        where, params = "p.state = ?", [state]
        if repositories is not None:
            where += f" AND p.repository IN ({','.join('?' * len(repositories))})"
            params += repositories
        pulls = [dict(row) for row in self.db.query(f"SELECT p.* FROM pull_requests p WHERE {where} ORDER BY p.created_at DESC, p.number DESC", params)]
        latest = self.db.query(f"{CURRENT} JOIN pull_requests p ON p.repository = c.repository AND p.number = c.pr_id WHERE {where}", params)
        environments: dict[tuple[str, int], dict[str, Deployment]] = {}
        for row in latest:
            deployment = Deployment.from_row(row)
            environments.setdefault((deployment.repository, deployment.pr_number), {})[deployment.environment] = deployment
        for pull in pulls:
            pull["environments"] = environments.get((pull["repository"], pull["number"]), {})
        return pulls

    # -- webhook deliveries ------------------------------------------------------------------

    def record_delivery(self, delivery_id: str, event: str, action: str | None, *, received_at: str | None = None) -> bool:
        """Keep a delivery in the history; False when it was recorded before."""
        with self.write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (id, event, action, received_at) VALUES (?, ?, ?, ?)",
                [delivery_id, event, action, received_at or utcnow()],
            )
        return cursor.rowcount == 1

    # -- API tokens --------------------------------------------------------------------------

    def create_token(self, name: str, repositories: list[str] | None = None) -> str:
        """Create a token and return it in clear, once; only its hash is stored."""
        try:
            return self._insert_token(self.db, name, repositories=repositories)
        except sqlite3.IntegrityError:
            raise ValueError(f"a token named {name!r} already exists") from None

    def _insert_token(
        self,
        db: sqlite_utils.Database,
        name: str,
        *,
        repositories: list[str] | None = None,
        writable: list[str] | None = None,
        kind: str = "api",
        expires_at: str | None = None,
    ) -> str:
        token = "pvb_" + secrets.token_urlsafe(32)
        db["api_tokens"].insert(
            {
                "name": name,
                "token_hash": hash_token(token),
                # A GitHub session with no repositories may see none: only api tokens read [] as all.
                "repositories": json.dumps(sorted(repositories)) if repositories or kind == "github" else None,
                "created_at": utcnow(),
                "revoked_at": None,
                "kind": kind,
                "expires_at": expires_at,
                "writable": json.dumps(sorted(writable)) if writable is not None else None,
            }
        )
        return token

    def verify_token(self, token: str | None) -> dict | None:
        """The token's row (`name`, `kind`, `expires_at`, `repositories` and `writable` as lists
        or None for all) if it is neither revoked nor expired, else None."""
        if not token or len(token) > 200:
            return None
        digest = hash_token(token)
        rows = list(self.db["api_tokens"].rows_where("token_hash = ?", [digest]))
        if not rows or not hmac.compare_digest(rows[0]["token_hash"], digest) or rows[0]["revoked_at"]:
            return None
        row = dict(rows[0])
        if row["expires_at"] and row["expires_at"] <= utcnow():
            return None
        row["repositories"] = json.loads(row["repositories"]) if row["repositories"] else None
        row["writable"] = json.loads(row["writable"]) if row["writable"] else None
        return row

    def active_token_names(self, names: set[str]) -> set[str]:
        """Those of `names` whose tokens are neither revoked nor expired, in one query: the
        WebSocket feed asks every few seconds, to close the connections of the others."""
        if not names:
            return set()
        rows = self.db.execute(
            """SELECT name FROM api_tokens WHERE name IN (SELECT value FROM json_each(?))
               AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)""",
            [json.dumps(sorted(names)), utcnow()],
        ).fetchall()
        return {name for (name,) in rows}

    def list_tokens(self) -> list[dict]:
        """What `previewbot token list` shows of each token: never its hash."""
        return list(self.db["api_tokens"].rows_where(order_by="created_at", select=", ".join(LISTED_TOKEN_COLUMNS)))

    def revoke_token(self, name: str) -> bool:
        cursor = self.db.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", [utcnow(), name]
        )
        return cursor.rowcount == 1

    # -- dashboard sign-in -------------------------------------------------------------------

    def create_signin_code(self, *, github: tuple[list[str], list[str]] | None = None) -> str:
        """A one-time code for a sign-in link, returned in clear once and valid for
        SIGNIN_CODE_TTL; only its hash is kept. Codes that ran out unused are dropped here.
        `github` is a GitHub user's (readable, writable) repositories: the code then opens a
        `github` session limited to them."""
        code = "pvc_" + secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        with self.write() as db:
            db.execute("DELETE FROM signin_codes WHERE expires_at <= ?", [timestamp(now)])
            db["signin_codes"].insert(
                {
                    "code_hash": hash_token(code),
                    "created_at": timestamp(now),
                    "expires_at": timestamp(now + SIGNIN_CODE_TTL),
                    "kind": "github" if github else "session",
                    "repositories": json.dumps(sorted(github[0])) if github else None,
                    "writable": json.dumps(sorted(github[1])) if github else None,
                }
            )
        return code

    def exchange_signin_code(self, code: str) -> tuple[str, str] | None:
        """A new session token and its expiry for a valid code; None for an unknown, expired or
        used one alike. The code is deleted in the transaction that creates the token, so of
        two exchanges of one code only one gets a token."""
        if not code or len(code) > 200:
            return None
        now = datetime.now(timezone.utc)
        with self.write() as db:
            used = db.execute(
                "DELETE FROM signin_codes WHERE code_hash = ? AND expires_at > ? RETURNING kind, repositories, writable",
                [hash_token(code), timestamp(now)],
            ).fetchall()
            if len(used) != 1:
                return None
            kind, repositories, writable = used[0]
            expires_at = timestamp(now + SESSION_KINDS[kind])
            # An expired session can never be used again; listing it forever would only be noise.
            db.execute("DELETE FROM api_tokens WHERE kind IN ('session', 'github') AND expires_at <= ?", [timestamp(now)])
            token = self._insert_token(
                db,
                f"{kind}-{secrets.token_hex(6)}",
                repositories=json.loads(repositories) if repositories else None,
                writable=json.loads(writable) if writable else None,
                kind=kind,
                expires_at=expires_at,
            )
        return token, expires_at

    # -- installations -----------------------------------------------------------------------

    def upsert_installation(self, installation_id: int, account: str | None, repositories: list[str]) -> None:
        with self.write():
            self.db["installations"].upsert(
                {"id": installation_id, "account": account, "created_at": utcnow(), "deleted_at": None}, pk="id"
            )
            self.add_installation_repositories(installation_id, repositories)

    def add_installation_repositories(self, installation_id: int, repositories: list[str]) -> None:
        # Every delivery names its repository and installation; most are already known, and
        # skipping those keeps a write off the webhook's hot path.
        new = [r for r in repositories if self._known_repositories.get(r) != installation_id]
        if not new:
            return
        with self.write() as db:
            db["installation_repositories"].upsert_all(
                [{"repository": r, "installation_id": installation_id} for r in new], pk="repository"
            )
        self._known_repositories.update((r, installation_id) for r in new)

    def remove_installation_repositories(self, repositories: list[str]) -> None:
        for repository in repositories:
            self.db.execute("DELETE FROM installation_repositories WHERE repository = ?", [repository])
            self._known_repositories.pop(repository, None)

    def delete_installation(self, installation_id: int) -> None:
        with self.write():
            self.db.execute("UPDATE installations SET deleted_at = ? WHERE id = ?", [utcnow(), installation_id])
            self.db.execute("DELETE FROM installation_repositories WHERE installation_id = ?", [installation_id])
        self._known_repositories = {r: i for r, i in self._known_repositories.items() if i != installation_id}

    def installation_for(self, repository: str) -> int | None:
        rows = list(self.db["installation_repositories"].rows_where("repository = ?", [repository]))
        return rows[0]["installation_id"] if rows else None


def timestamp(moment: datetime) -> str:
    """A UTC moment written like `utcnow()`, so stored times compare as text."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hash_token(token: str) -> str:
    # API tokens are 256-bit random values, so a plain SHA-256 is enough (no password stretching).
    return hashlib.sha256(token.encode()).hexdigest()
