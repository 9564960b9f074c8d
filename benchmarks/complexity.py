"""Analytic complexity vs building the model (params) vs FlopCounterMode (MACs): specs per second.

The search decides whether a sampled network is worth training from its params and MACs
before any module exists; this measures what that costs with the complexity twin
(``space.complexity``) and with the two ways to get the same numbers from PyTorch:
building the module and summing ``numel`` (params), and building it and running one
forward pass under ``FlopCounterMode`` (MACs). Build/forward counts use a subset of the
specs so the run stays short; every spec of the subset is also checked for equal results.

    python -m benchmarks.complexity           # 10,000 specs, 50 built, 10 flop-counted
    python -m benchmarks.complexity --quick   # CI smoke: 1,000 specs, 5 built, 3 flop-counted
"""

from __future__ import annotations

import argparse
import random

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._report import (
    env_header,
    fmt_seconds,
    footer,
    median,
    ratio,
    report,
    set_threads,
    target,
    timeit_interleaved,
)
from space import NetSpec, SearchSpace, build_model, complexity

SPACES = {
    # the default space of experiment files: CIFAR input, small widths, 3 stages
    "default (cifar, 32px)": SearchSpace(),
    # ResNeXt-29-like widths on CIFAR input: bigger modules, so building costs more
    "cifar-wide (32px)": SearchSpace.from_dict({
        "num_stages": [2, 3], "stem_ch": [32, 64], "bottleneck_ch": [32, 64], "cardinality": [2, 4, 8],
        "base_width": [8, 16, 32], "depth": {"low": 1, "high": 3},
    }),
}


def build_params(spec: NetSpec) -> int:
    return sum(p.numel() for p in build_model(spec).parameters())


def build_flops(spec: NetSpec) -> int:
    model = build_model(spec).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, spec.in_ch, spec.input_size, spec.input_size))
    return counter.get_total_flops()


def run_space(name: str, space: SearchSpace, n: int, n_build: int, n_flops: int, repeats: int,
              seed: int) -> tuple[float, float]:
    """Time the three ways on one space and check they agree.

    Returns:
        (analytic/build speed-up, seconds for 10,000 specs analytic).
    """
    rng = random.Random(seed)
    specs = [space.sample(rng) for _ in range(n)]
    results: dict[str, list] = {}

    def analytic() -> None:
        results["analytic"] = [complexity(s) for s in specs]

    def build() -> None:
        results["build"] = [build_params(s) for s in specs[:n_build]]

    def flops() -> None:
        results["flops"] = [build_flops(s) for s in specs[:n_flops]]

    times = timeit_interleaved({"analytic": analytic, "build": build, "flops": flops}, repeats, warmup=1)
    t_analytic, t_build, t_flops = times["analytic"], times["build"], times["flops"]
    cxs = results["analytic"]
    assert [c.params for c in cxs[:n_build]] == results["build"], "analytic params != built module's"
    assert [2 * c.macs for c in cxs[:n_flops]] == results["flops"], "analytic MACs != FlopCounterMode / 2"

    params = sorted(c.params for c in cxs)
    print(f"\n== space: {name}  ({space.size():,} networks; sampled params median "
          f"{params[len(params) // 2] / 1e6:.2f}M, max {params[-1] / 1e6:.2f}M)")
    print(f"checked: analytic params == sum(numel) on {n_build} specs, "
          f"analytic MACs == FlopCounterMode / 2 on {n_flops} specs")
    rate_analytic = n / median(t_analytic)
    rate_build = n_build / median(t_build)
    rate_flops = n_flops / median(t_flops)
    print(report("analytic complexity()", t_analytic, n, "specs"))
    print(report("build_model + sum(numel)", t_build, n_build, "specs"))
    print(report("build + FlopCounterMode fwd", t_flops, n_flops, "specs"))
    print(f"{'per spec':<32} analytic {fmt_seconds(1 / rate_analytic)}, build {fmt_seconds(1 / rate_build)}, "
          f"flop count {fmt_seconds(1 / rate_flops)}")
    print(ratio("analytic vs build (params)", rate_analytic, rate_build))
    print(ratio("analytic vs FlopCounterMode", rate_analytic, rate_flops))
    t10k = 10_000 / rate_analytic
    print(f"{'10,000 specs analytic':<32} {fmt_seconds(t10k)}")
    return rate_analytic / rate_build, t10k


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: 1,000 specs, 5 built, 3 flop-counted, 2 repeats")
    parser.add_argument("--specs", type=int, default=None, help="specs for the analytic count (10,000)")
    parser.add_argument("--build", type=int, default=None, help="specs built and counted with numel (50)")
    parser.add_argument("--flops", type=int, default=None,
                        help="specs built and run under FlopCounterMode (10)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of each variant (5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the spec sampler")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see benchmarks/_report)")
    args = parser.parse_args(argv)
    n = args.specs or (1_000 if args.quick else 10_000)
    n_build = args.build or (5 if args.quick else 50)
    n_flops = args.flops or (3 if args.quick else 10)
    repeats = args.repeats or (2 if args.quick else 5)

    set_threads(args.threads)
    print("benchmark: analytic complexity vs build (params) vs FlopCounterMode (MACs)")
    print(env_header("cpu"))
    print(f"specs:       {n:,} sampled per space (seed {args.seed}); the first {n_build} built and counted, "
          f"the first {n_flops} run under FlopCounterMode (batch 1, eval)")
    print(f"repeats:     {repeats} per variant, interleaved round-robin, after 1 warm-up call each; "
          "median reported")
    results = [run_space(name, space, n, n_build, n_flops, repeats, args.seed)
               for name, space in SPACES.items()]
    print()
    worst = min(r[0] for r in results)
    slowest = max(r[1] for r in results)
    print(target("analytic >= 100x faster than build", worst >= 100, f"worst space {worst:,.1f}x"))
    print(target("10,000 specs analytic < 1 s", slowest < 1, f"slowest space {fmt_seconds(slowest)}"))
    print(footer())


if __name__ == "__main__":
    main()
