"""The large-space benchmark's scoring: shares of the union front's hypervolume by epochs, confirmed
accuracies in place of single trainings, differences to random paired by seed."""

import numpy as np
import pytest

from benchmarks import large_space


def row(epochs, acc, params, macs, confirmed=None, h=None):
    return {"epochs": epochs, "number": 0, "hash": h or f"{acc}-{params}-{macs}", "acc": acc, "params": params,
            "macs": macs, "confirmed": confirmed}


def test_a_study_holding_the_union_front_scores_one_and_confirmation_rescores():
    best = [row(3, 0.9, 10, 10), row(6, 0.8, 5, 5)]  # the union front
    worse = [row(3, 0.7, 10, 10), {"epochs": 4, "number": 1}, row(7, 0.8, 6, 6, confirmed=0.95)]  # a stopped trial
    studies = {"random": [worse], "costaware": [best]}
    result = large_space.score(studies, [3, 6, 7], False, np.random.default_rng(0))
    assert result[("costaware", 6)][0] == pytest.approx(1.0)
    assert result[("costaware", 3)][0] < 1.0  # only its first network within 3 epochs
    assert result[("random", 7)][0] < 1.0 and result[("random", 3)][0] < result[("costaware", 3)][0]
    assert result[("costaware", 6)][1] == pytest.approx(1.0 - result[("random", 6)][0])  # paired difference
    # random's last network confirmed at 0.95 joins the union front: costaware no longer holds all of it
    confirmed = large_space.score(studies, [3, 6, 7], True, np.random.default_rng(0))
    assert confirmed[("costaware", 7)][0] < 1.0 and confirmed[("random", 7)][0] > result[("random", 7)][0]


def test_strategies_are_real_sampler_and_pruner_values():
    from search.config import PRUNERS, SAMPLERS

    assert all(s in SAMPLERS and p in PRUNERS for s, p in large_space.STRATEGIES.values())
