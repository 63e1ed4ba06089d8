"""Load tools for `python -m tests.bench`: raw HTTP posts, a paced open-loop sender, a
closed-loop sender, wrk driven by a Lua script, a WebSocket feed listener, and statistics.

Everything here runs in the benchmark process and keeps its own cost small: bodies are built
and signed before the clock starts, and requests go through `http.client` (no TLS context or
connection pool to build per request)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import time
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# -- statistics ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (q / 100) * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: list[float]) -> dict:
    """p50/p90/p99/max/mean of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(sum(ms) / len(ms), 2),
    }


# -- HTTP ----------------------------------------------------------------------------------------


def post(port: int, path: str, body: bytes, headers: dict, timeout: float = 15) -> tuple[int, bytes]:
    """One POST on a new connection (as GitHub's deliverer does); returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Request:
    headers: dict
    body: bytes
    kind: str = ""


@dataclass
class Sent:
    kind: str
    scheduled: float
    started: float
    finished: float
    status: int  # 0: the request failed (connection error, timeout)
    error: str | None = None


def paced(port: int, path: str, requests: list[Request], rate: float, threads: int = 32) -> tuple[list[Sent], float]:
    """Open loop: request i is due at start + i/rate whatever the answers; a pool of `threads`
    sends them. Returns every result and the start time (perf_counter)."""
    results: list[Sent | None] = [None] * len(requests)

    def one(i: int, due: float) -> None:
        request = requests[i]
        started = time.perf_counter()
        try:
            status, _ = post(port, path, request.body, request.headers)
            error = None
        except (OSError, http.client.HTTPException) as exc:
            status, error = 0, type(exc).__name__
        results[i] = Sent(request.kind, due, started, time.perf_counter(), status, error)

    start = time.perf_counter() + 0.05
    with ThreadPoolExecutor(threads, thread_name_prefix="paced") as pool:
        for i in range(len(requests)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, due)
    return [r for r in results if r is not None], start


def closed_loop(port: int, path: str, requests: list[Request], *, connections: int, seconds: float, tag: str) -> dict:
    """Closed loop on keep-alive connections (the fallback when wrk is missing): each of
    `connections` threads sends its next request as soon as the previous one is answered,
    cycling through `requests` with a fresh X-GitHub-Delivery each time."""
    stop_at = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    non_2xx = [0] * connections

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        i = n
        counter = 0
        while time.perf_counter() < stop_at:
            request = requests[i % len(requests)]
            i += connections
            counter += 1
            headers = {**request.headers, "X-GitHub-Delivery": f"{tag}-{n}-{counter}"}
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=request.body, headers=headers)
                response = conn.getresponse()
                response.read()
                if not 200 <= response.status < 300:
                    non_2xx[n] += 1
            except (OSError, http.client.HTTPException):
                errors[n] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                continue
            latencies[n].append(time.perf_counter() - started)
        conn.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    every = [x for per in latencies for x in per]
    return {
        "tool": "python closed loop",
        "requests": len(every),
        "seconds": round(elapsed, 2),
        "rps": round(len(every) / elapsed, 1),
        "non_2xx": sum(non_2xx),
        "errors": sum(errors),
        "latency": summary_ms(every),
    }


# -- wrk -----------------------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- Generated by tests/bench_load.py. Cycles through pre-signed bodies (they differ in a nonce,
-- so each keeps a valid X-Hub-Signature-256) with a unique X-GitHub-Delivery per request.
local bodies, events, signatures = {}, {}, {}
local counter = 0
local made = 0
local dir, tag, path

function setup(thread)
  made = made + 1
  thread:set("tid", made)
end

function init(args)
  dir, tag, path = args[1], args[2], args[3]
  for line in io.lines(dir .. "/manifest.txt") do
    local event, signature, file = line:match("^(%S+) (%S+) (%S+)$")
    local f = assert(io.open(dir .. "/" .. file, "rb"))
    bodies[#bodies + 1] = f:read("*a")
    f:close()
    events[#events + 1] = event
    signatures[#signatures + 1] = signature
  end
  counter = tid or 0
end

function request()
  counter = counter + 1
  local i = (counter % #bodies) + 1
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["User-Agent"] = "GitHub-Hookshot/bench",
    ["X-GitHub-Event"] = events[i],
    ["X-Hub-Signature-256"] = signatures[i],
    ["X-GitHub-Delivery"] = string.format("%s-%d-%d", tag, tid or 0, counter),
  }, bodies[i])
end

function done(summary, latency, requests)
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,"
    .. "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_available() -> str | None:
    return shutil.which("wrk")


def write_wrk_inputs(directory: Path, requests: list[Request]) -> Path:
    """Write the bodies, a manifest (event, signature, file) and the Lua script."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, request in enumerate(requests):
        name = f"body-{i}.json"
        (directory / name).write_bytes(request.body)
        lines.append(f"{request.headers['X-GitHub-Event']} {request.headers['X-Hub-Signature-256']} {name}")
    (directory / "manifest.txt").write_text("\n".join(lines) + "\n")
    script = directory / "webhooks.lua"
    script.write_text(WRK_SCRIPT)
    return script


def run_wrk(port: int, path: str, directory: Path, *, tag: str, seconds: float, connections: int, threads: int = 1) -> dict:
    script = directory / "webhooks.lua"
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
        f"http://127.0.0.1:{port}", "--", str(directory), tag, path,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"^BENCHJSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    raw = json.loads(match.group(1))
    seconds_run = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "tool": f"wrk -t{threads} -c{connections} -d{seconds:g}s",
        "requests": raw["requests"],
        "seconds": round(seconds_run, 2),
        "rps": round(raw["requests"] / seconds_run, 1),
        "non_2xx": raw["status"],
        "errors": errors,
        "latency": {
            "p50_ms": round(raw["p50_us"] / 1000, 2),
            "p90_ms": round(raw["p90_us"] / 1000, 2),
            "p99_ms": round(raw["p99_us"] / 1000, 2),
            "max_ms": round(raw["max_us"] / 1000, 2),
            "mean_ms": round(raw["mean_us"] / 1000, 2),
        },
    }


# -- the WebSocket feed --------------------------------------------------------------------------


class FeedListener:
    """A /ws client on its own thread, noting when each (deploymentId, status) first arrives."""

    def __init__(self, url: str, timeout: float = 10):
        import websocket

        self.ws = websocket.create_connection(url, timeout=timeout)
        self.arrivals: dict[tuple[str, str], float] = {}
        self.delivery: dict[tuple[str, str], float] = {}  # seconds from publication to arrival
        self.count: dict[str, int] = {}
        self.messages = 0
        self.error: str | None = None
        self._changed = threading.Condition()
        self._closing = False
        # The subscription is live once the server answers our ping.
        self.ws.send("ping")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if json.loads(self.ws.recv()).get("type") == "pong":
                break
        else:
            raise RuntimeError("no pong from /ws")
        self.ws.settimeout(None)
        self._thread = threading.Thread(target=self._run, name="feed-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closing:
            try:
                raw = self.ws.recv()
            except Exception as exc:  # closed by us, or by the server
                if not self._closing:
                    self.error = repr(exc)
                break
            at, wall = time.perf_counter(), time.time()
            if not raw:
                continue
            message = json.loads(raw)
            if message.get("type") != "deployment:update":
                continue
            key = (message["deploymentId"], message["status"])
            with self._changed:
                self.messages += 1
                if key not in self.arrivals:
                    self.arrivals[key] = at
                    # From the change's publication (its `updatedAt`, stamped just before) to here.
                    if message.get("updatedAt"):
                        self.delivery[key] = wall - datetime.fromisoformat(message["updatedAt"].replace("Z", "+00:00")).timestamp()
                    self.count[message["status"]] = self.count.get(message["status"], 0) + 1
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait(self, predicate, timeout: float):
        """Wait until predicate(self) is truthy (checked under the lock); return its value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error:
                    raise TimeoutError(f"feed: condition not met in {timeout}s (error: {self.error})")
                self._changed.wait(min(remaining, 0.5))

    def arrival(self, deployment_id: str, status: str, timeout: float) -> float:
        return self.wait(lambda s: s.arrivals.get((deployment_id, status)), timeout)

    def close(self) -> None:
        self._closing = True
        try:
            self.ws.shutdown()
        except Exception:
            pass
        self._thread.join(timeout=5)


# -- environment ---------------------------------------------------------------------------------


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def command_version(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# -- CPU accounting ------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, session id, CPU seconds so far) for every process we may read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / TICK)
    return table


def session_cpu_seconds(session: int) -> float:
    """CPU used so far by the live processes of a session (a process started with
    start_new_session=True and everything it forked, e.g. gunicorn and its workers)."""
    return sum(cpu for _, sid, cpu in _proc_table().values() if sid == session)


def process_cpu_seconds(pid: int) -> float:
    entry = _proc_table().get(pid)
    return entry[2] if entry else 0.0


class MachineMonitor:
    """Samples every process twice a second and splits the machine's CPU use into this
    benchmark (this process and its descendants) and everything else: other people's work on
    a shared machine shows up as `others`, which explains noisy numbers.

    The sampling runs in a child process, so reading /proc never holds this process's GIL
    while it measures latencies."""

    CAPACITY = 8192  # half-second windows kept for the peaks (over an hour)

    def __init__(self, interval: float = 0.5):
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.interval = interval
        self.root = os.getpid()
        self._ours = context.Value("d", 0.0)
        self._others = context.Value("d", 0.0)
        self._windows = context.Value("i", 0)
        self._peaks = context.Array("d", self.CAPACITY)
        self._stop = context.Event()
        self._process = context.Process(target=self._run, name="machine-monitor", daemon=True)
        self._process.start()

    def _is_ours(self, pid: int, table: dict) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == self.root:
                return True
            pid = table.get(pid, (0,))[0]
            seen += 1
        return False

    def _run(self) -> None:
        from bot.embedded_redis import die_with_parent

        die_with_parent()
        last, last_at = _proc_table(), time.monotonic()
        while not self._stop.wait(self.interval):
            table, now = _proc_table(), time.monotonic()
            ours = others = 0.0
            for pid, (_, _, cpu) in table.items():
                before = last.get(pid)
                # A process born since the last sample used all its CPU in this window.
                delta = cpu - before[2] if before else cpu
                if delta <= 0:
                    continue
                if self._is_ours(pid, table):
                    ours += delta
                else:
                    others += delta
            with self._ours.get_lock():
                self._ours.value += ours
                self._others.value += others
                n = self._windows.value
                self._peaks[n % self.CAPACITY] = others / max(1e-6, now - last_at)
                self._windows.value = n + 1
            last, last_at = table, now

    def mark(self) -> dict:
        with self._ours.get_lock():
            return {"ours": self._ours.value, "others": self._others.value, "windows": self._windows.value, "at": time.monotonic()}

    def since(self, mark: dict) -> dict:
        """CPU use since `mark`, in cores (1.0 = one CPU busy all the time)."""
        with self._ours.get_lock():
            elapsed = max(1e-6, time.monotonic() - mark["at"])
            count = min(self._windows.value - mark["windows"], self.CAPACITY)
            windows = [self._peaks[(self._windows.value - 1 - i) % self.CAPACITY] for i in range(max(0, count))]
            return {
                "benchmark_cores": round((self._ours.value - mark["ours"]) / elapsed, 2),
                "other_processes_cores": round((self._others.value - mark["others"]) / elapsed, 2),
                "other_processes_peak_cores": round(max(windows), 2) if windows else None,
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }

    def stop(self) -> None:
        self._stop.set()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)


# -- processes: open files, memory, sockets ------------------------------------------------------


def raise_open_files(want: int = 65536) -> tuple[int, int]:
    """Thousands of WebSockets need as many file descriptors: raise the limit to `want` (the
    hard limit too, where this process may, e.g. as root), else the soft limit to the hard one.
    Processes started afterwards (the web server, the client process) inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def children_of(pid: int) -> list[int]:
    return sorted(p for p, (parent, _, _) in _proc_table().items() if parent == pid)


def rss_kb(pid: int) -> int:
    """Resident set size in KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_files(pid: int) -> dict[str, int]:
    """What a process holds open: sockets (its listening socket included), SQLite files
    (a database, its -wal and -shm) and the rest."""
    counts = {"sockets": 0, "sqlite": 0, "other": 0}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return counts
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            counts["sockets"] += 1
        elif re.search(r"\.db(-wal|-shm|-journal)?$", target):
            counts["sqlite"] += 1
        else:
            counts["other"] += 1
    return counts


def cpu_by_group(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each named group of sessions (a session: a process started
    with start_new_session=True and everything it forked). Processes that exited are not counted."""
    table = _proc_table()
    totals = {}
    for name, sessions in groups.items():
        wanted = set(sessions)
        totals[name] = sum(cpu for _, sid, cpu in table.values() if sid in wanted)
    return totals


def runqueue_wait_by_group(groups: dict[str, list[int]]) -> dict[str, float]:
    """Seconds the threads of each named group of sessions have spent runnable but waiting for
    a CPU (the second field of /proc/PID/task/TID/schedstat): how much a busy machine delays them."""
    table = _proc_table()
    totals = {}
    for name, sessions in groups.items():
        wanted = set(sessions)
        wait_ns = 0
        for pid, (_, sid, _) in table.items():
            if sid not in wanted:
                continue
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    wait_ns += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        totals[name] = wait_ns / 1e9
    return totals
