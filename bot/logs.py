"""Logging for both processes, with secrets scrubbed from every record."""

from __future__ import annotations

import logging
import re

# Installation tokens, API tokens and PEM blocks, whatever their source.
TOKEN_PATTERN = re.compile(
    r"(gh[opsu]_[A-Za-z0-9_]{16,}|pvb_[A-Za-z0-9_-]{16,}|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)"
)


class RedactSecrets(logging.Filter):
    """Replaces configured secrets and anything token-shaped with a placeholder."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = TOKEN_PATTERN.sub("[redacted]", message)
        for secret in self.secrets:
            clean = clean.replace(secret, "[redacted]")
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            scrubbed = TOKEN_PATTERN.sub("[redacted]", text)
            for secret in self.secrets:
                scrubbed = scrubbed.replace(secret, "[redacted]")
            record.exc_info, record.exc_text = None, scrubbed
        return True


def configure_logging(settings, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactSecrets(settings.secrets()))
        root.addHandler(handler)
    root.setLevel(level)
