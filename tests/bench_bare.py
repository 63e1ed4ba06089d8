"""The baseline for the webhook throughput benchmark: a bare Flask endpoint that only checks
the X-Hub-Signature-256 of the body and answers, with nothing recorded or queued.

Served by `python -m tests.bench` as
    gunicorn -k gthread --workers 2 --threads 8 tests.bench_bare:app
with WEBHOOK_SECRET in the environment, the same server settings as `previewbot web`.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from flask import Flask, jsonify, request

SECRET = os.environ.get("WEBHOOK_SECRET", "").encode()
PATH = os.environ.get("WEBHOOK_PATH", "/api/github/webhooks")

app = Flask(__name__)


@app.post(PATH)
def receive():
    body = request.get_data(cache=False)
    signature = request.headers.get("X-Hub-Signature-256", "")
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        return jsonify({"error": "Invalid or missing X-Hub-Signature-256"}), 401
    return jsonify({"status": "acknowledged"}), 200


@app.get("/health")
def health():
    return jsonify({"status": "ok"})
