import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from benchmarks.pareto import old_hypervolume, old_non_dominated  # the pre-numpy code, kept as the baseline
from search.pareto import dominates, hypervolume, hypervolume_history, knee, non_dominated, pick, to_losses

# ---- plain references: the old implementations and exact volumes by other means ----


def brute_front(points):
    return [i for i, p in enumerate(points)
            if not any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p for q in points)]


def inclusion_exclusion(losses, ref):
    """Exact volume of the union of boxes [p, ref) with Fractions: sum over subsets, (-1)^(k+1) |intersection|."""
    ref = [Fraction(r) for r in ref]
    pts = [[Fraction(x) for x in p] for p in losses if all(x < r for x, r in zip(p, ref, strict=True))]
    total = Fraction(0)
    for k in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, k):
            corner = [max(c) for c in zip(*subset, strict=True)]
            total += (-1) ** (k + 1) * math.prod(r - c for r, c in zip(ref, corner, strict=True))
    return total


def random_set(rng: random.Random, n: int, d: int, ints: bool):
    """Points with ties, exact copies and points on or beyond the reference, and that reference."""
    ref = tuple(rng.choice([4, 5, 6]) for _ in range(d)) if ints else tuple(rng.uniform(0.8, 1.2) for _ in range(d))
    pts = []
    for _ in range(n):
        if ints:
            p = [rng.randint(0, 6) for _ in range(d)]  # up to 6 > ref: some beyond, some on it
        else:
            p = [rng.choice([rng.random(), 0.5, 1.0, 1.3]) for _ in range(d)]  # ties at 0.5; 1.0/1.3 near or beyond
        pts.append(tuple(p))
    pts += [rng.choice(pts) for _ in range(n // 4)]  # exact duplicates
    rng.shuffle(pts)
    return pts, ref


def sphere(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """``n`` mutually non-dominated points: the positive part of the unit sphere."""
    v = np.abs(rng.standard_normal((n, d)))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def optuna_or_skip():
    try:
        from optuna._hypervolume import compute_hypervolume
        from optuna.study._multi_objective import _is_pareto_front
    except ImportError:  # private API: moved or renamed in another Optuna
        pytest.skip("optuna's private hypervolume/Pareto helpers are not available")
    return compute_hypervolume, _is_pareto_front


# ---- non_dominated ----


@pytest.mark.parametrize("seed", range(5))
def test_non_dominated_matches_brute_force(seed):
    rng = random.Random(seed)
    pts = [tuple(rng.randint(0, 6) for _ in range(3)) for _ in range(40)]
    assert non_dominated(pts) == brute_front(pts)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("ints", [True, False], ids=["ints", "floats"])
def test_non_dominated_matches_the_old_filter_on_many_sets(d, ints):
    rng = random.Random(d * 10 + ints)
    for trial in range(60):
        pts, _ = random_set(rng, rng.randint(1, 40), d, ints)
        assert non_dominated(pts) == old_non_dominated(pts) == brute_front(pts), (trial, pts)


def test_non_dominated_edge_cases():
    assert non_dominated([]) == []
    assert non_dominated([(1.0, 2.0)]) == [0]
    assert non_dominated([(1, 1, 1)] * 4) == [0, 1, 2, 3]  # copies are all kept
    assert non_dominated([(3,), (1,), (2,), (1,)]) == [1, 3]
    assert non_dominated([(1, 2), (2, 1), (1, 2), (2, 2), (0, 3)]) == [0, 1, 2, 4]
    assert non_dominated([(0.0, 1.0), (-0.0, 1.0)]) == [0, 1]  # -0.0 == 0.0: equal points
    nan = float("nan")  # as the old filter: a point with a NaN neither dominates nor is dominated
    pts = [(nan, 0.0), (1.0, 1.0), (2.0, 2.0), (0.0, nan)]
    assert non_dominated(pts) == old_non_dominated(pts) == [0, 1, 3]


@pytest.mark.parametrize("d", [2, 3, 4])
def test_non_dominated_matches_optuna_on_large_sets(d):
    _, is_pareto_front = optuna_or_skip()
    rng = np.random.default_rng(d)
    front = sphere(rng, 300, d)
    pts = np.vstack([front, rng.uniform(0, 1.2, (900, d)), front[:50], np.round(rng.uniform(0, 1, (200, d)), 1)])
    rng.shuffle(pts)
    assert non_dominated(pts) == np.flatnonzero(is_pareto_front(pts, assume_unique_lexsorted=False)).tolist()
    assert non_dominated(front) == list(range(300))


# ---- hypervolume ----


def test_to_losses_flips_maximised():
    assert to_losses([0.9, 100], ["maximize", "minimize"]) == (-0.9, 100)
    assert dominates(to_losses([0.9, 10], ["maximize", "minimize"]), to_losses([0.8, 10], ["maximize", "minimize"]))


def test_hypervolume_known_values():
    assert hypervolume([(1, 1)], (2, 2)) == 1
    # two boxes 2x1 and 1x2 overlapping in 1x1 -> 3
    assert hypervolume([(0, 1), (1, 0)], (2, 2)) == 3
    assert hypervolume([(0, 0, 0)], (1, 2, 3)) == 6
    assert hypervolume([(3, 3)], (2, 2)) == 0  # outside the reference box
    assert hypervolume([(1, 2)], (2, 2)) == 0  # on its boundary: not strictly better
    assert hypervolume([], (2, 2)) == 0
    assert hypervolume([(1,), (0.5,), (3,)], (2,)) == 1.5
    assert hypervolume([(0, 0, 0, 0), (1, 1, 1, 1)], (2, 2, 2, 2)) == 16
    with pytest.raises(ValueError):
        hypervolume([(1, 1, 1)], (2, 2))


def test_hypervolume_with_an_infinite_reference_is_infinite():
    inf = float("inf")
    for d in (1, 2, 3, 4):
        pts = [(0.0,) * d, (1.0,) * d, (1.0,) * d]  # equal values: zero-width slices next to an infinite one
        assert hypervolume(pts, (inf,) + (2.0,) * (d - 1)) == inf
        assert hypervolume(pts, (2.0,) * (d - 1) + (inf,)) == inf
    assert hypervolume([(0, 1, 0), (0, 0, 1)], (2, inf, 2)) == inf  # a tie in x below an infinite y


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_matches_grid_count(seed):
    rng = random.Random(seed)
    pts = [tuple(rng.randint(0, 4) for _ in range(3)) for _ in range(8)]
    ref = (5, 5, 5)
    cells = sum(1 for c in itertools.product(range(5), repeat=3)
                if any(all(p[k] <= c[k] for k in range(3)) for p in pts))
    assert hypervolume(pts, ref) == pytest.approx(cells)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_hypervolume_equals_the_old_hso_exactly_on_integer_sets(d):
    rng = random.Random(100 + d)
    for trial in range(80):
        pts, ref = random_set(rng, rng.randint(0, 14), d, ints=True)
        assert hypervolume(pts, ref) == old_hypervolume(pts, ref), (trial, pts, ref)  # small ints: exact in floats


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion_on_float_sets(d):
    rng = random.Random(200 + d)
    for trial in range(60):
        pts, ref = random_set(rng, rng.randint(0, 7), d, ints=False)
        exact = inclusion_exclusion(pts, ref)
        got = hypervolume(pts, ref)
        assert got == pytest.approx(float(exact), rel=1e-12, abs=1e-15), (trial, pts, ref)
        assert got == pytest.approx(old_hypervolume(pts, ref), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("d, n", [(2, 2000), (3, 500), (4, 60)])
def test_hypervolume_matches_optuna_on_large_sets(d, n):
    compute_hypervolume, _ = optuna_or_skip()
    rng = np.random.default_rng(d)
    ref = np.full(d, 1.1)
    for pts in (sphere(rng, n, d), np.vstack([sphere(rng, n // 2, d), rng.uniform(0, 1.3, (n, d))])):
        inside = pts[np.all(pts < ref, axis=1)]
        assert hypervolume(pts, ref) == pytest.approx(compute_hypervolume(inside, ref), rel=1e-12)
    ints = rng.integers(0, 30, (n, d)).astype(float)  # many ties: exact on both sides
    assert hypervolume(ints, np.full(d, 30.0)) == compute_hypervolume(ints, np.full(d, 30.0))


# ---- hypervolume_history ----


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("ints", [True, False], ids=["ints", "floats"])
def test_hypervolume_history_matches_recomputing_every_prefix(d, ints):
    rng = random.Random(300 + 10 * d + ints)
    for trial in range(20):
        pts, ref = random_set(rng, rng.randint(0, 25), d, ints)
        history = hypervolume_history(pts, ref)
        assert len(history) == len(pts)
        for i, value in enumerate(history):
            assert value == pytest.approx(hypervolume(pts[: i + 1], ref), rel=1e-12, abs=1e-15), (trial, i)
        assert history == sorted(history), "a prefix's hypervolume cannot shrink"


def test_hypervolume_history_on_a_long_3d_run():
    rng = np.random.default_rng(1)
    pts = np.vstack([rng.uniform(0, 1.2, (600, 3)), sphere(rng, 400, 3)])
    rng.shuffle(pts)
    ref = (1.1, 1.1, 1.1)
    history = hypervolume_history(pts, ref)
    for i in range(0, 1000, 37):
        assert history[i] == pytest.approx(hypervolume(pts[: i + 1], ref), rel=1e-12)
    assert history[-1] == pytest.approx(hypervolume(pts, ref), rel=1e-12)


def test_appending_never_rewrites_the_past():
    ref = (1.0, 1.0, 1.0)
    pts = [(0.5, 0.5, 0.5), (0.2, 0.9, 0.6), (0.9, 0.1, 0.3)]
    before = hypervolume_history(pts, ref)
    dominated = (0.6, 0.95, 0.7)  # worse than the first point everywhere
    after = hypervolume_history([*pts, dominated], ref)
    assert after == [*before, before[-1]]
    # a point beyond the reference, a copy, and then a new best: the past stays as it was
    more = hypervolume_history([*pts, dominated, (5.0, 0.0, 0.0), pts[1], (0.1, 0.1, 0.1)], ref)
    assert more[:6] == [*before, before[-1], before[-1], before[-1]]
    assert more[-1] == pytest.approx(0.9**3)
    # a new point far worse than everything seen: the old rescaling by the largest value changed the
    # earlier values here; with a fixed reference it changes nothing
    assert hypervolume_history([*pts, (100.0, 100.0, 100.0)], ref)[:3] == before
    assert hypervolume_history([], ref) == []


# ---- knee and pick ----


def test_knee_prefers_balanced_point():
    assert knee([(0, 10), (5, 5), (10, 0)]) == 1


def test_pick_variants():
    d = {"val_accuracy": "maximize", "params": "minimize", "latency_ms": "minimize"}
    rows = [{"trial": 0, "val_accuracy": 0.9, "params": 5e6, "latency_ms": 3.0},
            {"trial": 1, "val_accuracy": 0.8, "params": 1e6, "latency_ms": 1.0},
            {"trial": 2, "val_accuracy": 0.85, "params": 2e6, "latency_ms": 2.0}]
    assert pick(rows, "max-accuracy", d)["trial"] == 0
    assert pick(rows, "min-latency", d)["trial"] == 1
    assert pick(rows, "min-params", d)["trial"] == 1
    assert pick(rows, "params<=2e6", d)["trial"] == 2
    assert pick(rows, "knee", d)["trial"] == 2
    with pytest.raises(ValueError, match="no Pareto point"):
        pick(rows, "params<1e5", d)
    with pytest.raises(ValueError, match="unknown pick"):
        pick(rows, "best", d)
    with pytest.raises(ValueError, match="empty"):
        pick([], "knee", d)
