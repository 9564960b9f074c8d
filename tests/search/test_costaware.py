"""The cost-aware sampler (search.sampler: costaware), through a real Optuna study on the
quickstart space with an objective whose accuracy is a known function of the network."""

import math

import numpy as np
import optuna
import pytest

from search.config import load_experiment
from search.costaware import CostAwareSampler, _hv_gains
from search.objective import constrain
from search.pareto import dominates, to_losses
from search.storage import make_sampler
from space import complexity

QUICKSTART = "experiments/quickstart.yaml"
BUDGET = 50_000


def toy_accuracy(spec) -> float:
    """Grows with log params, with a bonus for grouped convolutions: smooth, so learnable."""
    cx = complexity(spec)
    return min(0.99, 0.35 + 0.12 * math.log10(cx.params) + 0.02 * math.log2(spec.stages[0].groups))


def run(sampler, n: int, space):
    """A study as search.study runs it: over-budget proposals are told infeasible, repeats are free."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    trained, over, seen = [], 0, set()
    for _ in range(4 * n):
        if len(trained) == n:
            break
        trial = study.ask()
        spec = space.suggest(trial)
        cx = complexity(spec)
        constrain(trial, "max_params", cx.params - BUDGET)
        values = (toy_accuracy(spec), cx.params, cx.macs / 1e6)
        if cx.params > BUDGET:
            over += 1
            study.tell(trial, (0.0, cx.params, math.inf))
            continue
        study.tell(trial, values)
        if spec.hash not in seen:
            seen.add(spec.hash)
            trained.append(to_losses(values, ["maximize", "minimize", "minimize"]))
    return trained, over, study


def dominated_when_trained(trained: list, skip: int) -> int:
    """Networks (after the first ``skip``) that an earlier one already dominated when they were trained."""
    return sum(any(dominates(a, b) for a in trained[:i]) for i, b in enumerate(trained) if i >= skip)


@pytest.fixture(scope="module")
def space():
    return load_experiment(QUICKSTART).space


def test_make_sampler_builds_it_from_the_experiment():
    cfg = load_experiment(QUICKSTART, ["search.sampler=costaware"])
    sampler = make_sampler(cfg, 3)
    assert isinstance(sampler, CostAwareSampler)
    assert sampler.budgets == {"params": cfg.constraints.max_params, "macs": None}
    assert sampler.objectives == list(cfg.objectives)


def test_never_proposes_over_budget_or_twice(space):
    sampler = CostAwareSampler(space, ["val_accuracy", "params", "latency_ms"], max_params=BUDGET, seed=0)
    trained, over, study = run(sampler, 24, space)
    assert len(trained) == 24
    assert over == 0, "a network over the static budget was proposed"
    assert len(study.trials) == 24, "a network was proposed twice while untried ones remained"


def test_trains_fewer_hopeless_networks_than_random(space):
    """After the start-up trials, a network whose known costs and plausible accuracy put it behind
    the front is what the sampler avoids; random sampling does not."""
    n, skip = 30, 10
    aware = CostAwareSampler(space, ["val_accuracy", "params", "latency_ms"], max_params=BUDGET, seed=0,
                             n_startup=skip)
    chosen = dominated_when_trained(run(aware, n, space)[0], skip)
    blind = dominated_when_trained(run(optuna.samplers.RandomSampler(seed=0), n, space)[0], skip)
    assert chosen < blind, (chosen, blind)
    assert chosen <= (n - skip) // 4, f"{chosen} of {n - skip} chosen networks were dominated when trained"


def test_hypervolume_gain_is_zero_only_behind_the_front():
    known = np.array([[-0.9, 1.0, 1.0], [-0.5, 0.2, 0.2]])
    cands = np.array([[-0.8, 1.5, 1.5],   # dominated by the first point: no room
                      [-0.95, 1.5, 1.5],  # more accurate than anything known: room
                      [-0.6, 0.1, 0.3]])  # cheaper in params than anything known: room
    gains = _hv_gains(known, cands)
    assert gains[0] == 0 and gains[1] > 0 and gains[2] > 0


@pytest.mark.slow
def test_a_real_study_with_the_costaware_sampler_trains_each_network_once(tiny):
    """Through run_search: its proposals are built, trained and recorded like any sampler's, and
    once the surrogate is in use (after 3 networks here) every proposal is new and within budget."""
    from search.results import trial_attrs
    from search.study import run_search

    cfg = tiny(search={"sampler": "costaware", "n_trials": 6}, constraints={"max_params": 20_000},
               tracking={"enabled": False})
    assert make_sampler(cfg, 0).n_startup == 3  # as TPE: a third of the trials, 3 to 10
    summary = run_search(cfg, quiet=True)
    trained = [t for t in summary.study.trials if t.user_attrs.get("outcome") == "trained"]
    assert len(trained) == 6 == summary.counts["trained"]
    assert len({trial_attrs(t)["spec_hash"] for t in trained}) == 6
    assert all(trial_attrs(t)["params"] <= 20_000 for t in trained)
