"""WebSocket clients of /ws for `python -m tests.bench --only websockets`, in their own process.

    python -m tests.bench_ws ws://127.0.0.1:PORT/ws?token=... [--no-deflate]

One asyncio event loop holds every client, so thousands of connections cost the benchmark
process (which paces webhooks and runs the fake GitHub) nothing. The benchmark drives it with
one JSON command per line on stdin and reads one JSON answer per line on stdout:

    {"op": "connect", "target": N, "concurrency": 100, "timeout_s": 30}  open clients until N are open
    {"op": "reset"}                       forget the updates seen so far and start recording
    {"op": "seen"}                        distinct (deploymentId, status) updates seen, by status
    {"op": "stats"}                       delays, per-client completeness, event-loop lag
    {"op": "ping", "sample": K}           "ping" K random open clients; the pong round trips
    {"op": "close"}                       close every client and exit

Each `deployment:update` is timed on arrival with time.time() and compared with its
`updatedAt`, which the worker stamps (wall clock, truncated to the millisecond) just before it
publishes the change: both clocks are this machine's, so the difference is the time from the
publish to this client, plus up to 1 ms of truncation and whatever this process's own event
loop adds (its lag is measured too, and reported beside the delays).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from datetime import datetime

from websockets.asyncio.client import connect

from .bench_load import percentile, raise_open_files, summary_ms

LAG_TICK = 0.05  # the event-loop lag probe's period


class Clients:
    def __init__(self, url: str, deflate: bool):
        self.url = url
        self.compression = "deflate" if deflate else None
        self.open: dict[int, object] = {}  # index -> connection
        self.tasks: set[asyncio.Task] = set()
        self.next_index = 0
        self.extensions: Counter = Counter()
        self.pong_waiters: dict[int, asyncio.Future] = {}
        self._stamps: dict[str, float] = {}  # updatedAt text -> epoch seconds
        self.reset()

    def reset(self) -> None:
        self.delays: list[float] = []
        self.delays_by_status: dict[str, list[float]] = {}
        self.per_client: dict[int, list[float]] = {}  # index -> its delays
        self.first_last: dict[tuple[str, str], list[float]] = {}  # key -> [first arrival, last arrival, count]
        self.lag: list[float] = []
        self.recording_since = time.time()
        self.clients_at_reset = set(self.open)
        self.closed_reasons = Counter()  # why clients closed since the reset

    # -- connections -------------------------------------------------------------------------

    async def connect_until(self, target: int, concurrency: int, timeout: float) -> dict:
        began = time.perf_counter()
        times: list[float] = []
        errors: Counter = Counter()
        attempted = 0
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                started = time.perf_counter()
                try:
                    ws = await connect(
                        self.url, open_timeout=timeout, ping_interval=None, close_timeout=2,
                        compression=self.compression, proxy=None, max_queue=64,
                    )
                except Exception as exc:  # refused, reset, timed out, rejected handshake
                    errors[type(exc).__name__] += 1
                    return
                times.append(time.perf_counter() - started)
                index = self.next_index
                self.next_index += 1
                self.open[index] = ws
                self.extensions[",".join(e.name for e in ws.protocol.extensions) or "none"] += 1
                task = asyncio.create_task(self.read(index, ws))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

        missing = target - len(self.open)
        attempted = max(0, missing)
        await asyncio.gather(*(one() for _ in range(attempted)))
        return {
            "open": len(self.open),
            "attempted": attempted,
            "failed": sum(errors.values()),
            "errors": dict(errors),
            "seconds": round(time.perf_counter() - began, 2),
            "connect": summary_ms(times),
            "extensions": dict(self.extensions),
        }

    async def read(self, index: int, ws) -> None:
        try:
            async for raw in ws:
                now = time.time()
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "deployment:update":
                    self.note(index, message, now)
                elif kind == "pong":
                    waiter = self.pong_waiters.pop(index, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(time.perf_counter())
        except Exception as exc:
            self.closed_reasons[type(exc).__name__] += 1
        else:
            code = ws.close_code if ws.close_code is not None else "none"
            self.closed_reasons[f"closed {code}"] += 1
        finally:
            self.open.pop(index, None)
            waiter = self.pong_waiters.pop(index, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("closed"))

    def note(self, index: int, message: dict, now: float) -> None:
        stamp = message.get("updatedAt")
        at = self._stamps.get(stamp)
        if at is None:
            at = self._stamps[stamp] = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        delay = now - at
        status = message.get("status", "?")
        self.delays.append(delay)
        self.delays_by_status.setdefault(status, []).append(delay)
        self.per_client.setdefault(index, []).append(delay)
        key = (message.get("deploymentId"), status)
        seen = self.first_last.get(key)
        if seen is None:
            self.first_last[key] = [now, now, 1]
        else:
            seen[1] = now
            seen[2] += 1

    # -- probes ------------------------------------------------------------------------------

    async def lag_probe(self) -> None:
        while True:
            due = time.perf_counter() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            self.lag.append(max(0.0, time.perf_counter() - due))

    async def ping(self, sample: int, timeout: float = 10) -> dict:
        chosen = random.sample(list(self.open.items()), min(sample, len(self.open)))
        loop = asyncio.get_running_loop()
        rtts: list[float] = []
        failures: Counter = Counter()

        async def one(index: int, ws) -> None:
            waiter = loop.create_future()
            self.pong_waiters[index] = waiter
            started = time.perf_counter()
            try:
                await ws.send("ping")
                answered = await asyncio.wait_for(waiter, timeout)
                rtts.append(answered - started)
            except Exception as exc:
                failures[type(exc).__name__] += 1
            finally:
                self.pong_waiters.pop(index, None)

        await asyncio.gather(*(one(i, ws) for i, ws in chosen))
        return {"sampled": len(chosen), "answered": len(rtts), "failures": dict(failures), "round_trip": summary_ms(rtts)}

    # -- reports -----------------------------------------------------------------------------

    def seen(self) -> dict:
        statuses = Counter(status for _, status in self.first_last)
        return {"open": len(self.open), "keys": len(self.first_last), "by_status": dict(statuses), "receipts": len(self.delays),
                "closed": dict(self.closed_reasons)}

    def stats(self) -> dict:
        keys = len(self.first_last)
        clients = self.clients_at_reset
        counts = [len(self.per_client.get(i, ())) for i in clients]
        expected = keys * len(clients)
        spreads = [last - first for first, last, _ in self.first_last.values()]
        # Each client's own p99, then how those spread over the clients.
        client_p99s = [percentile(d, 99) for d in self.per_client.values() if d]
        return {
            "clients_recorded": len(clients),
            "still_open": len(clients & set(self.open)),
            "distinct_updates": keys,
            "receipts": len(self.delays),
            "receipts_expected": expected,
            "receipts_missing": max(0, expected - sum(counts)),
            "clients_with_every_update": sum(1 for c in counts if c >= keys),
            "fewest_updates_one_client_got": min(counts) if counts else None,
            "publish_to_client": summary_ms(self.delays),
            "publish_to_client_by_status": {s: summary_ms(d) for s, d in self.delays_by_status.items()},
            "first_to_last_client_per_update": summary_ms(spreads),
            "client_event_loop_lag": summary_ms(self.lag),
            "closed": dict(self.closed_reasons),
            "per_client_p99": summary_ms(client_p99s),
        }


async def main(argv: list[str]) -> int:
    url = argv[0]
    deflate = "--no-deflate" not in argv[1:]
    limits = raise_open_files()
    clients = Clients(url, deflate)
    lag = asyncio.create_task(clients.lag_probe())
    out = sys.stdout
    out.write(json.dumps({"ready": True, "open_files_limit": limits, "deflate_offered": deflate}) + "\n")
    out.flush()
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        try:
            command = json.loads(line)
            op = command.get("op")
            if op == "connect":
                answer = await clients.connect_until(int(command["target"]), int(command.get("concurrency", 100)), float(command.get("timeout_s", 30)))
            elif op == "reset":
                clients.reset()
                answer = {"ok": True, "open": len(clients.open)}
            elif op == "seen":
                answer = clients.seen()
            elif op == "stats":
                answer = clients.stats()
            elif op == "ping":
                answer = await clients.ping(int(command.get("sample", 100)))
            elif op == "close":
                break
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # report it; the benchmark decides
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    lag.cancel()
    opened = list(clients.open.values())
    # Close in slices, bounded: the server may be slow to answer thousands of closes.
    for start in range(0, len(opened), 500):
        await asyncio.wait([asyncio.create_task(ws.close()) for ws in opened[start:start + 500]], timeout=10)
    out.write(json.dumps({"closed": len(opened)}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
