"""Where a study lives: the Optuna storage, the study itself, its recipe and its sampler.

A study is one recipe. ``recipe(cfg)`` lists everything that changes a trial's result (the
space, objectives, constraints, data, every training setting, the latency protocol, the device
type, the study seed); it is recorded on the study when the study is made, and a later run
with another recipe is refused with the fields that differ. What may change between runs of
one study: ``RESUMABLE``. A command that only reads a study (``pareto``, ``report``, ``export``)
takes the recorded recipe instead (``read_study``): it needs the study's name, and an
experiment file only has to describe the same design space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna

from search.config import ExperimentConfig, experiment_from_dict
from search.errors import StorageUnavailable, error_line, redact
from space.errors import SpecError

DEFAULT_PATIENCE_S = 600.0  # search.storage_patience_s's default
LOST_AFTER = 4  # missed heartbeats after which a running trial is declared lost (RDB storages)
# settings that may change when a study is resumed: they decide how much is run, where and how it
# is watched, never what a trial's result is
RESUMABLE = ("search.n_trials", "search.budget_epochs", "search.timeout_s", "search.sampler", "search.pruner",
             "search.min_epochs", "search.eta", "search.storage",
             "search.max_consecutive_failures", "search.heartbeat_s", "search.storage_patience_s", "train.threads",
             "--workers", "tracking.*")


def device_type(name: str) -> str:
    """``cpu`` or ``cuda``: the kind of device a device name means on this machine (no error)."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name.split(":")[0]


def recipe(cfg: ExperimentConfig, recorded: dict | None = None) -> dict:
    """Everything that changes a trial's result, as a flat ``{dotted.key: value}`` mapping.

    Not in it: ``RESUMABLE`` (how much is run and where) and the data's ``root``/``download``/``path``
    (where files come from; a folder's or array file's content enters as its hash, ``DataConfig.recipe``).
    The device enters as its type (``cpu``/``cuda``): the same
    study may move between GPUs, not between a GPU and the CPU. ``train.channels_last`` enters
    as what it means on that device type (``auto`` is not a format).

    Args:
        cfg: the experiment.
        recorded: a study's recipe, when the study is only read (``pareto``, ``report``,
            ``export``): an ``auto`` device then means the device type the study ran on, not
            what this machine has (a GPU study reads on a laptop, and torch need not load).
    """
    def kind(device: str, key: str) -> str:
        return recorded[key] if device == "auto" and recorded and key in recorded else device_type(device)

    train = {k: v for k, v in vars(cfg.train).items() if k not in ("device", "threads")}
    latency = {k: v for k, v in vars(cfg.latency).items() if k != "device"}
    lat_device = cfg.train.device if cfg.latency.device == "train" else cfg.latency.device
    train_type = kind(cfg.train.device, "train.device_type")
    tree = {
        "space": cfg.space.to_dict(),
        "objectives": list(cfg.objectives),
        "constraints": vars(cfg.constraints),
        "data": cfg.data.recipe(),
        "train": {**train, "channels_last": cfg.train.nhwc(train_type), "device_type": train_type},
        "latency": {**latency, "device_type": kind(lat_device, "latency.device_type")},
        "search": {"seed": cfg.search.seed},
    }
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = list(node) if isinstance(node, tuple) else node
    walk("", tree)
    return json.loads(json.dumps(flat, default=str))  # as it reads back from any storage


def fingerprint(rec: dict) -> str:
    """A short hash of a recipe (``recipe(cfg)``): equal recipes, equal fingerprints."""
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


# Recipe keys added after studies were recorded, with the value that means what older versions
# did: a study recorded without the key reads as having it (a resume must set it to match).
ADDED = {"latency.interleave": False, "data.channels": "auto", "data.skip_unreadable": False}


def recipe_diff(recorded: dict, current: dict, reading: bool = False) -> list[str]:
    """``key: recorded -> current`` for every field that differs, in key order.

    ``reading``: the study is only read, so a key it predates is no difference (it was made
    before the key existed; this version's default is no change the user made).
    """
    recorded = {**({k: current.get(k) for k in ADDED} if reading else ADDED), **recorded}
    keys = sorted(set(recorded) | set(current))
    missing = "(absent)"
    return [f"{k}: {recorded.get(k, missing)!r} (study) vs {current.get(k, missing)!r} (now)"
            for k in keys if recorded.get(k, missing) != current.get(k, missing)]


def _experimental(fn, *args, **kwargs):
    """Call an Optuna constructor whose options we use on purpose while still experimental."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return fn(*args, **kwargs)


def _with_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3; the ``postgres`` extra installs
    psycopg2, so use it when it is the one there.
    """
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


_ANSWERED: set[str] = set()  # storage URLs that answered this process (``answered``)


def answered(url: str) -> None:
    """Note that the storage ``url`` answered: opening it again in this process waits through an outage.

    A first open does not wait (there a refused connection is most often a wrong URL, said at
    once); an open after the storage answered does, like every other call: a command's later
    steps, and the workers ``resnext-nas search`` starts once its storage answered it.
    """
    _ANSWERED.add(url)


def open_storage(url: str, heartbeat_s: int = 30, on_stale: Callable | None = None,
                 patience_s: float = DEFAULT_PATIENCE_S):
    """An Optuna storage for ``url``: journal file or RDB (sqlite/postgresql/mysql).

    The storage waits for a server that goes away (``search.outage``): its calls are retried for
    up to ``patience_s``, its pooled connections checked before use, and a journal write that
    fails is undone. Opening it waits too once it has answered this process (``answered``).

    Args:
        url: ``journal:PATH`` (Optuna's journal file: several processes of one machine),
            ``postgresql://...`` (several machines) or ``sqlite:///PATH`` (one process).
        heartbeat_s: RDB storages only: a running trial records a heartbeat this often and is
            declared lost after ``LOST_AFTER`` missed ones.
        on_stale: RDB storages only: called with (study, trial) for each trial Optuna itself
            fails for missed heartbeats (``reap_lost_trials`` usually gets there first).
        patience_s: how long an unreachable storage is waited for (``search.storage_patience_s``).
    """
    from search.outage import open_patient

    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:"):])
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                return open_patient(url, patience_s)
            except OSError as e:
                raise SpecError(f"cannot open the study journal {path}: {e.strerror or error_line(e)}; make its "
                                "directory writable (and the disk not full) or set search.storage") from None
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        storage = _experimental(open_patient, _with_driver(url), patience_s, url, url in _ANSWERED,
                                heartbeat_interval=heartbeat_s, grace_period=LOST_AFTER * heartbeat_s,
                                heartbeat_stale_trial_callback=on_stale)
        answered(url)
        return storage
    except (SpecError, StorageUnavailable):
        raise
    except Exception as e:
        raise SpecError(f"cannot open the study storage {redact(url)}: "
                        f"{error_line(e)}; check the URL, the server and its "
                        "driver (postgresql needs psycopg2: pip install 'resnext-nas[postgres]')") from None


def make_sampler(cfg: ExperimentConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded (``seed`` overrides ``search.seed``).

    Constraints reach TPE and NSGA-II via ``set_constraint``; TPE's constant liar keeps
    parallel workers from proposing what another worker is already training.
    """
    s, n = cfg.search, cfg.search.n_trials
    seed = s.seed if seed is None else seed
    if s.sampler == "tpe":
        return _experimental(optuna.samplers.TPESampler, seed=seed, n_startup_trials=min(10, max(3, n // 3)),
                             multivariate=True, group=True, constant_liar=True)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n // 4)))
    if s.sampler == "grid":
        return optuna.samplers.GridSampler(cfg.space.grid(), seed=seed)
    if s.sampler == "costaware":
        from search.costaware import CostAwareSampler

        return CostAwareSampler(cfg.space, cfg.objectives, max_params=cfg.constraints.max_params,
                                max_macs=cfg.constraints.max_macs, seed=seed, n_startup=min(10, max(3, n // 3)))
    return optuna.samplers.RandomSampler(seed=seed)


def sampler_seed(study_seed: int, salt: str) -> int:
    """A sampler seed of its own for a resumed study or one more worker (same seed, same draws)."""
    return int(hashlib.sha256(f"{study_seed}:sampler:{salt}".encode()).hexdigest()[:8], 16)


def _check_recipe(study: optuna.Study, cfg: ExperimentConfig, url: str, reading: bool) -> None:
    recorded = study.user_attrs.get("recipe")
    if recorded is None:
        if "fingerprint" in study.user_attrs and not reading:  # made by a version that recorded less
            raise SpecError(f"study '{study.study_name}' in {redact(url)} was made by an older resnext-nas that "
                            "did not record its full recipe, so its results cannot be checked against this one; "
                            "start a new study: --set search.study_name=NEW")
        return
    if reading:
        _check_space(study, cfg, url, recorded)
        return
    diff = recipe_diff(recorded, recipe(cfg))
    if diff:
        raise SpecError(
            f"study '{study.study_name}' in {redact(url)} was run with another recipe, and results are only "
            f"comparable within one: " + "; ".join(diff) + ". Run the new recipe as a new study "
            "(--set search.study_name=NEW) or undo the change; what may change on resume: "
            + ", ".join(RESUMABLE)
        )


def _check_space(study: optuna.Study, cfg: ExperimentConfig, url: str, recorded: dict) -> None:
    """Refuse an experiment whose design space is not the study's: the file names another study."""
    current = recipe(cfg, recorded)
    diff = [line for line in recipe_diff(recorded, current, reading=True) if line.startswith("space.")]
    if diff:
        raise SpecError(
            f"{cfg.source or 'the experiment'} describes another design space than study '{study.study_name}' in "
            f"{redact(url)}: " + "; ".join(diff) + ". A read takes everything else from the study's recorded "
            f"recipe; name the study's own experiment file, or read it by name: --study {study.study_name}")


def experiment_of(recorded: dict, study_name: str, storage_url: str,
                  base: ExperimentConfig | None = None) -> ExperimentConfig:
    """The experiment a study was run with, rebuilt from its recorded recipe (``recipe``), for reading it.

    What the recipe leaves out (where the data's files are, tracking, the sampler) comes from
    ``base``, the experiment file the study is read with, or from the defaults; everything the
    recipe holds (space, objectives, constraints, data, training, latency protocol, seed) is the
    study's, whatever ``base`` or its ``--set`` overrides say.

    Args:
        recorded: the study's recorded recipe (``study.user_attrs["recipe"]``).
        study_name: the study's name.
        storage_url: its storage.
        base: the experiment file the study is read with, if any.

    Raises:
        SpecError: the recipe does not read as an experiment of this version.
    """
    tree: dict = {}
    for key, value in {**ADDED, **recorded}.items():
        if key.endswith(".device_type") or key in ("data.content", "data.classes"):  # derived from the device or
            continue  # from the data's files, not keys of the file
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    raw = json.loads(json.dumps(base.raw)) if base is not None else {}
    for section in ("data", "constraints", "train", "latency"):
        raw[section] = {**(raw.get(section) or {}), **tree.get(section, {})}
    search = raw.get("search") or {}
    raw["search"] = {**{k: search[k] for k in ("sampler", "heartbeat_s") if k in search},
                     **tree.get("search", {}), "study_name": study_name, "storage": storage_url}
    raw["space"], raw["objectives"] = tree.get("space", {}), tree.get("objectives")
    try:
        cfg = experiment_from_dict(raw, name=base.name if base is not None else study_name)
    except SpecError as e:
        raise SpecError(f"the recorded recipe of study '{study_name}' does not read as an experiment of this "
                        f"version ({e}); read it with its experiment file") from None
    return dataclasses.replace(cfg, source=base.source if base is not None else None)


def read_study(study_name: str, storage_url: str, base: ExperimentConfig | None = None
               ) -> tuple[optuna.Study, ExperimentConfig]:
    """Open a study only to read it, with the experiment it was run with.

    A read needs only the study: the experiment is its recorded recipe (``experiment_of``), so
    a study run with ``--set`` overrides reads without them. ``base``, the experiment file named
    by the user, must describe the study's design space (else it names another study).

    Args:
        study_name: the study's name.
        storage_url: its Optuna storage.
        base: the experiment file it is read with, if any.

    Raises:
        SpecError: no such study (the message lists the studies there), ``base`` describes
            another space, or the study recorded no recipe and no experiment file was given.
    """
    url = storage_url
    missing = f"no study '{study_name}' in {redact(url)}"
    for scheme, kind in (("journal:", "journal file"), ("sqlite:///", "SQLite file")):
        if url.startswith(scheme) and not Path(url[len(scheme):]).is_file():  # opening would create it
            raise SpecError(f"{missing} (no such {kind}); run `resnext-nas search` first")
    storage = open_storage(url, base.search.heartbeat_s if base is not None else 30)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        names = optuna.get_all_study_names(storage)
        there = f"; studies there: {', '.join(sorted(names))}" if names else ""
        raise SpecError(f"{missing}{there}; run `resnext-nas search` first, or name one of them") from None
    except Exception as e:
        raise SpecError(f"cannot read the study storage {redact(url)}: {error_line(e)}") from None
    recorded = study.user_attrs.get("recipe")
    if recorded is None:
        if base is None:
            raise SpecError(f"study '{study_name}' in {redact(url)} was made by an older resnext-nas that did not "
                            "record its recipe; read it with its experiment file")
        return study, base
    if base is not None:
        _check_space(study, base, url, recorded)
    return study, experiment_of(recorded, study_name, url, base)


def find_study(cfg: ExperimentConfig, storage_url: str | None = None, *,
               on_stale: Callable | None = None, reading: bool = False) -> optuna.Study | None:
    """The experiment's study if the storage has one (its recipe checked), else None; creates nothing.

    ``reading``: the caller only reads the study (no trial will run here), so only its design
    space is checked: everything else a read takes from the recorded recipe (``read_study``).

    Raises:
        SpecError: the storage cannot be opened, or the study was run with another recipe.
    """
    url = storage_url or cfg.storage_url
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_file():
        return None  # nothing there yet (and opening would create the file)
    storage = open_storage(url, cfg.search.heartbeat_s, on_stale, cfg.search.storage_patience_s)
    try:
        study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=make_sampler(cfg))
    except KeyError:
        return None
    except Exception as e:
        raise SpecError(f"cannot read the study storage {redact(url)}: {error_line(e)}") from None
    _check_recipe(study, cfg, url, reading)
    return study


def load_study(cfg: ExperimentConfig, storage_url: str | None = None, *,
               on_stale: Callable | None = None, reading: bool = False) -> optuna.Study:
    """The existing study (recipe checked; ``reading``: see ``find_study``); a clear error when there is none."""
    study = find_study(cfg, storage_url, on_stale=on_stale, reading=reading)
    if study is None:
        raise SpecError(f"no study '{cfg.study_name}' in {redact(storage_url or cfg.storage_url)}; "
                        "run `resnext-nas search` first")
    return study


def create_study(cfg: ExperimentConfig, storage_url: str | None, attrs: dict, *,
                 on_stale: Callable | None = None) -> optuna.Study:
    """Make the experiment's study, recording its recipe, fingerprint, objective names and ``attrs``.

    Call it only after every check has passed (``find_study`` returned None): what it
    writes stays.
    """
    url = storage_url or cfg.storage_url
    storage = open_storage(url, cfg.search.heartbeat_s, on_stale, cfg.search.storage_patience_s)
    study = optuna.create_study(storage=storage, study_name=cfg.study_name, directions=cfg.directions,
                                sampler=make_sampler(cfg), load_if_exists=True)
    if "recipe" in study.user_attrs:  # another process made it meanwhile
        _check_recipe(study, cfg, url, reading=False)
        return study
    rec = recipe(cfg)
    _experimental(study.set_metric_names, list(cfg.objectives))  # named in optuna-dashboard
    for key, value in {"recipe": rec, "fingerprint": fingerprint(rec), "objectives": list(cfg.objectives),
                       **attrs}.items():
        study.set_user_attr(key, value)
    return study
