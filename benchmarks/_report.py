"""Shared helpers for benchmark scripts: the environment header, timing, medians and ratios.

Every benchmark prints ``env_header()`` first, then for each measured variant the repeats,
the median and a throughput, and compares against a baseline measured in the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

import search.devices


def cpu_model() -> str:
    """The CPU's marketing name, as the latency protocol records it."""
    return search.devices.device_name(torch.device("cpu"))


def device_name(device: str | torch.device | None = None) -> str:
    """A readable name for ``device`` (default: CUDA 0 if available, else the CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()})"


def _nvidia_driver() -> str:
    """The NVIDIA driver's version, from nvidia-smi ('?' where it cannot be read)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def env_header(device: str | torch.device | None = None) -> str:
    """Lines describing where a benchmark ran: device, CPU, OS, Python/torch versions, threads."""
    try:
        import torchvision

        tv = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        tv = "not installed"
    cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
    lines = [
        f"device:      {device_name(device)}",
        f"cpu:         {cpu_model()} ({os.cpu_count()} logical cores)",
        f"os:          {platform.platform()}",
        f"python:      {sys.version.split()[0]}",
        f"torch:       {torch.__version__} (cuda {cuda}), torchvision {tv}",
        f"threads:     torch intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}",
    ]
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        lines.append(f"gpu:         driver {_nvidia_driver()}, cuDNN {torch.backends.cudnn.version()}, TF32 conv "
                     f"{torch.backends.cudnn.allow_tf32}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
    if hasattr(os, "getloadavg"):  # other processes competing for the cores skew every timing
        lines.append(f"load:        1-min load average {os.getloadavg()[0]:.2f} at start")
    return "\n".join(lines)


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
           sync: Callable[[], None] | None = None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    Args:
        fn: the work to time; called with no arguments.
        repeats: timed calls.
        warmup: untimed calls first (allocations, kernel selection, caches).
        sync: called before reading the clock, e.g. ``torch.cuda.synchronize`` for GPU work.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def timeit_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                       sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Like ``timeit`` for several variants, run round-robin (A B C A B C ...).

    Interleaving spreads background load (other processes, thermal state) evenly over the
    variants, so their ratio is fairer than timing one after the other.

    Args:
        fns: label -> the work to time.
        repeats: timed calls of each variant.
        warmup: untimed calls of each variant first.
        sync: called before reading the clock, e.g. ``torch.cuda.synchronize`` for GPU work.
    """
    sync = sync or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[label].append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    """The median of ``xs``."""
    return statistics.median(xs)


def fmt_seconds(s: float) -> str:
    """Seconds with a unit that keeps 3-4 significant digits (s, ms, us)."""
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def report(label: str, times: list[float], items: int, unit: str = "items") -> str:
    """One line: label, repeats, median time and ``items`` per second at the median."""
    m = median(times)
    return (f"{label:<32} repeats {len(times):>2}  median {fmt_seconds(m):>10} for {items:>6} {unit}"
            f"  -> {items / m:>12,.1f} {unit}/s")


def ratio(label: str, numerator: float, denominator: float) -> str:
    """One line: ``label`` and ``numerator / denominator`` as a factor, e.g. two rates."""
    return f"{label:<32} {numerator / denominator:,.1f}x"


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (``n/a`` where the OS has none).

    A load above the core count means other processes were competing for the cores, so
    every timing printed next to it is pessimistic and noisier than on an idle machine.
    """
    if not hasattr(os, "getloadavg"):
        return "n/a"
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} logical cores)"


def footer() -> str:
    """The last line of a benchmark: the load average at the end (compare with the header's)."""
    return f"load:        {load_average()} at end"


def set_threads(threads: int) -> None:
    """Set torch's intra-op CPU threads (1 by default in these benchmarks: 2 threads on a shared
    2-core machine oversubscribe the cores and slow down unpredictably)."""
    torch.set_num_threads(threads)


def target(label: str, met: bool, detail: str) -> str:
    """One line: whether a target was met, e.g. ``target  trainer/hand loop >= 0.97x: met (0.99x)``."""
    return f"target      {label}: {'met' if met else 'NOT met'} ({detail})"


def cv(xs: list[float]) -> float:
    """Coefficient of variation (sample std / mean) of ``xs``; 0 for fewer than 2 values."""
    if len(xs) < 2:
        return 0.0
    mean = statistics.fmean(xs)
    return statistics.stdev(xs) / mean if mean else 0.0


def sync_for(device: torch.device | str) -> Callable[[], None]:
    """A ``sync`` for ``timeit``: ``torch.cuda.synchronize`` on CUDA, nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None
