"""Runs a provisioner command so that none of its processes outlives the worker that started it.

The worker does not start the command itself but `python reaper.py WORKER_PID GRACE STATUS_FD
-- ARGV...` (`spawn`), which:

- becomes a child subreaper, so that processes the command daemonizes (double fork, `setsid`)
  are re-parented to it, not to init, and it can still find and stop them;
- asks for SIGTERM when the worker dies (PR_SET_PDEATHSIG), SIGKILL included;
- stops everything left (SIGTERM to the command's process group and to every other descendant,
  SIGKILL to what is left after GRACE seconds) when it gets SIGTERM or SIGINT (the worker stops
  the command, or died) and when the command exits (nothing it leaves behind is watched);
- exits as the command did (its exit code, or killed by the same signal).

It runs in a session of its own, which the command shares: a Ctrl-C in the worker's terminal or a
signal to the worker's process group reaches the command only through the worker, and a SIGKILL
to the reaper's process group (`stop`'s last resort) takes the command with it.
Linux only (prctl, /proc, sigwaitinfo). Where prctl is refused (a sandbox), the command still
runs and is stopped, but a daemonized process or a dead worker goes unnoticed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Handled one at a time by sigwaitinfo, never by a handler that could interrupt the bookkeeping.
WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
POLL_SECONDS = 0.05
# How long `stop` waits beyond the grace before it distrusts the reaper.
STOP_MARGIN_SECONDS = 5.0

USAGE = "usage: reaper.py WORKER_PID GRACE_SECONDS STATUS_FD -- COMMAND [ARG...]"


def spawn(argv: list[str], *, grace: float, **popen) -> subprocess.Popen:
    """Start `argv` under a reaper, with `popen` as `subprocess.Popen`'s other arguments.

    Raises OSError, as Popen does, when the command cannot start (no such file, not executable)."""
    reading, writing = os.pipe()
    with open(reading, "rb") as status:
        try:
            process = subprocess.Popen(
                # -I: the command's environment (PYTHONPATH and the like) does not steer the
                # reaper; -S: it needs nothing beyond the standard library, and starts sooner.
                [sys.executable, "-I", "-S", __file__, str(os.getpid()), str(grace), str(writing), "--", *argv],
                start_new_session=True,
                pass_fds=(writing,),
                **popen,
            )
        finally:
            os.close(writing)
        failure = status.read().decode(errors="replace")  # nothing, once the command runs
    if failure:
        with process:  # it exits at once; this reaps it and closes its pipes
            code, _, message = failure.partition(" ")
            raise OSError(int(code), message, argv[0])
    return process


def stop(process: subprocess.Popen, grace: float) -> None:
    """Stop a command started by `spawn` and wait for it: its reaper sends SIGTERM to all of its
    processes and SIGKILL after `grace` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace + STOP_MARGIN_SECONDS)
    except subprocess.TimeoutExpired:
        # A reaper that cannot finish (stopped, starved) still must not leave the command running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def share_nice_with_session() -> None:
    """Where Linux shares the CPU between sessions first (autogroup, on by default in many
    kernels), a process's nice value ranks it only within its own session. A process that leads a
    session of its own therefore gives the session its nice value, so that a worker's lowered
    priority (WORKER_NICE), and its commands', count against the web process too."""
    if os.getsid(0) != os.getpid():
        return  # it shares its session (`previewbot run`): its nice value already counts there
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError:
        pass  # no autogroup (or not allowed): nice values are global then


def main(argv: list[str]) -> int:
    """The reaper itself: run the command of `argv` (see the module docstring)."""
    if len(argv) < 5 or argv[3] != "--":
        sys.exit(USAGE)
    share_nice_with_session()  # the worker's priority, which the reaper inherited, for its session
    worker, grace, status_fd, command = int(argv[0]), float(argv[1]), int(argv[2]), argv[4:]
    os.set_inheritable(status_fd, False)  # else the command would hold the worker's wait open
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    for signum in WATCHED:
        signal.signal(signum, signal.SIG_DFL)  # an inherited SIG_IGN would lose them
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != worker:
        return 1  # the worker died before we could watch it: start nothing
    try:
        pid = os.posix_spawnp(
            command[0], command, os.environ,
            setsigmask=(),
            # Python ignores these at start; the command gets them as Popen would give them.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as exc:
        os.write(status_fd, f"{exc.errno} {exc.strerror}".encode())
        return 127
    finally:
        os.close(status_fd)
    reaper = _Reaper(pid)
    while reaper.status is None:
        if signal.sigwaitinfo(WATCHED).si_signo != signal.SIGCHLD:
            break
        reaper.reap()
    reaper.stop_all(grace)
    if reaper.status is None:
        return 1  # the command changed its user (setuid) and could not be stopped by us
    return _exit_as(reaper.status)


class _Reaper:
    """The command's wait status, and what the reaper knows of the processes under it."""

    def __init__(self, pid: int):
        self.pid = pid
        self.status: int | None = None

    def reap(self) -> None:
        """Collect every exited child (the command, and orphans re-parented to us)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.status = status

    def stop_all(self, grace: float) -> None:
        """SIGTERM to every process under us, once each; SIGKILL to those left after `grace`."""
        group = os.getpgrp()
        # The whole group at once, so that a process forking right now cannot slip through; it
        # includes us, and stays pending here (blocked) until we exit.
        os.killpg(group, signal.SIGTERM)
        for pid, pgrp in _descendants().items():
            if pgrp != group:
                _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _descendants() and (left := deadline - time.monotonic()) > 0:
            signal.sigtimedwait({signal.SIGCHLD}, min(left, POLL_SECONDS))
            self.reap()
        # Again until none is left: a process may fork between a listing and its kill.
        while descendants := _descendants():
            if not [pid for pid in descendants if _kill(pid, signal.SIGKILL)]:
                break  # none can be signalled: one that changed its user (sudo) is beyond us
            signal.sigtimedwait({signal.SIGCHLD}, POLL_SECONDS)
            self.reap()
        self.reap()


def _descendants() -> dict[int, int]:
    """Our living descendants (zombies excluded) and their process groups, from /proc."""
    children: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        state, ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        pid = int(entry.name)
        children.setdefault(int(ppid), []).append(pid)
        if state not in ("Z", "X"):
            groups[pid] = int(pgrp)
    found: dict[int, int] = {}
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child in groups:
                found[child] = groups[child]
            todo.append(child)
    return found


def _kill(pid: int, signum: int) -> bool:
    """Whether `signum` was sent to `pid` (not gone meanwhile, not another user's)."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _exit_as(status: int) -> int:
    """The command's exit code, or (killed by a signal) die of the same signal, so that the worker
    reads the command's own status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return code
    signum = -code
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would be the reaper's, not the command's
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    return 128 + signum


def _prctl(option: int, value: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    except (OSError, AttributeError):
        pass  # not Linux: the command still runs, without these guarantees


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
