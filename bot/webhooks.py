"""GitHub webhooks (issue 3)."""

from flask import Flask


def init_app(app: Flask) -> None:
    pass
