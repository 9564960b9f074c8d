"""Export a Pareto point as a self-contained YAML, and evaluate an exported network.

The file holds the NetSpec, its analytic complexity (checked when ``space.load_spec`` reads it
back), the trial's metrics and where it came from. Nothing else is needed to rebuild it:
``build_model(load_spec("best.yaml"))``.
"""

from __future__ import annotations

import datetime as dt
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from search.config import ExperimentConfig, redact
from search.pareto import pick
from search.study import finished_rows, front_table, open_study, pareto_rows
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
    study = open_study(cfg, storage_url, create=False)
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
