"""Pareto-aware asynchronous successive halving (ASHA) for multi-objective studies.

Optuna's pruners rank one value (``Trial.report`` raises in a multi-objective study), so this
one keeps its own records: a trial that reaches a rung writes its objective values there (the
accuracy at the rung, its costs) into its user attribute ``rungs`` (``{"<epochs>": [values]}``)
in the study's shared storage, and decides
whether to go on from the records of every other trial that reached the same rung, finished,
stopped or still running, on any worker and across resumes. Nothing waits for a rung to fill.

The ranking is over what the study optimises: accuracy at the rung and the trial's cost
objectives (params, MACs, latency: properties of the architecture, known before training).
Points are sorted by non-dominated front, and inside a front by hypervolume contribution (the
share of the front's hypervolume only that point covers, on the rung's min-max-normalised
losses), largest first. The contribution is the quantity the study itself is judged by
(``study_hypervolume``); MOASHA's epsilon-net also spreads the survivors but needs a distance
scale per objective, which a contribution does not. A trial goes on when its place is within
the top ``1/eta`` of the rung (at least the best one: like Optuna's SuccessiveHalvingPruner, the
first ``eta - 1`` trials at a rung go on only while they lead it).

Two pruners share this ranking (``search.pruner``): ``asha`` ranks a trial at the rungs of its
own run (records under ``rungs``); ``probes`` first trains a complete short run per rung (its
learning-rate schedule annealed, as the full run's is at its end) and ranks that (records under
``probes``); a trial that goes on then trains its full run from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search.pareto import hypervolume, non_dominated, to_losses

RUNGS_ATTR = "rungs"  # user attribute: {"<epochs>": [objective values there, in the study's order]}
PROBES_ATTR = "probes"  # the same for complete short probe runs (pruner probes)


def rung_epochs(min_epochs: int, eta: int, max_epochs: float) -> list[int]:
    """The rungs below the full budget: ``min_epochs * eta**k`` whole epochs, k = 0, 1, ..., while < ``max_epochs``.

    Rungs fall on epoch ends, where the trainer scores the validation split anyway.

    Args:
        min_epochs: epochs at the first rung.
        eta: reduction factor (>= 2): a rung keeps the top ``1/eta``.
        max_epochs: ``train.epochs``, the full budget (not a rung: a trial that gets there is done).
    """
    rungs, r = [], int(min_epochs)
    while r < max_epochs:
        rungs.append(r)
        r *= eta
    return rungs


def rung_key(epochs: int) -> str:
    """The key of a rung in the ``rungs`` attribute (JSON object keys are strings)."""
    return str(int(epochs))


def order(losses: Sequence[Sequence[float]]) -> list[int]:
    """Indices of ``losses`` (minimised) best first: by non-dominated front, then hypervolume contribution."""
    pts = np.asarray(losses, dtype=float)
    if len(pts) == 0:
        return []
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    norm = (pts - lo) / np.where(hi > lo, hi - lo, 1.0)  # every objective in [0, 1] over this rung
    ref = np.full(pts.shape[1], 1.1)
    left, ranked = list(range(len(pts))), []
    while left:
        front = [left[i] for i in non_dominated(norm[left].tolist())]
        whole = hypervolume(norm[front].tolist(), ref)
        contrib = {i: whole - hypervolume(norm[[j for j in front if j != i]].tolist(), ref) if len(front) > 1
                   else whole for i in front}
        ranked += sorted(front, key=lambda i: (-contrib[i], i))
        taken = set(front)
        left = [i for i in left if i not in taken]
    return ranked


def decide(mine: Sequence[float], others: Sequence[Sequence[float]], eta: int) -> tuple[bool, int, int]:
    """Whether a trial at a rung goes on: ``(go_on, its place from 0, trials at the rung)``.

    Args:
        mine: the trial's losses at the rung (accuracy negated, then the costs).
        others: the losses of every other trial recorded at the rung.
        eta: the reduction factor.
    """
    ranked = order([list(mine), *map(list, others)])
    place, n = ranked.index(0), len(ranked)
    return place < max(1, n // eta), place, n


def rung_losses(trials, rung: int, directions: Sequence[str], exclude: int | None = None,
                attr: str = RUNGS_ATTR) -> list[list[float]]:
    """The losses of the trials recorded at ``rung`` in ``attr`` (any state), ``exclude`` (a trial number) left out.

    A record is the trial's objective values at the rung, in the study's objective order
    (accuracy at the rung, the costs), so it stands on its own.
    """
    key = rung_key(rung)
    return [list(to_losses(v, directions)) for t in trials
            if t.number != exclude and (v := (t.user_attrs.get(attr) or {}).get(key)) is not None]
