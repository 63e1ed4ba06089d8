"""Logging for both processes, with secrets scrubbed from every record."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

# Installation tokens, API tokens, sign-in codes and PEM blocks, whatever their source.
TOKEN_PATTERN = re.compile(
    r"(gh[opsu]_[A-Za-z0-9_]{16,}|pv[bc]_[A-Za-z0-9_-]{16,}|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)"
)
# A credential in a URL's query, whatever its shape: a script's `/ws?token=…`, the dashboard's
# sign-in link `/?code=…`.
URL_CREDENTIAL = re.compile(r"([?&](?:token|code)=)[^&#\s\"']+", re.IGNORECASE)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret, token-shaped string and credential in a URL replaced."""
    clean = URL_CREDENTIAL.sub(r"\1[redacted]", TOKEN_PATTERN.sub("[redacted]", text))
    for secret in secrets:
        clean = clean.replace(secret, "[redacted]")
    return clean


class RedactSecrets(logging.Filter):
    """Replaces configured secrets and anything token-shaped with a placeholder."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, redact(text, self.secrets)
        return True


def configure_logging(settings, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactSecrets(settings.secrets()))
        root.addHandler(handler)
    root.setLevel(level)


def gunicorn_logger_class(secrets: list[str]) -> type:
    """gunicorn's logger, scrubbed like ours (its loggers do not reach the root's filter): its
    error log names the URLs of failed requests, its access log every URL. The access line is
    short because it is written for every request, webhooks included."""
    from gunicorn.glogging import Logger

    class RedactingLogger(Logger):
        def setup(self, cfg) -> None:
            super().setup(cfg)  # also on a configuration reload, with fresh handlers
            for handler in self.error_log.handlers + self.access_log.handlers:
                if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                    handler.addFilter(RedactSecrets(secrets))

        def access(self, resp, req, environ: dict, request_time: timedelta) -> None:
            if not self.access_log_enabled:
                return
            status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
            self.access_log.info(
                '%s %s "%s %s" %s %s %.1fms',
                environ.get("REMOTE_ADDR", "-"), self.now(), environ.get("REQUEST_METHOD"), environ.get("RAW_URI"),
                status, getattr(resp, "sent", None) or "-", request_time.total_seconds() * 1000,
            )

    return RedactingLogger
