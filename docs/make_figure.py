"""Render a study's Pareto front to a small PNG: the README's picture (docs/front.png).

The study is read through the project's own functions, as ``resnext-nas pareto`` reads it
(``search.storage.load_study``, ``search.results.finished_rows`` / ``trained_rows`` /
``pareto_rows``, the knee from ``search.pareto.pick``), so the picture shows the front that
command prints. One panel per cost objective (params, MACs, latency) against validation accuracy:
every feasible trained network in grey, the front in red, the knee (what ``export --pick knee``
writes) circled. The front is non-dominated in all objectives at once, so a front point can look
dominated in one panel.

    resnext-nas search experiments/quickstart.yaml   # once (what `make demo` runs)
    python docs/make_figure.py                        # -> docs/front.png
    python docs/make_figure.py EXP.yaml --out front.png --set search.study_name=NAME
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from search.config import load_experiment  # noqa: E402
from search.pareto import pick  # noqa: E402
from search.results import finished_rows, front_table, pareto_rows, trained_rows  # noqa: E402
from search.storage import load_study  # noqa: E402
from space.errors import SpecError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"params": "parameters", "macs": "MACs per image", "latency_ms": "latency (ms)"}


def _short(value: float, _pos=None) -> str:
    """A tick label such as 5k or 1.2M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def render(experiment: str | Path, out: str | Path, overrides: tuple[str, ...] = (),
           storage: str | None = None) -> dict:
    """Draw the study's front and write it as a PNG; returns what was drawn.

    Args:
        experiment: the experiment file whose study is read.
        out: the PNG to write.
        overrides: ``section.key=value`` strings, as ``--set`` takes them.
        storage: an Optuna storage URL overriding the experiment's.
    Returns:
        ``study``, ``trained`` (feasible trained networks), ``front`` (trial numbers), ``knee``
        (its trial number) and ``out``.
    """
    cfg = load_experiment(experiment, overrides)
    if "val_accuracy" not in cfg.objectives or len(cfg.objectives) < 2:
        raise SpecError(f"the figure plots val_accuracy against a cost; the study's objectives are {cfg.objectives}")
    study = load_study(cfg, storage, reading=True)
    rows = finished_rows(study, cfg.objectives)
    trained, front = trained_rows(rows), pareto_rows(rows, cfg.directions)
    if not front:
        raise SpecError(f"study '{cfg.study_name}' has no feasible trained network yet; run `resnext-nas search` first")
    knee = pick(front_table(front, cfg.objectives), "knee", dict(zip(cfg.objectives, cfg.directions, strict=True)))
    costs = [o for o in cfg.objectives if o != "val_accuracy"]
    on_front = {r.number for r in front}

    fig, axes = plt.subplots(1, len(costs), figsize=(3.4 * len(costs), 2.8), dpi=100, sharey=True, squeeze=False)
    for ax, cost in zip(axes[0], costs, strict=True):
        others = [r for r in trained if r.number not in on_front]
        ax.scatter([r.values[cost] for r in others], [r.values["val_accuracy"] for r in others],
                   s=12, c="0.65", label="trained")
        ax.scatter([r.values[cost] for r in front], [r.values["val_accuracy"] for r in front],
                   s=18, c="C3", label="Pareto front")
        ax.scatter([knee[cost]], [knee["val_accuracy"]], s=90, facecolors="none", edgecolors="k",
                   linewidths=1.2, label="knee")
        if cost in ("params", "macs"):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_short))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(LABELS.get(cost, cost), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy", fontsize=9)
    axes[0][-1].legend(loc="lower right", fontsize=7)
    fig.suptitle(f"study '{cfg.study_name}': {len(trained)} networks trained, {len(front)} on the front",
                 fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return {"study": cfg.study_name, "trained": len(trained), "front": sorted(on_front), "knee": knee["trial"],
            "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "front.png"), help="the PNG to write")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: the experiment's)")
    args = parser.parse_args(argv)
    try:
        drawn = render(args.experiment, args.out, tuple(args.set), args.storage)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {drawn['out']}: study '{drawn['study']}', {drawn['trained']} trained networks, "
          f"{len(drawn['front'])} on the front, knee = trial {drawn['knee']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
