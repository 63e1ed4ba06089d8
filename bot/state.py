"""Shared state in Redis: branch locks, follow-up actions, each environment's current
deployment, and the event stream that carries every change to the web processes.

Workers need only Redis, so everything a worker must know or tell lives here. The web process
records the events in SQLite (`bot.feed`); nothing in this module touches SQLite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from .model import ACTIVE_STATUSES, LIVE_STATUSES, Deployment, PreviewKey, new_deployment_id, utcnow

PREFIX = "previewbot"
EVENTS_STREAM = f"{PREFIX}:events"
# Accepted webhook deliveries, for the web's recorder only (the broadcaster reads EVENTS_STREAM).
DELIVERIES_STREAM = f"{PREFIX}:deliveries"
# Hash: deployment id -> snapshot, for every deployment still `deploying`, current or not, so
# the reconciler also finds one that a newer deployment of its environment replaced.
ACTIVE = f"{PREFIX}:active-deployments"
EVENTS_MAXLEN = 200_000


def branch_key(repository: str, head_repository: str | None, branch: str, environment: str) -> str:
    """One lock per (repository, head repository, branch, environment): a fork's `main` is not ours."""
    return f"{repository}|{head_repository or repository}|{branch}|{environment}"


def env_key(key: PreviewKey) -> str:
    """Where Redis keeps an environment's current deployment."""
    return f"{PREFIX}:env:{key.repository}#{int(key.pr_number)}:{key.environment}"


# KEYS[1] lock, KEYS[2] next action; ARGV[1] deployment id, ARGV[2] lease ms, ARGV[3] follow-up
# JSON or "" (do not queue). Returns {1, id} when taken, {0, holder} when held by someone else.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3])
end
return {0, redis.call('GET', KEYS[1])}
"""

# KEYS[1] lock; ARGV[1] deployment id, ARGV[2] lease ms. 1 when still ours and extended.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lock, KEYS[2] next action; ARGV[1] the holder's id, ARGV[2] id for a follow-up,
# ARGV[3] lease. The holder's lock (held or already expired) goes straight to the queued
# follow-up if there is one, so nothing can slip in between, else is dropped. A lock someone
# else took meanwhile is left alone.
_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return false
end
local follow = redis.call('GET', KEYS[2])
if follow then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return follow
end
if holder then
  redis.call('DEL', KEYS[1])
end
return false
"""


@dataclass
class Acquired:
    taken: bool
    holder: str | None


class BranchLock:
    """The one-active-deployment-per-branch rule, as an expiring lease in Redis.

    The lease is renewed while a job runs; a dead worker's lease simply runs out.
    """

    def __init__(self, conn: redis.Redis, key: str, *, lease_seconds: float):
        self.conn = conn
        self.key = key
        self.lock_key = f"{PREFIX}:lock:{key}"
        self.next_key = f"{PREFIX}:next:{key}"
        self.lease_ms = int(lease_seconds * 1000)

    def acquire(self, deployment_id: str, *, lease_ms: int | None = None, follow_up: dict | None = None) -> Acquired:
        """Take the lock for `deployment_id`; if it is held, optionally queue `follow_up`.

        A queued follow-up replaces an earlier one: only the newest request matters.
        """
        taken, holder = self.conn.eval(
            _ACQUIRE, 2, self.lock_key, self.next_key, deployment_id, lease_ms or self.lease_ms,
            json.dumps(follow_up) if follow_up else "",
        )
        return Acquired(bool(int(taken)), _text(holder))

    def holder(self) -> str | None:
        return _text(self.conn.get(self.lock_key))

    def renew(self, deployment_id: str) -> bool:
        return bool(self.conn.eval(_RENEW, 1, self.lock_key, deployment_id, self.lease_ms))

    def release(self, deployment_id: str) -> tuple[str, dict] | None:
        """Release the lock; if a follow-up was queued, hand the lock to it and return it
        as (new deployment id, follow-up)."""
        follow_id = new_deployment_id()
        follow = self.conn.eval(_RELEASE, 2, self.lock_key, self.next_key, deployment_id, follow_id, self.lease_ms)
        if not follow:
            return None
        return follow_id, json.loads(follow)

    def pending_follow_up(self) -> dict | None:
        raw = self.conn.get(self.next_key)
        return json.loads(raw) if raw else None


def lock_for(conn: redis.Redis, deployment: Deployment, *, lease_seconds: float) -> BranchLock:
    key = branch_key(deployment.repository, deployment.head_repository, deployment.branch_name, deployment.environment)
    return BranchLock(conn, key, lease_seconds=lease_seconds)


def publish(conn: redis.Redis, deployment: Deployment, *, message: str | None = None, take_over: bool = False) -> Deployment:
    """Record a change of `deployment` in Redis and announce it on the stream, in one transaction.

    With `take_over` (a new deployment starting) it becomes its environment's current
    deployment, and the one it replaces, if live, is marked `superseded`. Otherwise it stays
    current only if it still is; a deployment that finishes `deployed` after a newer one took
    its environment is recorded `superseded`, so a record is never left `deployed` once replaced.
    Returns the deployment as recorded.
    """
    key = env_key(deployment.key)
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                previous = Deployment.from_json(raw) if raw else None
                current = take_over or previous is None or previous.id == deployment.id
                if not current and deployment.status == "deployed":
                    deployment = deployment.changed(status="superseded")
                pipe.multi()
                if current:
                    pipe.set(key, deployment.dumps())
                if take_over and previous and previous.id != deployment.id and previous.status == "deployed":
                    _announce(pipe, previous.changed(status="superseded"), f"superseded by {deployment.id}", current=False)
                _announce(pipe, deployment, message, current=current)
                pipe.execute()
                return deployment
            except redis.WatchError:
                continue


def _announce(pipe, deployment: Deployment, message: str | None, *, current: bool) -> None:
    payload = deployment.dumps()
    if deployment.status in ACTIVE_STATUSES:
        pipe.hset(ACTIVE, deployment.id, payload)
    else:
        pipe.hdel(ACTIVE, deployment.id)
    fields = {"kind": "deployment", "data": payload, "current": "1" if current else "0"}
    if message:
        fields["message"] = message
    pipe.xadd(EVENTS_STREAM, fields, maxlen=EVENTS_MAXLEN, approximate=True)


def publish_log(conn: redis.Redis, deployment_id: str, line: str) -> None:
    conn.xadd(
        EVENTS_STREAM,
        {"kind": "log", "data": json.dumps({"deploymentId": deployment_id, "line": line[:4000], "at": utcnow()})},
        maxlen=EVENTS_MAXLEN,
        approximate=True,
    )


def current(conn: redis.Redis, key: PreviewKey) -> Deployment | None:
    """The environment's current deployment as last published, or None."""
    raw = conn.get(env_key(key))
    return Deployment.from_json(raw) if raw else None


def active_deployments(conn: redis.Redis) -> list[Deployment]:
    """Every deployment still `deploying`, oldest first."""
    found = [Deployment.from_json(raw) for raw in conn.hvals(ACTIVE)]
    return sorted(found, key=lambda d: d.created_at)


def live_deployments(conn: redis.Redis) -> list[Deployment]:
    """Every environment's current deployment that still has (or may have) an environment."""
    found = []
    for keys in _batches(conn.scan_iter(match=f"{PREFIX}:env:*", count=500), 500):
        found += [d for raw in conn.mget(keys) if raw and (d := Deployment.from_json(raw)).status in LIVE_STATUSES]
    return found


def _batches(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
