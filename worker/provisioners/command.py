"""The `command` provisioner: the operator's deploy and destroy commands."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Callable

from bot.config import Settings
from bot.masking import Masker

from .. import reaper
from . import LOCK_LOST, ProvisionError, ProvisionRequest, ProvisionResult, render_url

URL_LINE = re.compile(r"^\s*(https?://\S+)\s*$")

# The command provisioner's environment: what design §4.8 lists, plus these basics so the
# command can find its tools, plus what the operator names in PREVIEW_COMMAND_ENV. Nothing else:
# the bot's own secrets never reach a command that builds untrusted code.
BASE_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


class CommandProvisioner:
    """Runs the operator's deploy and destroy commands, split like a shell but never run by one.

    Branch names and other request data reach the command only as environment values, so a
    branch called `feat/$(reboot)` is just text. A command that is stopped (lost lock, timeout)
    gets SIGTERM, with all of its processes, and SIGKILL `grace` seconds later; none of them
    outlives the worker (see `worker.reaper`). Every line it prints is masked (`mask`) before
    anything keeps it: the log, the URL it names, the error made of its stderr.
    """

    name = "command"

    def __init__(
        self,
        deploy_command: str,
        destroy_command: str | None,
        *,
        timeout: float,
        url_template: str,
        passthrough: tuple[str, ...] = (),
        grace: float = Settings.cancel_grace_seconds,
        mask: Callable[[str], str] = Masker(),
    ):
        self.deploy_argv = shlex.split(deploy_command)
        self.destroy_argv = shlex.split(destroy_command) if destroy_command else None
        self.timeout = timeout
        self.grace = grace
        self.url_template = url_template
        self.passthrough = passthrough
        self.mask = mask

    def deploy(self, request: ProvisionRequest) -> ProvisionResult:
        urls = [m.group(1) for line in self._run(self.deploy_argv, request, action="deploy") if (m := URL_LINE.match(line))]
        return ProvisionResult(urls[-1] if urls else render_url(self.url_template, request))

    def destroy(self, request: ProvisionRequest) -> None:
        if self.destroy_argv is None:
            request.log("command: no PREVIEW_DESTROY_COMMAND configured, nothing to tear down")
            return
        self._run(self.destroy_argv, request, action="destroy")

    def environment(self, request: ProvisionRequest, action: str) -> dict[str, str]:
        env = {name: os.environ[name] for name in BASE_ENVIRONMENT + self.passthrough if name in os.environ}
        env.update(
            PREVIEW_ACTION=action,
            PREVIEW_REPOSITORY=request.repository,
            PREVIEW_PR_NUMBER=str(request.pr_number),
            PREVIEW_BRANCH=request.branch,
            PREVIEW_SHA=request.sha or "",
            PREVIEW_DEPLOYMENT_ID=request.deployment_id,
            PREVIEW_ENVIRONMENT=request.environment,
        )
        # The repository's `vars` (.github/preview.yml), prefixed so that none replaces a variable above.
        env.update({f"PREVIEW_VAR_{name}": value for name, value in request.vars.items()})
        if action == "destroy" and request.preview_url:
            env["PREVIEW_URL"] = request.preview_url
        return env

    def _run(self, argv: list[str], request: ProvisionRequest, *, action: str) -> list[str]:
        """Run a command to its end; the lines of its stdout that are URLs."""
        try:
            process = reaper.spawn(
                argv,
                grace=self.grace,
                env=self.environment(request, action),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise ProvisionError(f"{action} command could not start: {exc.strerror or exc}") from None
        _shrink_pipe(process.stdout)
        # Of stdout only the lines that may be the preview URL are kept: a build log can be long.
        url_lines: list[str] = []
        stderr_tail: deque[str] = deque(maxlen=20)

        def keep_url(line: str) -> None:
            if URL_LINE.match(line):
                url_lines.append(line)

        readers = [
            threading.Thread(target=_pump, args=(process.stdout, self.mask, keep_url, request.log), daemon=True),
            threading.Thread(target=_pump, args=(process.stderr, self.mask, stderr_tail.append, request.log), daemon=True),
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + self.timeout
        try:
            # Waiting on the process, not on the event: a quick command is done without a poll's delay.
            while (code := _exit_code(process, min(0.1, max(0.0, deadline - time.monotonic())))) is None:
                if request.cancelled.is_set():
                    reaper.stop(process, self.grace)
                    raise ProvisionError(LOCK_LOST)
                if time.monotonic() >= deadline:
                    reaper.stop(process, self.grace)
                    raise ProvisionError(f"{action} command timed out after {self.timeout:g}s")
        finally:
            if process.poll() is None:
                # Left while it runs (RQ's cold shutdown or job timeout): its reaper stops it alone.
                process.send_signal(signal.SIGTERM)
            for reader in readers:
                reader.join(timeout=5)
        if code != 0:
            tail = "\n".join(stderr_tail).strip()[-1000:]
            raise ProvisionError(f"{action} command exited with {code}" + (f": {tail}" if tail else ""))
        return url_lines


# A build that prints faster than its lines reach Redis waits on its stdout: with a smaller pipe
# it waits sooner, so a line on its way to the log waits behind fewer others (64 KiB by default).
PIPE_BYTES = 16 * 1024


def _shrink_pipe(stream) -> None:
    try:
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # it holds more than that already, or the kernel refuses: the default stays


def _pump(stream, mask: Callable[[str], str], keep: Callable[[str], None], log: Callable[[str], None]) -> None:
    for line in stream:
        # Line by line, as they come: a secret printed across two lines is not caught.
        line = mask(line.rstrip("\n"))
        keep(line)
        log(line)


def _exit_code(process: subprocess.Popen, seconds: float) -> int | None:
    """The process's exit code, or None if it still runs after `seconds`."""
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def from_settings(settings: Settings) -> CommandProvisioner:
    return CommandProvisioner(
        settings.deploy_command,
        settings.destroy_command,
        timeout=settings.command_timeout,
        url_template=settings.url_template,
        passthrough=settings.command_env,
        grace=settings.cancel_grace_seconds,
        mask=Masker.from_settings(settings),
    )
