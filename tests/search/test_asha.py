"""The Pareto-aware successive-halving rules, on hand-made rungs."""

import optuna

from search.asha import decide, order, rung_epochs, rung_key, rung_losses


def test_rungs_are_min_epochs_times_powers_of_eta_below_the_full_budget():
    assert rung_epochs(1, 3, 8) == [1, 3]
    assert rung_epochs(1, 2, 8) == [1, 2, 4]
    assert rung_epochs(2, 2, 10) == [2, 4, 8]
    assert rung_epochs(8, 3, 8) == []  # the first rung is the full budget: no pruning
    assert rung_epochs(1, 3, 2.5) == [1]  # a fractional budget: rungs stay on whole epochs
    assert [rung_key(r) for r in rung_epochs(1, 3, 10)] == ["1", "3", "9"]


def test_order_puts_fronts_first_and_the_lone_extremes_before_the_crowded_middle():
    # accuracy (negated) vs params: a, b, c, d are one front; e is dominated by b
    pts = {"a": (-0.9, 100), "b": (-0.8, 40), "c": (-0.79, 39), "d": (-0.5, 10), "e": (-0.7, 50)}
    names = list(pts)
    ranked = [names[i] for i in order(list(pts.values()))]
    assert set(ranked[:4]) == {"a", "b", "c", "d"} and ranked[4] == "e"
    # b and c crowd each other: each adds little hypervolume on its own, so both come after a and d
    assert ranked.index("b") > ranked.index("d") and ranked.index("c") > ranked.index("a")


def test_decide_keeps_the_top_one_over_eta():
    others = [(-0.5 - 0.01 * i, 100.0) for i in range(8)]  # equal cost: accuracy decides
    go, place, n = decide((-0.9, 100.0), others, eta=3)
    assert (go, place, n) == (True, 0, 9)
    go, place, n = decide((-0.545, 100.0), others, eta=3)  # 4th of 9: top 9 // 3 = 3 go on
    assert (go, place, n) == (False, 3, 9)
    assert decide((-0.4, 100.0), [], eta=3)[0]  # alone at a rung: it leads it
    assert not decide((-0.4, 100.0), [(-0.5, 100.0)], eta=3)[0]  # 2 < eta: only the leader goes on
    assert decide((-0.4, 10.0), [(-0.5, 100.0)], eta=3)[0] is True  # cheaper: on the front, best contribution


def test_rung_losses_read_every_trial_recorded_at_the_rung():
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, params, state in ((0.5, 10, "COMPLETE"), (0.7, 20, "PRUNED"), (None, 30, "COMPLETE")):
        t = study.ask()
        if acc is not None:
            t.set_user_attr("rungs", {"1": [acc, params]})
        if state == "PRUNED":
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, [acc or 0.0, params])
    running = study.ask()
    running.set_user_attr("rungs", {"1": [0.6, 5], "3": [0.8, 5]})
    trials, dirs = study.get_trials(deepcopy=False), ["maximize", "minimize"]
    assert sorted(rung_losses(trials, 1, dirs)) == sorted([[-0.5, 10], [-0.7, 20], [-0.6, 5]])
    assert rung_losses(trials, 3, dirs) == [[-0.8, 5]]
    assert rung_losses(trials, 1, dirs, exclude=running.number) == [[-0.5, 10], [-0.7, 20]]
