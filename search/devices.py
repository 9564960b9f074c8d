"""Devices: which one a name means, what it is called, memory in use, and process-wide tuning.

Everything that touches the process as a whole (the C allocator, the garbage collector, torch's
thread count) lives here and is called from the entry points only (``resnext-nas`` and the
worker processes, via ``tune_process``), never from a library call: importing ``search`` in a
notebook changes nothing about the process.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import sys

import torch

from search.checks import check_device_name
from space.errors import SpecError

# glibc mallopt parameters (malloc.h) and the values tune_cpu_malloc sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
CPU_MALLOC = {"trim_threshold": 1 << 30, "mmap_threshold": 256 << 20}  # bytes
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_malloc_tuned: bool | None = None  # process-wide: None until tune_cpu_malloc first runs
_freeze_after_trial = False  # set by tune_process: release_memory freezes each trial's survivors
TUNE_ENV = "RESNEXT_NAS_TUNE"  # 0: the entry points leave the allocator and the collector alone


def resolve_device(name: str) -> torch.device:
    """The torch device a device name means on this machine.

    Args:
        name: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        SpecError: for CUDA without CUDA, or ``cuda:N`` beyond the visible GPUs.
    """
    check_device_name(name, "device")
    if name == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if count else torch.device("cpu")
    index = int(name.split(":")[1]) if ":" in name else None
    if count == 0:
        raise SpecError(
            f"device '{name}': this machine has no CUDA GPU (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); use device: cpu, or auto to take a GPU "
            "only when there is one"
        )
    if index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if index >= count:
        raise SpecError(
            f"device '{name}': only {count} GPU(s) visible (cuda:0..cuda:{count - 1}); use one "
            "of those, or check CUDA_VISIBLE_DEVICES"
        )
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """A readable name of the device: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = [e.strip() for e in listed.split(",") if e.strip()]
        return entries[:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def tune_cpu_malloc() -> bool:
    """Keep freed training memory in glibc's heap between steps instead of unmapping it (once).

    glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with a
    fresh ``mmap`` and unmaps it on free, and trims the heap top above 128 KiB; a CPU training
    step allocates and frees activations of tens of MiB (128 x 64 x 32 x 32 float32 = 32 MiB), so
    every step faulted its whole working set in again: about half of a CPU trial's time went to
    page faults (``benchmarks.trainer`` shows the before/after). Raising both thresholds lets the
    memory be reused; the process keeps its peak working set resident. Applied on Linux with
    glibc only, once per process, and never when the user set glibc's own ``MALLOC_*_`` or
    ``GLIBC_TUNABLES`` malloc settings. Returns whether the tuning is in effect.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        user_set = any(k in os.environ for k in _MALLOC_ENV) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
        if sys.platform.startswith("linux") and not user_set:
            try:
                libc = ctypes.CDLL(None)
                if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
                    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, CPU_MALLOC["mmap_threshold"])
                    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, CPU_MALLOC["trim_threshold"])
                    _malloc_tuned = bool(mmap_ok and trim_ok)
            except OSError:  # no C library to load: leave the allocator alone
                pass
    return _malloc_tuned


def tune_process(threads: int) -> dict:
    """Process-wide settings of a process that runs trials; the entry points call this, nothing else.

    ``resnext-nas`` and its worker processes call it once at start: torch's CPU thread count
    (``threads``: ``train.threads``, or the cores this worker owns), glibc's allocator
    (``tune_cpu_malloc``) and freezing each trial's survivors in the garbage collector
    (``release_memory``). ``RESNEXT_NAS_TUNE=0`` keeps the allocator and the collector as they
    are (the thread count is still set: it is part of what a trial records). A library user who
    never calls this gets none of it.

    Returns:
        what was set: ``threads``, ``malloc`` (bool), ``gc_freeze`` (bool).
    """
    global _freeze_after_trial
    torch.set_num_threads(threads)
    tune = os.environ.get(TUNE_ENV, "1") != "0"
    _freeze_after_trial = tune
    return {"threads": threads, "malloc": tune_cpu_malloc() if tune else False, "gc_freeze": tune}


def release_memory() -> None:
    """Drop what a finished trial left behind so memory does not creep over many trials.

    In a process tuned by ``tune_process``, the survivors of the full collection (modules,
    stores, caches: ~700k objects with torch, MLflow, SQLAlchemy and Optuna loaded) are also
    frozen: later collections stop walking them again, which cost ~350 ms per trial
    (benchmarks/overhead). ``unfreeze`` undoes it when a study's loop ends.
    """
    gc.collect()
    if _freeze_after_trial:
        gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unfreeze() -> None:
    """Undo ``release_memory``'s freezing (only where ``tune_process`` turned it on)."""
    if _freeze_after_trial:
        gc.unfreeze()


def memory_in_use(device: torch.device) -> dict[str, float]:
    """This process's resident memory (Linux) and, on CUDA, the tensors allocated, in MiB."""
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss_mb"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if device.type == "cuda":
        out["cuda_mb"] = round(torch.cuda.memory_allocated(device) / 2**20, 1)
    return out


