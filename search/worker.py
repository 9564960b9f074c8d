"""Worker processes: several trials at once on one machine, and who-runs-what for crash recovery.

``resnext-nas search EXP.yaml --workers N`` keeps one supervising process (it owns the study and
its MLflow parent run) and starts N worker processes (``search.worker_process``) that share the
study through its storage; each is an ordinary Optuna optimize loop (``search.study.work``). A
worker gets its configuration on stdin (never on the command line, where other users could read a password),
its GPU through ``CUDA_VISIBLE_DEVICES`` and its share of the CPU cores through the thread
count. No optuna here: this module only starts, watches and stops processes.

Every trial records the worker running it (host, pid and the pid's start time), so any process
on the same host can tell a trial whose worker died (SIGKILL, OOM killer, power cut of a
container) from a slow one: ``process_alive`` is how.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from search.devices import cpu_cores, visible_gpus

HOST_ENV = "RESNEXT_NAS_HOST"  # names this machine in trial records; default: its hostname
EXIT_ABORTED = 3  # a worker stopped by search.max_consecutive_failures
EXIT_STORAGE = 4  # a worker stopped because the study storage could not be reached or written
EXIT_INTERRUPTED = 130
STOP_GRACE_S = 30.0  # how long interrupted workers get to record their trials before SIGKILL


def host() -> str:
    """This machine's name in trial records (``$RESNEXT_NAS_HOST`` or the hostname)."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a Linux process; None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ("X", -1)  # no such process
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def identity() -> dict:
    """What a trial records about the process running it."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return {"host": host(), "pid": pid, "start": stat[1] if stat else None}


def process_alive(ident: dict) -> bool:
    """Whether the process ``ident`` (from ``identity()`` on this host) still runs.

    A zombie counts as dead, and so does a live process whose start time differs (the pid was
    reused). Without /proc, only the pid is checked.
    """
    pid = ident.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # nothing to judge by: never fail a trial on a guess
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state in ("Z", "X"):
        return False
    return ident.get("start") in (None, start)


@dataclass(frozen=True)
class Slot:
    """One worker process of this machine: its index, CPU threads and GPU (None: not pinned)."""

    index: int
    threads: int
    gpu: str | None = None


def plan(requested: int | None, train_device: str, threads: int | None = None) -> list[Slot]:
    """The worker processes to run here.

    Args:
        requested: ``--workers``; None = one per visible GPU when trials train on ``auto`` or
            ``cuda`` and there is a GPU, else 1.
        train_device: ``train.device`` of the experiment.
        threads: ``train.threads``: CPU threads per worker; None = the cores split evenly.

    On a GPU machine each worker is pinned to one GPU (round robin when there are more
    workers than GPUs); an explicit ``cuda:N`` pins nothing. The CPU cores are split evenly
    (``cores // N`` threads each, at least 1); more threads than that are refused, since
    oversubscribed cores slow every worker down by far more than their share.
    """
    from space.errors import SpecError

    gpus = visible_gpus() if train_device in ("auto", "cuda") else []
    n = requested if requested is not None else max(1, len(gpus))
    if n < 1:
        raise SpecError(f"--workers must be >= 1, got {n}")
    owned = max(1, cpu_cores() // n)
    if threads is not None and threads > owned:
        raise SpecError(f"train.threads = {threads} with {n} worker(s) needs {threads * n} CPU cores but this "
                        f"process may use {cpu_cores()}; set train.threads <= {owned} (or null: the cores "
                        "split evenly) or use fewer --workers")
    return [Slot(i, threads or owned, gpus[i % len(gpus)] if gpus and n > 1 else None) for i in range(n)]


@dataclass
class WorkerExit:
    """How a worker process ended: ``code`` is its exit status, or minus the signal that killed it."""

    slot: Slot
    pid: int
    code: int

    @property
    def how(self) -> str:
        if self.code < 0:
            try:
                return f"killed by {signal.Signals(-self.code).name}"
            except ValueError:
                return f"killed by signal {-self.code}"
        return {0: "done", EXIT_ABORTED: "stopped by repeated trial failures",
                EXIT_STORAGE: "stopped: the study storage could not be reached or written",
                EXIT_INTERRUPTED: "interrupted"}.get(self.code, f"failed (exit status {self.code})")


def spawn(slot: Slot, payload: dict) -> subprocess.Popen:
    """Start one worker process; its configuration goes through stdin."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(slot.threads),
               MKL_NUM_THREADS=str(slot.threads))
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    proc = subprocess.Popen([sys.executable, "-m", "search.worker_process"], stdin=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(json.dumps({**payload, "slot": asdict(slot), "parent_pid": os.getpid()},
                                    default=str).encode())
        proc.stdin.close()
    except BrokenPipeError:  # it died at once; its exit status tells
        pass
    return proc


def supervise(slots: list[Slot], payload: dict, on_exit: Callable[[WorkerExit], None],
              poll_s: float = 0.2) -> list[WorkerExit]:
    """Run one worker per slot until all have exited; returns how each ended.

    Args:
        slots: the workers (from ``plan``).
        payload: what every worker gets on stdin (``search.study.work`` arguments).
        on_exit: called as soon as a worker exits (to fail the trial it may have left behind).
        poll_s: seconds between checks.

    A KeyboardInterrupt (Ctrl-C or SIGTERM turned into one) is passed on to the workers as
    SIGTERM; each gets ``STOP_GRACE_S`` to record its trial as failed before it is killed.
    The KeyboardInterrupt is raised again once all have exited.
    """
    running = {slot.index: (slot, spawn(slot, payload)) for slot in slots}
    exits: list[WorkerExit] = []

    def collect(index: int, code: int) -> None:
        slot, proc = running.pop(index)
        exits.append(WorkerExit(slot, proc.pid, code))
        on_exit(exits[-1])

    try:
        while running:
            for index, (_, proc) in list(running.items()):
                code = proc.poll()
                if code is not None:
                    collect(index, code)
            if running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for _, proc in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for index, (_, proc) in list(running.items()):
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            collect(index, code)
        raise
    return exits


class _Labelled:
    """A text stream that starts every line with a worker label (and is never a terminal)."""

    def __init__(self, stream, label: str) -> None:
        self.stream, self.label, self.fresh = stream, label, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self.fresh:
                out.append(f"[{self.label}] ")
            out.append(piece)
            self.fresh = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def labelled(stream, label: str):
    """``stream`` with ``[label] `` before every line."""
    return _Labelled(stream, label)
