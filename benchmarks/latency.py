"""The latency protocol (``search.latency.measure_latency``): repeatability and agreement with Timer.

For each network: ``calls`` calls of ``measure_latency`` with the study's default protocol
(batch 1, 5 warm-up + 20 timed passes, median, 1 thread on the CPU; on the CPU each pass timed
beside a pass of the reference network and scaled to the reference's latency, measured once
here as a study measures it when it is made), interleaved with as many
``torch.utils.benchmark.Timer.blocked_autorange`` measurements of the same network and input
in the same thread count (eval mode, inference mode). Repeatability is the coefficient of
variation of the per-call medians; agreement is the ratio of the median of those medians to
the median of Timer's medians.

The same calls also time ``PASSES`` passes plainly (no reference), so the statistics a protocol
could take of one plain call (the median of the first 20: the protocol before interleaving; a
10th percentile, the least pass, the median of 60, the least of three medians of 20) are compared
on the same samples. ``--load N`` runs N busy processes beside the measurement (each a 1-thread
matrix product loop, like another worker's training).

    python -m benchmarks.latency            # 3 networks, 10 calls each
    python -m benchmarks.latency --load 1   # ... beside one busy process
    python -m benchmarks.latency --quick    # CI smoke: 1 tiny network, 3 calls
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time

import numpy as np
import torch
from torch.utils import benchmark as tbench

from benchmarks._report import cv, env_header, fmt_seconds, footer, median, set_threads, target
from benchmarks._workloads import net
from search.devices import resolve_device
from search.latency import REFERENCE, LatencyConfig, _reference, interleaves, measure_latency, reference_latency_ms
from space import NetSpec, build_model, complexity

TARGET_CV = 0.05  # CV of the per-call medians
TARGET_AGREE = 0.10  # |median / Timer median - 1|
PASSES = 60  # timed passes per call: three rounds of the study's 20
STATISTICS = {  # what a protocol reports from one call's samples (ms, in the order timed)
    "median of 20": lambda s: median(s[:20]),
    "10th percentile of 20": lambda s: float(np.percentile(s[:20], 10)),
    "least of 20": lambda s: min(s[:20]),
    "median of 60": median,
    "10th percentile of 60": lambda s: float(np.percentile(s, 10)),
    "least median of 3x20": lambda s: min(median(s[i:i + 20]) for i in range(0, PASSES, 20)),
}
BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\nwhile True:\n    a @ a\n"


def timer_median(model: torch.nn.Module, x: torch.Tensor, threads: int, min_run_time: float) -> float:
    """Timer's median seconds per forward pass (``blocked_autorange``), inference mode."""
    timer = tbench.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads,
                         label="forward", description="Timer")
    with torch.inference_mode():
        return timer.blocked_autorange(min_run_time=min_run_time).median


def run_net(name: str, spec: NetSpec, cfg: LatencyConfig, device: torch.device, calls: int,
            min_run_time: float, reference_ms: float | None) -> dict:
    """Interleave ``calls`` measure_latency calls and Timer measurements on one network."""
    model = build_model(spec).to(device).eval()
    medians, inner_cvs, timer, samples = [], [], [], []
    x = torch.randn(cfg.batch_size, spec.in_ch, spec.input_size, spec.input_size, device=device)
    plain = dataclasses.replace(cfg, repeats=PASSES, interleave=False)
    ref, xr = _reference()
    threads = torch.get_num_threads()
    for _ in range(calls):
        lat = measure_latency(model, spec.in_ch, spec.input_size, cfg, device, reference_ms=reference_ms)
        medians.append(lat.ms)
        inner_cvs.append(lat.cv)
        samples.append(measure_latency(model, spec.in_ch, spec.input_size, plain, device).samples)
        t = timer_median(model, x, cfg.threads, min_run_time) * 1e3
        # interleaved, the figure is a cost relative to the reference: Timer's is measured alike
        timer.append(t / (timer_median(ref, xr, cfg.threads, min_run_time) * 1e3) if reference_ms else t)
    assert torch.get_num_threads() == threads, "measure_latency did not restore the thread count"
    c = cv(medians)
    agree = median(medians) / (reference_ms or 1.0) / median(timer)
    cx = complexity(spec)
    print(f"\n== {name}: {spec.name} ({cx.params / 1e6:.3f}M params, {cx.macs / 1e6:.2f}M MACs/img, "
          f"input {spec.in_ch}x{spec.input_size}x{spec.input_size})")
    print(f"measure_latency  {calls} calls: medians {fmt_seconds(min(medians) / 1e3)} .. "
          f"{fmt_seconds(max(medians) / 1e3)}, median {fmt_seconds(median(medians) / 1e3)}, "
          f"CV of the medians {c:.2%} (within-call CV, median: {median(inner_cvs):.2%})")
    if reference_ms:
        print(f"Timer            {calls} blocked_autorange of the network over one of the reference right after: "
              f"{min(timer):.3f}x .. {max(timer):.3f}x, median {median(timer):.3f}x, CV {cv(timer):.2%}")
        print(f"ratio       {name}: measure_latency / reference unit ({median(medians) / reference_ms:.3f}x) over "
              f"Timer's network / reference: {agree:.3f}x")
    else:
        print(f"Timer            {calls} blocked_autorange: medians {fmt_seconds(min(timer) / 1e3)} .. "
              f"{fmt_seconds(max(timer) / 1e3)}, median {fmt_seconds(median(timer) / 1e3)}, CV {cv(timer):.2%}")
        print(f"ratio       {name}: measure_latency / Timer median: {agree:.3f}x")
    spread = {label: cv([stat(s) for s in samples]) for label, stat in STATISTICS.items()}
    print(f"plain       {PASSES}-pass calls without the reference, CV across the {calls} calls: "
          + ", ".join(f"{label} {c:.2%}" for label, c in spread.items()))
    return {"cv": c, "agree": agree, "medians": medians, "timer": timer, "statistics": spread}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 tiny network, 3 calls")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--calls", type=int, default=None, help="measure_latency calls per network (10)")
    parser.add_argument("--threads", type=int, default=1, help="latency.threads (and Timer's num_threads)")
    parser.add_argument("--load", type=int, default=0, help="busy 1-thread processes beside the measurement")
    args = parser.parse_args(argv)
    set_threads(1)
    device = resolve_device(args.device)
    calls = args.calls or (3 if args.quick else 10)
    cfg = LatencyConfig(threads=args.threads)
    min_run_time = 0.05 if args.quick else 0.5
    if args.quick:
        nets = {"tiny": net(2, stem_ch=8, bottleneck_ch=8, input_size=16)}
    else:
        nets = {
            "quickstart-size (16 px)": net(4, stem_ch=8, bottleneck_ch=8, base_width=8, input_size=16, in_ch=1),
            "small (32 px)": net(4, stem_ch=16, bottleneck_ch=16, base_width=8, input_size=32),
            "cifar mid (32 px, 3 stages)": net(8, stages=3, stem_ch=32, bottleneck_ch=32, base_width=4,
                                               input_size=32),
        }
    print("benchmark: latency protocol (search.latency.measure_latency) vs torch.utils.benchmark.Timer")
    print(env_header(device))
    print(f"protocol:    batch {cfg.batch_size}, {cfg.warmup} warm-up + {cfg.repeats} timed passes per call, median; "
          f"threads {cfg.threads} (Timer: num_threads={cfg.threads}, blocked_autorange min_run_time "
          f"{min_run_time:g} s); eval + inference mode in both")
    print(f"repeats:     {calls} measure_latency calls per network, each followed by one {PASSES}-pass call and "
          "one Timer measurement")
    print(f"load:        {args.load} busy process(es) beside it (each a 1-thread loop of 384x384 matrix products)")
    t0 = time.perf_counter()
    unit = reference_latency_ms(cfg) if interleaves(cfg, device) else None  # as a study does when it is made
    print(f"reference:   {REFERENCE.name}, {unit:.4g} ms (measured once, before the load starts)" if unit else
          "reference:   none (not interleaved on this device)")
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.load)]
    try:
        time.sleep(1.0 if busy else 0)  # let them start
        results = {name: run_net(name, spec, cfg, device, calls, min_run_time, unit) for name, spec in nets.items()}
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    worst_cv = max(r["cv"] for r in results.values())
    worst_agree = max(abs(r["agree"] - 1) for r in results.values())
    print()
    print(target(f"CV of per-call medians <= {TARGET_CV:.0%}", worst_cv <= TARGET_CV, f"worst network {worst_cv:.2%}"))
    print(target(f"figure within {TARGET_AGREE:.0%} of Timer's (interleaved: both over the reference)",
                 worst_agree <= TARGET_AGREE, f"worst network off by {worst_agree:.1%}"))
    print(f"elapsed:     {time.perf_counter() - t0:.1f} s")
    print(footer())
    return results


if __name__ == "__main__":
    main()
