"""The `previewbot` command: setup (register the GitHub App), web, worker, run (everything on one
machine), tokens and sign-in links."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .config import GITHUB_VARIABLES, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("previewbot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="previewbot", description="Preview environments for pull requests.")
    commands = parser.add_subparsers(dest="command", required=True)

    setup = commands.add_parser("setup", help="register the GitHub App from app.yml (GitHub's manifest flow) and write .env")
    setup.add_argument("--org", help="register the App for this organization instead of your account")
    setup.add_argument("--force", action="store_true", help="replace the App already configured in .env or the environment")
    commands.add_parser("relay", help="forward webhooks from WEBHOOK_PROXY_URL (a smee.io-like relay) to the local web process")
    web = commands.add_parser("web", help="serve the webhook receiver, REST API, WebSocket and dashboard")
    web.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    web.add_argument("--connections", type=int, default=int(os.environ.get("WEB_CONNECTIONS", "10000")))
    worker = commands.add_parser("worker", help="run deploy jobs from the queue")
    worker.add_argument("--processes", type=int, default=1, help="how many worker processes to run")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    run = commands.add_parser("run", help="web, worker and (when REDIS_URL is unset) an embedded Redis")
    run.add_argument("--workers", type=int, default=2, help="how many worker processes to run")

    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token and print it (last line)")
    create.add_argument("--name", required=True)
    create.add_argument("--repository", action="append", help="limit the token to this owner/repo (repeatable)")
    token_commands.add_parser("list", help="list tokens, dashboard sessions included (never their values)")
    revoke = token_commands.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    commands.add_parser("signin", help="print a one-time sign-in link for the dashboard (last line)")
    backup = commands.add_parser("backup", help="copy the SQLite database, safely while previewbot runs")
    backup.add_argument("path", help="where to write the copy; an existing file is kept")
    backup.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")

    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "setup":
            from .setup import run_setup

            return run_setup(settings, org=args.org, force=args.force)
        if args.command == "relay":
            from .relay import run_relay

            return run_relay(settings)
        if args.command == "web":
            return run_web(settings, workers=args.workers, connections=args.connections)
        if args.command == "worker":
            return run_worker(settings, processes=args.processes, burst=args.burst)
        if args.command == "run":
            return run_all(settings, workers=args.workers)
        if args.command == "signin":
            return print_signin_link(settings)
        if args.command == "backup":
            return run_backup(settings, args.path, overwrite=args.overwrite)
        return run_token_command(settings, args)
    except ConfigError as exc:
        print(f"previewbot: configuration error: {exc}", file=sys.stderr)
        return 2


def _require_redis(settings: Settings) -> None:
    if not settings.redis_url:
        raise ConfigError("REDIS_URL is required for 'previewbot web' and 'previewbot worker' (use 'make run' or '.venv/bin/previewbot run' for an embedded Redis)")


def announce_mode(settings: Settings) -> None:
    if settings.github_enabled:
        print(f"previewbot: GitHub App {settings.app_id} on {settings.github_api_url}, webhooks at {settings.webhook_path}", flush=True)
    else:
        print(f"previewbot: local mode: GitHub is off. Set {GITHUB_VARIABLES} to turn it on.", flush=True)


def run_web(settings: Settings, *, workers: int, connections: int) -> int:
    from gunicorn.app.base import BaseApplication

    from .logs import gunicorn_logger_class
    from .store import Store

    _require_redis(settings)
    Store(settings.database_path).migrate()  # once, before the worker processes start

    class WebApplication(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", max(1, workers))
            # gevent: an open WebSocket holds a greenlet, not one of a few request threads, so
            # a thousand open dashboards never starve GitHub's webhooks.
            self.cfg.set("worker_class", "gevent")
            self.cfg.set("worker_connections", max(1, connections))
            self.cfg.set("timeout", 60)
            self.cfg.set("graceful_timeout", 5)
            self.cfg.set("keepalive", 5)
            # To stdout, scrubbed: a script's `/ws?token=…` and a sign-in link's code never
            # reach a log in clear.
            self.cfg.set("accesslog", "-")
            self.cfg.set("logger_class", gunicorn_logger_class(settings.secrets()))
            self.cfg.set("control_socket_disable", True)

        def load(self):
            from .app import create_app

            return create_app(settings)

    announce_mode(settings)
    print(f"previewbot: web on http://{settings.host}:{settings.port}", flush=True)
    WebApplication().run()
    return 0


def run_worker(settings: Settings, *, processes: int = 1, burst: bool = False) -> int:
    _require_redis(settings)
    if processes > 1:
        return _supervise([[sys.executable, "-m", "bot.cli", "worker"] + (["--burst"] if burst else [])] * processes, os.environ.copy())

    from worker.runner import run_worker_process

    from .logs import configure_logging

    configure_logging(settings)
    return run_worker_process(settings, burst=burst)


def run_all(settings: Settings, *, workers: int) -> int:
    """`make run`: everything on this machine, stopped together by Ctrl-C."""
    from .embedded_redis import EmbeddedRedis
    from .store import Store

    embedded = None
    env = os.environ.copy()
    if not settings.redis_url:
        data_dir = Path(settings.database_path).resolve().parent / ".previewbot"
        embedded = EmbeddedRedis(data_dir).start()
        env["REDIS_URL"] = embedded.url
        print(f"previewbot: embedded Redis at {embedded.url}", flush=True)
    store = Store(settings.database_path)
    store.migrate()
    link = signin_link(settings, store)
    print(f"previewbot: sign in to the dashboard within 10 minutes (the link works once): {link}", flush=True)
    commands = [[sys.executable, "-m", "bot.cli", "web"]] + [[sys.executable, "-m", "bot.cli", "worker"]] * max(1, workers)
    try:
        return _supervise(commands, env)
    finally:
        if embedded:
            embedded.stop()


def signin_link(settings: Settings, store: Store) -> str:
    """A one-time link to the dashboard: never a token in a URL, where browsers' history,
    proxies and logs would keep it."""
    return f"{settings.base_url}/?code={store.create_signin_code()}"


def print_signin_link(settings: Settings) -> int:
    from .store import Store

    store = Store(settings.database_path)
    store.migrate()
    print("Open this link within 10 minutes to sign in to the dashboard; it works once:")
    print(signin_link(settings, store))
    return 0


def run_backup(settings: Settings, path: str, *, overwrite: bool) -> int:
    from .backup import BackupError, backup

    try:
        copy = backup(settings.database_path, path, overwrite=overwrite)
    except BackupError as exc:
        print(f"previewbot: backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"Backed up {settings.database_path} to {copy} (integrity check passed).")
    return 0


# A child that keeps dying this often is broken, not unlucky: then everything stops.
RESTARTS_PER_MINUTE = 5


def _supervise(commands: list[list[str]], env: dict) -> int:
    """Run the commands until we are told to stop, restarting any that exits on its own;
    then stop them all."""
    from .embedded_redis import die_with_parent

    def spawn(command):
        return subprocess.Popen(command, env=env, preexec_fn=die_with_parent)

    children = [spawn(c) for c in commands]
    restarts: list[list[float]] = [[] for _ in commands]
    stopping = False
    failed = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping and not failed:
            time.sleep(0.2)
            for index, child in enumerate(children):
                if stopping or child.poll() is None:
                    continue
                now = time.monotonic()
                restarts[index] = [t for t in restarts[index] if now - t < 60] + [now]
                if len(restarts[index]) > RESTARTS_PER_MINUTE:
                    print(f"previewbot: {' '.join(commands[index][-1:])} keeps exiting; stopping", file=sys.stderr, flush=True)
                    failed = True
                    break
                print(f"previewbot: {' '.join(commands[index][-1:])} exited with {child.returncode}; restarting it", file=sys.stderr, flush=True)
                children[index] = spawn(commands[index])
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 1 if failed else 0


def run_token_command(settings: Settings, args) -> int:
    from .model import utcnow
    from .store import Store
    from .validation import InvalidInput, full_repository_name

    store = Store(settings.database_path)
    store.migrate()
    if args.token_command == "create":
        try:
            repositories = [full_repository_name(r) for r in args.repository] if args.repository else None
            token = store.create_token(args.name, repositories)
        except (ValueError, InvalidInput) as exc:
            print(f"previewbot: {exc}", file=sys.stderr)
            return 1
        scope = ", ".join(repositories) if repositories else "all repositories"
        print(f"Created token {args.name!r} for {scope}. It is shown once; store it now:")
        print(token)
        return 0
    if args.token_command == "list":
        now = utcnow()
        for row in store.list_tokens():
            scope = row["repositories"] or "all repositories"
            if row["revoked_at"]:
                state = f"revoked {row['revoked_at']}"
            elif row["expires_at"] and row["expires_at"] <= now:
                state = f"expired {row['expires_at']}"
            else:
                state = "active"
            kind = {"session": "dashboard session", "github": "GitHub sign-in"}.get(row["kind"])
            kind = f"{kind} until {row['expires_at']}" if kind else "API token"
            print(f"{row['name']}\t{state}\tcreated {row['created_at']}\t{scope}\t{kind}")
        return 0
    if store.revoke_token(args.name):
        print(f"Revoked token {args.name!r}.")
        return 0
    print(f"previewbot: no active token named {args.name!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
