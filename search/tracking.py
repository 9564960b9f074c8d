"""MLflow tracking: the only module that imports mlflow.

One MLflow experiment per experiment file, one parent run per study, one child run per trial.
Runs are addressed by id through ``MlflowClient`` (no fluent "active run" state), so several
studies or trials in one process cannot leak into each other. Every call that can fail on an
unreachable store goes through ``Tracker._safe``: the failure is reported once per kind and the
study goes on; the Optuna storage keeps the authoritative record.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from search.config import TrackingConfig
from search.errors import error_line, redact
from space.errors import SpecError

log = logging.getLogger(__name__)

ROLE, STUDY, TRIAL = "resnext_nas.role", "resnext_nas.study", "resnext_nas.trial"
PARENT = "mlflow.parentRunId"
BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


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
        self.client = MlflowClient(self.uri) if self.enabled else None
        self.experiment_id: str | None = None
        self.failures = 0

    def _safe(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # the store is down or refused: report, keep the study going
            self.failures += 1
            msg = error_line(e)
            print(f"[tracking] {what} failed ({msg}); the study continues and Optuna keeps the record",
                  file=sys.stderr)
            return None

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

    def setup(self) -> None:
        """Create (or migrate) the database and the experiment once, before any worker starts."""
        if not self.enabled:
            return
        self.check()
        if self.experiment_id is not None:
            return
        location = self.artifacts
        if self.uri.startswith(("http://", "https://")) and "://" not in location:
            location = None  # a tracking server: its own (proxied) artifact store, which every machine reaches
        elif "://" not in location:
            location = Path(location).resolve().joinpath(self.experiment).as_uri()
        try:
            self.experiment_id = self.client.create_experiment(self.experiment, location)
        except Exception as e:
            raise SpecError(f"cannot create the MLflow experiment '{self.experiment}' in {redact(self.uri)}: "
                            f"{error_line(e)}") from None

    # -- runs -------------------------------------------------------------------------------

    def study_run(self, study_name: str, params: dict, tags: dict,
                  created: dict[str, str] | None = None) -> str | None:
        """The study's parent run: found again when the study resumes, else created.

        Args:
            study_name: the Optuna study's name.
            params: logged when the run is created (MLflow params never change).
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
        return self._safe("creating the study run", find_or_create)

    def start_trial(self, parent_id: str | None, study_name: str, number: int, tags: dict) -> str | None:
        """A RUNNING child run for a trial, so the dashboard shows it while it trains."""
        def create():
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{number}",
                tags={ROLE: "trial", STUDY: study_name, TRIAL: str(number),
                      **({PARENT: parent_id} if parent_id else {}), **tags},
            )
            return run.info.run_id
        return self._safe(f"creating the run of trial {number}", create)

    def log(self, run_id: str | None, *, params: dict | None = None, metrics: dict | None = None,
            series: dict[str, list[float]] | None = None, tags: dict | None = None, step: int = 0) -> None:
        """Log params, metrics (at ``step``), per-step series (steps 1..n) and tags in few batched calls."""
        if run_id is None:
            return
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
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

    def end(self, run_id: str | None, status: str) -> None:
        """End a run as FINISHED, FAILED or KILLED (never left RUNNING)."""
        if run_id is not None:
            self._safe("ending a run", self.client.set_terminated, run_id, status)

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

    def trial_runs(self, parent_id: str) -> list:
        """All child runs of a study (for tests and summaries)."""
        return self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT}` = '{parent_id}'", max_results=50_000
        )


def quiet_mlflow() -> None:
    """MLflow's alembic migration logs flood the console on first use of a database, and on a
    tracking server it prints two "View run" lines (with the server URL as given, password
    included) for every run it ends."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)
