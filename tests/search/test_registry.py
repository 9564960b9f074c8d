"""The chosen network as a registered MLflow model: register, load without resnext-nas, serve over HTTP.

A tiny digits study is searched, exported and registered once for the module (a real MLflow SQLite
store under a tmp dir; PostgreSQL too where RESNEXT_NAS_TEST_POSTGRES is set). The model is loaded
in a fresh interpreter that cannot import this repository, and served by a real
``mlflow models serve`` process on a loopback port.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from PIL import Image

from search.cli import main
from search.config import experiment_from_dict, load_experiment
from search.data import load_source
from search.export import Preprocessing, load_model, save_weights
from search.registry import REQUIREMENTS, probabilities, register_network, study_models
from search.storage import create_study
from space import NetSpec, SpecError, StageSpec, build_model

from .conftest import tiny_raw
from .procs import postgres_url

NAME = "digits-net"
IMAGES = 40  # digits test images sent to the model
# A fresh interpreter without this repository: the editable install's import hook removed
# (site runs sitecustomize after the .pth files), PYTHONPATH pointing here only.
BLOCK = ('import sys\n'
         'sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]\n')


@dataclass(frozen=True)
class Study:
    root: Path
    exp: Path
    best: Path
    weights: Path
    uri: str
    printed: str  # what the two --register commands printed

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri, registry_uri=self.uri)


def digits_uint8(cfg, n: int) -> np.ndarray:
    """The first ``n`` digits test images as 8-bit NHWC (0..16 -> 0..255, white = 16: how a PNG holds them)."""
    raw, _ = load_source(cfg.data, train=False)
    return np.round(raw[:n].numpy() * 255 / 16).astype(np.uint8).transpose(0, 2, 3, 1)


def predict_cli(weights: Path, images: np.ndarray, tmp: Path) -> list[tuple[str, float]]:
    """``resnext-nas predict`` on the images saved as PNG files: (class, probability) per image."""
    files = []
    for i, img in enumerate(images):
        Image.fromarray(img[:, :, 0]).save(tmp / f"d{i}.png")
        files.append(str(tmp / f"d{i}.png"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["predict", str(weights), *files]) == 0
    rows = [line.split() for line in out.getvalue().splitlines()[1:]]
    assert [r[0] for r in rows] == files
    return [(r[1], float(r[2])) for r in rows]


def no_repo_env(tmp: Path, uri: str) -> dict:
    (tmp / "block").mkdir(exist_ok=True)
    (tmp / "block" / "sitecustomize.py").write_text(BLOCK)
    bin_dir = str(Path(sys.executable).parent)  # mlflow models serve runs `uvicorn` from PATH
    return {**os.environ, "PYTHONPATH": str(tmp / "block"), "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    """2 trials on digits, 1 epoch; ``export --register`` (retrains: version 1), ``evaluate --register`` (v2)."""
    root = tmp_path_factory.mktemp("registry")
    raw = tiny_raw(root, data={"dataset": "digits", "val_fraction": 0.25, "augment": False},
                   space={"num_stages": [1], "stem_ch": [8], "bottleneck_ch": [8], "cardinality": [1, 2]},
                   objectives=["val_accuracy", "params"], search={"n_trials": 2},
                   train={"epochs": 1, "batch_size": 64, "threads": 1})
    exp = root / "digits.yaml"
    exp.write_text(yaml.safe_dump(raw))
    best, weights = root / "best.yaml", root / "w.safetensors"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["search", str(exp), "--quiet", "--export-dir", str(root / "exports")]) == 0
        out.truncate(0)
        assert main(["export", str(exp), "--pick", "max-accuracy", "--out", str(best), "--register", NAME]) == 0
        assert main(["evaluate", str(exp), str(best), "--weights", str(weights), "--register", NAME]) == 0
    return Study(root, exp, best, weights, raw["tracking"]["uri"], out.getvalue())


# -- registering --------------------------------------------------------------------------------------


def test_versions_carry_lineage_tags_signature_and_pinned_requirements(study):
    client = study.client()
    doc = yaml.safe_load(study.best.read_text())
    prov = doc["provenance"]
    v1, v2 = (client.get_model_version(NAME, v) for v in ("1", "2"))  # a second registration: a new version
    assert "retraining trial" in study.printed and f"registered models:/{NAME}/1" in study.printed
    assert v1.tags["resnext_nas.weights"].startswith("retrained for the registration: 1 epochs, seed "
                                                     f"{prov['seed']}, 1 threads")
    assert v2.tags["resnext_nas.weights"].startswith("trained by `resnext-nas evaluate`")
    for v in (v1, v2):
        assert v.run_id == prov["mlflow_run_id"]  # linked to the trial's run
        tags = v.tags
        assert tags["resnext_nas.study"] == "digits" and tags["resnext_nas.trial"] == str(prov["trial"])
        assert tags["resnext_nas.spec_hash"] == doc["hash"] and tags["resnext_nas.network"] == doc["name"]
        assert tags["resnext_nas.recipe_fingerprint"] == prov["recipe_fingerprint"]
        assert tags["resnext_nas.objectives"] == "val_accuracy,params"
        assert float(tags["resnext_nas.objective.val_accuracy"]) == doc["metrics"]["val_accuracy"]
        model = client.get_logged_model(v.source.removeprefix("models:/"))
        assert model.source_run_id == prov["mlflow_run_id"] and model.tags["resnext_nas.trial"] == str(prov["trial"])
        assert {m.key: m.value for m in model.metrics}["params"] == doc["metrics"]["params"]
    run = client.get_run(prov["mlflow_run_id"])
    assert {o.model_id for o in run.outputs.model_outputs} == {v.source.removeprefix("models:/") for v in (v1, v2)}

    local = Path(_download(study, "2"))
    mlmodel = Model.load(local)
    inputs = mlmodel.signature.inputs.to_dict()
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, -1, -1, -1)}}]
    assert [c["name"] for c in mlmodel.signature.outputs.to_dict()] == ["class", "probability", *"0123456789"]
    assert json.loads((local / "serving_input_example.json").read_text())["inputs"] == np.zeros(
        (1, 1, 16, 16), int).tolist()
    # the requirements MLflow wrote: every package the model imports, pinned to the installed version
    reqs = (local / "requirements.txt").read_text().split()
    assert reqs == [f"{d}=={version(d).split('+')[0]}" for d in REQUIREMENTS]
    assert not any("resnext" in r for r in reqs)
    carried = {p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")}
    assert {"search/__init__.py", "search/export.py", "search/registry.py", "space/spec.py"} <= carried
    assert not any(p.startswith("search/") and p not in ("search/__init__.py", "search/export.py",
                                                         "search/registry.py") for p in carried)
    assert (local / "artifacts" / "weights.safetensors").read_bytes() == study.weights.read_bytes()
    if has_onnx():
        from search.latency import onnx_session

        model, prep = load_model(study.weights)
        x = prep(digits_uint8(load_experiment(str(study.exp)), 8))
        got = onnx_session(local / "artifacts" / "model.onnx").run(None, {"input": x.numpy()})[0]
        with torch.inference_mode():
            assert np.abs(got - model(x).numpy()).max() <= 1e-4


def _download(study: Study, v: str) -> str:
    import mlflow

    source = study.client().get_model_version_download_uri(NAME, v)  # the logged model's artifacts
    return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(study.root / f"v{v}"))


def has_onnx() -> bool:
    from importlib.util import find_spec

    return all(find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def test_study_models_gives_dashboard_urls(study):
    links = study_models(study.uri, "http://127.0.0.1:5000/", "digits")
    assert [(m.name, m.version) for m in links] == [(NAME, "1"), (NAME, "2")]
    run_id = yaml.safe_load(study.best.read_text())["provenance"]["mlflow_run_id"]
    exp_id = study.client().get_run(run_id).info.experiment_id
    assert links[0].version_url == f"http://127.0.0.1:5000/#/models/{NAME}/versions/1"
    assert links[1].models_page == f"http://127.0.0.1:5000/#/experiments/{exp_id}/models?workflowType=machine_learning"
    assert links[1].model_url.startswith(f"http://127.0.0.1:5000/#/experiments/{exp_id}/models/m-")
    assert links[1].run_url == f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"
    assert study_models(study.uri, "http://x", "another-study") == []


def test_report_and_ui_link_the_registered_versions(study, tmp_path):
    """The study's report and `resnext-nas ui` name each registered version with its dashboard page."""
    from .test_dashboard import Server, free_port

    out = tmp_path / "report.html"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", str(study.exp), "--out", str(out)]) == 0
    page = out.read_text()
    for v in ("1", "2"):
        assert f'href="http://127.0.0.1:5000/#/models/{NAME}/versions/{v}"' in page

    port = free_port()
    server = Server([sys.executable, "-m", "search.cli", "ui", str(study.exp), "--port", str(port)])
    try:
        lines = server.wait_for(rf"model: +{NAME} version 2 \(trial \d+\): (\S+)", 60)
        assert lines.group(1) == f"http://127.0.0.1:{port}/#/models/{NAME}/versions/2"
        assert re.search(rf"model: +{NAME} version 1 ", server.output())
    finally:
        server.stop()


# -- using it without resnext-nas -------------------------------------------------------------------


LOAD = """
import importlib.util, json, sys
import numpy as np
assert importlib.util.find_spec("search") is None and importlib.util.find_spec("space") is None, "repo importable"
import mlflow
model = mlflow.pyfunc.load_model("models:/{name}/2")
images = np.load("images.npy")
nhwc = model.predict(images)
nchw = model.predict(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
try:
    model.predict(images.astype(np.float32))
    refused = ""
except mlflow.exceptions.MlflowException as e:
    refused = e.message
print(json.dumps({{"rows": nhwc.to_dict(orient="records"), "same": nhwc.equals(nchw), "refused": refused[-200:],
                  "code": sys.modules["search.export"].__file__}}))
"""


def test_model_loads_and_predicts_without_resnext_nas(study, tmp_path):
    cfg = load_experiment(str(study.exp))
    images = digits_uint8(cfg, IMAGES)
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run([sys.executable, "-c", LOAD.format(name=NAME)], cwd=tmp_path, capture_output=True,
                          text=True, env=no_repo_env(tmp_path, study.uri), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/code/search/export.py" in got["code"] and not got["code"].startswith(str(Path.cwd()))
    assert got["same"]  # NHWC and NCHW are the same images
    assert "dtype of input float32 does not match expected dtype uint8" in got["refused"]
    model, prep = load_model(study.weights)
    want = probabilities(model, prep, images)
    assert [r["class"] for r in got["rows"]] == list(want["class"])
    assert np.abs(np.array([[r[c] for c in "0123456789"] for r in got["rows"]]) - want[list("0123456789")].to_numpy()
                  ).max() <= 1e-5


@pytest.mark.slow
def test_served_model_answers_like_predict_and_refuses_bad_requests(study, tmp_path):
    cfg = load_experiment(str(study.exp))
    images = digits_uint8(cfg, IMAGES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([mlflow_bin, "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT, env=no_repo_env(tmp_path, study.uri), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not answer /ping in 180 s"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            time.sleep(0.5)

        status, body = post(f"{url}/invocations", {"inputs": images.tolist()})
        assert status == 200, body
        rows = body["predictions"]
        weights = Path(_download(study, "1")) / "artifacts" / "weights.safetensors"
        printed = predict_cli(weights, images, tmp_path)  # `resnext-nas predict` on the same images as PNG files
        assert [r["class"] for r in rows] == [c for c, _ in printed]
        assert [r["probability"] for r in rows] == pytest.approx([p for _, p in printed], abs=6e-5)
        model, prep = load_model(weights)
        want = probabilities(model, prep, images)
        assert np.abs(np.array([[r[c] for c in "0123456789"] for r in rows]) - want[list("0123456789")].to_numpy()
                      ).max() <= 1e-5
        colour = np.repeat(images.transpose(0, 3, 1, 2), 3, axis=1)  # NCHW RGB of the same digits
        status, body = post(f"{url}/invocations", {"inputs": colour[:5].tolist()})
        assert status == 200 and [r["class"] for r in body["predictions"]] == [r["class"] for r in rows[:5]]

        # a wrong shape or dtype: MLflow's 400, its message naming the input the model expects
        for bad, says in [(images[..., 0].tolist(),  # NHW: no channel axis
                           ["Tensor('uint8', (-1, -1, -1, -1))", "Shape of input (40, 8, 8) does not match"]),
                          ((images[:2].astype(int) + 250).tolist(), ["out of bounds for uint8"]),
                          ([[[[-1]]]], ["out of bounds for uint8"]),
                          (np.zeros((1, 2, 8, 8), int).tolist(),  # 2 channels
                           ["expected a uint8 array of 8-bit images, NHWC or NCHW, with 1 (grey) or 3 (colour)"])]:
            status, body = post(f"{url}/invocations", {"inputs": bad})
            assert status == 400 and all(s in body["message"] for s in says), body
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def post(url: str, payload) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# -- bad input: exit 2, one line, nothing recorded ----------------------------------------------------


def registry_state(study: Study) -> tuple:
    client = study.client()
    models = [(m.name, len(client.search_model_versions(f"name = '{m.name}'"))) for m in
              client.search_registered_models()]
    experiments = [e.experiment_id for e in client.search_experiments()]
    return models, len(client.search_logged_models(experiments))


@pytest.mark.parametrize("args, says", [
    (["--register", "a/b"], "MLflow refuses this model name"),
    (["--register", "v:1"], "MLflow refuses this model name"),
    (["--register", "  "], "MLflow refuses this model name"),
    (["--register", NAME, "--set", "tracking.uri=file:///tmp/nowhere"], "plain file store, which has no model"),
    (["--register", NAME, "--tracking-uri", "mlruns"], "plain file store, which has no model"),
    (["--register", NAME, "--pick", "best-of-all"], "unknown pick 'best-of-all'; use knee"),
    (["--register", NAME, "--set", "search.study_name=empty"], "the Pareto front is empty"),
])
def test_refused_registrations_exit_2_with_one_line_and_record_nothing(study, tmp_path, capsys, args, says):
    if "search.study_name=empty" in args:
        with contextlib.suppress(Exception):
            create_study(load_experiment(str(study.exp), ["search.study_name=empty"]), None, {})
    before = registry_state(study)
    out = tmp_path / "refused.yaml"
    capsys.readouterr()
    assert main(["export", str(study.exp), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and says in err, err
    assert not out.exists() and registry_state(study) == before


def test_evaluate_refuses_a_bad_name_before_training(study, capsys):
    before = registry_state(study)
    capsys.readouterr()
    assert main(["evaluate", str(study.exp), str(study.best), "--register", "no/slash"]) == 2
    captured = capsys.readouterr()
    assert "MLflow refuses this model name" in captured.err and "trained" not in captured.out
    assert registry_state(study) == before


def test_a_network_trained_on_float_data_is_refused(tmp_path):
    net = NetSpec((StageSpec(1, 4, 1, 1, 16),), stem_ch=4, num_classes=4, in_ch=3, input_size=16)
    prep = Preprocessing(16, 3, (0.0,) * 3, (1.0,) * 3, pixel_max=None, classes=("a", "b", "c", "d"),
                         dataset="synthetic")
    save_weights(build_model(net), net, prep, tmp_path / "w.safetensors")
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({"spec": net.to_dict(), "preprocessing": prep.to_dict()}))
    cfg = experiment_from_dict(tiny_raw(tmp_path), name="syn")
    with pytest.raises(SpecError, match="trained on float data .* takes uint8 images"):
        register_network(cfg, tmp_path / "best.yaml", tmp_path / "w.safetensors", "syn", "test")
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was opened


# -- PostgreSQL --------------------------------------------------------------------------------------


def test_postgresql_registry(study, tmp_path):
    import sqlalchemy

    from search.storage import _with_driver

    base = _with_driver(postgres_url())  # skips loudly without a server

    schema = f"reg_{uuid.uuid4().hex[:8]}"  # MLflow's tables apart from Optuna's (both keep alembic_version)
    engine = sqlalchemy.create_engine(base)
    with engine.begin() as db:
        db.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    uri = f"{base}?options=-csearch_path%3D{schema}"
    try:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            for _ in range(2):
                assert main(["export", str(study.exp), "--pick", "max-accuracy", "--out", str(tmp_path / "b.yaml"),
                             "--weights", str(study.weights), "--register", "pg-net", "--set",
                             f"tracking.uri={uri}"]) == 0
        assert "no source run: the trial's MLflow run is not in this store" in printed.getvalue()
        client = MlflowClient(uri, registry_uri=uri)
        versions = sorted(client.search_model_versions("name = 'pg-net'"), key=lambda v: int(v.version))
        assert [str(v.version) for v in versions] == ["1", "2"]
        assert versions[0].tags["resnext_nas.weights"].startswith("the weights file w.safetensors")
        assert [m.version for m in study_models(uri, "http://h", "digits")] == ["1", "2"]
        import mlflow
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        images = digits_uint8(load_experiment(str(study.exp)), 8)
        with _use_tracking_uri(uri):
            got = mlflow.pyfunc.load_model("models:/pg-net/2").predict(images)
        model, prep = load_model(study.weights)
        assert list(got["class"]) == list(probabilities(model, prep, images)["class"])
    finally:
        with engine.begin() as db:
            db.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
