import itertools
import random

import pytest

from search.pareto import dominates, hypervolume, knee, non_dominated, pick, to_losses


def brute_front(points):
    return [i for i, p in enumerate(points)
            if not any(all(a <= b for a, b in zip(q, p, strict=True)) and q != p for q in points)]


@pytest.mark.parametrize("seed", range(5))
def test_non_dominated_matches_brute_force(seed):
    rng = random.Random(seed)
    pts = [tuple(rng.randint(0, 6) for _ in range(3)) for _ in range(40)]
    assert non_dominated(pts) == brute_front(pts)


def test_to_losses_flips_maximised():
    assert to_losses([0.9, 100], ["maximize", "minimize"]) == (-0.9, 100)
    assert dominates(to_losses([0.9, 10], ["maximize", "minimize"]), to_losses([0.8, 10], ["maximize", "minimize"]))


def test_hypervolume_known_values():
    assert hypervolume([(1, 1)], (2, 2)) == 1
    # two boxes 2x1 and 1x2 overlapping in 1x1 -> 3
    assert hypervolume([(0, 1), (1, 0)], (2, 2)) == 3
    assert hypervolume([(0, 0, 0)], (1, 2, 3)) == 6
    assert hypervolume([(3, 3)], (2, 2)) == 0  # outside the reference box


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_matches_grid_count(seed):
    rng = random.Random(seed)
    pts = [tuple(rng.randint(0, 4) for _ in range(3)) for _ in range(8)]
    ref = (5, 5, 5)
    cells = sum(1 for c in itertools.product(range(5), repeat=3)
                if any(all(p[k] <= c[k] for k in range(3)) for p in pts))
    assert hypervolume(pts, ref) == pytest.approx(cells)


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
