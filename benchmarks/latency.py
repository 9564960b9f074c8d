"""The latency protocol (``search.latency.measure_latency``): repeatability and agreement with Timer.

For each network: ``calls`` calls of ``measure_latency`` with the study's default protocol
(batch 1, 5 warm-up + 20 timed passes, median, 1 thread on the CPU), interleaved with as many
``torch.utils.benchmark.Timer.blocked_autorange`` measurements of the same network and input
in the same thread count (eval mode, inference mode). Repeatability is the coefficient of
variation of the per-call medians; agreement is the ratio of the median of those medians to
the median of Timer's medians.

    python -m benchmarks.latency            # 3 networks, 10 calls each
    python -m benchmarks.latency --quick    # CI smoke: 1 tiny network, 3 calls
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils import benchmark as tbench

from benchmarks._report import cv, env_header, fmt_seconds, footer, median, set_threads, target
from benchmarks._workloads import net
from search.devices import resolve_device
from search.latency import LatencyConfig, measure_latency
from space import NetSpec, build_model, complexity

TARGET_CV = 0.05  # CV of the per-call medians
TARGET_AGREE = 0.10  # |median / Timer median - 1|


def timer_median(model: torch.nn.Module, x: torch.Tensor, threads: int, min_run_time: float) -> float:
    """Timer's median seconds per forward pass (``blocked_autorange``), inference mode."""
    timer = tbench.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads,
                         label="forward", description="Timer")
    with torch.inference_mode():
        return timer.blocked_autorange(min_run_time=min_run_time).median


def run_net(name: str, spec: NetSpec, cfg: LatencyConfig, device: torch.device, calls: int,
            min_run_time: float) -> dict:
    """Interleave ``calls`` measure_latency calls and Timer measurements on one network."""
    model = build_model(spec).to(device).eval()
    medians, inner_cvs, timer = [], [], []
    x = torch.randn(cfg.batch_size, spec.in_ch, spec.input_size, spec.input_size, device=device)
    threads = torch.get_num_threads()
    for _ in range(calls):
        lat = measure_latency(model, spec.in_ch, spec.input_size, cfg, device)
        medians.append(lat.median_ms)
        inner_cvs.append(lat.cv)
        timer.append(timer_median(model, x, cfg.threads, min_run_time) * 1e3)
    assert torch.get_num_threads() == threads, "measure_latency did not restore the thread count"
    c = cv(medians)
    agree = median(medians) / median(timer)
    cx = complexity(spec)
    print(f"\n== {name}: {spec.name} ({cx.params / 1e6:.3f}M params, {cx.macs / 1e6:.2f}M MACs/img, "
          f"input {spec.in_ch}x{spec.input_size}x{spec.input_size})")
    print(f"measure_latency  {calls} calls: medians {fmt_seconds(min(medians) / 1e3)} .. "
          f"{fmt_seconds(max(medians) / 1e3)}, median {fmt_seconds(median(medians) / 1e3)}, "
          f"CV of the medians {c:.2%} (within-call CV, median: {median(inner_cvs):.2%})")
    print(f"Timer            {calls} blocked_autorange: medians {fmt_seconds(min(timer) / 1e3)} .. "
          f"{fmt_seconds(max(timer) / 1e3)}, median {fmt_seconds(median(timer) / 1e3)}, CV {cv(timer):.2%}")
    print(f"ratio       {name}: measure_latency / Timer median: {agree:.3f}x")
    return {"cv": c, "agree": agree, "medians": medians, "timer": timer}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 tiny network, 3 calls")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--calls", type=int, default=None, help="measure_latency calls per network (10)")
    parser.add_argument("--threads", type=int, default=1, help="latency.threads (and Timer's num_threads)")
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
    print(f"repeats:     {calls} measure_latency calls per network, each followed by one Timer measurement")
    t0 = time.perf_counter()
    results = {name: run_net(name, spec, cfg, device, calls, min_run_time) for name, spec in nets.items()}
    worst_cv = max(r["cv"] for r in results.values())
    worst_agree = max(abs(r["agree"] - 1) for r in results.values())
    print()
    print(target(f"CV of per-call medians <= {TARGET_CV:.0%}", worst_cv <= TARGET_CV, f"worst network {worst_cv:.2%}"))
    print(target(f"median within {TARGET_AGREE:.0%} of Timer's", worst_agree <= TARGET_AGREE,
                 f"worst network off by {worst_agree:.1%}"))
    print(f"elapsed:     {time.perf_counter() - t0:.1f} s")
    print(footer())
    return results


if __name__ == "__main__":
    main()
