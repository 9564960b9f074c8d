"""A sampler that spends training only where the front has room (``search.sampler: costaware``).

Before a network is trained, its parameters and MACs are known exactly (``space.analytic``) and
its latency can be predicted from the latencies measured so far; only its accuracy is unknown.
So each trial, this sampler:

1. draws ``candidates`` networks of the space at random, keeps those within the static budgets
   (``max_params``, ``max_macs``) that no trial of the study has tried yet;
2. fits a Gaussian process of validation accuracy over the networks' features (log sizes of
   every dimension, log params, log MACs) on the networks trained so far, and gives each
   candidate an optimistic accuracy: the prediction plus ``kappa`` standard deviations;
3. trains the candidate whose optimistic point (that accuracy with its known costs, the latency
   from a log-linear fit of the measured latencies) adds the most hypervolume to the current
   front. A candidate whose costs leave no room on the front for any accuracy it could plausibly
   reach adds nothing, and is never trained while another adds something; when none does, the
   most uncertain candidate is trained.

The first ``n_startup`` trained networks are random candidates. The chosen network reaches the
trial through Optuna's define-by-run calls (``sample_independent`` answers each parameter from
the choice made in ``before_trial``), so the study, its budgets and its records are the same as
with any other sampler.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search.pareto import hypervolume, non_dominated
from space import SearchSpace, complexity
from space.analytic import Complexity

STATIC = ("params", "macs")  # costs known exactly before a network is built
MAX_FIT = 400  # trained networks the surrogate is fitted on, at most
REFIT_GROWTH = 1.25  # the surrogate's hyperparameters are optimised again when its data grew by this factor


def features(space: SearchSpace, params: dict, cx: Complexity | None = None) -> list[float]:
    """A network's features for the surrogate: log2 of each dimension's value (0 for absent
    stages' depths), log10 of its params and MACs (``cx``, its complexity, when already known)."""
    cx = cx or complexity(space.from_params(params))
    depths = [params.get(f"depth_{i + 1}", 0) for i in range(max(space.num_stages.choices))]
    dims = [params[k] for k in ("num_stages", "stem_ch", "bottleneck_ch", "channel_mult", "cardinality", "base_width")]
    return [math.log2(v) for v in dims] + [math.log2(1 + d) for d in depths] + [math.log10(cx.params),
                                                                                   math.log10(max(1, cx.macs))]


class CostAwareSampler(optuna.samplers.BaseSampler):
    """Chooses the network whose known costs and optimistic accuracy add most to the front.

    Args:
        space: the study's design space.
        objectives: the study's objective names (``val_accuracy``, ``params``, ``macs``, ``latency_ms``).
        max_params: the static parameter budget, or None.
        max_macs: the static MAC budget, or None.
        seed: seeds the candidate draws and the surrogate.
        candidates: random networks drawn per trial.
        n_startup: trained networks before the surrogate is used (random candidates until then).
        kappa: standard deviations added to the predicted accuracy (the optimism of the bound).
    """

    def __init__(self, space: SearchSpace, objectives: Sequence[str], *, max_params: float | None = None,
                 max_macs: float | None = None, seed: int | None = None, candidates: int = 256,
                 n_startup: int = 10, kappa: float = 2.0) -> None:
        self.space, self.objectives = space, list(objectives)
        self.budgets = {"params": max_params, "macs": max_macs}
        self.seed = 0 if seed is None else seed
        self.candidates, self.n_startup, self.kappa = candidates, n_startup, kappa
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._chosen: dict[int, dict] = {}
        self._kernel, self._fitted_on = None, 0  # the surrogate's hyperparameters, and on how many networks

    # -- Optuna's sampler interface ---------------------------------------------------------------

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        choice = self.choose(study, random.Random(f"{self.seed}:{trial.number}"))
        if choice is not None:
            self._chosen[trial._trial_id] = choice

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution):
        chosen = self._chosen.get(trial._trial_id, {})
        if param_name in chosen:
            return chosen[param_name]
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._chosen.pop(trial._trial_id, None)

    # -- the choice ----------------------------------------------------------------------------

    def _draw(self, rng: random.Random, tried: set[str]) -> list[tuple[dict, Complexity]]:
        """Random networks within the static budgets that no trial has tried, each once."""
        out, seen = [], set(tried)
        for _ in range(self.candidates):
            params = self.space.sample_params(rng)
            spec = self.space.from_params(params)
            if spec.hash in seen:
                continue
            seen.add(spec.hash)
            cx = complexity(spec)
            if any(b is not None and getattr(cx, k) > b for k, b in self.budgets.items()):
                continue
            out.append((params, cx))
        return out

    def choose(self, study: optuna.Study, rng: random.Random) -> dict | None:
        """The parameters of the next network to train, or None to leave the choice to random sampling."""
        trials = study.get_trials(deepcopy=False)
        tried = {self.space.from_params(t.params).hash for t in trials if t.params and self._complete_params(t)}
        pool = self._draw(rng, tried)
        if not pool:
            return None
        done = [t for t in trials if t.state == TrialState.COMPLETE and self._complete_params(t)
                and self._feasible(t)]
        if len(done) < self.n_startup or "val_accuracy" not in self.objectives:
            return rng.choice(pool)[0]
        fit = done[-MAX_FIT:]  # a Gaussian process costs n^3: fitted on the latest networks at most
        x_fit = np.array([features(self.space, t.params) for t in fit])
        x_pool = np.array([features(self.space, p, cx) for p, cx in pool])
        acc_i = self.objectives.index("val_accuracy")
        refit = len(fit) >= REFIT_GROWTH * self._fitted_on  # hyperparameters optimised again as the data grow
        mean, sd, kernel = _gp(x_fit, np.array([t.values[acc_i] for t in fit]), x_pool, self.seed,
                               None if refit else self._kernel)
        if refit:
            self._kernel, self._fitted_on = kernel, len(fit)
        columns = []
        for i, name in enumerate(self.objectives):
            if name == "val_accuracy":
                columns.append(-np.minimum(1.0, mean + self.kappa * sd))  # no accuracy above 1
            elif name in STATIC:
                columns.append(np.array([float(getattr(cx, name)) for _, cx in pool]))
            else:  # latency_ms: predicted from the measured ones, as optimistically as the accuracy
                columns.append(_loglinear(x_fit, np.array([t.values[i] for t in fit]), x_pool, self.kappa))
        known = np.array([[-v if n == "val_accuracy" else v for v, n in zip(t.values, self.objectives, strict=True)]
                          for t in done])
        gains = _hv_gains(known, np.stack(columns, 1))
        best = int(np.argmax(gains)) if gains.max() > 0 else int(np.argmax(sd))
        return pool[best][0]

    def _complete_params(self, t: FrozenTrial) -> bool:
        n = t.params.get("num_stages")
        return n is not None and all(k in t.params for k in (f"depth_{i + 1}" for i in range(n)))

    def _feasible(self, t: FrozenTrial) -> bool:
        return t.values is not None and all(math.isfinite(v) for v in t.values) and all(
            c <= 0 for c in t.constraints.values())


def _gp(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, seed: int,
        kernel=None) -> tuple[np.ndarray, np.ndarray, object]:
    """Mean and standard deviation of a Gaussian process of ``y`` over standardised ``x`` at ``x_new``,
    and its fitted kernel. Given a ``kernel`` (an earlier fit's), its hyperparameters are kept: only
    the data change, and the fit is one Cholesky factorisation instead of an optimisation."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    mu, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1
    if kernel is None:
        kernel = ConstantKernel(1.0) * Matern(length_scale=np.ones(x.shape[1]), length_scale_bounds=(1e-2, 1e3),
                                              nu=2.5) + WhiteKernel(1e-2, (1e-6, 1.0))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed)
    else:
        gp = GaussianProcessRegressor(kernel, normalize_y=True, optimizer=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit((x - mu) / scale, y)
    mean, sd = gp.predict((x_new - mu) / scale, return_std=True)
    return mean, sd, gp.kernel_


def _loglinear(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, kappa: float = 0.0) -> np.ndarray:
    """A least-squares fit of log ``y`` on ``x`` (positive ``y``), predicted at ``x_new`` and lowered by
    ``kappa`` standard deviations of the fit's residuals (an optimistic cost)."""
    a = np.c_[np.ones(len(x)), x]
    log_y = np.log(np.maximum(y, 1e-9))
    coef = np.linalg.lstsq(a, log_y, rcond=None)[0]
    resid = float(np.std(log_y - a @ coef)) if len(y) > a.shape[1] else 0.0
    return np.exp(np.c_[np.ones(len(x_new)), x_new] @ coef - kappa * resid)


def _hv_gains(known: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The hypervolume each candidate point (losses) adds to the front of ``known`` (losses), both
    min-max normalised over the two together, reference 1.1."""
    both = np.vstack([known, candidates])
    lo, hi = both.min(0), both.max(0)
    norm = lambda p: (p - lo) / np.where(hi > lo, hi - lo, 1)  # noqa: E731
    front = norm(known[non_dominated(known.tolist())])
    ref = [1.1] * known.shape[1]
    base = hypervolume(front.tolist(), ref)
    gains = np.array([hypervolume(np.vstack([front, c]).tolist(), ref) - base for c in norm(candidates)])
    return np.where(gains > 1e-12, gains, 0.0)  # a point behind the front adds nothing, rounding aside
