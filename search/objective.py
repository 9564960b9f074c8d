"""One trial: suggest a network, know its costs, decide whether to train it, train it, measure it.

suggest a NetSpec -> analytic params/MACs -> over a static budget? never built (``over_budget``)
-> the study already trained this network? its result is reused (``reused``) -> latency of the
untrained network (costs first: same compute; over ``max_latency_ms``? never trained) -> build,
train briefly (``trained``), or stop at a rung of the pruner (``pruned``, Optuna state PRUNED:
``search.asha``: a rung of the trial's own run, or a complete short probe run before it); a
network that does not fit in the device's memory is recorded as infeasible (``out_of_memory``),
so the sampler learns the region and the same network is never tried again on that device. The
trial's MLflow run is made as it starts (RUNNING, so the dashboard shows it) and gets the trial's
record in one batch as it ends, always FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import traceback
from collections.abc import Callable
from dataclasses import replace

import optuna
import torch

from search import worker
from search.asha import PROBES_ATTR, RUNGS_ATTR, decide, rung_epochs, rung_key, rung_losses
from search.config import ExperimentConfig
from search.data import Splits, steps_per_epoch
from search.devices import device_name, memory_in_use, release_memory
from search.errors import StorageUnavailable, redact_text
from search.latency import measure_latency
from search.outage import best_effort
from search.pareto import to_losses
from search.progress import Progress
from search.results import NETWORK, OUT_OF_MEMORY, OVER_BUDGET, PRUNED, REUSED, STATIC, TRAINED, TRAINING, Ledger
from search.tracking import Tracker
from search.train import NonFiniteLoss, seed_everything, train_model
from space import NetSpec, build_model, complexity

OOM_ERRORS = (MemoryError, torch.cuda.OutOfMemoryError)
OOM_MARKERS = ("out of memory", "can't allocate memory", "ALLOC_FAILED")


class Stopped(Exception):
    """Raised from a rung by the pruner: the trial is not in the top 1/eta there."""

    def __init__(self, rung: int, place: int, of: int, keep: int, accuracy: float, epochs: float,
                 train_time_s: float, probe: bool = False) -> None:
        where = f"after its complete {rung}-epoch probe" if probe else f"at the {rung}-epoch rung"
        super().__init__(f"stopped {where}: place {place} of {of} there, only the top {keep} go on")
        self.rung, self.place, self.of, self.accuracy = rung, place, of, accuracy
        self.epochs, self.train_time_s = epochs, train_time_s  # what the trial spent training, probes included


def trial_seed(study_seed: int, number: int) -> int:
    """Per-trial seed derived from the study seed and trial number (stable across runs)."""
    return int(hashlib.sha256(f"{study_seed}:{number}".encode()).hexdigest()[:8], 16)


def constrain(trial: optuna.Trial, key: str, value: float) -> None:
    """``trial.set_constraint`` (<= 0 feasible), mirrored as the user attribute ``constraint.<key>``.

    Samplers read the constraint; optuna-dashboard shows user attributes but not Optuna 5's named
    constraints, so the attribute is how a dashboard user sees why a trial is infeasible.
    """
    trial.set_constraint(key, value)
    trial.set_user_attr(f"constraint.{key}", float(value))


def failure_kind(e: BaseException) -> str:
    """``out_of_memory``, ``nonfinite_loss`` or ``error``: the reason class of a trial's exception."""
    if isinstance(e, NonFiniteLoss):
        return "nonfinite_loss"
    if isinstance(e, OOM_ERRORS) or (isinstance(e, RuntimeError) and any(m in str(e) for m in OOM_MARKERS)):
        return "out_of_memory"
    return "error"


def build_and_train(spec: NetSpec, splits: Splits, train_cfg, device: torch.device, seed: int,
                    on_epoch: Callable | None = None):
    """Seed, build and train one network: the same seed (and threads) gives the same weights and result.

    Returns:
        (model, TrainResult).
    """
    seed_everything(seed, device)  # before building, so the initial weights follow the seed too
    model = build_model(spec)
    return model, train_model(model, splits, train_cfg, device=device, seed=seed, on_epoch=on_epoch)


def run_params(spec: NetSpec, cfg: ExperimentConfig) -> dict:
    """MLflow params of a trial: the NetSpec fields (per-stage ones joined) and training settings."""
    params = {k: v for k, v in spec.to_dict().items() if k != "stages"}
    params["num_stages"] = len(spec.stages)
    for field in ("depth", "bottleneck_ch", "stride", "groups", "base_width"):
        params[field] = ",".join(str(getattr(s, field)) for s in spec.stages)
    params.update({f"train.{k}": v for k, v in vars(cfg.train).items()})
    params["train.threads"] = torch.get_num_threads()  # what ran, whatever the config asked
    params["dataset"] = cfg.data.dataset
    return params


def largest_latency_ms(cfg: ExperimentConfig, device: torch.device, reference_ms: float | None = None) -> float:
    """Latency of the space's largest network (untrained: same compute) under the study's protocol."""
    spec = cfg.space.largest()
    lat_device = cfg.latency.resolve(device)
    seed_everything(cfg.search.seed, lat_device)
    model = build_model(spec)
    try:
        return measure_latency(model, spec.in_ch, spec.input_size, cfg.latency, lat_device, bf16=cfg.train.bf16,
                               channels_last=cfg.train.nhwc(lat_device), reference_ms=reference_ms).ms
    finally:
        del model
        release_memory()


class Objective:
    """The function Optuna calls for each trial.

    Args:
        cfg: the experiment.
        splits: train/val tensors already on ``device``.
        device: where trials train.
        tracker: MLflow writer (may be disabled).
        parent_id: the study's MLflow run id.
        progress: progress display.
        ledger: the study's trials so far (which networks it has trained), kept up to date by the loop.
        reference_ms: the study's reference latency (``search.latency.reference_latency_ms``), when
            its CPU measurements are interleaved with the reference network.
    """

    def __init__(self, cfg: ExperimentConfig, splits: Splits, device: torch.device, tracker: Tracker,
                 parent_id: str | None, progress: Progress, ledger: Ledger, reference_ms: float | None = None) -> None:
        self.cfg, self.splits, self.device, self.reference_ms = cfg, splits, device, reference_ms
        self.tracker, self.parent_id, self.progress, self.ledger = tracker, parent_id, progress, ledger
        self.latency_device = cfg.latency.resolve(device)
        self.device_key = f"{device.type}:{device_name(device)}"  # out-of-memory is a property of this
        self.worker = {**worker.identity(), "threads": torch.get_num_threads()}
        # trial number -> the ``pareto`` tag its run ended with, as this worker's ledger saw the front
        # then; the loop compares it with the front once the trial is in and rewrites it if it differs
        self.pareto_tags: dict[int, str] = {}
        self.trial_id: int | None = None  # the storage id of the trial this objective ran last

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        cfg = self.cfg
        self.trial_id = trial._trial_id
        trial.set_user_attr("worker", self.worker)  # first: whoever finds this trial orphaned needs it
        spec = cfg.space.suggest(trial)
        cx = complexity(spec)
        # the spec as a tag (compact JSON: NetSpec.from_dict(json.loads(tag)) rebuilds the network)
        run_id = self.tracker.start_trial(self.parent_id, cfg.study_name, trial.number, {
            "spec_name": spec.name, "spec_hash": spec.hash, "spec": json.dumps(spec.to_dict(), separators=(",", ":")),
            "worker": f"{self.worker['host']}:{self.worker['pid']}"})
        trial.set_user_attr(NETWORK, {"spec": spec.to_dict(), "spec_name": spec.name, "spec_hash": spec.hash,
                                      "params": cx.params, "macs": cx.macs,
                                      **({"mlflow_run_id": run_id} if run_id else {})})
        self.progress.trial_started(trial.number, spec.name)
        status, record = "FAILED", {}  # the run's record, logged in one batch as it ends
        try:
            values, metrics, series, tags = self._evaluate(trial, spec, cx)
            status = "FINISHED"
            record = {"params": run_params(spec, cfg), "metrics": metrics, "series": series, "tags": tags}
            return values
        except optuna.TrialPruned:
            status = "FINISHED"
            info = trial.user_attrs.get("pruned", {})
            curve = trial.user_attrs.get("curve") or {}
            record = {"params": run_params(spec, cfg), "metrics": info.get("metrics", {}),
                      "series": {k: v for k, v in curve.items() if k != "elapsed_s"},
                      "tags": {"state": "pruned", "outcome": PRUNED, "rung": info.get("rung"),
                               "reason": info.get("reason", ""), "pareto": self._tag(trial, "false"),
                               **({"reused_from": info["reused_from"]} if "reused_from" in info else {})}}
            raise
        except StorageUnavailable:  # the study storage is gone: the next run fails this trial as lost
            record = {"tags": {"state": "failed", "fail_reason": "the study storage could not be reached or written"}}
            raise
        except (KeyboardInterrupt, SystemExit) as e:
            status = "KILLED"
            reason = f"interrupted ({e})" if str(e) else "interrupted"
            record = {"tags": {"state": "killed", "fail_reason": reason}}
            trial.set_user_attr("fail_reason", reason)
            raise
        except Exception as e:
            kind = failure_kind(e)
            reason = redact_text(f"{type(e).__name__}: {e}")
            text = redact_text(traceback.format_exc())
            # The traceback's frames hold the trial's model, activations and gradients: let them
            # go now (an out-of-memory trial must not keep its memory until Optuna drops it).
            traceback.clear_frames(e.__traceback__)
            self.tracker.log_text(run_id, text, "traceback.txt")
            if kind == "out_of_memory":
                release_memory()
                values, metrics, tags = self._out_of_memory(trial, cx, reason)
                status = "FINISHED"
                record = {"params": run_params(spec, cfg), "metrics": metrics, "tags": tags}
                return values
            record = {"params": run_params(spec, cfg), "tags": {
                "state": "failed", "failure": kind, "fail_reason": reason[:5000], "pareto": self._tag(trial, "false")}}
            trial.set_user_attr("failure", kind)
            trial.set_user_attr("fail_reason", reason[:2000])
            raise
        finally:
            release_memory()
            memory = memory_in_use(self.device)
            self.tracker.finish(run_id, status, **{**record, "metrics": {
                **record.get("metrics", {}), **{f"memory.{k}": v for k, v in memory.items()}}})
            self.progress.trial_finished(trial.number, status)
            with contextlib.suppress(Exception):  # the trial may already be finished (declared lost)
                trial.set_user_attr("memory_after_mb", memory)

    def _tag(self, trial: optuna.Trial, value: str) -> str:
        """The ``pareto`` tag the trial's run ends with (noted, so the loop writes it again only if it is wrong)."""
        self.pareto_tags[trial.number] = value
        return value

    def _placeholder(self, cx) -> tuple[float, ...]:
        """Objective values of a network that was never scored: accuracy 0, latency infinite."""
        values = {"val_accuracy": 0.0, "latency_ms": math.inf, "params": cx.params, "macs": cx.macs}
        return tuple(values[o] for o in self.cfg.objectives)

    def _out_of_memory(self, trial: optuna.Trial, cx, reason: str):
        """Record a network that did not fit as infeasible on this device (values, metrics, tags)."""
        trial.set_user_attr("outcome", OUT_OF_MEMORY)
        trial.set_user_attr("device", self.device_key)
        trial.set_user_attr("fail_reason", reason[:2000])
        constrain(trial, "out_of_memory", 1.0)
        self.progress.note(f"out of memory on {self.device_key}: recorded as infeasible, never tried again here")
        return (self._placeholder(cx), {"params": cx.params, "macs": cx.macs},
                {"state": "infeasible", "outcome": OUT_OF_MEMORY, "failure": "out_of_memory",
                 "fail_reason": reason[:5000], "device": self.device_key, "pareto": self._tag(trial, "false")})

    def _evaluate(self, trial: optuna.Trial, spec: NetSpec, cx):
        """Returns (objective values, final metrics, per-epoch series, tags)."""
        cfg = self.cfg
        known = {"params": cx.params, "macs": cx.macs}
        over = []
        for key, metric in STATIC.items():
            bound = getattr(cfg.constraints, key)
            if bound is not None:
                constrain(trial, key, known[metric] - bound)
                if known[metric] > bound:
                    over.append(f"{metric} {known[metric]:,} > {bound:,.0f}")
        if over:  # never built: the sampler still learns the region is infeasible
            trial.set_user_attr("outcome", OVER_BUDGET)
            self.progress.note(f"over budget ({', '.join(over)}): skipped, never built")
            return self._placeholder(cx), known, {}, {"state": "infeasible", "outcome": OVER_BUDGET,
                                                      "skipped": "; ".join(over), "pareto": self._tag(trial, "false")}

        twin = self.ledger.twin(spec.hash, self.device_key)
        if twin is not None:  # the study already has this network's result: reuse it, do not retrain
            outcome = twin.outcome
            trial.set_user_attr("outcome", REUSED if outcome == TRAINED else outcome)
            trial.set_user_attr("reused_from", twin.number)
            if "seed" in twin.attrs:
                trial.set_user_attr(TRAINING, {k: twin.attrs.get(k) for k in ("seed", "threads")})
            for key in ("metrics", "device"):
                if key in twin.attrs:
                    trial.set_user_attr(key, twin.attrs[key])
            for key, value in twin.constraints.items():
                if key not in STATIC:  # the static ones are set above, from the same spec
                    constrain(trial, key, value)
            metrics = dict(twin.attrs.get("metrics", known))
            what = "result reused" if outcome == TRAINED else "out of memory there: skipped"
            self.progress.note(f"same network as trial {twin.number}: {what}")
            return tuple(twin.values[o] for o in cfg.objectives), metrics, {}, {
                "state": "reused", "outcome": REUSED, "reused_from": twin.number, "pareto": self._tag(trial, "false")}

        pruned = self.ledger.pruned.get(spec.hash)
        if pruned is not None:  # stopped at a rung before: the same decision, free
            info = {**pruned.user_attrs.get("pruned", {}), "reused_from": pruned.number}
            info.pop("metrics", None)
            trial.set_user_attr("outcome", PRUNED)
            trial.set_user_attr("pruned", info)
            self.progress.note(f"same network as trial {pruned.number}: stopped there at rung {info.get('rung')}")
            raise optuna.TrialPruned(f"same network as trial {pruned.number}, stopped there")

        tags = {"state": "complete", "outcome": TRAINED}
        if cfg.latency.enabled:  # costs first: the untrained network has the trained one's compute
            lat = measure_latency(build_model(spec), spec.in_ch, spec.input_size, cfg.latency, self.latency_device,
                                  bf16=cfg.train.bf16, channels_last=cfg.train.nhwc(self.latency_device),
                                  reference_ms=self.reference_ms)
            known.update(latency_ms=lat.ms, latency_median_ms=lat.median_ms, latency_p10_ms=lat.p10_ms,
                         latency_p90_ms=lat.p90_ms, latency_cv=lat.cv)
            tags.update({f"latency.{k}": v for k, v in lat.protocol.items()})
            bound = cfg.constraints.max_latency_ms
            if bound is not None:
                constrain(trial, "max_latency_ms", lat.ms - bound)
                if lat.ms > bound:  # never trained
                    trial.set_user_attr("outcome", OVER_BUDGET)
                    trial.set_user_attr("metrics", known)
                    what = f"latency {lat.ms:.3g} ms > {bound:g}"
                    self.progress.note(f"over budget ({what}): skipped, never trained")
                    values = {**dict(zip(cfg.objectives, self._placeholder(cx), strict=True)),
                              "latency_ms": lat.ms}
                    return tuple(values[o] for o in cfg.objectives), known, {}, {
                        **tags, "state": "infeasible", "outcome": OVER_BUDGET, "skipped": what,
                        "pareto": self._tag(trial, "false")}

        seed = trial_seed(cfg.search.seed, trial.number)
        tags["seed"] = seed
        rungs = (rung_epochs(cfg.search.min_epochs, cfg.search.eta, cfg.train.epochs)
                 if cfg.search.pruner != "none" else [])
        records: dict[str, list[float]] = {}
        history = []
        probed = [0.0, 0.0]  # epochs and seconds of the complete probe runs (pruner probes)

        def on_epoch(record) -> None:
            history.append(record)
            self.progress.epoch(record)
            with best_effort():  # progress only: training goes on while the storage is away
                trial.set_user_attr("epochs_done", record.epoch)
            if cfg.search.pruner == "asha" and record.epoch in rungs:
                self._rung(trial, record, records, known, record.epoch, record.elapsed_s)

        # set as training begins (watchers and tests read it so); epochs_done follows after every epoch
        trial.set_user_attr(TRAINING, {"seed": seed, "threads": torch.get_num_threads()})
        try:
            for rung in rungs if cfg.search.pruner == "probes" else ():
                # a complete short run (its own schedule, annealed), from scratch; the full run starts afresh
                _, probe = build_and_train(spec, self.splits, replace(cfg.train, epochs=rung), self.device, seed)
                probed[0] += rung
                probed[1] += probe.train_time_s
                self.progress.note(f"{rung}-epoch probe: val {probe.val_accuracy:.4f}")
                self._rung(trial, probe.history[-1], records, known, *probed, attr=PROBES_ATTR)
            model, result = build_and_train(spec, self.splits, cfg.train, self.device, seed, on_epoch)
        except Stopped as stop:
            trial.set_user_attr("outcome", PRUNED)
            reason = str(stop)
            trial.set_user_attr("pruned", {
                "rung": stop.rung, "place": stop.place, "of": stop.of, "reason": reason,
                "metrics": {**known, "val_accuracy": stop.accuracy, "epochs": stop.epochs,
                            "train_time_s": stop.train_time_s}})
            self._set_curve(trial, history)
            self.progress.note(reason)
            raise optuna.TrialPruned(reason) from None
        per_epoch = steps_per_epoch(len(self.splits.train_y), cfg.train.batch_size)
        metrics = {**known, "val_accuracy": result.val_accuracy, "train_time_s": result.train_time_s,
                   "train_loss": result.history[-1].train_loss, "epochs": round(result.steps / per_epoch, 4)}
        if probed[0]:
            metrics.update(probe_epochs=probed[0], probe_time_s=probed[1])
        del model
        trial.set_user_attr("metrics", metrics)
        self._set_curve(trial, result.history)
        trial.set_user_attr("outcome", TRAINED)
        series = {"val_accuracy": [r.val_accuracy for r in result.history],
                  "train_loss": [r.train_loss for r in result.history]}
        values = tuple(metrics[o] for o in cfg.objectives)
        # within every budget (the costs were checked before training): on the front if nothing dominates it
        on_front = self.ledger.joins_front(spec.hash, dict(zip(cfg.objectives, values, strict=True)))
        tags["pareto"] = self._tag(trial, "true" if on_front else "false")
        return values, metrics, series, tags

    def _rung(self, trial: optuna.Trial, record, records: dict[str, list[float]], known: dict,
              epochs: float, seconds: float, attr: str = RUNGS_ATTR) -> None:
        """At a rung: record this trial's values there (``attr``), then go on only in the top 1/eta (else
        raise Stopped, with the ``epochs`` and ``seconds`` of training spent so far)."""
        cfg = self.cfg
        values = [{**known, "val_accuracy": record.val_accuracy}[o] for o in cfg.objectives]
        records[rung_key(record.epoch)] = values
        trial.set_user_attr(attr, dict(records))
        others = rung_losses(trial.study.get_trials(deepcopy=False), record.epoch, cfg.directions,
                             exclude=trial.number, attr=attr)
        go, place, n = decide(to_losses(values, cfg.directions), others, cfg.search.eta)
        if not go:
            raise Stopped(record.epoch, place + 1, n, max(1, n // cfg.search.eta), record.val_accuracy,
                          epochs, seconds, probe=attr == PROBES_ATTR)

    @staticmethod
    def _set_curve(trial: optuna.Trial, history) -> None:
        # the learning curve lives in user attributes, never in Optuna's intermediate values (which a
        # multi-objective study refuses, and which make TPE fail on pruned trials)
        trial.set_user_attr("curve", {"val_accuracy": [r.val_accuracy for r in history],
                                      "train_loss": [r.train_loss for r in history],
                                      "elapsed_s": [r.elapsed_s for r in history]})
