"""The dashboards a user opens after a study, with real servers and a real browser.

`resnext-nas ui EXP.yaml` (a real `mlflow ui` on a free port, on the store of a tiny real study)
prints the addresses of the study's Pareto front and report; headless Chromium loads them and
the rendered page must show the front's runs by name with the objectives as columns, in the
model-training view, and the parent run's Pareto table and plots. optuna-dashboard (an optional
extra) serves the same study's storage and must name the objectives and show the constraints.

Chromium comes from Debian's `chromium` package (`.ci/run` installs it); without it, or without
optuna-dashboard, those tests skip and say so. Screenshots go to the test's temporary folder, or
to $RESNEXT_NAS_SCREENSHOTS when set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from html import unescape
from pathlib import Path

import pytest
import yaml

from tests.search.conftest import tiny_raw
from tests.search.procs import process_tree

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in (os.environ.get("RESNEXT_NAS_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).exists()), None)
ROOT = Path(__file__).resolve().parents[2]


def skip_loudly(why: str):
    warnings.warn(why, stacklevel=2)
    print(f"\nSKIPPED: {why}", file=sys.stderr)
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return r.read()


def wait_http(url: str, proc: subprocess.Popen, seconds: float, log) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{log()}")
        try:
            get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds:.0f}s:\n{log()}")


class Server:
    """A subprocess whose output is collected in the background; stopped with SIGTERM."""

    def __init__(self, cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, cwd=cwd, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, seconds: float) -> re.Match:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in the output:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"the server ignored SIGTERM:\n{self.output()}") from None
        return self.proc.returncode


def run_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# -- a tiny real study ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished tiny study (one experiment file, SQLite MLflow store, journal Optuna storage)."""
    from search.config import load_experiment
    from search.results import finished_rows, pareto_rows
    from search.study import run_search

    d = tmp_path_factory.mktemp("dash")
    raw = tiny_raw(d)
    raw["search"].update(n_trials=4, storage=f"journal:{d}/optuna.journal")
    raw["constraints"] = {"max_params": 4000}  # binds in this space: some proposals are infeasible
    path = d / "dashexp.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_experiment(path)
    summary = run_search(cfg, quiet=True)
    rows = finished_rows(summary.study, cfg.objectives)
    front = pareto_rows(rows, cfg.directions)
    assert front, "the tiny study has no front"
    return {"dir": d, "yaml": path, "cfg": cfg, "summary": summary, "front": front, "rows": rows}


def run_name(row) -> str:
    return f"{row.attrs['spec_name']} #{row.number}"


@pytest.fixture(scope="module")
def ui(study):
    """`resnext-nas ui EXP.yaml` on a free port: its printed links, stopped at the end."""
    port = free_port()
    server = Server([sys.executable, "-m", "search.cli", "ui", str(study["yaml"]), "--port", str(port)],
                    env=run_env(), cwd=study["dir"])
    try:
        server.wait_for(r"report: +\S+", 120)
        wait_http(f"http://127.0.0.1:{port}/health", server.proc, 180, server.output)
        text = server.output()
        links = {k: re.search(rf"{k}: +(\S+)", text).group(1) for k in ("Pareto front", "all trials", "report")}
        yield {"port": port, "links": links, "output": text, "server": server}
    finally:
        rc = server.stop()
    assert rc == 0, server.output()
    with pytest.raises(OSError):  # nothing is left listening
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_ui_prints_the_fronts_address_and_marks_the_experiment(study, ui):
    from mlflow.tracking import MlflowClient

    from search.tracking import EXPERIMENT_KIND, MODEL_TRAINING, VIEW_TAG, Tracker

    cfg, port = study["cfg"], ui["port"]
    tracker = Tracker(cfg.tracking, cfg.name)
    tracker.check()
    exp_id = tracker.experiment_id
    base = f"http://127.0.0.1:{port}/#/experiments/{exp_id}"
    assert ui["links"]["Pareto front"] == f"{base}/runs?viewStateShareKey=front-{cfg.study_name}" \
                                          "&workflowType=machine_learning", ui["output"]
    parent = study["summary"].parent_id
    assert ui["links"]["report"].startswith(f"{base}/runs/{parent}/artifacts/pareto_accuracy_vs_"), ui["output"]
    n_front = len(study["front"])
    assert f"{n_front} networks on the Pareto front" in ui["output"]

    exp = MlflowClient(tracker.uri).get_experiment(exp_id)
    assert exp.tags[EXPERIMENT_KIND] == MODEL_TRAINING
    view = json.loads(exp.tags[f"{VIEW_TAG}front-{cfg.study_name}"])
    state = json.loads(view["state"])
    assert view["name"] == f"Pareto front: {cfg.study_name}" and isinstance(view["createdAt"], int)
    assert state["searchFilter"].startswith('tags.pareto = "true"')
    assert state["selectedColumns"][:len(cfg.objectives)] == [f"metrics.`{o}`" for o in cfg.objectives]

    # the filter of the view selects exactly the front's runs, named after their networks
    runs = tracker.client.search_runs([exp_id], state["searchFilter"].replace('"', "'"))
    assert sorted(r.info.run_name for r in runs) == sorted(run_name(r) for r in study["front"])


def test_the_ui_starts_only_what_browsing_needs(ui):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc (Linux) to read the server's processes")
    procs = process_tree(ui["server"].proc.pid)
    # MLflow's job runner (huey consumers) starts with the server when it is enabled: none here
    assert not [c for c in procs.values() if "huey" in c or "_job_runner" in c], procs
    # the command became the mlflow server (exec), which runs one uvicorn worker
    assert len(procs) == 2 and "mlflow" in procs[ui["server"].proc.pid] and "--workers 1" in \
        procs[ui["server"].proc.pid], procs


def test_the_logged_report_names_its_experiment_file(study):
    from mlflow.artifacts import download_artifacts

    from search.config import load_experiment

    cfg = load_experiment(study["yaml"])
    page = Path(download_artifacts(run_id=study["summary"].parent_id, artifact_path="report.html",
                                   tracking_uri=cfg.tracking.uri, dst_path=str(study["dir"] / "got"))).read_text()
    assert f"experiment <code>{study['yaml']}</code>" in page and "EXP.yaml" not in page
    assert f"resnext-nas export {study['yaml']} --pick knee" in page


def chromium(url: str, out: Path, name: str, budget_ms: int = 20000) -> str:
    """Load ``url`` in headless Chromium; returns the rendered DOM and writes ``name``.png."""
    profile = out / f"profile-{name}"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--window-size=1600,1000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-3000:]
    shot = out / f"{name}.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=180, check=True)
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
    keep = os.environ.get("RESNEXT_NAS_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    return unescape(dom.stdout)


def rendered(url: str, out: Path, name: str, ready: str) -> str:
    """The DOM once ``ready`` is in it (a cold server may need a second, longer load)."""
    dom = ""
    for budget in (20000, 45000):
        dom = chromium(url, out, name, budget)
        if ready in dom:
            return dom
    raise AssertionError(f"{ready!r} never rendered at {url}; the page had:\n{re.sub(r'<[^>]+>', ' ', dom)[:3000]}")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        skip_loudly("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it): "
                    "the dashboard is NOT checked in a browser")
    return CHROMIUM


def test_front_opens_in_the_runs_table_with_objective_columns(study, ui, browser, tmp_path):
    cfg = study["cfg"]
    dom = rendered(ui["links"]["Pareto front"], tmp_path, "front", "matching runs")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    # the model-training view's runs table, not the GenAI traces overview
    assert "No data available" not in text and "Run Name" in text
    assert f"Pareto front: {cfg.study_name}" in text  # the saved view is the active one
    front = study["front"]
    assert re.search(rf"\b{len(front)} matching runs", text), text[:3000]
    for row in front:
        assert run_name(row) in text, f"{run_name(row)} missing from the page:\n{text[:3000]}"
    others = [r for r in study["rows"] if r.number not in {f.number for f in front}]
    assert others, "the tiny study should have trials off the front"
    for row in others:
        assert not re.search(re.escape(run_name(row)) + r"(?!\d)", text), f"trial {row.number} is not on the front"
    headers = re.findall(r'role="columnheader"[^>]*>(.*?)</div>\s*</div>', dom, flags=re.S)
    header_text = " ".join(re.sub(r"<[^>]+>", " ", h) for h in headers) or text
    for objective in cfg.objectives:  # shown by default: no "Show more columns"
        assert objective in header_text, f"no {objective} column"
    # the best accuracy of the front is in the table, as MLflow prints it
    best = max(r.values["val_accuracy"] for r in front)
    assert re.search(rf">\s*{str(round(best, 5)).rstrip('0')[:6]}", dom), f"accuracy {best} not shown"


def test_the_report_shows_the_pareto_table_and_plots(study, ui, browser, tmp_path):
    dom = rendered(ui["links"]["report"], tmp_path, "report", "pareto.csv")
    text = re.sub(r"<[^>]+>", " ", dom)
    for name in ("pareto.csv", "pareto.json", "experiment.json", "pareto_accuracy_vs_params.png",
                 "pareto_accuracy_vs_latency_ms.png"):
        assert name in text, f"{name} not listed"
    # the plot the address names is displayed: an <img> of it, loaded (a blob of the artifact's bytes)
    shown = ui["links"]["report"].split("/artifacts/")[1].split("?")[0]
    assert re.search(rf'<img alt="{re.escape(shown)}" src="blob:http://127\.0\.0\.1:{ui["port"]}/', dom), \
        f"the plot {shown} is not displayed"


# -- optuna-dashboard ------------------------------------------------------------------------------

def test_optuna_dashboard_names_the_objectives_and_shows_constraints(study):
    exe = Path(sys.executable).with_name("optuna-dashboard")
    if not exe.exists():
        skip_loudly("optuna-dashboard is not installed (pip install -e '.[dashboard]'): NOT checked")
    journal = study["cfg"].storage_url.removeprefix("journal:")
    port = free_port()
    server = Server([str(exe), journal, "--host", "127.0.0.1", "--port", str(port)], env=run_env())
    try:
        wait_http(f"http://127.0.0.1:{port}/api/meta", server.proc, 120, server.output)
        studies = json.loads(get(f"http://127.0.0.1:{port}/api/studies"))["study_summaries"]
        ours = [s for s in studies if s["study_name"] == study["cfg"].study_name]
        assert len(ours) == 1, studies
        assert ours[0]["directions"] == ["maximize", "minimize", "minimize"]
        detail = json.loads(get(f"http://127.0.0.1:{port}/api/studies/{ours[0]['study_id']}?after=0"))
        assert detail["objective_names"] == list(study["cfg"].objectives)  # not "Objective 0/1/2"
        trials = detail["trials"]
        assert len(trials) == len(study["summary"].study.trials)
        # the front it shows is Optuna's feasible one: no trial over the parameter budget is on it
        over = {t.number for t in study["summary"].study.trials if t.constraints.get("max_params", 0) > 0}
        best = {t["number"] for t in detail["best_trials"]}
        assert over, "the tiny study should have trials over its budget"
        assert {r.number for r in study["front"]} <= best and not best & over, (best, over)
        # constraints: optuna-dashboard 0.21 shows only the old list form of constraints (the system
        # attribute `constraints` that `constraints_func` wrote), not Optuna 5's `set_constraint`
        # keys; the trial's user attributes `constraint.<key>` are what it can show.
        shown = {t["number"]: {a["key"]: a["value"] for a in t["user_attrs"]} for t in trials}
        for number in over:
            assert float(shown[number]["constraint.max_params"]) > 0, shown[number]
    finally:
        assert server.stop() in (0, -signal.SIGTERM), server.output()
