"""Timestamps as every part of previewbot writes them: ISO 8601 in UTC with milliseconds, which
also sort as text."""

from __future__ import annotations

from datetime import datetime, timezone


def timestamp(moment: datetime) -> str:
    """A moment as timestamps are written."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """A timestamp back as an aware datetime."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
