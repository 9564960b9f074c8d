"""Pareto plots for the study's parent run (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"params": "parameters", "macs": "MACs", "latency_ms": "latency (ms)"}


def pareto_figures(rows, front, objectives) -> dict:
    """Accuracy against each cost objective: all feasible trials, the front highlighted.

    Args:
        rows: completed trials (``search.study.Row``).
        front: the Pareto rows.
        objectives: objective names of the study.
    Returns:
        artifact file name -> matplotlib figure.
    """
    if "val_accuracy" not in objectives:
        return {}
    figures = {}
    on_front = {r.number for r in front}
    feasible = [r for r in rows if r.feasible]
    for cost in (o for o in objectives if o != "val_accuracy"):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        others = [r for r in feasible if r.number not in on_front]
        best = sorted((r for r in feasible if r.number in on_front), key=lambda r: r.values[cost])
        ax.scatter([r.values[cost] for r in others], [r.values["val_accuracy"] for r in others],
                   s=18, c="0.6", label="feasible trials")
        ax.plot([r.values[cost] for r in best], [r.values["val_accuracy"] for r in best],
                "o", c="C3", label="Pareto front")
        for r in best:
            ax.annotate(str(r.number), (r.values[cost], r.values["val_accuracy"]), fontsize=7)
        if cost in ("params", "macs"):
            ax.set_xscale("log")
        ax.set_xlabel(LABELS.get(cost, cost))
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        figures[f"pareto_accuracy_vs_{cost}.png"] = fig
    return figures


def close(figures: dict) -> None:
    for fig in figures.values():
        plt.close(fig)
