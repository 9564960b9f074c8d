"""MLflow tracking: the only module that imports mlflow.

One MLflow experiment per experiment file, one parent run per study, one child run per trial.
Runs are addressed by id through ``MlflowClient`` (no fluent "active run" state), so several
studies or trials in one process cannot leak into each other. Every call that can fail on an
unreachable store goes through ``Tracker._safe``: the failure is reported and the study goes on;
the Optuna storage keeps the authoritative record. For ``TRACKING_RETRY_S`` after a failure a
tracking server is not called (a server that went away costs the study no time), and once it answers
again the runs it missed are written from the Optuna record (``search.outage.sync_runs``;
``resnext-nas sync`` does the same by hand).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from search.config import TrackingConfig
from search.errors import error_line, redact
from space.errors import SpecError

log = logging.getLogger(__name__)

ROLE, STUDY, TRIAL = "resnext_nas.role", "resnext_nas.study", "resnext_nas.trial"
PARENT = "mlflow.parentRunId"
BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
TRACKING_RETRY_S = 15.0  # after a failed call, a tracking server is left alone this long before it is tried again
# a tracking server's HTTP client, unless set otherwise: MLflow's default retries a refused
# connection for minutes (7 retries, backoff factor 2), each call of a trial stalling the study
HTTP_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

# MLflow 3's UI opens an experiment in its GenAI view (traces, assistant) unless it is told the
# experiment is a model-training one. Two switches, both found in the 3.17 UI bundle
# (mlflow/server/js/build/static/js/main.*.js): the experiment tag `mlflow.experimentKind`
# (enum ExperimentKind: genai_development | custom_model_development | ...), which MLflow's UI
# read up to 3.x and its kind selector still writes; and, in 3.17, the `workflowType` URL
# parameter (genai | machine_learning; else the browser's localStorage, default genai), which
# overrides the tag there. The experiment carries the tag; the links carry the parameter.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
WORKFLOW = "workflowType=machine_learning"
# A saved view of the runs table: the experiment tag `mlflow.sharedViewState.<id>` holding
# {"name", "createdAt", "updatedAt", "state": JSON of the search facets and the table's UI state}.
# The UI lists it under "Saved views" and opens it from `#/experiments/<id>/runs?viewStateShareKey=<id>`.
# It is the only server-side way to choose the runs table's columns (its default shows no metric).
VIEW_TAG = "mlflow.sharedViewState."


def _abs_sqlite(uri: str) -> str:
    """Make a relative sqlite path absolute, so the UI and workers started elsewhere agree."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix):]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


class Tracker:
    """Writes a study's runs to MLflow; does nothing when tracking is disabled.

    Args:
        cfg: the tracking section.
        experiment: the MLflow experiment name.
    """

    def __init__(self, cfg: TrackingConfig, experiment: str) -> None:
        self.enabled = cfg.enabled
        self.uri = _abs_sqlite(cfg.uri)
        self.artifacts = cfg.artifacts
        self.experiment = cfg.experiment or experiment
        server = self.enabled and self.uri.startswith(("http://", "https://"))
        if server:
            for key, value in HTTP_CLIENT.items():
                os.environ.setdefault(key, value)
        self.retry_s = TRACKING_RETRY_S if server else 0.0  # a local store fails fast: always tried
        self.client = MlflowClient(self.uri) if self.enabled else None
        self.experiment_id: str | None = None
        self.experiment_tags: dict[str, str] = {}
        self.failures = 0
        self.missed = False  # a write failed or was skipped: the runs lack part of the Optuna record
        self._retry_at = 0.0  # monotonic time before which the store is not called (it failed)

    def _safe(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        if time.monotonic() < self._retry_at:
            self.missed = True
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # the store is down or refused: report, keep the study going
            self.failures += 1
            self.missed = True
            self._retry_at = time.monotonic() + self.retry_s
            msg = error_line(e)
            every = f"tried every {self.retry_s:g} s; " if self.retry_s else ""
            print(f"[tracking] {what} failed ({msg}); the study continues and Optuna keeps the record: the "
                  f"runs are written when the store answers again ({every}`resnext-nas sync` does it by hand)",
                  file=sys.stderr)
            return None

    def retry_now(self) -> None:
        """Let the next call reach the store even if one failed within ``TRACKING_RETRY_S`` (a study's end)."""
        self._retry_at = 0.0

    def reachable(self) -> bool:
        """Whether the store answers now (a server is not asked again within ``TRACKING_RETRY_S`` of a failure)."""
        return self._safe("reaching the tracking store", self.client.get_experiment, self.experiment_id) is not None

    def _sqlite_wal(self) -> None:
        """Put a SQLite store in WAL mode (a property of the database file, set once).

        In SQLite's default rollback-journal mode every commit syncs the journal and the database
        (several fsyncs); a trial's runs, metrics and tags are a handful of commits, which made the
        MLflow writes most of the per-trial bookkeeping (benchmarks/scale). In WAL mode a commit
        appends to the log with one sync, and readers (``mlflow ui``) no longer block the writers.
        Nothing is lost on a crash; like SQLite itself, WAL wants a local filesystem.
        """
        prefix = "sqlite:///"
        if not self.uri.startswith(prefix):
            return
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.uri[len(prefix):], timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")

    def check(self) -> None:
        """Reach the store and look the experiment up; creates no experiment (a refused start records nothing)."""
        if not self.enabled:
            return
        try:
            exp = self.client.get_experiment_by_name(self.experiment)
        except Exception as e:
            raise SpecError(
                f"cannot reach the MLflow tracking store {redact(self.uri)}: {error_line(e)}; start the server "
                "or fix tracking.uri (--tracking-uri), or set tracking.enabled=false"
            ) from None
        self.experiment_id = exp.experiment_id if exp is not None else None
        self.experiment_tags = dict(exp.tags) if exp is not None else {}

    def setup(self) -> None:
        """Create (or migrate) the database and the experiment once, before any worker starts.

        The experiment is marked as a model-training one (``mlflow.experimentKind``), when it is
        made and when an existing one lacks the mark.
        """
        if not self.enabled:
            return
        self.check()
        self._sqlite_wal()
        if self.experiment_id is not None:
            if self.experiment_tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                self._safe("marking the experiment as model training", self.client.set_experiment_tag,
                           self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return
        location = self.artifacts
        if self.uri.startswith(("http://", "https://")) and "://" not in location:
            location = None  # a tracking server: its own (proxied) artifact store, which every machine reaches
        elif "://" not in location:
            location = Path(location).resolve().joinpath(self.experiment).as_uri()
        try:
            self.experiment_id = self.client.create_experiment(self.experiment, location,
                                                               tags={EXPERIMENT_KIND: MODEL_TRAINING})
        except Exception as e:
            raise SpecError(f"cannot create the MLflow experiment '{self.experiment}' in {redact(self.uri)}: "
                            f"{error_line(e)}") from None

    # -- runs -------------------------------------------------------------------------------

    def study_run(self, study_name: str, params: dict, tags: dict,
                  created: dict[str, str] | None = None) -> str | None:
        """The study's parent run: found again when the study resumes, else created.

        Args:
            study_name: the Optuna study's name.
            params: logged when the run is created (MLflow params never change); ``objectives``
                (comma-separated) also gives the columns of the study's saved views.
            tags: set on every run of the study (they may change on resume: sampler, n_trials).
            created: text artifacts (name -> text) written when the run is created only.
        """
        def find_or_create():
            runs = self.client.search_runs(
                [self.experiment_id],
                f"tags.`{ROLE}` = 'study' and tags.`{STUDY}` = '{study_name}'",
                max_results=1,
            )
            if runs:
                run_id = runs[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
                self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
                return run_id
            run = self.client.create_run(
                self.experiment_id, run_name=study_name,
                tags={ROLE: "study", STUDY: study_name, **{k: str(v) for k, v in tags.items()}},
            )
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
            for name, text in (created or {}).items():
                self.client.log_text(run.info.run_id, text, name)
            return run.info.run_id
        run_id = self._safe("creating the study run", find_or_create)
        if run_id is not None and params.get("objectives"):
            self._safe("saving the study's views", save_study_views, self.client, self.experiment_id,
                       study_name, str(params["objectives"]).split(","))
        return run_id

    def start_trial(self, parent_id: str | None, study_name: str, number: int, tags: dict) -> str | None:
        """A RUNNING child run for a trial, so the dashboard shows it while it trains.

        Named after its network and trial number (``resnext8_4x8d_d1-1 #12``) when ``tags`` has
        the ``spec_name``, else ``trial-12``.
        """
        name = f"{tags['spec_name']} #{number}" if tags.get("spec_name") else f"trial-{number}"

        def create():
            run = self.client.create_run(
                self.experiment_id, run_name=name,
                tags={ROLE: "trial", STUDY: study_name, TRIAL: str(number),
                      **({PARENT: parent_id} if parent_id else {}), **tags},
            )
            return run.info.run_id
        return self._safe(f"creating the run of trial {number}", create)

    def log(self, run_id: str | None, *, params: dict | None = None, metrics: dict | None = None,
            series: dict[str, list[float]] | None = None, tags: dict | None = None, step: int = 0,
            points: list[tuple[str, float, int]] | None = None) -> None:
        """Log params, metrics (at ``step``), per-step series (steps 1..n), ``(key, value, step)`` points
        and tags in few batched calls."""
        if run_id is None:
            return
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        items += [Metric(k, float(v), now, int(at)) for k, v, at in (points or [])]
        for key, values in (series or {}).items():
            items += [Metric(key, float(v), now, step) for step, v in enumerate(values, 1)]
        ps = [Param(k, str(v)) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]

        def send():
            for i in range(0, max(len(items), 1), BATCH):
                self.client.log_batch(run_id, metrics=items[i:i + BATCH],
                                      params=ps if i == 0 else [], tags=ts if i == 0 else [])
        self._safe("logging to MLflow", send)

    def log_text(self, run_id: str | None, text: str, name: str) -> None:
        if run_id is not None:
            self._safe(f"writing artifact {name}", self.client.log_text, run_id, text, name)

    def log_figure(self, run_id: str | None, figure, name: str) -> None:
        if run_id is not None:
            self._safe(f"writing figure {name}", self.client.log_figure, run_id, figure, name)

    def status(self, run_id: str) -> str | None:
        """A run's status (RUNNING, FINISHED, FAILED, KILLED), or None when the store does not answer."""
        run = self._safe("reading a run", self.client.get_run, run_id)
        return run.info.status if run is not None else None

    def end(self, run_id: str | None, status: str) -> None:
        """End a run as FINISHED, FAILED or KILLED (never left RUNNING)."""
        if run_id is not None:
            self._safe("ending a run", self.client.set_terminated, run_id, status)

    def finish(self, run_id: str | None, status: str, *, params: dict | None = None, metrics: dict | None = None,
               series: dict[str, list[float]] | None = None, tags: dict | None = None) -> None:
        """Log a run's whole record in one batch, then end it: the fewest commits a run's end can take.

        A trial's run gets everything it records here, when it ends (MLflow's SQLite store commits
        each kind in a batch and each call separately: a log per part cost a commit each).
        """
        self.log(run_id, params=params, metrics=metrics, series=series, tags=tags)
        self.end(run_id, status)

    # -- Pareto tags --------------------------------------------------------------------------

    def sync_pareto_tags(self, parent_id: str | None, on_front: set[int]) -> None:
        """Set ``pareto`` = true/false on the finished trial runs whose tag differs from the front.

        Reads the tags back first, so several workers keep them right, but only of runs whose tag
        can still change: tagged ``true`` or not tagged yet. A trial that left the front never
        returns to it (finished trials' values never change), so ``false`` is final and the cost
        does not grow with the study. A run still RUNNING is tagged once it has ended.
        """
        if parent_id is None:
            return

        def sync():
            base = f"tags.`{PARENT}` = '{parent_id}'"
            for where in ("tags.pareto = 'true'", "tags.pareto IS NULL"):
                for run in self.client.search_runs([self.experiment_id], f"{base} and {where}",
                                                   max_results=50_000):
                    number = run.data.tags.get(TRIAL)
                    if number is None or run.info.status == "RUNNING":
                        continue
                    want = "true" if int(number) in on_front else "false"
                    if run.data.tags.get("pareto") != want:
                        self.client.set_tag(run.info.run_id, "pareto", want)
        self._safe("updating pareto tags", sync)

    def set_pareto_tags(self, changes: dict[str, str]) -> None:
        """Set ``pareto`` = ``true``/``false`` on the given runs (run id -> value), nothing read back.

        The study's loop knows which trials entered or left the front since its last look, so after
        each trial it writes only those; ``sync_pareto_tags`` reconciles everything once per worker
        at the start and at the end.
        """
        def write():
            for run_id, value in changes.items():
                self.client.set_tag(run_id, "pareto", value)
        if changes:
            self._safe("updating pareto tags", write)

    def artifact_uri(self, run_id: str, name: str) -> str | None:
        """Where artifact ``name`` of a run is (a ``file://`` URI for a local store), or None."""
        run = self._safe("looking up an artifact", self.client.get_run, run_id)
        return f"{run.info.artifact_uri.rstrip('/')}/{name}" if run is not None else None

    def find_trial_run(self, study_name: str, number: int) -> str | None:
        """The RUNNING run of trial ``number`` (for a trial whose worker died before linking it)."""
        def find():
            runs = self.client.search_runs(
                [self.experiment_id], f"tags.`{STUDY}` = '{study_name}' and tags.`{TRIAL}` = '{number}' "
                "and attributes.status = 'RUNNING'", max_results=1)
            return runs[0].info.run_id if runs else None
        return self._safe(f"looking up the run of trial {number}", find)

    def end_orphan_runs(self, parent_id: str | None, states: dict[int, str]) -> None:
        """End every RUNNING trial run whose Optuna trial is finished (``states``: number -> state name).

        A safety net run by the study's owner at the end (a worker killed between creating a run
        and linking it, a store that refused the final write): no trial run is left RUNNING.
        COMPLETE gives FINISHED, FAIL gives FAILED, anything else KILLED.
        """
        if parent_id is None:
            return

        def sweep():
            runs = self.client.search_runs(
                [self.experiment_id], f"tags.`{PARENT}` = '{parent_id}' and attributes.status = 'RUNNING'",
                max_results=50_000)
            for run in runs:
                number = run.data.tags.get(TRIAL)
                state = states.get(int(number)) if number is not None else None
                if state in (None, "RUNNING", "WAITING"):
                    continue
                status = {"COMPLETE": "FINISHED", "FAIL": "FAILED"}.get(state, "KILLED")
                if status != "FINISHED":
                    self.client.set_tag(run.info.run_id, "state", "lost")
                self.client.set_terminated(run.info.run_id, status)
        self._safe("closing orphaned runs", sweep)

    def runs_by_trial(self, parent_id: str) -> dict[int, list[tuple[str, str]]] | None:
        """Trial number -> [(run id, status)] of a study's trial runs; None when the store cannot be read."""
        def read():
            out: dict[int, list[tuple[str, str]]] = {}
            for run in self.trial_runs(parent_id):
                number = run.data.tags.get(TRIAL)
                if number is not None:
                    out.setdefault(int(number), []).append((run.info.run_id, run.info.status))
            return out
        return self._safe("reading the study's runs", read)

    def restore_run(self, parent_id: str, study_name: str, number: int, run_id: str | None, status: str,
                    record: dict) -> bool:
        """Give a finished trial the run it would have had: created if missing, its record logged, ended.

        Args:
            parent_id: the study's run.
            study_name: the study.
            number: the trial's number.
            run_id: its run when it has one (left RUNNING by a failed write), else None.
            status: FINISHED, FAILED or KILLED.
            record: ``params``, ``metrics``, ``series`` and ``tags`` (what ``finish`` takes).

        Returns the run's id (None when it could not be created).
        """
        if run_id is None:
            run_id = self.start_trial(parent_id, study_name, number, record.get("tags", {}))
        self.finish(run_id, status, **record)
        return run_id

    def trial_runs(self, parent_id: str) -> list:
        """All child runs of a study (for tests and summaries)."""
        return self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT}` = '{parent_id}'", max_results=50_000
        )


# -- the dashboard: saved views of the runs table and direct links ----------------------------------

RUN_NAME_COLUMN = "attributes.`Run Name`"


def _metric_column(key: str) -> str:
    return f"metrics.`{key}`"  # the UI's canonical column key (makeCanonicalSortKey)


def view_id(kind: str, study_name: str) -> str:
    """The id of a study's saved view (``front-quickstart``): URL-safe, one per study and kind."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", study_name).strip("-")[:80] or "study"
    return f"{kind}-{slug}"


def study_views(study_name: str, objectives: list[str]) -> dict[str, tuple[str, dict]]:
    """The saved views of a study: view id -> (name, state).

    ``front``: its feasible Pareto front (runs tagged ``pareto`` = ``true``); ``trials``: all its
    trial runs. Both show the objectives first, then parameters and MACs, as columns, sorted
    by the first objective (best first).
    """
    of_study = f'tags.`{STUDY}` = "{study_name}"'
    columns = [_metric_column(k) for k in dict.fromkeys([*objectives, "params", "macs"])]
    first = objectives[0] if objectives else "val_accuracy"
    base = {"orderByKey": _metric_column(first), "orderByAsc": first != "val_accuracy",
            "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", "runListHidden": False,
            "viewMaximized": False,
            # the objectives next to the run name, in the study's order; names wide enough to read
            "columnOrder": [RUN_NAME_COLUMN, *columns], "columnWidths": {RUN_NAME_COLUMN: 360}}
    return {
        view_id("front", study_name): (f"Pareto front: {study_name}",
                                       {**base, "searchFilter": f'tags.pareto = "true" and {of_study}'}),
        view_id("trials", study_name): (f"All trials: {study_name}",
                                        {**base, "searchFilter": f'{of_study} and tags.`{ROLE}` = "trial"'}),
    }


def save_study_views(client: MlflowClient, experiment_id: str, study_name: str, objectives: list[str]) -> None:
    """Write a study's saved views on its experiment (only those missing or changed)."""
    tags = client.get_experiment(experiment_id).tags
    now = int(time.time() * 1000)
    for vid, (name, state) in study_views(study_name, objectives).items():
        text = json.dumps(state, separators=(",", ":"))
        try:
            old = json.loads(tags.get(VIEW_TAG + vid, "{}"))
        except ValueError:
            old = {}
        if old.get("name") == name and old.get("state") == text:
            continue
        envelope = {"name": name, "createdAt": old.get("createdAt", now), "updatedAt": now, "state": text}
        client.set_experiment_tag(experiment_id, VIEW_TAG + vid, json.dumps(envelope, separators=(",", ":")))


@dataclass(frozen=True)
class StudyLinks:
    """Where a study's results are in the MLflow UI (``base_url`` + ``#/...`` addresses)."""

    experiment: str
    experiment_id: str
    study: str
    front_size: int
    trials: int
    front: str    # the runs table filtered to the front, objective columns shown
    all_trials: str  # the runs table of every trial, objective columns shown
    report: str   # the study's parent run: Pareto table and plots


def dashboard_links(uri: str, base_url: str, experiment: str | None = None,
                    study: str | None = None) -> list[StudyLinks]:
    """The MLflow UI addresses of every study in the store (or of one experiment / study).

    Brings the store's experiments up to date on the way (the model-training mark, the saved
    views), so stores made before either existed open the same way.

    Args:
        uri: the tracking URI (``sqlite:///...`` or a server).
        base_url: where the UI is served, e.g. ``http://127.0.0.1:5000``.
        experiment: only this MLflow experiment (by name).
        study: only this study.

    Raises:
        SpecError: the store cannot be read, or ``experiment`` is not in it.
    """
    uri = _abs_sqlite(uri)
    client = MlflowClient(uri)
    base = base_url.rstrip("/")
    try:
        if experiment is not None:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise SpecError(f"the MLflow store {redact(uri)} has no experiment '{experiment}': run "
                                "`resnext-nas search` on that experiment file first")
            experiments = [exp]
        else:
            experiments = client.search_experiments(max_results=1000)
        links = []
        for exp in experiments:
            where = f"tags.`{ROLE}` = 'study'" + (f" and tags.`{STUDY}` = '{study}'" if study else "")
            parents = client.search_runs([exp.experiment_id], where, max_results=1000, order_by=["start_time ASC"])
            if not parents:
                continue
            if exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            for parent in parents:
                name = parent.data.tags.get(STUDY, parent.info.run_name)
                objectives = [o for o in parent.data.params.get("objectives", "").split(",") if o]
                save_study_views(client, exp.experiment_id, name, objectives)
                of_parent = f"tags.`{PARENT}` = '{parent.info.run_id}'"
                trials = client.search_runs([exp.experiment_id], of_parent, max_results=50_000)
                front = sum(r.data.tags.get("pareto") == "true" for r in trials)
                runs = f"{base}/#/experiments/{exp.experiment_id}/runs"
                files = [f.path for f in client.list_artifacts(parent.info.run_id) if not f.is_dir]
                shown = next((f for f in files if f.endswith(".png")), "pareto.csv" if "pareto.csv" in files else "")
                report = f"{runs}/{parent.info.run_id}" + (f"/artifacts/{quote(shown)}" if shown else "")
                links.append(StudyLinks(
                    exp.name, exp.experiment_id, name, front, len(trials),
                    f"{runs}?viewStateShareKey={view_id('front', name)}&{WORKFLOW}",
                    f"{runs}?viewStateShareKey={view_id('trials', name)}&{WORKFLOW}",
                    f"{report}?{WORKFLOW}"))
        return links
    except SpecError:
        raise
    except Exception as e:
        raise SpecError(f"cannot read the MLflow tracking store {redact(uri)}: {error_line(e)}") from None


def quiet_mlflow() -> None:
    """MLflow's alembic migration logs flood the console on first use of a database, and on a
    tracking server it prints two "View run" lines (with the server URL as given, password
    included) for every run it ends."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)
