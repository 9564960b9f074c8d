"""The numbers of a study report, apart from the page: fronts, hypervolume series, EDFs, good ranges, importance.

``search.report`` renders what this module computes; benchmarks and tests call it directly, without HTML.
Everything here reads a study (``collect``) and returns plain numbers, lists and dicts.

- The feasible Pareto front, its knee, and the front of any two objectives (``projected_front``).
- The hypervolume after each trial against trials, cumulative training epochs and seconds
  (``hv_series``), on the study's fixed reference point (``hv_reference``) or on one common to several
  studies (``common_reference``).
- The design-space analysis of Radosavovic et al., "On Network Design Spaces for Visual Recognition"
  (ICCV 2019, arXiv:1905.13214): error EDFs per value of each dimension, and complexity-normalised EDFs
  (each model reweighted so that every log-complexity bin carries the same total weight); and the
  "good ranges" of pycls' ``sweep/analysis.get_filters`` (Radosavovic et al. 2020, arXiv:2003.13678):
  resample 25% of the networks with replacement, keep the best, repeat, and take the 2.5-97.5
  percentiles of the best network's value per dimension (``design_space``).
- Which parameters matter for reaching the front: Optuna's PED-ANOVA importance with ``target=None``
  on the trained networks (``importance``).
- Counts by outcome, failures with their reasons, and the recipe keys that differ between studies
  (``recipe_differences``).
- The study's sampler and pruner against the size of its space, with what the search-quality
  evidence says to use there (``strategy``).
"""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from search.config import ExperimentConfig
from search.errors import redact
from search.pareto import knee, non_dominated, to_losses
from search.results import (
    OUT_OF_MEMORY,
    OVER_BUDGET,
    TRAINED,
    Row,
    finished_rows,
    hypervolume_by_trial,
    outcome_counts,
    pareto_rows,
    spent,
    trained_rows,
)

BOOTSTRAP = 1000  # resamples for the good ranges (pycls: 2500)
BOOT_SAMPLE = 0.25  # fraction of the networks in each resample (pycls: 0.25)
COMPLEXITY_BINS = 8  # log-uniform complexity bins of the normalised EDFs
MIN_IMPORTANCE = 20  # trained networks below which PED-ANOVA is not run (it wants >= 5 in its top 10%)
MIN_EDF = 3  # networks a dimension value needs for its own EDF curve
MIN_RANKED = 8  # trained networks below which the early epochs' ranking is not computed
SPACE_DRAWS = 4000  # random networks the share of a larger space within its static budgets is estimated from
EXACT_SPACE = 5000  # parameter combinations up to which the networks within the budgets are counted exactly


@dataclass
class StudyData:
    """What the report reads from one study."""

    label: str  # how the report names the study (its study name; made unique when comparing)
    experiment: str | None  # the experiment file the study was read with; None when read by its name alone
    storage: str  # the study's storage URL, credentials redacted
    objectives: tuple[str, ...]
    directions: list[str]
    rows: list[Row]  # every completed trial, in trial order
    trained: list[Row]  # feasible trained networks, one row per network
    front: list[Row]
    knee: Row | None
    ref: dict[str, float]
    recipe: dict
    fingerprint: str
    counts: dict[str, int]
    failures: list[dict]  # {kind, reason, count, trials}
    pruned: int
    hosts: list[str]
    study: optuna.Study = field(repr=False)
    models: list = field(default_factory=list)  # its registered model versions (search.registry.ModelLink)
    strategy: dict = field(default_factory=dict)  # ``strategy``: sampler, pruner, space size, advice


def collect(study: optuna.Study, cfg: ExperimentConfig, experiment: str | None = None, label: str | None = None,
            storage: str | None = None) -> StudyData:
    """Read what the report needs from ``study`` (made with ``cfg``'s recipe).

    Args:
        study: the study (``search.storage.load_study``).
        cfg: its experiment.
        experiment: the experiment file the study was read with (default: the file ``cfg`` was loaded
            from, ``cfg.source``; None when the study is read by its name alone).
        label: the study's name in the report (default: the study name).
        storage: the study's storage URL (default: the experiment's).
    """
    rows = finished_rows(study, cfg.objectives)
    trained = trained_rows(rows)
    front = pareto_rows(rows, cfg.directions)
    knee_row = None
    if front:
        knee_row = front[knee([to_losses([r.values[o] for o in cfg.objectives], cfg.directions) for r in front])]
    failures: dict[tuple, dict] = {}
    pruned, hosts = 0, set()
    for t in study.get_trials(deepcopy=False):
        host = (t.user_attrs.get("worker") or {}).get("host")
        if host:
            hosts.add(host)
        if t.state == TrialState.PRUNED:
            pruned += 1
        infeasible = t.state == TrialState.COMPLETE and t.user_attrs.get("outcome") == OUT_OF_MEMORY
        if t.state == TrialState.FAIL or infeasible:
            kind = t.user_attrs.get("failure", "out_of_memory" if infeasible else "failed")
            reason = (t.user_attrs.get("fail_reason") or "no reason recorded").strip().splitlines()[0][:200]
            entry = failures.setdefault((kind, reason), {"kind": kind, "reason": reason, "count": 0, "trials": []})
            entry["count"] += 1
            entry["trials"].append(t.number)
    ref = study.user_attrs.get("hv_reference") or {}
    return StudyData(label or cfg.study_name, experiment or cfg.source, redact(storage or cfg.storage_url),
                     tuple(cfg.objectives), list(cfg.directions), rows,
                     trained, front, knee_row, dict(ref), study.user_attrs.get("recipe", {}),
                     study.user_attrs.get("fingerprint", ""), outcome_counts(study),
                     sorted(failures.values(), key=lambda f: -f["count"]), pruned, sorted(hosts), study,
                     strategy=strategy(cfg, trained))


def early_ranking(trained: list[Row]) -> dict[int, float]:
    """Spearman correlation of the accuracy after epoch k with the final accuracy, over the trained
    networks with complete curves (k below the last epoch; empty under ``MIN_RANKED`` networks):
    how well a rung at epoch k would rank this study's networks."""
    from scipy.stats import spearmanr

    curves = [c for r in trained if len(c := (r.attrs.get("curve") or {}).get("val_accuracy") or []) > 1]
    if len(curves) < MIN_RANKED or len({len(c) for c in curves}) > 1:
        return {}
    final = [c[-1] for c in curves]
    return {k + 1: float(spearmanr([c[k] for c in curves], final)[0]) for k in range(len(curves[0]) - 1)}


def strategy(cfg: ExperimentConfig, trained: list[Row]) -> dict:
    """The study's sampler and pruner against its space, and what the evidence says to use there.

    The networks within the static budgets (``max_params``, ``max_macs``) are counted in a space of
    up to ``EXACT_SPACE`` parameter combinations, and in a larger one estimated as the space's size
    times the share of ``SPACE_DRAWS`` random draws within them (``exact`` says which). The advice
    follows the measured comparisons of docs/search-quality.md.
    """
    from space import complexity

    limits = [(cfg.constraints.max_params, "params"), (cfg.constraints.max_macs, "macs")]

    def within(spec) -> bool:
        cx = complexity(spec)
        return all(bound is None or getattr(cx, key) <= bound for bound, key in limits)

    size = cfg.space.size()
    exact = cfg.space.num_combinations() <= EXACT_SPACE
    if exact:
        in_budget = sum(map(within, cfg.space.enumerate()))
    else:  # per number of stages: the draws pick it uniformly, while deeper networks are far more numerous
        from space.searchspace import Dim

        rng, in_budget, stages = random.Random(0), 0, cfg.space.num_stages.choices
        for n in stages:
            sub = dataclasses.replace(cfg.space, num_stages=Dim((n,)))
            draws = sum(within(sub.from_params(sub.sample_params(rng))) for _ in range(SPACE_DRAWS // len(stages)))
            in_budget += round(sub.size() * draws / (SPACE_DRAWS // len(stages)))
    in_budget = max(1, in_budget)
    share = len(trained) / in_budget
    s = cfg.search
    if s.n_trials >= in_budget:
        advice = ("n_trials reaches the networks within the budgets: any sampler ends up training (nearly) all "
                  "of them, so the sampler hardly matters; sampler grid trains each exactly once.")
    elif s.sampler == "costaware":
        advice = ("costaware is the sampler to keep: it trains only networks whose known costs leave room on the "
                  "front. " + SAMPLER_EVIDENCE)
    else:
        advice = f"consider sampler costaware over {s.sampler}: " + SAMPLER_EVIDENCE
    advice += " " + PRUNER_EVIDENCE
    rho = early_ranking(trained)
    if rho:
        advice += (" In this study, the Spearman correlation of the accuracy after epoch k with the final accuracy "
                   "is " + ", ".join(f"{v:.2f} (k = {k})" for k, v in rho.items())
                   + f" over {len(trained)} networks: a rung at epoch k prunes on that ranking.")
    return {"sampler": s.sampler, "pruner": s.pruner, "space": size, "in_budget": in_budget, "exact": exact,
            "trained": len(trained), "share": share, "early_ranking": rho, "advice": advice}


SAMPLER_EVIDENCE = ("Against random search at equal epochs (share of the best front's hypervolume, paired by seed, "
                    "95% interval): +0.042 [+0.024, +0.059] at 30 trained networks on the Fashion-MNIST table "
                    "(264 networks within the budget, 20 seeds), and +0.040 [+0.024, +0.056] at 30 on a "
                    "13,015-network space (real studies, 5 seeds, top of each front confirmed), where NSGA-II "
                    "was below random (-0.034 [-0.064, -0.004]) and TPE level with it (docs/search-quality.md).")
PRUNER_EVIDENCE = ("Pruners pay only where a short run ranks networks as the full run does and costs far less: "
                   "asha was level with or below random search on every table; probes (a complete short run "
                   "first) were below random on the 264-network Fashion-MNIST table and +0.013 [+0.001, +0.027] "
                   "above it on the 13,015-network space, where costaware without a pruner was +0.040 "
                   "and costaware with probes +0.004 [-0.008, +0.014] "
                   "(docs/search-quality.md#which-sampler-and-pruner-to-use).")


def dimensions(spec: dict) -> dict[str, float]:
    """The design-space dimensions of one network (its NetSpec dict), as the analysis groups them.

    Cardinality, base width and bottleneck channels are the first stage's (the space samples one
    value per network); ``depth_i`` is stage i's depth (absent when the network has fewer stages).
    """
    stages = spec.get("stages") or []
    if not stages:
        return {}
    out = {"num_stages": len(stages), "stem_ch": spec.get("stem_ch"), "bottleneck_ch": stages[0]["bottleneck_ch"],
           "cardinality": stages[0]["groups"], "base_width": stages[0]["base_width"]}
    if len(stages) > 1:
        out["channel_mult"] = stages[1]["bottleneck_ch"] / stages[0]["bottleneck_ch"]
    for i, s in enumerate(stages):
        out[f"depth_{i + 1}"] = s["depth"]
    return {k: float(v) for k, v in out.items() if v is not None}


def error_of(row: Row) -> float:
    """``1 - val_accuracy`` of a trained network."""
    acc = row.values.get("val_accuracy", (row.attrs.get("metrics") or {}).get("val_accuracy"))
    return 1.0 - float(acc) if acc is not None else math.nan


def design_matrix(trained: list[Row]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(errors, {dimension: values with NaN where a network lacks it}) over networks with an error.

    Dimensions with a single value among them are left out: there is nothing to compare.
    """
    rows = [r for r in trained if not math.isnan(error_of(r))]
    errors = np.array([error_of(r) for r in rows], dtype=float)
    dims = [dimensions(r.spec) for r in rows]
    names = sorted({k for d in dims for k in d}, key=dim_order)
    values = {k: np.array([d.get(k, math.nan) for d in dims], dtype=float) for k in names}
    return errors, {k: v for k, v in values.items() if len(np.unique(v[~np.isnan(v)])) > 1}


def dim_order(name: str) -> tuple:
    """A sort key that lists the design dimensions in a fixed order, stage depths last by stage."""
    fixed = ("cardinality", "base_width", "bottleneck_ch", "channel_mult", "stem_ch", "num_stages")
    if name in fixed:
        return (fixed.index(name), 0)
    return (len(fixed), int(name.split("_")[1]) if name.startswith("depth_") else 0)


# -- EDFs and good ranges -----------------------------------------------------------------------------

def edf(errors: np.ndarray, weights: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    """The empirical distribution function of ``errors``: (sorted errors, F at each of them).

    ``F(e) = sum of the weights of the errors <= e`` over the total weight (uniform weights by
    default: the fraction of networks with an error at most ``e``).
    """
    errors = np.asarray(errors, dtype=float)
    w = np.ones_like(errors) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(errors, kind="stable")
    cum = np.cumsum(w[order]) / w.sum() if len(errors) else np.zeros(0)
    return errors[order].tolist(), cum.tolist()


def complexity_weights(cx: np.ndarray, lo: float, hi: float, bins: int = COMPLEXITY_BINS) -> np.ndarray:
    """Weights that give every non-empty log-complexity bin of [lo, hi] the same total weight.

    Radosavovic et al. 2019 (Sec. 4, "normalized comparisons"): reweighting the models so that
    their complexity distribution is the same (here uniform over log complexity) removes the
    effect of one design space simply holding larger models than another.
    """
    cx = np.asarray(cx, dtype=float)
    if len(cx) == 0:
        return cx
    edges = np.linspace(math.log10(lo), math.log10(hi), bins + 1) if hi > lo else np.array([-np.inf, np.inf])
    ids = np.clip(np.searchsorted(edges, np.log10(cx), side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(ids, minlength=len(edges) - 1)
    w = 1.0 / counts[ids]
    return w / w.sum()


def good_ranges(errors: np.ndarray, values: dict[str, np.ndarray], n_boot: int = BOOTSTRAP,
                sample: float = BOOT_SAMPLE, seed: int = 0) -> dict[str, dict]:
    """The bootstrap "good range" of each dimension (pycls ``get_filters``).

    Draw ``max(1, int(n * sample))`` networks with replacement, keep the one with the lowest
    error, record its value of every dimension; repeat ``n_boot`` times. The interval is the
    2.5 and 97.5 percentiles of those values (the median is the "best" value).

    Returns:
        dimension -> {lo, median, hi, absent}: absent is the fraction of resamples whose best
        network lacks the dimension (e.g. ``depth_3`` of a two-stage network); None values when
        every one lacks it.
    """
    n = len(errors)
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    k = max(1, int(n * sample))
    idx = rng.integers(0, n, size=(n_boot, k))
    best = idx[np.arange(n_boot), np.argmin(errors[idx], axis=1)]
    out = {}
    for name, v in values.items():
        picked = v[best]
        present = picked[~np.isnan(picked)]
        lo, med, hi = (np.percentile(present, [2.5, 50, 97.5]).tolist() if len(present) else (None, None, None))
        out[name] = {"lo": lo, "median": med, "hi": hi, "absent": float(1 - len(present) / n_boot)}
    return out


def design_space(trained: list[Row], cx_key: str = "params", cx_range: tuple[float, float] | None = None) -> dict:
    """EDFs (raw and complexity-normalised) overall and per dimension value, and the good ranges.

    Args:
        trained: the feasible trained networks (one row per network).
        cx_key: the complexity the normalised EDFs control for (a trial user attribute).
        cx_range: the complexity range of the bins (default: the networks' own); reports that
            compare studies pass one range for all.
    """
    errors, values = design_matrix(trained)
    rows = [r for r in trained if not math.isnan(error_of(r))]
    cx = np.array([float(r.attrs.get(cx_key) or r.values.get(cx_key) or 1.0) for r in rows])
    lo, hi = cx_range or ((float(cx.min()), float(cx.max())) if len(cx) else (1.0, 1.0))
    out = {"n": len(errors), "complexity": cx_key, "range": [lo, hi], "bins": COMPLEXITY_BINS,
           "all": _edfs(errors, cx, lo, hi), "dims": {}, "good": good_ranges(errors, values)}
    if len(errors):
        b = int(np.argmin(errors))
        out["best"] = {"trial": rows[b].number, "error": float(errors[b]),
                       "values": {k: (None if math.isnan(v[b]) else float(v[b])) for k, v in values.items()}}
    for name, v in values.items():
        curves = {}
        for value in np.unique(v[~np.isnan(v)]):
            sel = v == value
            if sel.sum() >= MIN_EDF:
                curves[format_value(value)] = _edfs(errors[sel], cx[sel], lo, hi)
        out["dims"][name] = curves
    return out


def _edfs(errors: np.ndarray, cx: np.ndarray, lo: float, hi: float) -> dict:
    e, f = edf(errors)
    en, fn = edf(errors, complexity_weights(cx, lo, hi))
    return {"n": int(len(errors)), "errors": e, "cum": f, "errors_norm": en, "cum_norm": fn,
            "min": min(e) if e else None, "mean": float(np.mean(errors)) if len(errors) else None}


def format_value(v: float) -> str:
    """A dimension value as the analysis names it (``4``, ``1.5``)."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


# -- hypervolume and importance -------------------------------------------------------------------

def hv_series(data: StudyData, ref: dict[str, float] | None = None) -> dict:
    """Hypervolume after each completed trial, with the compute spent so far.

    Args:
        data: the study.
        ref: the reference point (default: the study's own ``hv_reference``); its objectives
            decide which objectives count.
    Returns:
        {trial, hv, epochs, seconds}: lists in trial order; epochs and seconds are the cumulative
        training spend (``search.results.spent``) of every finished trial up to that one: trained
        networks, and trials stopped at a rung of the pruner (reused and skipped trials cost nothing).
    """
    ref = ref if ref is not None else data.ref
    if not ref or not data.rows:
        return {"trial": [], "hv": [], "epochs": [], "seconds": []}
    series = hypervolume_by_trial(data.rows, ref)
    spend = sorted((t.number, *spent(t)) for t in data.study.get_trials(deepcopy=False) if t.state.is_finished())
    epochs = seconds = 0.0
    ep, sec, i = [], [], 0
    for number, _ in series:
        while i < len(spend) and spend[i][0] <= number:
            epochs, seconds, i = epochs + spend[i][1], seconds + spend[i][2], i + 1
        ep.append(epochs)
        sec.append(seconds)
    return {"trial": [n for n, _ in series], "hv": [v for _, v in series], "epochs": ep, "seconds": sec}


def importance(data: StudyData) -> tuple[dict[str, float] | None, str]:
    """PED-ANOVA importance of each parameter for reaching the front (``target=None``), and a note.

    Computed on the feasible trained networks only (one trial per network: reused copies and
    skipped proposals would count a network twice or bring in placeholder values), copied into
    an in-memory study with the study's directions.
    """
    n = len(data.trained)
    if n < MIN_IMPORTANCE:
        return None, (f"too few trained networks for PED-ANOVA ({n} < {MIN_IMPORTANCE}): it compares the "
                      "top 10% of networks with the rest, and needs at least a handful in that top")
    by_number = {t.number: t for t in data.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    twin = optuna.create_study(directions=data.directions, storage=optuna.storages.InMemoryStorage())
    for r in data.trained:
        t = by_number[r.number]
        twin.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, values=t.values))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = optuna.importance.get_param_importances(
            twin, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=None)
    fixed = {k for t in twin.trials for k, d in t.distributions.items() if d.single()}
    scores = {k: v for k, v in scores.items() if k not in fixed}  # a fixed parameter cannot matter
    notes = [f"PED-ANOVA on {n} trained networks, target=None: how much each parameter's distribution among the "
             "networks nearest the front (top 10% by non-domination rank) differs from its distribution among "
             "the top half; normalised to sum to 1"]
    if n < 50:
        notes.append(f"only {n} networks: fewer than 5 in the top 10%, so these values are noisy")
    notes += [str(w.message).split("\n")[0] for w in caught if "importance" in str(w.message).lower()]
    return scores, "; ".join(notes)


def measured_values(r: Row) -> dict[str, float | None]:
    """The objective values that were measured (an untrained network has only params and MACs)."""
    if r.outcome == TRAINED:
        return {k: (v if math.isfinite(v) else None) for k, v in r.values.items()}
    return {k: (v if k in ("params", "macs") and math.isfinite(v) else None) for k, v in r.values.items()}


def infeasible_reason(r: Row) -> str:
    """Why a proposal is off the front although proposed: never built, never trained, or over a budget."""
    if r.outcome == OVER_BUDGET:
        return "over budget: never built"
    if r.outcome == OUT_OF_MEMORY:
        return "out of memory: never trained"
    if not r.feasible:
        return "infeasible: trained, but over a budget measured after training (latency)"
    return r.outcome


def budgets(data: StudyData) -> dict[str, float]:
    """objective -> its budget in the recipe (``constraints.max_*``), for the objectives that have one."""
    out = {}
    for o in data.objectives:
        key = {"params": "max_params", "macs": "max_macs", "latency_ms": "max_latency_ms"}.get(o)
        v = data.recipe.get(f"constraints.{key}") if key else None
        if v is not None:
            out[o] = float(v)
    return out


def projected_front(data: StudyData, x: str, y: str) -> list[Row]:
    """The networks of the front that no other front network beats on objectives ``x`` and ``y`` alone.

    Sorted by ``x``: the staircase the front draws in the (x, y) plane.
    """
    dirs = dict(zip(data.objectives, data.directions, strict=True))
    front = data.front
    losses = [to_losses([r.values[x], r.values[y]], [dirs[x], dirs[y]]) for r in front]
    return sorted((front[i] for i in non_dominated(losses)), key=lambda r: r.values[x])


def complexity_range(datas: list[StudyData], cx_key: str = "params") -> tuple[float, float]:
    """The smallest and largest complexity over several studies' trained networks (one range of EDF bins)."""
    cx = [float(r.attrs.get(cx_key) or 1) for d in datas for r in d.trained]
    return (min(cx), max(cx)) if cx else (1.0, 1.0)


def common_reference(datas: list[StudyData]) -> dict[str, float]:
    """One reference point for several studies: their common objectives, each at its worst reference.

    Accuracy keeps 0; each cost takes the largest of the studies' references, so every study's
    front lies inside it and the hypervolumes compare.
    """
    common = [o for o in datas[0].ref if all(o in d.ref for d in datas)]
    return {o: (min if o == "val_accuracy" else max)(d.ref[o] for d in datas) for o in common}


def recipe_differences(datas: list[StudyData]) -> list[tuple[str, list]]:
    """(key, [value per study]) for every recipe key whose value differs between the studies."""
    keys = sorted(set().union(*(d.recipe for d in datas)))
    missing = object()
    out = []
    for k in keys:
        vals = [d.recipe.get(k, missing) for d in datas]
        if any(v != vals[0] for v in vals[1:]):
            out.append((k, ["(absent)" if v is missing else v for v in vals]))
    return out


def unique_labels(names: list[str], origins: list[str]) -> list[str]:
    """Study names, with where each was read from added where two are equal.

    Args:
        names: the study names.
        origins: each study's experiment file (its stem is added) or storage URL (added whole).
    """
    counts = Counter(names)
    return [n if counts[n] == 1 else f"{n} ({Path(o).stem if o.endswith(('.yaml', '.yml')) else o})"
            for n, o in zip(names, origins, strict=True)]

