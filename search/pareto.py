"""Pareto fronts, hypervolume and picking one point: plain Python over objective vectors.

Everything here works on "loss" vectors (every objective turned into one to minimise) so the
same code serves any mix of directions. No optuna, no mlflow: the study module feeds it
finished trials and tests can compare it with brute force.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence


def to_losses(values: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    """Flip maximised objectives so that smaller is better everywhere."""
    return tuple(-v if d == "maximize" else v for v, d in zip(values, directions, strict=True))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (losses): no worse in every objective, better in one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def non_dominated(losses: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (ties are all kept)."""
    return [i for i, p in enumerate(losses) if not any(dominates(q, p) for q in losses)]


def hypervolume(losses: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Volume dominated by ``losses`` and bounded by the reference point ``ref`` (exact).

    Slices along the last objective (HSO); fine for the few objectives and front sizes of a
    search study. Points not strictly better than ``ref`` in every objective add nothing.
    """
    pts = [tuple(p) for p in losses if all(x < r for x, r in zip(p, ref, strict=True))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts = [pts[i] for i in non_dominated(pts)]
    pts.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if top > p[-1]:
            volume += (top - p[-1]) * hypervolume([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return volume


def knee(losses: Sequence[Sequence[float]]) -> int:
    """Index of the point closest to the ideal point after scaling each objective to [0, 1].

    The ideal point takes the best value of each objective over ``losses`` (the front); the
    knee is the balanced compromise, not an extreme. Objectives with one value are ignored.
    """
    lo = [min(c) for c in zip(*losses, strict=True)]
    hi = [max(c) for c in zip(*losses, strict=True)]

    def dist(p):
        return math.sqrt(sum(((x - a) / (b - a)) ** 2 for x, a, b in zip(p, lo, hi, strict=True) if b > a))

    return min(range(len(losses)), key=lambda i: dist(losses[i]))


ALIASES = {"accuracy": "val_accuracy", "latency": "latency_ms"}
_BOUND = re.compile(r"^\s*(\w+)\s*(<=|<|>=|>)\s*([0-9.eE+-]+)\s*$")


def pick(rows: list[dict], how: str, directions: dict[str, str]) -> dict:
    """Choose one row of a Pareto table.

    Args:
        rows: front rows, each with the objective names as keys (plus anything else).
        how: ``knee``, ``max-<objective>``, ``min-<objective>``, or a bound such as
            ``params<=1e6`` (then the most accurate row within it; ``val_accuracy`` must be an
            objective, else the knee of the rows within it).
        directions: objective name -> ``maximize``/``minimize``.
    """
    if not rows:
        raise ValueError("the Pareto front is empty: no feasible trial has completed yet")
    names = list(directions)
    if how == "knee":
        return rows[knee([to_losses([r[n] for n in names], directions.values()) for r in rows])]
    for prefix, best in (("max-", max), ("min-", min)):
        if how.startswith(prefix):
            key = ALIASES.get(how[len(prefix):], how[len(prefix):])
            if key not in rows[0]:
                raise ValueError(f"cannot pick '{how}': '{key}' is not recorded; use one of {names}")
            return best(rows, key=lambda r: r[key])
    m = _BOUND.match(how)
    if not m:
        raise ValueError(f"unknown pick '{how}'; use knee, max-accuracy, min-latency, min-params, "
                         "min-macs or a bound like 'params<=1e6'")
    key, op, bound = ALIASES.get(m.group(1), m.group(1)), m.group(2), float(m.group(3))
    if key not in rows[0]:
        raise ValueError(f"cannot bound '{key}': not recorded; use one of {names}")
    ok = {"<=": lambda v: v <= bound, "<": lambda v: v < bound,
          ">=": lambda v: v >= bound, ">": lambda v: v > bound}[op]
    within = [r for r in rows if ok(r[key])]
    if not within:
        raise ValueError(f"no Pareto point satisfies {how}")
    if "val_accuracy" in within[0]:
        return max(within, key=lambda r: r["val_accuracy"])
    return pick(within, "knee", directions)
