"""Confirming the front: retrain its networks with more seeds, and see which points survive the noise.

A search trains each network once, with one seed; a Pareto front of single runs mixes real
differences with seed noise. ``confirm_front`` (``resnext-nas confirm``) retrains the front's
networks (or the ``top`` K closest to the knee) until each has ``seeds`` results: the trial's own
result counts as the first, the others use seeds derived from the study seed, the trial number
and the repeat index (``confirm_seed``), so a rerun asks for the same seeds and trains only the
ones not recorded yet. Each result is written to the study as soon as it exists.

Recorded on the Optuna study as the user attribute ``confirmed``: trial number (a string) ->
``{"name", "seeds": [...], "val_accuracy": [...], "mean", "sd", "robust", "on_front"}`` (plus
``latency_ms``, ``latency_ms_mean``, ``latency_ms_sd`` when latency is an objective: re-measured on
each retrained network). ``sd`` is the sample standard deviation (n - 1), 0 for one seed.

**Robust.** Each confirmed point is an interval per objective: mean - sd .. mean + sd for
accuracy (and latency when it is an objective); params and MACs are exact. Point B *robustly
dominates* point A when B's worst case (accuracy mean - sd, latency mean + sd) dominates A's best
case (accuracy mean + sd, latency mean - sd) in the usual Pareto sense. A point is ``robust``
when no other confirmed point of the current front robustly dominates it: the seed noise
measured cannot explain its place on the front away. Only confirmed points are compared (with
``top``, the others are not known well enough to judge by). A confirmed point that has since
left the front (a later trial dominates it) is kept with ``on_front`` false and ``robust`` false.

MLflow: each retraining is a run nested under its trial's run (tags ``resnext_nas.role`` =
``confirm``, ``resnext_nas.study``, ``resnext_nas.confirms`` = the trial number, ``seed``); the
trial's own run gets ``confirmed_val_accuracy_mean``/``_sd``, ``confirmed_seeds`` (and
``confirmed_latency_ms_mean``/``_sd``) and the tag ``confirmed_robust`` = true/false, so the
dashboard filters ``tags.confirmed_robust = "true"``; the parent run gets ``confirmed.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field

from search.config import ExperimentConfig
from search.errors import redact_text
from search.pareto import dominates, knee, to_losses
from search.results import Row, finished_rows, pareto_rows
from search.storage import load_study
from search.tracking import PARENT, ROLE, STUDY, Tracker
from space import NetSpec
from space.errors import SpecError

CONFIRMED = "confirmed"  # the study user attribute
CONFIRMS = "resnext_nas.confirms"  # tag of a retraining run: the trial number it confirms
NOISY = ("val_accuracy", "latency_ms")  # objectives measured with noise; params and MACs are exact


def confirm_seed(study_seed: int, number: int, repeat: int) -> int:
    """The seed of retraining ``repeat`` (1, 2, ...) of trial ``number``; repeat 0 is the trial's own seed."""
    return int(hashlib.sha256(f"{study_seed}:{number}:confirm:{repeat}".encode()).hexdigest()[:8], 16)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the sd of one value is 0."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def robust_flags(points: dict[str, dict[str, tuple[float, float]]], directions: dict[str, str]) -> dict[str, bool]:
    """Which points no other point robustly dominates (module docstring).

    Args:
        points: key -> objective -> (mean, sd); an exact objective has sd 0.
        directions: objective -> ``maximize``/``minimize`` (the objectives compared).
    """
    names = list(directions)
    dirs = [directions[o] for o in names]

    def case(p: dict[str, tuple[float, float]], best: bool) -> tuple[float, ...]:
        # the best case moves every noisy value by one sd in its good direction, the worst in its bad one
        values = [p[o][0] + (p[o][1] if (d == "maximize") == best else -p[o][1])
                  for o, d in zip(names, dirs, strict=True)]
        return to_losses(values, dirs)

    best = {k: case(p, True) for k, p in points.items()}
    worst = {k: case(p, False) for k, p in points.items()}
    return {a: not any(dominates(worst[b], best[a]) for b in points if b != a) for a in points}


def select(front: list[Row], objectives: tuple[str, ...], directions: list[str], top: int | None) -> list[Row]:
    """The front, or its ``top`` points closest to the knee in objectives scaled to [0, 1] over the front.

    Ties are broken by trial number; the knee itself comes first.
    """
    front = sorted(front, key=lambda r: r.number)
    if top is None or top >= len(front):
        return front
    losses = [to_losses([r.values[o] for o in objectives], directions) for r in front]
    lo = [min(c) for c in zip(*losses, strict=True)]
    hi = [max(c) for c in zip(*losses, strict=True)]
    scaled = [[(x - a) / (b - a) if b > a else 0.0 for x, a, b in zip(p, lo, hi, strict=True)] for p in losses]
    k = scaled[knee(losses)]
    order = sorted(range(len(front)), key=lambda i: (math.dist(scaled[i], k), front[i].number))
    return [front[i] for i in order[:top]]


def _summarise(entry: dict, latency: bool) -> dict:
    entry["mean"], entry["sd"] = mean_sd(entry["val_accuracy"])
    if latency:
        entry["latency_ms_mean"], entry["latency_ms_sd"] = mean_sd(entry["latency_ms"])
    return entry


def _first_entry(row: Row, study_seed: int, latency: bool) -> dict:
    """A network's record before any retraining: the trial's own result is its first seed."""
    from search.objective import trial_seed

    metrics = row.attrs.get("metrics") or {}
    entry = {"name": row.attrs.get("spec_name", ""),
             "seeds": [row.attrs.get("seed", trial_seed(study_seed, row.number))],
             "val_accuracy": [float(metrics.get("val_accuracy", row.values.get("val_accuracy", 0.0)))],
             "robust": False, "on_front": True}
    if latency:
        entry["latency_ms"] = [float(metrics.get("latency_ms", row.values.get("latency_ms", math.nan)))]
    return _summarise(entry, latency)


@dataclass
class Confirmation:
    """What ``confirm_front`` did and found.

    Args:
        entries: trial number -> record, for the confirmed points of the current front.
        chosen: trial numbers confirmed in this call (the front or its top K).
        trained: networks trained by this call.
        left_front: confirmed trials no longer on the front.
        failed: (trial, seed, reason) of retrainings that failed (not recorded; a rerun tries again).
        values: trial number -> its objective values in the search (for the exact ones: params, MACs).
        latency: latency is an objective (entries carry ``latency_ms``).
    """

    entries: dict[int, dict] = field(default_factory=dict)
    chosen: list[int] = field(default_factory=list)
    trained: int = 0
    left_front: list[int] = field(default_factory=list)
    latency: bool = False
    failed: list[tuple[int, int, str]] = field(default_factory=list)
    values: dict[int, dict[str, float]] = field(default_factory=dict)


def _tracking_warn(what: str, e: Exception) -> None:
    from search.errors import error_line

    print(f"[tracking] {what} failed ({error_line(e)}); confirm goes on and Optuna keeps the record",
          file=sys.stderr)


class _Runs:
    """Retraining runs nested under their trial's run, and the confirmed metrics on the trial's run."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.tracker = Tracker(cfg.tracking, cfg.name)
        self.study_name = cfg.study_name
        self.ready = False

    def setup(self) -> None:
        if not self.ready and self.tracker.enabled:
            self.tracker.setup()
            self.ready = True

    def start(self, row: Row, seed: int, repeat: int) -> str | None:
        trial_run = row.attrs.get("mlflow_run_id")
        if not self.tracker.enabled or not trial_run:
            return None
        try:
            experiment_id = self.tracker.client.get_run(trial_run).info.experiment_id
            run = self.tracker.client.create_run(
                experiment_id, run_name=f"trial-{row.number}-seed-{repeat + 1}",
                tags={ROLE: "confirm", STUDY: self.study_name, CONFIRMS: str(row.number), PARENT: trial_run,
                      "seed": str(seed), "spec_name": row.attrs.get("spec_name", "")})
            return run.info.run_id
        except Exception as e:
            _tracking_warn(f"creating the retraining run of trial {row.number}", e)
            return None

    def record(self, entries: dict[int, dict], rows: dict[int, Row], parent_id: str | None, latency: bool) -> None:
        if not self.tracker.enabled:
            return
        for number, e in entries.items():
            metrics = {"confirmed_val_accuracy_mean": e["mean"], "confirmed_val_accuracy_sd": e["sd"],
                       "confirmed_seeds": len(e["seeds"])}
            if latency:
                metrics.update(confirmed_latency_ms_mean=e["latency_ms_mean"],
                               confirmed_latency_ms_sd=e["latency_ms_sd"])
            self.tracker.log(rows[number].attrs.get("mlflow_run_id"), metrics=metrics,
                             tags={"confirmed_robust": str(e["robust"]).lower()})
        self.tracker.log_text(parent_id, json.dumps({str(k): v for k, v in entries.items()}, indent=2),
                              "confirmed.json")


def _save(study, key: str, entry: dict) -> None:
    """Write one network's record, re-reading the attribute so other records written meanwhile stay."""
    current = dict(study.user_attrs.get(CONFIRMED) or {})
    current[key] = entry
    study.set_user_attr(CONFIRMED, current)


def confirm_front(cfg: ExperimentConfig, *, seeds: int = 3, top: int | None = None, storage_url: str | None = None,
                  quiet: bool = False, stream=None) -> Confirmation:
    """Retrain the front's networks until each has ``seeds`` results; record mean, sd and robustness.

    Args:
        cfg: the experiment (its study's recipe is checked).
        seeds: results per network, the trial's own included (1 trains nothing).
        top: confirm only the ``top`` front points closest to the knee (None: the whole front).
        storage_url: Optuna storage overriding ``search.storage``.
        quiet: no progress lines.
        stream: where progress lines go (stderr).

    Raises:
        SpecError: no study, another recipe, an empty front, or bad ``seeds``/``top``.
    """
    from search.devices import release_memory, resolve_device
    from search.objective import build_and_train

    if seeds < 1:
        raise SpecError(f"--seeds must be >= 1 (the trial's own result is the first), got {seeds}")
    if top is not None and top < 1:
        raise SpecError(f"--top must be >= 1, got {top}")
    stream = stream or sys.stderr
    study = load_study(cfg, storage_url)
    front = pareto_rows(finished_rows(study, cfg.objectives), cfg.directions)
    if not front:
        raise SpecError(f"study '{cfg.study_name}' has no feasible trained network yet: nothing to confirm; "
                        "run `resnext-nas search` first")
    latency = "latency_ms" in cfg.objectives
    chosen = select(front, cfg.objectives, cfg.directions, top)
    recorded = dict(study.user_attrs.get(CONFIRMED) or {})
    out = Confirmation(chosen=[r.number for r in chosen], latency=latency)
    runs = _Runs(cfg)
    runs.setup()  # an unreachable tracking store stops here, before anything is trained

    plan = []
    for row in chosen:
        entry = recorded.get(str(row.number)) or _first_entry(row, cfg.search.seed, latency)
        wanted = [entry["seeds"][0]] + [confirm_seed(cfg.search.seed, row.number, i) for i in range(1, seeds)]
        missing = [(i, s) for i, s in enumerate(wanted) if s not in entry["seeds"]]
        plan.append((row, entry, missing))
        if str(row.number) not in recorded:  # the trial's own result is recorded even if nothing trains
            _save(study, str(row.number), entry)

    todo = sum(len(m) for _, _, m in plan)
    if todo:
        import torch

        from search.data import load_splits
        from search.latency import LATENCY_REFERENCE, measure_latency

        device = resolve_device(cfg.train.device)
        lat_device = cfg.latency.resolve(device)
        splits = load_splits(cfg.data, device)
        for row, entry, missing in plan:
            spec = NetSpec.from_dict(row.spec)
            for repeat, seed in missing:
                t0 = time.perf_counter()
                run_id = runs.start(row, seed, repeat)
                status = "FAILED"
                try:
                    model, result = build_and_train(spec, splits, cfg.train, device, seed)
                    metrics = {"val_accuracy": result.val_accuracy, "train_time_s": result.train_time_s}
                    if latency:
                        metrics["latency_ms"] = measure_latency(
                            model, spec.in_ch, spec.input_size, cfg.latency, lat_device, bf16=cfg.train.bf16,
                            channels_last=cfg.train.nhwc(lat_device),
                            reference_ms=study.user_attrs.get(LATENCY_REFERENCE)).ms
                    del model
                    runs.tracker.log(run_id, params={"seed": seed, "repeat": repeat, "trial": row.number,
                                                     "train.threads": torch.get_num_threads()},
                                     metrics=metrics, series={"val_accuracy": [r.val_accuracy for r in result.history]})
                    status = "FINISHED"
                except KeyboardInterrupt:
                    status = "KILLED"
                    raise
                except Exception as e:  # e.g. a NaN loss with this seed: reported, not recorded, retried on rerun
                    reason = redact_text(f"{type(e).__name__}: {e}")
                    runs.tracker.log(run_id, tags={"fail_reason": reason[:5000]})
                    out.failed.append((row.number, seed, reason))
                    print(f"confirm: trial {row.number} seed {seed} failed ({reason.splitlines()[0]}); not recorded, "
                          "a rerun tries it again", file=stream, flush=True)
                    continue
                finally:
                    release_memory()
                    runs.tracker.end(run_id, status)
                entry["seeds"].append(seed)
                entry["val_accuracy"].append(float(metrics["val_accuracy"]))
                if latency:
                    entry["latency_ms"].append(float(metrics["latency_ms"]))
                _save(study, str(row.number), _summarise(entry, latency))
                out.trained += 1
                if not quiet:
                    print(f"confirm {out.trained + len(out.failed)}/{todo}: trial {row.number} {entry['name']} seed "
                          f"{len(entry['seeds'])} ({seed}): val {metrics['val_accuracy']:.4f} "
                          f"({time.perf_counter() - t0:.1f} s)", file=stream, flush=True)

    # robustness among the confirmed points of the current front, recomputed from every record
    recorded = dict(study.user_attrs.get(CONFIRMED) or {})
    on_front = {r.number: r for r in front}
    entries = {int(k): v for k, v in recorded.items() if int(k) in on_front}
    points = {}
    for number, e in entries.items():
        values = on_front[number].values
        points[str(number)] = {o: (e["mean"], e["sd"]) if o == "val_accuracy"
                               else (e["latency_ms_mean"], e["latency_ms_sd"]) if o == "latency_ms" and latency
                               else (values[o], 0.0) for o in cfg.objectives}
    flags = robust_flags(points, dict(zip(cfg.objectives, cfg.directions, strict=True)))
    for key, e in recorded.items():
        e["robust"] = flags.get(key, False)
        e["on_front"] = int(key) in on_front
    study.set_user_attr(CONFIRMED, recorded)

    out.entries = dict(sorted(entries.items()))
    out.values = {n: on_front[n].values for n in out.entries}
    out.left_front = sorted(int(k) for k in recorded if int(k) not in on_front)
    runs.record(out.entries, on_front, study.user_attrs.get("mlflow_parent_run_id"), latency)
    return out
