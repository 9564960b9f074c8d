"""Housekeeping of a storage: list its studies, delete one with its MLflow runs.

``list_studies`` (``resnext-nas studies``) reads every study of an Optuna storage: counts by
outcome, the front's size, the best value of each objective on it and the last activity. On
the journal file, listing the names and loading each study costs one replay of the log (the
same as ``optuna.get_all_study_summaries``, which gives no outcomes); the rows are then read in
memory.

``delete_study`` (``resnext-nas delete``) removes a study from the Optuna storage and its runs
from MLflow: every run tagged ``resnext_nas.study`` = the name (the parent run, the trial runs,
``confirm``'s retraining runs) in the experiment of the study's parent run. MLflow's
``delete_run`` moves runs to its trash (``mlflow gc`` empties it). The experiment is kept: it
may hold other studies, and MLflow refuses to create an experiment under the name of a deleted
one, so deleting it would block the next study of that experiment file. The runs go first,
then the study: when the tracking store fails halfway, rerunning the command finishes the job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from search.config import DEFAULT_STORAGE, TrackingConfig
from search.errors import error_line, redact
from search.results import finished_rows, outcome_counts, pareto_rows
from search.storage import open_storage
from search.tracking import STUDY, Tracker
from space.errors import SpecError

DEFAULT_TRACKING = TrackingConfig().uri


@dataclass
class StudyInfo:
    """One study of a storage as ``resnext-nas studies`` shows it."""

    name: str
    counts: dict[str, int]
    front: int
    best: dict[str, float]  # objective -> its best value on the front
    directions: dict[str, str]
    last_activity: dt.datetime | None
    confirmed: int = 0  # networks with a ``confirm`` record


def _journal_missing(url: str) -> bool:
    return url.startswith("journal:") and not Path(url[len("journal:"):]).is_file()


def _storage(url: str):
    try:
        return open_storage(url)
    except SpecError:
        raise
    except Exception as e:  # pragma: no cover - open_storage wraps its own errors
        raise SpecError(f"cannot open the study storage {redact(url)}: {error_line(e)}") from None


def study_names(url: str) -> list[str]:
    """The study names of a storage ([] for a journal file that does not exist; creates nothing)."""
    if _journal_missing(url):
        return []
    try:
        return optuna.study.get_all_study_names(_storage(url))
    except SpecError:
        raise
    except Exception as e:
        raise SpecError(f"cannot read the study storage {redact(url)}: {error_line(e)}") from None


def _objectives(study: optuna.Study) -> list[str]:
    names = study.user_attrs.get("objectives") or study.metric_names
    return list(names) if names else [f"objective_{i}" for i in range(len(study.directions))]


def _last_activity(trials) -> dt.datetime | None:
    times = [t.datetime_complete or t.datetime_start for t in trials]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def study_info(study: optuna.Study) -> StudyInfo:
    """Counts, front size, best values and last activity of one study."""
    objectives = _objectives(study)
    directions = ["maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize" for d in study.directions]
    front = pareto_rows(finished_rows(study, tuple(objectives)), directions)
    best = {}
    for o, d in zip(objectives, directions, strict=True):
        if front:
            best[o] = (max if d == "maximize" else min)(r.values[o] for r in front)
    return StudyInfo(study.study_name, outcome_counts(study), len(front), best,
                     dict(zip(objectives, directions, strict=True)),
                     _last_activity(study.get_trials(deepcopy=False)),
                     len(study.user_attrs.get("confirmed") or {}))


def list_studies(storage_url: str | None = None) -> list[StudyInfo]:
    """Every study of the storage (default ``journal:mlruns/optuna.journal``), by last activity, newest first."""
    url = storage_url or DEFAULT_STORAGE
    names = study_names(url)
    if not names:
        return []
    storage = _storage(url)
    infos = [study_info(optuna.load_study(study_name=n, storage=storage)) for n in names]
    oldest = dt.datetime.min
    return sorted(infos, key=lambda i: (i.last_activity or oldest, i.name), reverse=True)


# -- deleting ---------------------------------------------------------------------------------------

@dataclass
class Deletion:
    """What ``delete_study`` found (and removed, once ``done``).

    Args:
        name: the study.
        trials: its trials in the Optuna storage.
        running: of them, still RUNNING (a worker may be training them).
        runs: MLflow run ids tagged with the study (parent, trials, retrainings).
        experiment: the MLflow experiment holding them, or None.
        runs_left: active runs of other studies left in that experiment.
        tracking: why MLflow was not touched, when it was not (no store, tracking disabled).
        done: the study and runs were deleted.
    """

    name: str
    trials: int
    running: int
    runs: list[str] = field(default_factory=list)
    experiment: str | None = None
    runs_left: int = 0
    tracking: str | None = None
    done: bool = False


def _sqlite_missing(uri: str) -> bool:
    prefix = "sqlite:///"
    return uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file()


def _find_runs(client, name: str, parent_id: str | None) -> tuple[list[str], str | None]:
    """Run ids tagged with the study, and the experiment's name (the parent run's, else any that has them)."""
    experiment_ids = None
    if parent_id:
        try:
            experiment_ids = [client.get_run(parent_id).info.experiment_id]
        except Exception:  # the parent run is not in this store (another --tracking-uri): search them all
            experiment_ids = None
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return [], None
    quoted = name.replace("'", "\\'")
    runs = client.search_runs(experiment_ids, f"tags.`{STUDY}` = '{quoted}'", max_results=50_000)
    runs = [r for r in runs if r.data.tags.get(STUDY) == name]
    exps = sorted({r.info.experiment_id for r in runs})
    exp_name = ", ".join(client.get_experiment(e).name for e in exps) if exps else None
    return [r.info.run_id for r in runs], exp_name


def delete_study(name: str, storage_url: str | None = None, tracking_uri: str | None = None, *,
                 confirm: Callable[[Deletion], bool] = lambda d: True) -> Deletion:
    """Delete study ``name`` from the Optuna storage and its runs from MLflow, once ``confirm`` agrees.

    Args:
        name: the study.
        storage_url: Optuna storage (default ``journal:mlruns/optuna.journal``).
        tracking_uri: MLflow tracking URI (default ``sqlite:///mlruns/mlflow.db``); a local
            database that does not exist means no runs to delete.
        confirm: called with what would be deleted; nothing is deleted unless it returns True.

    Raises:
        SpecError: no such study (nothing deleted), or a store cannot be read.
    """
    url = storage_url or DEFAULT_STORAGE
    names = study_names(url)
    if name not in names:
        have = f"its studies: {', '.join(sorted(names))}" if names else "it has no study"
        raise SpecError(f"no study '{name}' in {redact(url)} ({have}); nothing deleted "
                        "(`resnext-nas studies --storage URL` lists them)")
    storage = _storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    plan = Deletion(name, len(trials), sum(t.state == optuna.trial.TrialState.RUNNING for t in trials))

    uri = tracking_uri or DEFAULT_TRACKING
    client = None
    if _sqlite_missing(uri):
        plan.tracking = f"no MLflow store at {redact(uri)}"
    else:
        tracker = Tracker(TrackingConfig(uri=uri), name)
        client = tracker.client
        try:
            plan.runs, plan.experiment = _find_runs(client, name, study.user_attrs.get("mlflow_parent_run_id"))
        except Exception as e:
            raise SpecError(f"cannot read the MLflow store {redact(uri)}: {error_line(e)}; nothing deleted "
                            "(fix --tracking-uri)") from None
    if not confirm(plan):
        return plan

    for run_id in plan.runs:  # runs first: if the store fails here, the study is still there to rerun with
        try:
            client.delete_run(run_id)
        except Exception as e:
            raise SpecError(f"deleting MLflow run {run_id} failed ({error_line(e)}); the study is kept: rerun "
                            "`resnext-nas delete` to finish") from None
    optuna.delete_study(study_name=name, storage=storage)
    if client is not None and plan.experiment and "," not in plan.experiment:
        exp = client.get_experiment_by_name(plan.experiment)
        plan.runs_left = len(client.search_runs([exp.experiment_id], "", max_results=1000)) if exp else 0
    plan.done = True
    return plan
