"""Pareto fronts, hypervolume and picking one point over objective vectors (numpy, exact).

Everything here works on "loss" vectors (every objective turned into one to minimise) so the
same code serves any mix of directions. No optuna, no mlflow: the study module feeds it
finished trials and tests can compare it with brute force.

Cost on a front of ``n`` points: ``non_dominated`` is a 2-D sweep (``O(n log n)``) or, from
3 objectives, one vectorised pass per front point; ``hypervolume`` is a sorted sweep in 2-D,
a sweep over the third objective that keeps the 2-D staircase in sorted lists in 3-D
(``O(n log n)`` plus list moves), and slices along the last objective down to 3-D beyond.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence

import numpy as np


def to_losses(values: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    """Flip maximised objectives so that smaller is better everywhere."""
    return tuple(-v if d == "maximize" else v for v, d in zip(values, directions, strict=True))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (losses): no worse in every objective, better in one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def _as_points(losses: Sequence[Sequence[float]], dims: int | None = None) -> np.ndarray:
    """``losses`` as an ``(n, d)`` float array (``(0, dims)`` when empty)."""
    pts = np.asarray(losses, dtype=float)
    if pts.size == 0:
        return pts.reshape(0, dims or (pts.shape[1] if pts.ndim == 2 else 0))
    if pts.ndim != 2 or (dims is not None and pts.shape[1] != dims):
        raise ValueError(f"expected points with {dims or 'the same number of'} objectives, got shape {pts.shape}")
    return pts


def _front_mask(pts: np.ndarray) -> np.ndarray:
    """True for the rows of ``pts`` (``(n, d)``, no NaN) that no other row dominates; equal rows all kept."""
    n, d = pts.shape
    if n == 0 or d == 1:
        return pts[:, 0] == pts[:, 0].min() if n else np.zeros(0, dtype=bool)
    order = np.lexsort(pts.T[::-1])  # by the first objective, ties by the second, ...
    srt = pts[order]
    new = np.r_[True, np.any(srt[1:] != srt[:-1], axis=1)]
    uniq, copy_of = srt[new], np.cumsum(new) - 1  # distinct rows, still sorted; row -> its distinct row
    # a distinct row can only be dominated by an earlier one, which is no worse in the first objective
    if d == 2:  # ... so it is on the front when its second objective beats every earlier one
        best = np.minimum.accumulate(uniq[:, 1])
        on_uniq = np.r_[True, best[1:] < best[:-1]]
    else:  # ... so the first remaining one is on the front: keep it, drop what it dominates, repeat
        on_uniq = np.zeros(len(uniq), dtype=bool)
        rest, idx = uniq[:, 1:], np.arange(len(uniq))
        while len(idx):
            on_uniq[idx[0]] = True
            keep = np.any(rest < rest[0], axis=1)
            rest, idx = rest[keep], idx[keep]
    on_front = np.empty(n, dtype=bool)
    on_front[order] = on_uniq[copy_of]
    return on_front


def non_dominated(losses: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates; equal points are all kept.

    Args:
        losses: points, each a sequence of the same number of losses (minimised). A point with a
            NaN is neither dominated nor dominating (kept), as with ``dominates``.
    """
    pts = _as_points(losses)
    on_front = np.isnan(pts).any(axis=1)
    rows = np.flatnonzero(~on_front)
    on_front[rows] = _front_mask(pts[rows])
    return np.flatnonzero(on_front).tolist()


def _hv2d(pts: np.ndarray, ref: np.ndarray) -> float:
    """Area of ``pts`` (strictly inside ``ref``) by one sweep over the first objective."""
    order = np.argsort(pts[:, 0], kind="stable")
    x = pts[order, 0]
    best_y = np.minimum.accumulate(pts[order, 1])
    width = np.diff(np.r_[x, ref[0]])
    wide = width > 0  # a zero width never adds (and avoids 0 * inf with an infinite reference)
    return float(width[wide] @ (ref[1] - best_y[wide]))


def _staircase_add(xs: list[float], ys: list[float], px: float, py: float, rx: float, ry: float) -> float:
    """Add ``(px, py)`` to a 2-D front and return the area that adds below ``(rx, ry)``.

    Args:
        xs: the front's first objectives, ascending (updated in place).
        ys: the matching second objectives, strictly descending (updated in place).
        px, py: the new point, strictly inside the reference.
        rx, ry: the reference point.
    """
    m = bisect.bisect_right(xs, px)
    if m and ys[m - 1] <= py:  # a point with x <= px and y <= py: nothing new
        return 0.0
    i = bisect.bisect_left(xs, px, 0, m)
    k = i
    while k < len(xs) and ys[k] >= py:  # the points the new one dominates: xs[i:k]
        k += 1
    # above py, the front's height over [px, rx) is ys[i - 1] (or ry) up to xs[i], then ys[j] up to xs[j + 1]
    added, left, height = 0.0, px, ys[i - 1] if i else ry
    for j in range(i, k):
        if xs[j] > left:  # a zero width adds nothing (and 0 * inf would be NaN with an infinite reference)
            added += (xs[j] - left) * (height - py)
        left, height = xs[j], ys[j]
    added += ((xs[k] if k < len(xs) else rx) - left) * (height - py)
    xs[i:k] = [px]
    ys[i:k] = [py]
    return added


def _hv3d(pts: np.ndarray, ref: np.ndarray) -> float:
    """Volume of ``pts`` (strictly inside ``ref``): sweep up the third objective, growing a 2-D front."""
    rows = pts[np.argsort(pts[:, 2], kind="stable")].tolist()
    rx, ry, rz = ref.tolist()
    xs: list[float] = []
    ys: list[float] = []
    area = volume = 0.0
    for i, (x, y, z) in enumerate(rows):
        area += _staircase_add(xs, ys, x, y, rx, ry)
        top = rows[i + 1][2] if i + 1 < len(rows) else rz
        if top > z:
            volume += area * (top - z)
    return volume


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of ``pts``, all strictly inside ``ref`` (at least one point)."""
    d = len(ref)
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        return _hv2d(pts, ref)
    if d == 3:
        return _hv3d(pts, ref)
    # slice along the last objective (HSO): between two consecutive values, the cross-section is the
    # (d-1)-dimensional hypervolume of the points below
    pts = pts[_front_mask(pts)]
    pts = pts[np.argsort(pts[:, -1], kind="stable")]
    tops = np.r_[pts[1:, -1], ref[-1]]
    volume = 0.0
    for i in range(len(pts)):
        if tops[i] > pts[i, -1]:
            volume += float(tops[i] - pts[i, -1]) * _hv(pts[: i + 1, :-1], ref[:-1])
    return volume


def hypervolume(losses: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Volume dominated by ``losses`` and bounded by the reference point ``ref`` (exact).

    Args:
        losses: points (minimised), each with ``len(ref)`` objectives; dominated and equal points are
            allowed. Points not strictly better than ``ref`` in every objective add nothing.
        ref: the reference point (the worst corner of the measured box).
    """
    ref_arr = np.asarray(ref, dtype=float).reshape(-1)
    pts = _as_points(losses, len(ref_arr))
    pts = pts[np.all(pts < ref_arr, axis=1)]
    return _hv(pts, ref_arr) if len(pts) else 0.0


def hypervolume_history(points: Sequence[Sequence[float]], ref: Sequence[float]) -> list[float]:
    """The hypervolume of each prefix of ``points``: ``[hypervolume(points[:i + 1], ref) for i ...]``.

    Incremental: the front of the prefix is kept, and the volume is recomputed (on the front alone)
    only when a point inside ``ref`` joins it; any other point repeats the last value. Values never
    decrease, and appending points never changes earlier ones.

    Args:
        points: loss vectors (minimised) in order, e.g. one per completed trial.
        ref: the fixed reference point; use the same one to compare histories.
    """
    ref_arr = np.asarray(ref, dtype=float).reshape(-1)
    pts = _as_points(points, len(ref_arr))
    front = pts[:0]
    value, history = 0.0, []
    for p in pts:
        if np.all(p < ref_arr) and not np.any(np.all(front <= p, axis=1)):
            front = np.vstack([front[~np.all(p <= front, axis=1)], p])
            value = _hv(front, ref_arr)
        history.append(value)
    return history


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
