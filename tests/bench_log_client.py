"""A follower of one deployment's log over /ws for `python -m tests.bench --only logs`, in its
own process, reading frames straight off the socket so that the measuring client is never what
falls behind (a general-purpose client library parses a frame in tens of microseconds; a flood
of 100,000 lines then measures the client).

    python -m tests.bench_log_client HOST PORT TOKEN DEPLOYMENT_ID LINES TIMEOUT_S

It authenticates with its first message, subscribes, prints `{"subscribed": true}` once the
server confirms, and when line LINES arrives (or TIMEOUT_S passes) one JSON line: each line's lag
(receipt minus the time stamped at the start of the line when it was printed, this machine's
clock) summarized, how many lines came, and how many seqs were missing or repeated.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
import time

from .bench_load import summary_ms


def _frame(payload: bytes) -> bytes:
    """A client's text frame (masked, as RFC 6455 requires of clients)."""
    mask = os.urandom(4)
    size = len(payload)
    header = bytes((0x81, 0x80 | size)) if size < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, size)
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def _messages(sock: socket.socket, pending: bytes):
    """The payloads of the server's frames (unmasked, unfragmented text), as they come."""
    buffer = pending
    while True:
        while len(buffer) >= 2:
            size, start = buffer[1] & 0x7F, 2
            if size == 126:
                if len(buffer) < 4:
                    break
                size, start = struct.unpack("!H", buffer[2:4])[0], 4
            elif size == 127:
                if len(buffer) < 10:
                    break
                size, start = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < start + size:
                break
            yield buffer[start : start + size]
            buffer = buffer[start + size :]
        data = sock.recv(1 << 20)
        if not data:
            return
        buffer += data


def main(host: str, port: int, token: str, deployment_id: str, lines: int, timeout: float) -> None:
    sock = socket.create_connection((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    head, pending = answer.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"no WebSocket: {head[:100]!r}")
    sock.sendall(_frame(json.dumps({"type": "auth", "token": token}).encode()))
    # From the first line: the deploy may have printed more than the 1,000 a subscription replays.
    sock.sendall(_frame(json.dumps({"type": "subscribe", "logs": deployment_id, "after": 0}).encode()))
    sock.settimeout(timeout)
    lags: list[float] = []
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        for payload in _messages(sock, pending):
            now = time.time()
            message = json.loads(payload)
            if message.get("type") == "subscribed":
                print(json.dumps({"subscribed": True}), flush=True)
            if message.get("type") != "deployment:log":
                continue
            seqs.append(message["seq"])
            stamp, _, rest = message["line"].partition(" ")
            if rest.startswith("line "):
                lags.append(now - float(stamp))
                if int(rest.split()[1]) == lines or time.monotonic() > deadline:
                    break
    except socket.timeout:
        pass
    gaps = sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1) + (seqs[:1] != [1])
    print(json.dumps({"log_lag": summary_ms(lags), "lines_received": len(lags), "seq_gaps_or_repeats": gaps}), flush=True)


if __name__ == "__main__":
    host, port, token, deployment_id, lines, timeout = sys.argv[1:7]
    main(host, int(port), token, deployment_id, int(lines), float(timeout))
