"""Register an exported network as an MLflow model: what ``mlflow models serve`` and notebooks load.

``resnext-nas export EXP.yaml --pick knee --out best.yaml --register NAME`` (or ``evaluate ...
--register NAME``) logs the trained network as an MLflow pyfunc model and registers it as a new
version of ``NAME``:

- the model takes a batch of 8-bit images, a uint8 array NHWC or NCHW, grey (1 channel) or colour
  (3; 4 drops alpha), of any size; it applies the recorded preprocessing of ``search.export``
  (``Preprocessing``, the same code ``resnext-nas predict`` runs) and returns one row per image:
  ``class`` (the most probable class's name), ``probability`` (its probability) and one column per
  class name with that class's probability;
- its artifacts are the safetensors weights, the export YAML and, where onnx is installed, the ONNX
  graph (``export_onnx``, checked against PyTorch);
- it carries its code (``space`` and the three modules of ``search`` it runs: ``__init__``,
  ``export``, ``registry``) and pinned requirements (mlflow, torch, numpy, pandas, safetensors,
  pyyaml), so ``mlflow.pyfunc.load_model("models:/NAME/1")`` works without resnext-nas installed;
  MLflow loads it from code (``MODEL_CODE``), no pickle;
- the logged model's source run is the trial's MLflow run (its metrics are linked to the model), and
  the model and its version carry tags naming the study, trial, network, spec hash, recipe
  fingerprint and objective values.

The served model imports this module: at import it needs only what the model carries (``space``,
``search.export``) and requires (mlflow, torch, numpy, pandas, PyYAML). The study side (config,
storage, tracking) is imported inside the functions that register.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlparse

import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from search.export import Preprocessing, load_model, weights_metadata
from space.errors import SpecError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from search.config import ExperimentConfig

# Tags of a registered network's logged model and model version.
TAG = "resnext_nas."
STUDY, TRIAL, NETWORK, SPEC_HASH = TAG + "study", TAG + "trial", TAG + "network", TAG + "spec_hash"
FINGERPRINT, OBJECTIVES, WEIGHTS = TAG + "recipe_fingerprint", TAG + "objectives", TAG + "weights"
# What the served model imports, pinned to the versions installed here (local labels such as
# +cpu stripped, as MLflow does: PyPI has no such versions).
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "safetensors", "pyyaml")
# Models from code: MLflow runs this file to load the model (the modules it imports are carried).
MODEL_CODE = '''"""A resnext-nas network as an MLflow pyfunc model (search.registry.ImageClassifier)."""
import mlflow

from search.registry import ImageClassifier

mlflow.models.set_model(ImageClassifier())
'''
INPUT = "a uint8 array of 8-bit images, NHWC or NCHW, with 1 (grey) or 3 (colour) channels"


# -- the served model ----------------------------------------------------------------------------


def probabilities(model: torch.nn.Module, prep: Preprocessing, images) -> pd.DataFrame:
    """One row per image: ``class``, ``probability`` (the most probable class) and every class's probability.

    Args:
        model: the network, in eval mode.
        prep: its preprocessing (``Preprocessing``), whose ``classes`` name the columns.
        images: a uint8 batch NHWC or NCHW, grey or colour (anything ``prep`` takes).
    """
    with torch.inference_mode():
        probs = model(prep(images)).float().softmax(1).numpy()
    names = list(prep.classes or (str(i) for i in range(probs.shape[1])))
    best = probs.argmax(1)
    table = pd.DataFrame(probs, columns=names)
    table.insert(0, "probability", probs[np.arange(len(probs)), best])
    table.insert(0, "class", [names[i] for i in best])
    return table


class ImageClassifier(PythonModel):
    """The pyfunc model: loads the weights artifact; ``predict`` gives ``probabilities``."""

    def load_context(self, context) -> None:
        self.model, self.prep = load_model(context.artifacts["weights"])

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        # np.ndarray: a type hint MLflow infers no signature from (the logged signature holds)
        if not isinstance(model_input, np.ndarray) or model_input.dtype != np.uint8 or model_input.ndim != 4:
            got = (f"{model_input.dtype} array of shape {model_input.shape}" if isinstance(model_input, np.ndarray)
                   else type(model_input).__name__)
            raise MlflowException.invalid_parameter_value(f"expected {INPUT}; got {got}")
        try:
            return probabilities(self.model, self.prep, model_input)
        except SpecError as e:
            raise MlflowException.invalid_parameter_value(f"expected {INPUT}: {e}") from None


# -- registering ------------------------------------------------------------------------------------


def pinned(dist: str) -> str:
    """``dist==version`` as installed here, without a local label (``torch==2.4.0``, not ``+cpu``)."""
    try:
        return f"{dist}=={version(dist).split('+')[0]}"
    except PackageNotFoundError:
        raise SpecError(f"{dist} is not installed here; the registered model needs it") from None


def check_registry(uri: str, name: str) -> None:
    """Refuse a store without a model registry and a name MLflow refuses, before anything is recorded.

    Args:
        uri: the MLflow tracking URI (``sqlite:///...``, ``postgresql://...``, a tracking server).
        name: the registered model's name.

    Raises:
        SpecError: a plain file store (no registry), an unreachable store, or a refused name.
    """
    from mlflow.utils.validation import _validate_model_name

    from search.errors import error_line, redact

    try:
        _validate_model_name(name)
    except MlflowException as e:
        raise SpecError(f"--register {name!r}: MLflow refuses this model name ({e.message}); choose another, "
                        "e.g. letters, digits, '-' and '_'") from None
    if urlparse(uri).scheme in ("", "file"):
        raise SpecError(f"--register: {redact(uri)} is a plain file store, which has no model registry; use a "
                        "database store (tracking.uri: sqlite:///mlruns/mlflow.db or postgresql://...) or a "
                        "tracking server (--set tracking.uri=...)")
    try:
        _client(uri).search_registered_models(max_results=1)
    except Exception as e:
        raise SpecError(f"--register: cannot reach the model registry of {redact(uri)}: {error_line(e)}; start "
                        "the server or fix tracking.uri") from None


def _store_uri(uri: str) -> str:
    """The tracking URI as MLflow should open it: a relative SQLite path made absolute, a bare
    ``postgresql://`` given the installed driver (SQLAlchemy 2.1 reads it as psycopg 3)."""
    from search.storage import _with_driver
    from search.tracking import _abs_sqlite

    return _with_driver(_abs_sqlite(uri))


def _client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    uri = _store_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


@dataclass(frozen=True)
class Registered:
    """A registered model version of a network."""

    name: str
    version: str
    model_id: str
    experiment_id: str
    run_id: str | None  # the trial's MLflow run (None: not in this store)
    onnx: str           # "included", or why not
    requirements: tuple[str, ...]
    tracking_uri: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _stage_code(root: Path) -> list[str]:
    """Copy the code the served model runs (``space`` and three modules of ``search``) under ``root``."""
    import search
    import space

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(space.__file__).parent, root / "space", ignore=ignore)
    (root / "search").mkdir()
    for module in ("__init__.py", "export.py", "registry.py"):
        shutil.copy2(Path(search.__file__).parent / module, root / "search" / module)
    return [str(root / "space"), str(root / "search")]


@contextlib.contextmanager
def _quiet():
    """No download progress bars, no INFO lines from MLflow while a model is saved and logged."""
    import logging
    import os

    logger = logging.getLogger("mlflow.pyfunc")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def _onnx(weights: Path, exported: Path, out: Path) -> str:
    """Write the ONNX graph to ``out`` where onnx is installed; says what happened."""
    if not all(find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")):
        return "not included: onnx is not installed (pip install 'resnext-nas[onnx]')"
    from search.export import export_onnx

    try:
        export_onnx(weights, out, exported=exported)
    except SpecError as e:
        return f"not included: {e}"
    return "included"


def register_network(cfg: ExperimentConfig, exported: str | Path, weights: str | Path, name: str,
                     weights_note: str) -> Registered:
    """Log the trained network as an MLflow pyfunc model and register it as a new version of ``name``.

    The model's source run is the trial's MLflow run, found in the store by the run id the export
    recorded (when the study was tracked elsewhere or not at all, the model goes to the experiment's
    MLflow experiment, with no run). ``check_registry`` should have passed.

    Args:
        cfg: the experiment whose study the network comes from (its ``tracking`` section: the store).
        exported: the export YAML (``resnext-nas export``).
        weights: the network's trained weights (checked against the export).
        name: the registered model's name; a new version when it exists.
        weights_note: where the weights come from, in words (a tag and the version's description).

    Raises:
        SpecError: weights of another network, a network with no 8-bit input (trained on float
            data), or a store that refuses the model.
    """
    import dataclasses

    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model, ModelSignature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from mlflow.types import ColSpec, Schema, TensorSpec

    from search.errors import error_line
    from search.tracking import Tracker

    exported, weights = Path(exported), Path(weights)
    _, prep = load_model(exported, weights)
    if prep.pixel_max is None:
        raise SpecError(f"--register: this network was trained on float data ({prep.dataset}), which has no 8-bit "
                        "form; the registered model takes uint8 images")
    doc = yaml.safe_load(exported.read_text())
    prov, metrics = doc.get("provenance") or {}, doc.get("metrics") or {}
    uri = _store_uri(cfg.tracking.uri)
    client = _client(uri)
    run = None
    if prov.get("mlflow_run_id"):
        with contextlib.suppress(MlflowException):
            run = client.get_run(prov["mlflow_run_id"])
    run_id = run.info.run_id if run is not None else None
    if run is not None:
        experiment_id = run.info.experiment_id
    else:
        tracker = Tracker(dataclasses.replace(cfg.tracking, enabled=True, uri=uri), cfg.name)
        tracker.setup()
        experiment_id = tracker.experiment_id
    meta = weights_metadata(weights)
    tags = {STUDY: prov.get("study", cfg.study_name), TRIAL: prov.get("trial", ""), NETWORK: doc.get("name", ""),
            SPEC_HASH: meta.get("hash", ""), FINGERPRINT: meta.get("recipe_fingerprint", ""),
            OBJECTIVES: ",".join(cfg.objectives), WEIGHTS: weights_note,
            **{f"{TAG}objective.{k}": metrics[k] for k in cfg.objectives if k in metrics}}
    tags = {k: str(v) for k, v in tags.items()}
    names = list(prep.classes or (str(i) for i in range(cfg.space.num_classes)))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1))]),
        outputs=Schema([ColSpec("string", "class"), ColSpec("float", "probability"),
                        *(ColSpec("float", n) for n in names)]))
    example = np.zeros((1, prep.channels, prep.input_size, prep.input_size), dtype=np.uint8)
    requirements = tuple(pinned(d) for d in REQUIREMENTS)
    description = (f"{doc.get('name')} (trial {prov.get('trial')} of study {prov.get('study')}, hash "
                   f"{meta.get('hash')}); weights: {weights_note}. Input: {INPUT}, any size: resized and "
                   f"normalised as recorded ({prep.pipeline}). Output: one row per image: class, probability, "
                   f"and the probability of each class ({', '.join(names)}).")
    try:
        # MLflow's registry reads the global tracking URI when it resolves a models:/ source
        with tempfile.TemporaryDirectory(prefix="resnext-nas-register-") as tmp, _use_tracking_uri(uri), _quiet():
            tmp = Path(tmp)
            staged = tmp / "artifacts"
            staged.mkdir()
            artifacts = {"weights": staged / "weights.safetensors", "export": staged / "export.yaml"}
            shutil.copyfile(weights, artifacts["weights"])
            shutil.copyfile(exported, artifacts["export"])
            onnx = _onnx(weights, exported, staged / "model.onnx")
            if onnx == "included":
                artifacts["onnx"] = staged / "model.onnx"
            (tmp / "code").mkdir()
            code_paths = _stage_code(tmp / "code")
            (tmp / "resnext_nas_model.py").write_text(MODEL_CODE)
            logged = client.create_logged_model(experiment_id, name=doc.get("name"),
                                                source_run_id=run_id, tags=tags,
                                                model_type="resnext-nas image classifier")
            mlflow.pyfunc.save_model(
                tmp / "model", python_model=str(tmp / "resnext_nas_model.py"),
                artifacts={k: str(v) for k, v in artifacts.items()},
                code_paths=code_paths, signature=signature, input_example=example,
                pip_requirements=list(requirements),
                mlflow_model=Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                                   run_id=run_id, model_id=logged.model_id))
            client.log_model_artifacts(logged.model_id, str(tmp / "model"))
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
            if run is not None:  # the run lists the model; the model shows the trial's objective values
                now = int(time.time() * 1000)
                client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
                client.log_batch(run_id, metrics=[Metric(k, run.data.metrics[k], now, 0, model_id=logged.model_id,
                                                         run_id=run_id) for k in metrics if k in run.data.metrics])
            try:
                client.create_registered_model(name, description=(
                    f"resnext-nas networks of study {prov.get('study')}: each version takes {INPUT} and returns "
                    "class probabilities and class names"))
            except MlflowException as e:
                if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            version = client.create_model_version(name, f"models:/{logged.model_id}",
                                                  run_id=run_id, tags=tags,
                                                  description=description, model_id=logged.model_id)
    except MlflowException as e:
        raise SpecError(f"--register {name!r}: the MLflow store refused it: {error_line(e)}") from None
    return Registered(name, str(version.version), logged.model_id, experiment_id, run_id, onnx, requirements, uri)


# -- the dashboard ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLink:
    """A registered version of a study's network and where the MLflow UI shows it."""

    name: str
    version: str
    trial: str
    network: str
    version_url: str   # the registered model version (Model Registry)
    model_url: str     # the logged model: artifacts, metrics, lineage
    models_page: str   # the experiment's "Models" page
    run_url: str | None  # the trial's run


def study_models(uri: str, base_url: str, study: str) -> list[ModelLink]:
    """The registered model versions of a study's networks, oldest first, with their dashboard URLs.

    Args:
        uri: the tracking URI.
        base_url: where the MLflow UI is served, e.g. ``http://127.0.0.1:5000``.
        study: the study's name (the versions' ``resnext_nas.study`` tag).

    Raises:
        SpecError: the store cannot be read.
    """
    from search.errors import error_line, redact
    from search.tracking import WORKFLOW

    base = base_url.rstrip("/")
    client = _client(uri)
    try:
        versions = client.search_model_versions(f"tags.`{STUDY}` = '{study}'", max_results=10_000)
        links = []
        for v in sorted(versions, key=lambda v: (v.creation_timestamp, v.name, int(v.version))):
            # the SQL registry leaves model_id empty; the source is models:/<model id>
            model_id = v.model_id or (v.source[len("models:/"):] if (v.source or "").startswith("models:/m-") else None)
            model = client.get_logged_model(model_id) if model_id else None
            exp = model.experiment_id if model else None
            links.append(ModelLink(
                v.name, str(v.version), v.tags.get(TRIAL, ""), v.tags.get(NETWORK, ""),
                f"{base}/#/models/{quote(v.name, safe='')}/versions/{v.version}",
                f"{base}/#/experiments/{exp}/models/{model_id}?{WORKFLOW}" if exp else "",
                f"{base}/#/experiments/{exp}/models?{WORKFLOW}" if exp else "",
                f"{base}/#/experiments/{exp}/runs/{v.run_id}?{WORKFLOW}" if exp and v.run_id else None))
        return links
    except MlflowException as e:
        raise SpecError(f"cannot read the model registry of {redact(uri)}: {error_line(e)}") from None


def describe(reg: Registered) -> str:
    """The lines ``--register`` prints: what was registered and how to serve it."""
    from search.errors import redact

    return "\n".join([
        f"registered {reg.uri} (logged model {reg.model_id}"
        + (f", source run: the trial's run {reg.run_id})" if reg.run_id else
           ", no source run: the trial's MLflow run is not in this store)"),
        f"  ONNX graph: {reg.onnx}",
        f"  requirements: {', '.join(reg.requirements)}",
        f"  serve: MLFLOW_TRACKING_URI={redact(reg.tracking_uri)} mlflow models serve -m {reg.uri} "
        "--env-manager local --port 5001"])
