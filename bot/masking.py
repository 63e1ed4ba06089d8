"""Secrets masked in what previewbot keeps or shows (design §4.18): provisioner log lines,
errors, and everything written on GitHub. One masker, built from the settings, is applied where
such text is made and once more where it is rendered for GitHub."""

from __future__ import annotations

import re
from typing import Iterable

from .config import MIN_SECRET_LENGTH, Settings
# Secrets no setting names: installation tokens, API tokens, PEM keys (the log filter's pattern).
from .logs import TOKEN_PATTERN

MASK = "***"


class Masker:
    """Replaces each secret value, and anything token-shaped, with `***`."""

    def __init__(self, secrets: Iterable[str] = ()):
        values = {part for secret in secrets for part in _parts(secret) if len(part) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that holds another one is masked whole.
        alternatives = sorted(values, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Masker:
        return cls(settings.secrets())

    def __call__(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(MASK, text)
        return TOKEN_PATTERN.sub(MASK, text)


def _parts(secret: str) -> list[str]:
    """A secret and each of its lines: output is masked line by line, so a PEM key that a command
    prints is caught one line at a time."""
    return [secret, *(line.strip() for line in secret.splitlines())]
