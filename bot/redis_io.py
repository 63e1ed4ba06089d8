"""Small helpers for talking to Redis: Lua scripts registered once, replies as text."""

from __future__ import annotations

import redis

# Every key previewbot keeps in Redis starts with this.
PREFIX = "previewbot"

_scripts: dict[tuple[int, str], object] = {}


def script(conn: redis.Redis, source: str):
    """A Lua script registered once per client, so each call sends its SHA, not its text."""
    key = (id(conn), source)
    script = _scripts.get(key)
    if script is None:
        script = _scripts[key] = conn.register_script(source)
    return script


def text(value) -> str | None:
    """A Redis reply as text (replies are bytes unless the client decodes them); None stays None."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def text_fields(fields: dict) -> dict:
    """A stream entry's fields as text."""
    return {text(k): text(v) for k, v in fields.items()}
