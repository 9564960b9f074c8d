"""Experiment files: YAML -> validated, frozen config objects.

Every section is a frozen dataclass owned by the module that uses it (``DataConfig`` in
``search.data``, ``TrainConfig`` in ``search.train``...); this module only reads the file,
applies ``--set`` overrides and builds the sections generically from their type hints, so a
new field needs no parser code. Unknown keys are errors naming the closest valid key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from search.data import DataConfig, dataset_info
from search.latency import LatencyConfig
from search.train import TrainConfig
from space import SearchSpace
from space.errors import SpecError, check_keys

# name -> (optuna direction, unit shown in tables)
OBJECTIVES = {
    "val_accuracy": ("maximize", ""),
    "params": ("minimize", ""),
    "macs": ("minimize", ""),
    "latency_ms": ("minimize", "ms"),
}
SAMPLERS = ("tpe", "nsga2", "random", "grid")
PRUNERS = ("none", "asha")
# Optuna's journal file: safe for several local worker processes (see docs/scaling.md)
DEFAULT_STORAGE = "journal:mlruns/optuna.journal"


@dataclass(frozen=True)
class ConstraintsConfig:
    max_params: float | None = None      # parameters; checked before the network is built
    max_macs: float | None = None        # multiply-accumulates per image; checked before building
    max_latency_ms: float | None = None  # median latency in ms; checked after measuring

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and v <= 0:
                raise SpecError(f"constraints.{f.name} must be > 0 or null, got {v}")


@dataclass(frozen=True)
class SearchConfig:
    study_name: str | None = None    # Optuna study name; null = the experiment file's name
    sampler: str = "nsga2"           # nsga2 | tpe | random | grid (nsga2: best on benchmarks.search_quality)
    n_trials: int = 12               # networks trained to completion (over the whole study: resuming tops up)
    timeout_s: float | None = None   # stop starting new trials after this many seconds
    seed: int = 0                    # seeds the sampler and, with the trial number, every trial
    storage: str | None = None       # Optuna storage URL; null = journal:mlruns/optuna.journal
    max_consecutive_failures: int = 5  # stop the study after this many failed trials in a row
    heartbeat_s: int = 30            # s between heartbeats of a running trial (RDB storages); 4 missed = lost
    pruner: str = "none"             # none | asha: stop a trial at a rung unless in the top 1/eta there (search.asha)
    min_epochs: int = 1              # epochs at the first rung (asha); rungs at min_epochs * eta**k < train.epochs
    eta: int = 3                     # reduction factor (asha): a rung keeps the top 1/eta
    budget_epochs: float | None = None  # training epochs over all trials; the study stops when spent; null = none

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SpecError(f"search.sampler: unknown '{self.sampler}'; use one of {', '.join(SAMPLERS)}")
        if self.n_trials <= 0:
            raise SpecError(f"search.n_trials must be > 0, got {self.n_trials}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise SpecError(f"search.timeout_s must be > 0 or null, got {self.timeout_s}")
        if self.max_consecutive_failures <= 0:
            raise SpecError("search.max_consecutive_failures must be > 0")
        if self.heartbeat_s <= 0:
            raise SpecError(f"search.heartbeat_s must be a whole number of seconds > 0, got {self.heartbeat_s}")
        if self.pruner not in PRUNERS:
            raise SpecError(f"search.pruner: unknown '{self.pruner}'; use one of {', '.join(PRUNERS)}")
        if self.min_epochs < 1:
            raise SpecError(f"search.min_epochs must be a whole number of epochs >= 1, got {self.min_epochs}")
        if self.eta < 2:
            raise SpecError(f"search.eta must be an integer >= 2, got {self.eta}")
        if self.budget_epochs is not None and self.budget_epochs <= 0:
            raise SpecError(f"search.budget_epochs must be > 0 or null, got {self.budget_epochs}")
        if self.pruner == "asha" and self.sampler in ("nsga2", "grid"):
            raise SpecError(f"search.pruner asha with search.sampler {self.sampler}: "
                            + ("NSGA-II ignores stopped trials (they neither count towards a generation nor "
                               "inform it), so pruning only spends epochs it learns nothing from"
                               if self.sampler == "nsga2" else "a grid trains every network anyway")
                            + "; use sampler tpe or random with the pruner, or pruner none")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True                            # log to MLflow
    uri: str = "sqlite:///mlruns/mlflow.db"         # MLflow tracking URI (database or http server)
    artifacts: str = "mlruns/artifacts"             # artifact root for new MLflow experiments
    experiment: str | None = None                   # MLflow experiment; null = the experiment file's name


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment file, validated."""

    name: str
    data: DataConfig
    space: SearchSpace
    objectives: tuple[str, ...]
    constraints: ConstraintsConfig
    search: SearchConfig
    train: TrainConfig
    latency: LatencyConfig
    tracking: TrackingConfig
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def study_name(self) -> str:
        return self.search.study_name or self.name

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    @property
    def storage_url(self) -> str:
        return self.search.storage or DEFAULT_STORAGE


SECTIONS = {
    "data": DataConfig, "constraints": ConstraintsConfig, "search": SearchConfig,
    "train": TrainConfig, "latency": LatencyConfig, "tracking": TrackingConfig,
}
TOP_KEYS = ["data", "space", "objectives", "constraints", "search", "train", "latency", "tracking"]
DEFAULT_OBJECTIVES = ("val_accuracy", "params", "latency_ms")


def _coerce(value, hint, where: str):
    """Check ``value`` against a simple type hint (int, float, str, bool, X | None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) > 1:  # e.g. bool | str: the section's own checks say which values
            if not isinstance(value, tuple(rest)):
                raise SpecError(f"{where} must be {' or '.join(a.__name__ for a in rest)}, got {value!r}")
            return value
        (hint,) = rest
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e6 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise SpecError(f"{where} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def parse_section(cls, data, where: str):
    """Build the frozen dataclass ``cls`` from a mapping, checking keys and types.

    Args:
        cls: a dataclass whose fields have simple type hints.
        data: the mapping read from YAML (None means all defaults).
        where: section name used in error messages.
    """
    data = {} if data is None else data
    check_keys(data, [f.name for f in dataclasses.fields(cls)], where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``--set section.key=value`` (value read as YAML) to the raw mapping."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise SpecError(f"--set expects section.key=value, got '{assignment}'")
    *parents, leaf = key.strip().split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {key}: '{p}' is not a section")
    node[leaf] = yaml.safe_load(value)


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping; syntax errors name the file, line and column."""
    if not path.is_file():
        raise SpecError(f"{path}: no such experiment file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise SpecError(
            f"{path}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {e.problem}"
            + (f" ({e.context})" if e.context else "")
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of sections ({', '.join(TOP_KEYS)})")
    return data


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment file.

    Args:
        path: the YAML file.
        overrides: ``section.key=value`` strings applied before validation.
    """
    path = Path(path)
    raw = read_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return experiment_from_dict(raw, name=path.stem)


def experiment_from_dict(raw: dict, name: str) -> ExperimentConfig:
    check_keys(raw, TOP_KEYS, "experiment")
    sections = {k: parse_section(cls, raw.get(k), k) for k, cls in SECTIONS.items()}
    data: DataConfig = sections["data"]
    info = dataset_info(data.dataset)
    known = {"in_ch": info.in_ch, "num_classes": info.num_classes,
             "input_size": data.input_size or info.size}
    space_raw = raw.get("space") or {}
    for key, value in known.items():
        if key in space_raw and space_raw[key] != value:
            raise SpecError(f"space.{key} is {space_raw[key]} but dataset '{data.dataset}' gives {value}; "
                            f"remove space.{key} (it is taken from the data)"
                            + (" or set data.input_size" if key == "input_size" else ""))
    space = SearchSpace.from_dict(space_raw, **known)

    objectives = raw.get("objectives", list(DEFAULT_OBJECTIVES))
    if not isinstance(objectives, list) or not objectives:
        raise SpecError(f"objectives must be a non-empty list from {', '.join(OBJECTIVES)}")
    for o in objectives:
        if o not in OBJECTIVES:
            check_keys({o: None}, OBJECTIVES, "objectives")
    if len(set(objectives)) != len(objectives):
        raise SpecError(f"objectives: repeated entries in {objectives}")
    cfg = ExperimentConfig(name, data, space, tuple(objectives), raw=raw, **{
        k: v for k, v in sections.items() if k != "data"})
    if cfg.search.pruner == "asha" and cfg.search.min_epochs >= cfg.train.epochs:
        raise SpecError(f"search.pruner asha needs search.min_epochs ({cfg.search.min_epochs}) below train.epochs "
                        f"({cfg.train.epochs:g}): there is no rung to stop a trial at; lower min_epochs")
    needs_latency = "latency_ms" in cfg.objectives or cfg.constraints.max_latency_ms is not None
    if needs_latency and not cfg.latency.enabled:
        raise SpecError("latency.enabled is false but latency_ms is an objective or constraint; "
                        "enable latency or drop it from objectives/constraints")
    return cfg
