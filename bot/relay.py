"""`previewbot relay`: GitHub's webhooks through a server-sent-events relay (smee.io or alike)
to this machine's WEBHOOK_PATH, for a previewbot GitHub cannot reach (a laptop, a closed network).

The App's webhook URL is the relay's channel (`previewbot setup` uses WEBHOOK_PROXY_URL for it);
the relay turns each delivery into an event whose JSON holds GitHub's headers (lower-case) and
the parsed `body`. We post the body back as compact JSON, the way smee's own client does, so
the signature GitHub made over its compact body still verifies in `previewbot web`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx

from .config import Settings
from .tls import tls_context

# The headers GitHub sends that a webhook receiver reads; a relay's own (host, lengths,
# timestamps) would be wrong on the forwarded request.
FORWARDED_HEADERS = ("content-type", "user-agent")
FORWARDED_PREFIXES = ("x-github-", "x-hub-signature")
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Server-sent events from a stream's lines (the WHATWG rules the relays follow)."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield ServerSentEvent(event, "\n".join(data))
            event, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)


def webhook_request(data: str) -> tuple[dict[str, str], bytes]:
    """The headers and body to post for one relayed delivery."""
    delivery = json.loads(data)
    body = delivery.get("body")
    content = body.encode() if isinstance(body, str) else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {
        name: value
        for name, value in delivery.items()
        if isinstance(value, str) and (name.lower() in FORWARDED_HEADERS or name.lower().startswith(FORWARDED_PREFIXES))
    }
    return headers, content


def run_relay(settings: Settings) -> int:
    """Follow the relay's stream for good, reconnecting with backoff, and post each delivery
    to the local web process."""
    if not settings.webhook_proxy_url:
        print("previewbot: relay: WEBHOOK_PROXY_URL is not set (e.g. a channel of https://smee.io)", file=sys.stderr)
        return 1
    target = f"http://{settings.host}:{settings.port}{settings.webhook_path}"
    backoff = 1.0
    with httpx.Client(timeout=httpx.Timeout(30, read=None), verify=tls_context()) as client:
        while True:
            try:
                with client.stream("GET", settings.webhook_proxy_url, headers={"Accept": "text/event-stream"}) as stream:
                    stream.raise_for_status()
                    print(f"previewbot: relay: forwarding {settings.webhook_proxy_url} to {target}", flush=True)
                    backoff = 1.0
                    for event in parse_events(stream.iter_lines()):
                        if event.event == "message":
                            forward(client, target, event.data)
                reason = "the relay ended the stream"
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__} from the relay"
            # Also after a clean end: a relay that hangs up at once is not hammered.
            print(f"previewbot: relay: {reason}; reconnecting in {backoff:g}s", file=sys.stderr, flush=True)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


def forward(client: httpx.Client, target: str, data: str) -> None:
    """Post one delivery; a bad event or a web process that is down costs that delivery only
    (GitHub's Recent deliveries can redeliver it)."""
    try:
        headers, content = webhook_request(data)
    except (ValueError, AttributeError):
        print("previewbot: relay: skipped an event that is not a relayed delivery", file=sys.stderr, flush=True)
        return
    event = headers.get("x-github-event", "?")
    try:
        answer = client.post(target, headers=headers, content=content, timeout=30)
        outcome = str(answer.status_code)
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    print(f"previewbot: relay: {event} {headers.get('x-github-delivery', '')} -> {outcome}", flush=True)
