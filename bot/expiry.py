"""When previews end on their own: pure functions of given times, and the schedule in Redis.

A deployed preview expires `ttl` after it was deployed (the repository's `ttl`, else
PREVIEW_TTL; 0 never expires). PREVIEW_TTL_WARNING before that, the PR comment says when and
the check run offers **Extend**, which sets the expiry to now + ttl. At the end the environment
is destroyed, its record `destroyed` with `expired` set (the outcome `expired`).

The schedule is state, not a timer: `previewbot:expiries` holds every current deployed record
that expires (score: the expiry in ms), written in the transaction that publishes the record
(`bot.state.publish`), so it survives restarts of every process and never disagrees with the
records. Workers look at it every second (`worker.expiry`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import redis

from .model import Deployment
from .redis_io import PREFIX, script, text
from .times import parse_time, timestamp

EXPIRIES = f"{PREFIX}:expiries"  # sorted set: deployment id -> expiry (ms)
# Hash: deployment id -> the expiry (ms) its warning was given for, so each is given once.
WARNED = f"{PREFIX}:expiry-warned"
# Sorted set: deployment id -> when its destroy was asked for (ms); asked again after RETRY_MS.
EXPIRING = f"{PREFIX}:expiring"
RETRY_MS = 60_000
# The destroy of an expired preview says this; its record is then marked `expired`.
EXPIRED_REASON = "expired"


def ttl_for(deployment: Deployment, settings) -> float:
    """Seconds a preview of `deployment` lives: the repository's `ttl`, else the operator's; 0 = for ever."""
    if deployment.ttl_seconds is not None:
        return deployment.ttl_seconds
    return settings.for_environment(deployment.environment).ttl_seconds


def expires_at(ttl_seconds: float, *, start: datetime) -> str | None:
    """The expiry of a preview that lives `ttl_seconds` from `start`, None for ever. Pure."""
    if not ttl_seconds:
        return None
    return timestamp(start + timedelta(seconds=ttl_seconds))


def warning_due(deployment: Deployment, *, now: datetime, warning_seconds: float) -> bool:
    """Whether people are told that the preview expires soon (and offered Extend). Pure."""
    if deployment.status != "deployed" or not deployment.expires_at:
        return False
    return now >= parse_time(deployment.expires_at) - timedelta(seconds=warning_seconds)


def seconds_left(deployment: Deployment, *, now: datetime) -> float | None:
    """Seconds until the preview expires (0 when past); None when it never does. Pure."""
    if not deployment.expires_at:
        return None
    return max(0.0, (parse_time(deployment.expires_at) - now).total_seconds())


def describe_left(seconds: float) -> str:
    """`1 h 59 min`, `45 min`, `30 s`: how long a preview has left, for people. Pure."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    days, rest = divmod(seconds // 60, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes and not days)
    return " ".join(parts) or "0 min"


# -- the schedule -------------------------------------------------------------------------------


def schedule(pipe, deployment: Deployment, *, current: bool) -> None:
    """In the transaction that publishes `deployment`: it is on the schedule exactly while it is
    its environment's current, deployed record with an expiry."""
    if current and deployment.status == "deployed" and deployment.expires_at:
        pipe.zadd(EXPIRIES, {deployment.id: _ms(deployment.expires_at)})
        pipe.zrem(EXPIRING, deployment.id)
    else:
        pipe.zrem(EXPIRIES, deployment.id)
        pipe.zrem(EXPIRING, deployment.id)
        pipe.hdel(WARNED, deployment.id)


# KEYS[1] EXPIRIES, KEYS[2] EXPIRING, KEYS[3] WARNED; ARGV[1] now (ms), ARGV[2] warning (ms),
# ARGV[3] retry (ms). Returns {ids to destroy, ids to warn}, each claimed once: an expired id
# moves to EXPIRING (and comes back from there after the retry delay, if its destroy never
# ended it); a warning is recorded against the expiry it is for, so an Extend warns again.
_DUE = """
local now, warning, retry = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - retry, 'LIMIT', 0, 100)) do
  table.insert(expired, id)
end
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], now, id)
end
local warn = {}
local soon = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, now + warning, 'WITHSCORES', 'LIMIT', 0, 100)
for i = 1, #soon, 2 do
  if redis.call('HGET', KEYS[3], soon[i]) ~= soon[i + 1] then
    redis.call('HSET', KEYS[3], soon[i], soon[i + 1])
    table.insert(warn, soon[i])
  end
end
return {expired, warn}
"""


def due(conn: redis.Redis, *, now: datetime, warning_seconds: float) -> tuple[list[str], list[str]]:
    """The deployments whose preview expired (to destroy) and those to warn, claimed for the caller."""
    expired, warn = script(conn, _DUE)(keys=[EXPIRIES, EXPIRING, WARNED], args=[int(now.timestamp() * 1000), int(warning_seconds * 1000), RETRY_MS])
    return [text(i) for i in expired], [text(i) for i in warn]


def is_expiring(conn: redis.Redis, deployment_id: str) -> bool:
    """Whether the preview expired and its destroy was asked for."""
    return conn.zscore(EXPIRING, deployment_id) is not None


def restore(conn: redis.Redis, deployment: Deployment) -> None:
    """Put back on the schedule a live preview Redis forgot (restored from SQLite)."""
    if deployment.status == "deployed" and deployment.expires_at:
        conn.zadd(EXPIRIES, {deployment.id: _ms(deployment.expires_at)}, nx=True)


def _ms(moment: str) -> int:
    return int(parse_time(moment).timestamp() * 1000)
