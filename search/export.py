"""Export a Pareto point as a self-contained YAML, and evaluate an exported network.

The file holds the NetSpec, its analytic complexity (checked when ``space.load_spec`` reads it
back), the trial's metrics and where it came from. Nothing else is needed to rebuild it:
``build_model(load_spec("best.yaml"))``.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from search.config import ExperimentConfig
from search.errors import redact
from search.pareto import pick
from search.results import finished_rows, front_table, pareto_rows
from search.storage import fingerprint, load_study, recipe
from space import NetSpec, complexity
from space.errors import SpecError


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("resnext-nas", "torch", "torchvision", "optuna", "mlflow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def export_best(cfg: ExperimentConfig, how: str, out: str | Path, storage_url: str | None = None) -> dict:
    """Write the Pareto point chosen by ``how`` to ``out``; returns the written document.

    Args:
        cfg: the experiment whose study is read.
        how: ``knee``, ``max-accuracy``, ``min-latency``, ``min-params``, ``min-macs`` or a bound
            like ``params<=1e6`` (see ``search.pareto.pick``).
        out: the YAML file to write.
        storage_url: Optuna storage overriding the experiment's.
    """
    study = load_study(cfg, storage_url)
    front = pareto_rows(finished_rows(study, cfg.objectives), cfg.directions)
    table = front_table(front, cfg.objectives)
    try:
        chosen = pick(table, how, dict(zip(cfg.objectives, cfg.directions, strict=True)))
    except ValueError as e:
        raise SpecError(f"export: {e}") from None
    row = next(r for r in front if r.number == chosen["trial"])
    spec = NetSpec.from_dict(row.spec)
    cx = complexity(spec)
    doc = {
        "spec": spec.to_dict(),
        "name": spec.name,
        "hash": spec.hash,
        "complexity": {"params": cx.params, "macs": cx.macs},
        "metrics": {k: v for k, v in (row.attrs.get("metrics") or row.values).items()},
        "provenance": {
            "experiment": cfg.name,
            "study": cfg.study_name,
            "storage": redact(storage_url or cfg.storage_url),
            "trial": row.number,
            "pick": how,
            "seed": row.attrs.get("seed"),
            "threads": row.attrs.get("threads"),
            "recipe_fingerprint": study.user_attrs.get("fingerprint"),
            "study_seed": cfg.search.seed,
            "sampler": cfg.search.sampler,
            "dataset": cfg.data.dataset,
            "mlflow_run_id": row.attrs.get("mlflow_run_id"),
            "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# resnext-nas export: rebuild with space.build_model(space.load_spec(this_file))\n"
                   + yaml.safe_dump(doc, sort_keys=False))
    return doc


def exported_provenance(path: str | Path) -> dict:
    """The ``provenance`` section of an exported YAML (empty when it has none)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such exported network; write one with `resnext-nas export`")
    doc = yaml.safe_load(path.read_text()) or {}
    return doc.get("provenance") or {}


def evaluate_exported(cfg: ExperimentConfig, path: str | Path, *, epochs: float | None = None,
                      weights_out: str | Path | None = None) -> dict:
    """Retrain an exported network with its trial's seed and score it on the test set.

    The test set is touched here only, never during the search. With the trial's seed, settings
    and thread count (``resnext-nas evaluate`` sets the recorded one) on the CPU, the validation
    accuracy reproduces the trial's; the report holds both.

    Args:
        cfg: the experiment that produced the export (data and training settings).
        path: the exported YAML.
        epochs: training epochs overriding ``train.epochs`` (e.g. a longer final training).
        weights_out: save the trained weights here (safetensors; no pickle).
    """
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from search.data import load_splits, load_test
    from search.devices import resolve_device
    from search.objective import build_and_train
    from search.train import evaluate
    from space import load_spec

    spec = load_spec(path)
    doc = yaml.safe_load(Path(path).read_text())
    seed = (doc.get("provenance") or {}).get("seed") or 0
    recorded = (doc.get("provenance") or {}).get("recipe_fingerprint")
    if recorded is not None and epochs is None and recorded != fingerprint(recipe(cfg)):
        raise SpecError(f"{path} was searched with another recipe than {cfg.name}'s as given now (fingerprint "
                        f"{recorded} vs {fingerprint(recipe(cfg))}); evaluate it with the experiment file and "
                        "--set overrides of its study")
    train_cfg = cfg.train if epochs is None else dataclasses.replace(cfg.train, epochs=float(epochs))
    device = resolve_device(train_cfg.device)
    splits = load_splits(cfg.data, device)
    model, result = build_and_train(spec, splits, train_cfg, device, seed)
    test_x, test_y = load_test(cfg.data, device, splits)
    test_acc = evaluate(model, test_x, test_y, train_cfg.eval_batch_size, bf16=train_cfg.bf16)
    report = {"name": spec.name, "seed": seed, "epochs": train_cfg.epochs, "threads": torch.get_num_threads(),
              "val_accuracy": result.val_accuracy,
              "search_val_accuracy": (doc.get("metrics") or {}).get("val_accuracy"),
              "test_accuracy": test_acc, "test_images": len(test_y)}
    if weights_out is not None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(weights_out), metadata={"spec": json.dumps(spec.to_dict()), "hash": spec.hash})
        report["weights"] = str(weights_out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return report


def load_weights(weights: str | Path):
    """Rebuild a network from a safetensors file written by ``evaluate_exported``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from space import NetSpec, build_model

    with safe_open(str(weights), "pt") as f:
        spec = NetSpec.from_dict(json.loads(f.metadata()["spec"]))
    model = build_model(spec)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model
