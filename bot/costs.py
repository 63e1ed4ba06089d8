"""What previews cost: pure functions of given times, and each repository's monthly spend in
Redis, which workers read without SQLite.

A deployment costs its hourly cost for every hour from its creation until its record ends
(`superseded`, `cancelled`, `failed` or `destroyed`), or until now while it runs. Months are UTC
calendar months; a record that spans a month end is split at it. The spend of records that ended
is added up in Redis, month by month, in the transaction that ends them (`bot.state.publish`);
the spend of live ones is computed on demand.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable

import redis

from .redis_io import PREFIX
from .times import parse_time

if TYPE_CHECKING:
    from .model import Deployment

# Records that still run up a bill; any other status ended it.
RUNNING_STATUSES = ("deploying", "deployed")
# Hash per month: repository -> USD of the records that ended, split by month.
SPEND = PREFIX + ":spend:{}"
# Set once the spend of the months in Redis was rebuilt from SQLite (after a Redis restart).
SPEND_RESTORED = f"{PREFIX}:spend-restored"
SPEND_SECONDS = 400 * 24 * 3600


def month_of(moment: datetime) -> str:
    """`YYYY-MM` of a moment, in UTC."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The first instant of `YYYY-MM` and of the month after, in UTC. ValueError if malformed."""
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
    following = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, following


def split_by_month(hourly_cost: float | None, start: datetime, end: datetime) -> dict[str, float]:
    """`hourly_cost` × the hours from `start` to `end`, per UTC month. Pure."""
    if not hourly_cost or end <= start:
        return {}
    spent: dict[str, float] = {}
    moment = start
    while moment < end:
        _, following = month_bounds(month_of(moment))
        upto = min(end, following)
        spent[month_of(moment)] = hourly_cost * (upto - moment).total_seconds() / 3600
        moment = upto
    return spent


def ended_at(deployment: Deployment) -> datetime | None:
    """When the record stopped costing: None while it runs."""
    if deployment.status in RUNNING_STATUSES:
        return None
    return parse_time(deployment.destroyed_at or deployment.updated_at)


def cost_of(deployment: Deployment, *, now: datetime) -> float | None:
    """USD so far, at `now` for a record that still runs; None when its hourly cost is unknown. Pure."""
    if deployment.hourly_cost is None:
        return None
    return round(sum(monthly_cost(deployment, now=now).values()), 6)


def monthly_cost(deployment: Deployment, *, now: datetime) -> dict[str, float]:
    """The record's cost per UTC month, as of `now`. Pure."""
    end = ended_at(deployment) or now
    return split_by_month(deployment.hourly_cost, parse_time(deployment.created_at), end)


def totals(deployments: Iterable[Deployment], *, month: str, now: datetime) -> dict:
    """`GET /api/costs`: the month's spend per repository and pull request. Pure."""
    per_pr: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for deployment in deployments:
        per_pr[deployment.repository][deployment.pr_number] += monthly_cost(deployment, now=now).get(month, 0.0)
    repositories = [
        {
            "repository": repository,
            "total": round(sum(prs.values()), 4),
            "pullRequests": [{"prNumber": number, "total": round(total, 4)} for number, total in sorted(prs.items()) if total],
        }
        for repository, prs in sorted(per_pr.items())
        if sum(prs.values())
    ]
    return {"month": month, "total": round(sum(r["total"] for r in repositories), 4), "repositories": repositories}


def over_budget(spent: float, budget: float | None) -> bool:
    """Whether a repository's month-to-date spend leaves no room for a new preview. Pure."""
    return budget is not None and spent >= budget


# -- the spend in Redis -------------------------------------------------------------------------


def add_ended(pipe, before: Deployment | None, after: Deployment) -> None:
    """In the transaction that changes `before` into `after`: when it stops costing, its cost goes
    to its repository's months. Each record ends once, so it is counted once."""
    if before is None or before.status not in RUNNING_STATUSES or after.status in RUNNING_STATUSES:
        return
    for month, spent in monthly_cost(after, now=ended_at(after)).items():
        pipe.hincrbyfloat(SPEND.format(month), after.repository, spent)
        pipe.expire(SPEND.format(month), SPEND_SECONDS)


def month_to_date(conn: redis.Redis, repository: str, live: Iterable[Deployment], *, now: datetime) -> float:
    """The repository's spend this month: what ended (from Redis) and what still runs (`live`)."""
    month = month_of(now)
    ended = float(conn.hget(SPEND.format(month), repository) or 0)
    running = sum(monthly_cost(d, now=now).get(month, 0.0) for d in live if d.repository == repository and d.status in RUNNING_STATUSES)
    return ended + running


def ended_spend(deployments: Iterable[Deployment]) -> dict[str, dict[str, float]]:
    """`{month: {repository: USD}}` of the records that ended: what Redis keeps (`add_ended`). Pure."""
    spend: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for deployment in deployments:
        end = ended_at(deployment)
        if end is not None:
            for month, spent in monthly_cost(deployment, now=end).items():
                spend[month][deployment.repository] += spent
    return spend


def restore_spend(conn: redis.Redis, ended_by_month: dict[str, dict[str, float]]) -> bool:
    """Give Redis back the spend it lost (a restart without persistence), from SQLite's history:
    `{month: {repository: USD}}` of the records that ended. Only once per Redis lifetime."""
    if not conn.set(SPEND_RESTORED, "1", nx=True):
        return False
    with conn.pipeline(transaction=True) as pipe:
        for month, spent in ended_by_month.items():
            pipe.delete(SPEND.format(month))
            if spent:
                pipe.hset(SPEND.format(month), mapping={repo: str(value) for repo, value in spent.items()})
                pipe.expire(SPEND.format(month), SPEND_SECONDS)
        pipe.execute()
    return True
