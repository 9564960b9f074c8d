"""Pareto filter and hypervolume: ``search.pareto`` (numpy) vs the old pure-Python code vs Optuna's.

The study keeps its Pareto front up to date as trials finish, and reports compute hypervolume
histories. The baseline is the pure-Python code ``search.pareto`` replaced: an O(n^2) filter and
a recursive HSO hypervolume (~30 s on a 500-point 3-objective front). This times, in the same
run and interleaved, the current ``non_dominated`` / ``hypervolume`` / ``hypervolume_history``,
the old implementations (copied below as the baseline) and Optuna's private helpers
(``_is_pareto_front``, ``compute_hypervolume``) on the same points, and checks that every variant
gives the same front and the same volume (to 1e-12 relative).

Points: a "front" is n mutually non-dominated points (the positive part of the unit sphere,
3 objectives); a "mixed" set is a quarter front points, the rest uniform in [0, 1.2]^3 with 5%
exact copies (the filter keeps every copy). The reference point is (1.1, 1.1, 1.1).

    python -m benchmarks.pareto           # 500-point fronts, mixed sets of 1,000 and 3,000, ~1 min
    python -m benchmarks.pareto --quick   # CI smoke: 100-point fronts, a mixed set of 300, 2 repeats
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import optuna

from benchmarks._report import (
    env_header,
    fmt_seconds,
    footer,
    median,
    report,
    set_threads,
    target,
    timeit,
    timeit_interleaved,
)
from search.pareto import dominates, hypervolume, hypervolume_history, non_dominated

TARGET_S = 0.050  # the filter and the hypervolume of a 500-point 3-objective front
TARGET_HISTORY_S = 1.0  # the hypervolume history of 1,000 3-objective points
REF = (1.1, 1.1, 1.1)
REL = 1e-12

try:  # private Optuna API: present in Optuna 4-5, may move
    from optuna._hypervolume import compute_hypervolume as optuna_hypervolume
    from optuna.study._multi_objective import _is_pareto_front as optuna_is_pareto_front
except ImportError:  # pragma: no cover - another Optuna
    optuna_hypervolume = optuna_is_pareto_front = None


def old_non_dominated(losses):
    """The filter ``search.pareto`` had before numpy: every pair, in Python."""
    return [i for i, p in enumerate(losses) if not any(dominates(q, p) for q in losses)]


def old_hypervolume(losses, ref):
    """The hypervolume ``search.pareto`` had before numpy: recursive HSO in Python."""
    pts = [tuple(p) for p in losses if all(x < r for x, r in zip(p, ref, strict=True))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts = [pts[i] for i in old_non_dominated(pts)]
    pts.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if top > p[-1]:
            volume += (top - p[-1]) * old_hypervolume([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return volume


def front(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` mutually non-dominated 3-objective points (the positive part of the unit sphere)."""
    v = np.abs(rng.standard_normal((n, 3)))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def mixed(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` points: a quarter on a front, the rest uniform in [0, 1.2]^3, 5% of them exact copies."""
    n_copies = n // 20
    pts = np.vstack([front(rng, n // 4), rng.uniform(0, 1.2, (n - n // 4 - n_copies, 3))])
    pts = np.vstack([pts, pts[rng.integers(0, len(pts), n_copies)]])
    rng.shuffle(pts)
    return pts


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL)


def ratio_line(what: str, slow: float, fast: float) -> str:
    return f"ratio       {what}: {slow / fast:,.1f}x"


def bench_filter(name: str, pts: np.ndarray, repeats: int) -> float:
    """Time the three filters on ``pts``, check they agree; returns the new filter's median seconds."""
    as_lists = pts.tolist()  # the old filter on what the study passes: lists of floats
    results: dict[str, list[int]] = {}
    variants = {
        "new non_dominated": lambda: results.__setitem__("new", non_dominated(pts)),
        "old non_dominated (Python)": lambda: results.__setitem__("old", old_non_dominated(as_lists)),
    }
    if optuna_is_pareto_front is not None:
        variants["optuna _is_pareto_front"] = lambda: results.__setitem__(
            "optuna", np.flatnonzero(optuna_is_pareto_front(pts, assume_unique_lexsorted=False)).tolist())
    times = timeit_interleaved(variants, repeats, warmup=1)
    assert results["new"] == results["old"], f"{name}: new and old fronts differ"
    assert results.get("optuna", results["new"]) == results["new"], f"{name}: new and Optuna fronts differ"
    print(f"\n== filter: {name} ({len(pts):,} points, {len(results['new']):,} on the front; "
          f"all variants agree{'' if 'optuna' in results else ', Optuna not checked'})")
    for label, ts in times.items():
        print(report(label, ts, len(pts), "points"))
    new = median(times["new non_dominated"])
    print(ratio_line("old / new filter", median(times["old non_dominated (Python)"]), new))
    if "optuna _is_pareto_front" in times:
        print(ratio_line("optuna / new filter", median(times["optuna _is_pareto_front"]), new))
    return new


def bench_hypervolume(pts: np.ndarray, repeats: int) -> float:
    """Time new vs Optuna (interleaved) and the old HSO (once: it takes ~30 s at 500 points); check the values."""
    ref = np.array(REF)
    values: dict[str, float] = {}
    variants = {"new hypervolume": lambda: values.__setitem__("new", hypervolume(pts, ref))}
    if optuna_hypervolume is not None:
        inside = pts[np.all(pts < ref, axis=1)]  # Optuna refuses points beyond the reference
        variants["optuna compute_hypervolume"] = lambda: values.__setitem__("optuna", optuna_hypervolume(inside, ref))
    times = timeit_interleaved(variants, repeats, warmup=1)
    as_lists = pts.tolist()
    old_times = timeit(lambda: values.__setitem__("old", old_hypervolume(as_lists, REF)), repeats=1, warmup=0)
    for label, value in values.items():
        assert close(value, values["new"]), f"hypervolume: {label} {value!r} != new {values['new']!r}"
    print(f"\n== hypervolume: front of {len(pts):,} points, 3 objectives, reference {REF}")
    print(f"values:     new {values['new']:.15f}, old {values['old']:.15f}"
          + (f", optuna {values['optuna']:.15f}" if "optuna" in values else "") + f" (agree to {REL:g} relative)")
    for label, ts in times.items():
        print(report(label, ts, len(pts), "points"))
    print(report("old hypervolume (HSO, 1 call)", old_times, len(pts), "points"))
    new = median(times["new hypervolume"])
    print(ratio_line("old / new hypervolume", median(old_times), new))
    if "optuna compute_hypervolume" in times:
        print(ratio_line("optuna / new hypervolume", median(times["optuna compute_hypervolume"]), new))
    return new


def bench_history(name: str, pts: np.ndarray, repeats: int) -> float:
    """Time the incremental history against recomputing every prefix with the new hypervolume; check they agree."""
    out: dict[str, list[float]] = {}

    def per_prefix() -> None:
        out["prefix"] = [hypervolume(pts[: i + 1], REF) for i in range(len(pts))]

    times = timeit_interleaved({"hypervolume_history": lambda: out.__setitem__("new", hypervolume_history(pts, REF)),
                                "hypervolume per prefix": per_prefix}, repeats, warmup=1)
    assert all(close(a, b) for a, b in zip(out["new"], out["prefix"], strict=True)), f"{name}: histories differ"
    front_size = len(non_dominated(pts[np.all(pts < np.array(REF), axis=1)]))
    print(f"\n== hypervolume history: {name} ({len(pts):,} points, final front {front_size:,}; "
          f"equal to recomputing every prefix, final value {out['new'][-1]:.6f})")
    for label, ts in times.items():
        print(report(label, ts, len(pts), "points"))
    new = median(times["hypervolume_history"])
    print(ratio_line("per prefix / incremental history", median(times["hypervolume per prefix"]), new))
    return new


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: 100-point fronts, one mixed set of 300, histories of 200 points, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of each variant (5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random points")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see benchmarks/_report)")
    args = parser.parse_args(argv)
    n_front = 100 if args.quick else 500
    n_mixed = (300,) if args.quick else (1_000, 3_000)
    n_history = 200 if args.quick else 1_000
    repeats = args.repeats or (2 if args.quick else 5)
    rng = np.random.default_rng(args.seed)

    set_threads(args.threads)
    print("benchmark: Pareto filter and hypervolume, search.pareto vs the old Python code vs Optuna")
    print(env_header("cpu"))
    print(f"versions:    numpy {np.__version__}, optuna {optuna.__version__}"
          + ("" if optuna_hypervolume is not None else " (private helpers not found: Optuna not compared)"))
    print(f"points:      3 objectives, seed {args.seed}; fronts of {n_front}, mixed sets of "
          f"{', '.join(f'{n:,}' for n in n_mixed)}, histories of {n_history:,}")
    print(f"repeats:     {repeats} per variant, interleaved round-robin, after 1 warm-up call each; median reported "
          "(the old hypervolume: 1 call, no warm-up)")

    pts_front = front(rng, n_front)
    t_filter = bench_filter(f"front of {n_front}", pts_front, repeats)
    for n in n_mixed:
        bench_filter(f"mixed {n:,}", mixed(rng, n), repeats)
    t_hv = bench_hypervolume(pts_front, repeats)
    cloud = rng.uniform(0, 1.2, (n_history, 3))
    t_cloud = bench_history("uniform cloud in [0, 1.2]^3, a typical study", cloud, repeats)
    t_worst = bench_history("every point joins the front, the worst case", front(rng, n_history), repeats)

    print()
    print(target(f"filter of a {n_front}-point front <= {fmt_seconds(TARGET_S)}", t_filter <= TARGET_S,
                 fmt_seconds(t_filter)))
    print(target(f"hypervolume of a {n_front}-point front <= {fmt_seconds(TARGET_S)}", t_hv <= TARGET_S,
                 fmt_seconds(t_hv)))
    print(target(f"history of {n_history:,} points < {fmt_seconds(TARGET_HISTORY_S)}",
                 max(t_cloud, t_worst) < TARGET_HISTORY_S,
                 f"typical {fmt_seconds(t_cloud)}, worst case {fmt_seconds(t_worst)}"))
    print(footer())


if __name__ == "__main__":
    main()
