"""Shared state in Redis: branch locks, follow-up actions, each environment's current
deployment, and the event stream that carries every change to the web processes.

Workers need only Redis, so everything a worker must know or tell lives here. The web process
records the events in SQLite (`bot.feed`); nothing in this module touches SQLite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

import redis

from . import costs, expiry
from .model import ACTIVE_STATUSES, LIVE_STATUSES, Deployment, PreviewKey, new_deployment_id, utcnow
from .redis_io import PREFIX, script, text

EVENTS_STREAM = f"{PREFIX}:events"
# Accepted webhook deliveries, for the web's recorder only (the broadcaster reads EVENTS_STREAM).
DELIVERIES_STREAM = f"{PREFIX}:deliveries"
# Hash: deployment id -> snapshot, for every deployment still `deploying`, current or not, so
# the reconciler also finds one that a newer deployment of its environment replaced.
ACTIVE = f"{PREFIX}:active-deployments"
EVENTS_MAXLEN = 200_000


def connect(url: str, *, timeout: float = 10.0) -> redis.Redis:
    """A Redis client whose calls never wait for ever: a worker cut off from Redis must learn
    it in time to stop its provisioner before its lease runs out (see `worker.jobs.Lease`)."""
    return redis.Redis.from_url(url, health_check_interval=30, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0))


def branch_key(repository: str, head_repository: str | None, branch: str, environment: str) -> str:
    """One lock per (repository, head repository, branch, environment): a fork's `main` is not ours."""
    return f"{repository}|{head_repository or repository}|{branch}|{environment}"


def env_key(key: PreviewKey) -> str:
    """Where Redis keeps an environment's current deployment."""
    return f"{PREFIX}:env:{key.repository}#{int(key.pr_number)}:{key.environment}"


# KEYS[1] lock, KEYS[2] intents; ARGV[1] deployment id, ARGV[2] lease ms, ARGV[3] the intent to
# queue when the lock is held, or "". Returns {1, id} when taken, {0, holder} when held.
#
# An intent is what a push, a command or a close asks of an environment while its branch is
# busy. Intents wait in one list per branch lock, in order, coalesced per target environment
# ("repo#pr:env"): a newer deploy replaces a waiting deploy (the newest commit wins), a destroy
# drops the deploys waiting before it, a push after a destroy is dropped (a push only
# redeploys a live preview), and a deploy by command after a destroy waits behind it. Two pull
# requests sharing a head branch never overwrite each other's intents.
_ACQUIRE = """
local function queue_intent(key, raw)
  local new = cjson.decode(raw)
  local entries = redis.call('LRANGE', key, 0, -1)
  for i, entry in ipairs(entries) do
    local old = cjson.decode(entry)
    if old.target == new.target then
      if new.action == 'destroy' then
        if old.action == 'destroy' then return end
        redis.call('LREM', key, 1, entry)
      elseif old.action == 'deploy' then
        redis.call('LSET', key, i - 1, raw)
        return
      elseif new.trigger == 'push' then
        return
      end
    end
  end
  redis.call('RPUSH', key, raw)
end

if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
if ARGV[3] ~= '' then
  queue_intent(KEYS[2], ARGV[3])
end
return {0, redis.call('GET', KEYS[1])}
"""

# KEYS[1] lock, KEYS[2] (optional) a cancel flag; ARGV[1] deployment id, ARGV[2] lease ms.
# Returns {1 when still ours and extended else 0, the cancel flag's value or false}.
_RENEW = """
local held = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  held = redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local cancel = false
if #KEYS > 1 then
  cancel = redis.call('GET', KEYS[2])
end
return {held, cancel}
"""

# KEYS[1] lock, KEYS[2] intents; ARGV[1] the holder's id, ARGV[2] id for the next intent,
# ARGV[3] lease. The holder's lock (held or already expired) goes straight to the first
# waiting intent, so nothing can slip in between, else is dropped. A lock someone else took
# meanwhile is left alone.
_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return false
end
local intent = redis.call('LPOP', KEYS[2])
if intent then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return intent
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
    """The one-active-deployment-per-branch rule, as an expiring lease in Redis, with the
    intents waiting for it.

    The lease is renewed while a job runs; a dead worker's lease simply runs out.
    """

    def __init__(self, conn: redis.Redis, key: str, *, lease_seconds: float):
        self.conn = conn
        self.key = key
        self.lock_key = _lock_key(key)
        self.intents_key = f"{PREFIX}:intents:{key}"
        self.lease_ms = int(lease_seconds * 1000)

    def acquire(self, deployment_id: str, *, lease_ms: int | None = None, intent: dict | None = None) -> Acquired:
        """Take the lock for `deployment_id`; if it is held, queue `intent` behind it."""
        taken, holder = script(self.conn, _ACQUIRE)(
            keys=[self.lock_key, self.intents_key],
            args=[deployment_id, lease_ms or self.lease_ms, json.dumps(intent) if intent else ""],
        )
        return Acquired(bool(int(taken)), text(holder))

    def holder(self) -> str | None:
        return text(self.conn.get(self.lock_key))

    def renew(self, deployment_id: str) -> bool:
        return self.renew_and_check(deployment_id)[0]

    def renew_and_check(self, deployment_id: str, flag_key: str | None = None) -> tuple[bool, str | None]:
        """Extend the lease if it is still ours and read `flag_key` (a cancel request), in one
        call: (still ours, the flag's value)."""
        keys = [self.lock_key] + ([flag_key] if flag_key else [])
        held, flag = script(self.conn, _RENEW)(keys=keys, args=[deployment_id, self.lease_ms])
        return bool(int(held)), text(flag) if flag else None

    def release(self, deployment_id: str, *, handover_ms: int | None = None) -> tuple[str, dict] | None:
        """Release the lock; if an intent waits, hand the lock to it, for `handover_ms` (its job
        still has to wait in the queue), and return it as (new deployment id, intent)."""
        next_id = new_deployment_id()
        intent = script(self.conn, _RELEASE)(
            keys=[self.lock_key, self.intents_key], args=[deployment_id, next_id, handover_ms or self.lease_ms]
        )
        if not intent:
            return None
        return next_id, json.loads(intent)

    def waiting(self) -> list[dict]:
        """The intents waiting for this lock, in order."""
        return [json.loads(raw) for raw in self.conn.lrange(self.intents_key, 0, -1)]


def lock_for(conn: redis.Redis, deployment: Deployment, *, lease_seconds: float) -> BranchLock:
    key = branch_key(deployment.repository, deployment.head_repository, deployment.branch_name, deployment.environment)
    return BranchLock(conn, key, lease_seconds=lease_seconds)


def lock_key(deployment: Deployment) -> str:
    """The Redis key of the branch lock `deployment` takes."""
    return _lock_key(branch_key(deployment.repository, deployment.head_repository, deployment.branch_name, deployment.environment))


def _lock_key(branch: str) -> str:
    return f"{PREFIX}:lock:{branch}"


class EnvironmentBusy(Exception):
    """Another deploy of the environment is in progress; `args[0]` is its deployment id."""


class Absent:
    """`expect=ABSENT`: the writer saw no record of the deployment in Redis."""


ABSENT = Absent()
# Records of deployments that ended stay this long, for late writers to compare against.
ENDED_RECORD_SECONDS = 7 * 24 * 3600


def record_key(deployment_id: str) -> str:
    """Where Redis keeps a deployment's record as last published: what a compare-and-set reads."""
    return f"{PREFIX}:deployment:{deployment_id}"


def publish(conn: redis.Redis, deployment: Deployment, *, expect: str | Absent, message: str | None = None, take_over: bool = False) -> Deployment | None:
    """Change a deployment's record in Redis and announce it, as a compare-and-set.

    The change applies only if the record's status is still `expect` (the status the writer
    saw), or Redis holds no record of it; `ABSENT` matches only the latter. A stale writer (a
    worker whose outcome comes after a cancel, the reconciler looking at a snapshot, a repair
    racing a worker) changes nothing, and None is returned. Otherwise returns the deployment
    as recorded.

    With `take_over` (a new deployment starting) it becomes its environment's current
    deployment and names the live one it replaces (`replaces`); `EnvironmentBusy` when another
    deploy of the environment is in progress (a deploy of another branch). Otherwise it stays
    current only if it still is; a deployment that finishes `deployed` after a newer one took
    its environment is recorded `superseded`, so a record is never left `deployed` once replaced.
    The record, the environment's current state, the set of active deployments and the stream
    entry change in one transaction.
    """
    env = env_key(deployment.key)
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(env, record_key(deployment.id))
                # A deployment started before records were kept is known by its active entry.
                seen = record(pipe, deployment.id) or _active(pipe, deployment.id)
                # A record Redis lost (a restart without persistence) leaves the writer's view
                # as the best there is; only `ABSENT` insists that there be none.
                if seen is not None and seen.status != expect:
                    pipe.unwatch()
                    return None
                raw = pipe.get(env)
                previous = Deployment.from_json(raw) if raw else None
                current = take_over or previous is None or previous.id == deployment.id
                if not current and deployment.status == "deployed":
                    deployment = deployment.changed(status="superseded")
                replaced = None
                if take_over and previous and previous.id != deployment.id:
                    pipe.watch(record_key(previous.id))
                    replaced = record(pipe, previous.id)
                    # One deploy per environment at a time, for as long as its lease lives: a
                    # dead deploy's environment is free as soon as its branch lock ran out.
                    if replaced and replaced.status == "deploying" and text(pipe.get(lock_key(replaced))) == replaced.id:
                        pipe.unwatch()
                        raise EnvironmentBusy(replaced.id)
                    if replaced and replaced.status in ("deployed", "failed"):
                        # The replaced one is superseded when the new job starts (`supersede`);
                        # until then a cancel in the queue gives it its environment back.
                        deployment = deployment.changed(replaces=replaced.id)
                pipe.multi()
                if current:
                    pipe.set(env, deployment.dumps())
                    pipe.sadd(_environments_key(deployment.repository, deployment.pr_number), deployment.environment)
                _record(pipe, deployment, message, current=current, before=seen)
                pipe.execute()
                return deployment
            except redis.WatchError:
                continue


def supersede(conn: redis.Redis, deployment: Deployment) -> None:
    """The deployment's job starts: the one whose environment it takes over is superseded
    (a compare-and-set: only while it is still `deployed`)."""
    replaced = record(conn, deployment.replaces) if deployment.replaces else None
    if replaced is not None and replaced.status == "deployed":
        publish(conn, replaced.changed(status="superseded"), expect="deployed", message=f"superseded by {deployment.id}")


def give_back(conn: redis.Redis, deployment: Deployment) -> None:
    """A deploy that ended before its job built anything (cancelled in the queue) gives its
    environment back to the deployment it was to replace, which still runs."""
    if not deployment.replaces:
        return
    env = env_key(deployment.key)
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(env, record_key(deployment.replaces))
                raw = pipe.get(env)
                replaced = record(pipe, deployment.replaces)
                if not raw or Deployment.from_json(raw).id != deployment.id or replaced is None or replaced.state == "idle":
                    pipe.unwatch()
                    return
                pipe.multi()
                pipe.set(env, replaced.dumps())
                _record(pipe, replaced, f"the deploy {deployment.id} that was to replace it ended first", current=True)
                pipe.execute()
                return
            except redis.WatchError:
                continue


def record(conn: redis.Redis, deployment_id: str) -> Deployment | None:
    """A deployment's record as last published, while Redis holds it."""
    raw = conn.get(record_key(deployment_id))
    return Deployment.from_json(raw) if raw else None


def _active(conn, deployment_id: str) -> Deployment | None:
    raw = conn.hget(ACTIVE, deployment_id)
    return Deployment.from_json(raw) if raw else None


def _record(pipe, deployment: Deployment, message: str | None, *, current: bool, before: Deployment | None = None) -> None:
    """The writes of one change of a record, inside its transaction: the record, the active set,
    the expiry schedule, the spend of a record that stops costing, and the event."""
    payload = deployment.dumps()
    expiry.schedule(pipe, deployment, current=current)
    costs.add_ended(pipe, before, deployment)
    if deployment.status in ACTIVE_STATUSES:
        pipe.hset(ACTIVE, deployment.id, payload)
    else:
        pipe.hdel(ACTIVE, deployment.id)
    ended = deployment.status not in LIVE_STATUSES
    pipe.set(record_key(deployment.id), payload, ex=ENDED_RECORD_SECONDS if ended else None)
    fields = {"kind": "deployment", "data": payload, "current": "1" if current else "0"}
    if message:
        fields["message"] = message
    pipe.xadd(EVENTS_STREAM, fields, maxlen=EVENTS_MAXLEN, approximate=True)


# Each deployment's log lines have a stream of their own, so that a chatty build never trims
# the event stream: `previewbot:logs:{id}` keeps the deployment's newest LOG_STREAM_MAXLEN lines
# (the web process records them in SQLite as they come), numbered from 1 by the counter
# `previewbot:log-seq:{id}`. Both go away LOG_TTL_SECONDS after the deployment's last line,
# unless the web process keeps a live deployment's counter (`bot.feed.keep_log_counters`).
LOG_STREAM = PREFIX + ":logs:{}"
LOG_SEQ = PREFIX + ":log-seq:{}"
# Sorted set: deployment id -> when it last logged (ms, Redis's clock); the streams the web
# process records.
LOG_STREAMS = f"{PREFIX}:log-streams"
LOG_STREAM_MAXLEN = 10_000
LOG_LINE_MAX_CHARS = 4000
LOG_TTL_SECONDS = 7 * 24 * 3600

# The last seq of a deployment's log that a web process recorded in SQLite (`bot.feed`), so that
# a writer never trims from the stream lines not yet recorded (see `publish_logs`).
LOG_RECORDED = PREFIX + ":log-recorded:{}"

# KEYS[1] counter, KEYS[2] stream, KEYS[3] LOG_STREAMS, KEYS[4] LOG_RECORDED; ARGV[1] deployment
# id, ARGV[2] max length, ARGV[3] TTL, ARGV[4] "wait" to write only as many lines as the stream
# holds without trimming lines not yet recorded, then pairs of (at, line). Returns how many lines
# it wrote, from the first. Each line's entry id is `{seq}-0`, so a reader asks for the lines
# after a seq directly. A counter lost while its stream stayed (evicted, or restored from SQLite
# behind lines not yet recorded) carries on after the stream's last line.
_PUBLISH_LOGS = """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
local top = last and tonumber(string.match(last[1], '^%d+')) or 0
if top > seq then seq = top end
local count = (#ARGV - 4) / 2
if ARGV[4] == 'wait' then
  local recorded = tonumber(redis.call('GET', KEYS[4]) or '0')
  if recorded < top then
    count = math.max(0, math.min(count, recorded + tonumber(ARGV[2]) - seq))
  end
end
if count == 0 then return 0 end
for i = 5, 4 + 2 * count, 2 do
  seq = seq + 1
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-0', 'seq', seq, 'at', ARGV[i], 'line', ARGV[i + 1])
end
redis.call('SET', KEYS[1], seq, 'EX', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[3], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[1])
return count
"""


def publish_log(conn: redis.Redis, deployment_id: str, line: str) -> None:
    """Append a line to its deployment's log, numbered after the deployment's previous line
    (`conn` may be a pipeline)."""
    _append_logs(conn, deployment_id, [(utcnow(), line)], wait_for_recorder=False)


def publish_logs(conn: redis.Redis, deployment_id: str, lines: list[tuple[str, str]], *, wait_for_recorder: bool = False) -> int:
    """Append (at, line) pairs to the deployment's log, in order, in one call; returns how many
    it appended, from the first. With `wait_for_recorder`, only as many as the stream holds
    without trimming lines no web process has recorded yet: the caller waits for the recorder
    and sends the rest."""
    return int(_append_logs(conn, deployment_id, lines, wait_for_recorder=wait_for_recorder))


def _append_logs(conn, deployment_id: str, lines: list[tuple[str, str]], *, wait_for_recorder: bool):
    args: list[str | int] = [deployment_id, LOG_STREAM_MAXLEN, LOG_TTL_SECONDS, "wait" if wait_for_recorder else ""]
    for at, line in lines:
        args += [at, line[:LOG_LINE_MAX_CHARS]]
    keys = [LOG_SEQ.format(deployment_id), LOG_STREAM.format(deployment_id), LOG_STREAMS, LOG_RECORDED.format(deployment_id)]
    return script(conn, _PUBLISH_LOGS)(keys=keys, args=args)


def current(conn: redis.Redis, key: PreviewKey) -> Deployment | None:
    """The environment's current deployment as last published, or None."""
    raw = conn.get(env_key(key))
    return Deployment.from_json(raw) if raw else None


def restore(conn: redis.Redis, deployment: Deployment) -> bool:
    """Give Redis back an environment's live deployment it forgot (from SQLite), unless it
    knows one: True when restored."""
    restored = conn.set(env_key(deployment.key), deployment.dumps(), nx=True)
    if restored:
        conn.sadd(_environments_key(deployment.repository, deployment.pr_number), deployment.environment)
        conn.set(record_key(deployment.id), deployment.dumps(), nx=True)
        expiry.restore(conn, deployment)
    return bool(restored)


def _environments_key(repository: str, pr_number: int) -> str:
    return f"{PREFIX}:pr-environments:{repository}#{int(pr_number)}"


def environments_of(conn: redis.Redis, repository: str, pr_number: int) -> dict[str, Deployment]:
    """Each environment of a pull request that has had a deployment, with its current one."""
    names = sorted(text(n) for n in conn.smembers(_environments_key(repository, pr_number)))
    raws = conn.mget([env_key(PreviewKey(repository, pr_number, name)) for name in names]) if names else []
    return {name: Deployment.from_json(raw) for name, raw in zip(names, raws) if raw}


# The heads previewbot saw of each pull request, so that a command on a fork's pull request
# deploys the commit that was there when it was given (`issue_comment` names no commit): one
# sorted set per pull request, member "{ms}:{sha}", score the time in ms previewbot learnt of
# the head (a delivery's receipt, or a fetch). Only changes are kept, at most HEADS_KEPT, for
# HEADS_SECONDS after the last one.
HEADS_KEPT = 50
HEADS_SECONDS = 30 * 24 * 3600


class HeadSeen(NamedTuple):
    sha: str
    at: float  # epoch seconds


def _heads_key(repository: str, pr_number: int) -> str:
    return f"{PREFIX}:heads:{repository}#{int(pr_number)}"


# KEYS[1] the heads; ARGV[1] sha, ARGV[2] ms, ARGV[3] how many to keep, ARGV[4] TTL. A head
# that was already the head at that time adds nothing; one learnt of late (a delivery handled
# after a fetch saw its head) moves its entry back to the earlier time.
_RECORD_HEAD = """
local function sha_of(member) return string.match(member, '^%d+:(.*)$') end
local before = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '-inf', 'LIMIT', 0, 1)[1]
if not before or sha_of(before) ~= ARGV[1] then
  local after = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'LIMIT', 0, 1)[1]
  if after and sha_of(after) == ARGV[1] then
    redis.call('ZREM', KEYS[1], after)
  end
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[2] .. ':' .. ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
"""


def record_head(conn: redis.Redis, repository: str, pr_number: int, sha: str, *, at: float) -> None:
    """Remember that the pull request's head was `sha` at `at` (epoch seconds)."""
    script(conn, _RECORD_HEAD)(keys=[_heads_key(repository, pr_number)], args=[sha, int(at * 1000), HEADS_KEPT, HEADS_SECONDS])


def heads_seen(conn: redis.Redis, repository: str, pr_number: int) -> list[HeadSeen]:
    """The pull request's heads as previewbot learnt of them, oldest first."""
    entries = conn.zrange(_heads_key(repository, pr_number), 0, -1, withscores=True)
    return [HeadSeen(text(member).partition(":")[2], score / 1000) for member, score in entries]


def claim_reply(conn: redis.Redis, repository: str, pr_number: int, *, seconds: int) -> bool:
    """Whether previewbot may answer someone without write access on this pull request now: once
    every `seconds` per pull request, so a flood of comments costs GitHub one edit."""
    return bool(conn.set(f"{PREFIX}:outsider-reply:{repository}#{int(pr_number)}", "1", nx=True, ex=seconds))


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
