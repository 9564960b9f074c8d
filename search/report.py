"""The study report: one self-contained HTML file that shows what a study found and how to use it.

``resnext-nas report EXP.yaml`` (or ``--study NAME``) writes it for one study; ``resnext-nas report
A.yaml B.yaml`` compares several. The file opens offline: plotly.js is embedded once, and every figure is a
plain ``Plotly.newPlot`` call on data written into the page. The numbers behind the figures
are also in the page as JSON (``<script type="application/json" id="report-data">``), so
tests and scripts can read them back.

What one study's report holds, each computed by ``search.analysis`` (which says how):

- the feasible Pareto front for every pair of objectives (a third objective as colour, the knee
  marked; dominated and infeasible trials muted), with the front as a table;
- the hypervolume against trials, cumulative training epochs and cumulative training seconds,
  on the study's fixed reference point (``hv_reference``);
- the design-space analysis of Radosavovic et al. (2019, 2020): error EDFs per value of each
  dimension, raw and complexity-normalised, and each dimension's "good range";
- which parameters matter for reaching the front (PED-ANOVA importance);
- the learning curves of the front's networks; the counts by outcome, failures with their
  reasons; the recipe, the versions and the device.

This module only renders. No mlflow here: ``log_report`` hands the page to ``search.tracking.Tracker``.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from search.analysis import (
    BOOT_SAMPLE,
    BOOTSTRAP,
    COMPLEXITY_BINS,
    MIN_EDF,
    StudyData,
    budgets,
    collect,
    common_reference,
    complexity_range,
    design_space,
    dim_order,
    format_value,
    hv_series,
    importance,
    infeasible_reason,
    measured_values,
    projected_front,
    recipe_differences,
)
from search.config import DEFAULT_STORAGE, ExperimentConfig
from search.results import OUT_OF_MEMORY, OVER_BUDGET, TRAINED, Row

LABELS = {"val_accuracy": "validation accuracy", "params": "parameters", "macs": "MACs",
          "latency_ms": "latency (ms)"}
LOG_AXES = ("params", "macs")
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22"]
DIM_LABELS = {"num_stages": "number of stages", "stem_ch": "stem channels", "bottleneck_ch": "bottleneck channels "
              "(stage 1)", "channel_mult": "channel multiplier", "cardinality": "cardinality (groups)",
              "base_width": "base width"}


# -- HTML -------------------------------------------------------------------------------------------------

def _clean(obj):
    """``obj`` with NaN and infinities as None (JSON null), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.floating | np.integer):
        return _clean(obj.item())
    return obj


def _json(obj) -> str:
    """JSON safe to place inside a ``<script>`` element."""
    text = json.dumps(_clean(obj), separators=(",", ":"), default=str, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _num(v, key: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if key in ("params", "macs") or (isinstance(v, int | float) and abs(v) >= 1e4):
        for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= div:
                return f"{v / div:.2f}{unit}"
        return f"{v:.0f}"
    if key == "val_accuracy":
        return f"{v:.4f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _esc(v) -> str:
    return html.escape(str(v))


class Page:
    """The HTML page being written: sections, tables, figures and the data blob."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.figures = 0
        self.scripts: list[str] = []  # the plots, drawn once the whole page is laid out
        self.data: dict = {}

    def section(self, anchor: str, title: str, intro: str = "") -> None:
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{_esc(title)}</h2>')
        if intro:
            self.parts.append(f'<p class="intro">{intro}</p>')

    def h3(self, text: str) -> None:
        self.parts.append(f"<h3>{_esc(text)}</h3>")

    def note(self, text: str, cls: str = "note") -> None:
        self.parts.append(f'<p class="{cls}">{text}</p>')

    def table(self, header: list[str], rows: list[list], cls: str = "", row_classes: list[str] | None = None) -> None:
        head = "".join(f"<th>{_esc(h)}</th>" for h in header)
        classes = row_classes or [""] * len(rows)
        body = "".join(f'<tr class="{c}">' + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                       for row, c in zip(rows, classes, strict=True))
        self.parts.append(f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')

    def figure(self, traces: list[dict], layout: dict, height: int = 420, width: str = "100%") -> None:
        self.figures += 1
        div = f"fig{self.figures}"
        layout = {"height": height, "margin": {"l": 70, "r": 30, "t": 50, "b": 60}, "hovermode": "closest",
                  "font": {"size": 12}, "template": None, "plot_bgcolor": "#fafafa", **layout}
        config = {"displaylogo": False, "responsive": True}
        if isinstance(layout.get("title"), dict):
            layout["title"] = {"x": 0.01, "xanchor": "left", **layout["title"]}  # clear of the mode bar
        self.parts.append(f'<div class="fig" id="{div}" style="width:{width};height:{height}px"></div>')
        self.scripts.append(f'Plotly.newPlot("{div}",{_json(traces)},{_json(layout)},{_json(config)});')

    def open_row(self) -> None:
        self.parts.append('<div class="row">')

    def close_row(self) -> None:
        self.parts.append("</div>")

    def render(self, plotly_js: str) -> str:
        toc = " · ".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in self.toc)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(self.title)}</title><style>{CSS}</style>"
            f"<script>{plotly_js}</script></head><body>"
            f"<h1>{_esc(self.title)}</h1><nav>{toc}</nav>" + "\n".join(self.parts)
            + "<script>\n" + "\n".join(self.scripts) + "\n</script>"
            + f'<script type="application/json" id="report-data">{_json(self.data)}</script>'
            + "</body></html>\n"
        )


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1500px;
padding:0 20px;color:#222;line-height:1.45}
h1{font-size:26px;margin-bottom:4px}h2{margin-top:42px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{margin:22px 0 6px}nav{font-size:14px;margin:8px 0 20px}nav a{color:#1f5fa8;text-decoration:none}
table{border-collapse:collapse;font-size:13px;margin:8px 0 14px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2}tr.knee td{background:#fff4d6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{font-size:13px;color:#555;margin:4px 0 10px}.warn{font-size:14px;color:#8a4b00;background:#fff4e0;
padding:6px 10px;border-left:4px solid #e69500}.intro{max-width:1100px}
.row{display:flex;flex-wrap:wrap;gap:12px}.row .fig{flex:1 1 640px;min-width:480px}
.scroll{max-height:420px;overflow-y:auto;display:inline-block}summary{cursor:pointer;font-size:14px;margin:6px 0}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px;font-size:12.5px}
"""


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:  # pragma: no cover - plotly is a dependency
        raise RuntimeError("the report needs plotly: pip install 'plotly>=5'") from None
    return get_plotlyjs()


def _axis(objective: str, title: str | None = None) -> dict:
    ax = {"title": {"text": title or LABELS.get(objective, objective)}, "gridcolor": "#e5e5e5", "zeroline": False}
    if objective in LOG_AXES:
        ax["type"] = "log"
    return ax


def _hover(data: StudyData, r: Row, extra: str = "") -> str:
    name = r.attrs.get("spec_name", "?")
    lines = [f"<b>{_esc(name)}</b>", f"trial {r.number} · hash {_esc(r.attrs.get('spec_hash', '?'))}"]
    known = measured_values(r)
    for o in data.objectives:
        lines.append(f"{o}: {_num(known.get(o), o) if known.get(o) is not None else 'not measured'}")
    for k in ("params", "macs"):
        if k not in data.objectives and r.attrs.get(k) is not None:
            lines.append(f"{k}: {_num(r.attrs[k], k)}")
    if r.outcome != TRAINED or not r.feasible:
        lines.append(f"<i>{_esc(infeasible_reason(r))}</i>")
    if extra:
        lines.append(extra)
    return "<br>".join(lines)


def _pairs(objectives: tuple[str, ...]) -> list[tuple[str, str]]:
    """(x, y) objective pairs; accuracy always on y."""
    out = []
    for i, a in enumerate(objectives):
        for b in objectives[i + 1:]:
            out.append((a, b) if b == "val_accuracy" else (b, a) if a == "val_accuracy" else (a, b))
    return out


def _range(values: list[float], log: bool) -> list[float]:
    vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return [0, 1]
    lo, hi = min(vals), max(vals)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    pad = (hi - lo) * 0.06 or (abs(hi) * 0.1 if hi else 1.0)
    return [lo - pad, hi + pad]


def _front_figure(page: Page, data: StudyData, x: str, y: str, color: str | None) -> None:
    """One panel of the front: dominated and infeasible trials muted, the front coloured, the knee marked."""
    front_ids = {r.number for r in data.front}
    known = {r.number: measured_values(r) for r in data.rows}
    trained = [r for r in data.trained if r.number not in front_ids]
    infeasible = [r for r in data.rows if not (r.outcome == TRAINED and r.feasible) and r.outcome != "reused"]
    all_vals = [known[r.number] for r in data.rows]
    xr = _range([v.get(x) for v in all_vals], x in LOG_AXES)
    yr = _range([v.get(y) for v in all_vals], y in LOG_AXES)
    dirs = dict(zip(data.objectives, data.directions, strict=True))

    def worst(o: str, rng: list[float]) -> float:  # an unmeasured value sits on the axis' worse edge
        edge = rng[0] if dirs[o] == "maximize" else rng[1]
        return 10 ** edge if o in LOG_AXES else edge

    traces = []
    if trained:
        traces.append({"type": "scattergl" if len(trained) > 2000 else "scatter", "mode": "markers",
                       "name": f"dominated ({len(trained)})", "x": [r.values[x] for r in trained],
                       "y": [r.values[y] for r in trained], "text": [_hover(data, r) for r in trained],
                       "hovertemplate": "%{text}<extra></extra>",
                       "marker": {"color": "#9a9a9a", "size": 6, "opacity": 0.45}})
    if infeasible:
        xs = [known[r.number].get(x) for r in infeasible]
        ys = [known[r.number].get(y) for r in infeasible]
        traces.append({"type": "scatter", "mode": "markers", "name": f"infeasible / never trained ({len(infeasible)})",
                       "x": [v if v is not None else worst(x, xr) for v in xs],
                       "y": [v if v is not None else worst(y, yr) for v in ys],
                       "text": [_hover(data, r) for r in infeasible], "hovertemplate": "%{text}<extra></extra>",
                       "cliponaxis": False,
                       "marker": {"color": "#d08a8a", "size": 7, "opacity": 0.5, "symbol": "x-thin",
                                  "line": {"width": 1.5, "color": "#c06060"}}})
    front = sorted(data.front, key=lambda r: r.values[x])
    if front:
        # the front of this projection, as a staircase
        proj = projected_front(data, x, y)
        traces.append({"type": "scatter", "mode": "lines", "name": "front in this projection", "hoverinfo": "skip",
                       "x": [r.values[x] for r in proj], "y": [r.values[y] for r in proj],
                       "line": {"shape": "hv", "color": "#444", "width": 1, "dash": "dot"}})
        hint = f"export: <code>{_esc(export_command(data))} --pick knee --out knee.yaml</code>"
        marker = {"size": 11, "line": {"width": 1, "color": "#222"}}
        if color:
            marker.update(color=[r.values[color] for r in front], colorscale="Viridis",
                          reversescale=dirs[color] == "maximize", showscale=True,
                          colorbar={"title": {"text": LABELS.get(color, color), "side": "right"}, "thickness": 14})
            if color in LOG_AXES or color == "latency_ms":  # costs spread over decades
                logs = [math.log10(r.values[color]) for r in front]
                ticks = np.linspace(min(logs), max(logs), 5).tolist()
                marker["color"] = logs  # ticks labelled in the objective's own unit
                marker["colorbar"].update(tickvals=ticks, ticktext=[_num(10 ** t, color) for t in ticks])
        else:
            marker["color"] = COLORS[0]
        traces.append({"type": "scatter", "mode": "markers", "name": f"Pareto front ({len(front)})",
                       "x": [r.values[x] for r in front], "y": [r.values[y] for r in front],
                       "text": [_hover(data, r, hint if r is data.knee else "") for r in front],
                       "hovertemplate": "%{text}<extra></extra>", "marker": marker})
    annotations = []
    if data.knee is not None:
        k = data.knee
        traces.append({"type": "scatter", "mode": "markers", "name": f"knee (trial {k.number})",
                       "x": [k.values[x]], "y": [k.values[y]], "hoverinfo": "skip",
                       "marker": {"symbol": "star", "size": 22, "color": "rgba(0,0,0,0)",
                                  "line": {"width": 2.5, "color": "#e8590c"}}})
        annotations.append({"x": math.log10(k.values[x]) if x in LOG_AXES else k.values[x],
                            "y": math.log10(k.values[y]) if y in LOG_AXES else k.values[y],
                            "text": f"knee · trial {k.number}", "showarrow": True, "arrowhead": 0, "ax": 40,
                            "ay": -30, "font": {"color": "#e8590c", "size": 12}, "bgcolor": "rgba(255,255,255,0.8)"})
    shapes = []
    for o, bound in budgets(data).items():
        if o in (x, y):
            v = math.log10(bound) if o in LOG_AXES else bound
            line = {"type": "line", "line": {"dash": "dash", "color": "#c06060", "width": 1}}
            if o == x:
                shapes.append({**line, "x0": bound, "x1": bound, "xref": "x", "y0": 0, "y1": 1, "yref": "paper"})
                xr = [min(xr[0], v), max(xr[1], v + 0.02 * (xr[1] - xr[0]))]
            else:
                shapes.append({**line, "y0": bound, "y1": bound, "yref": "y", "x0": 0, "x1": 1, "xref": "paper"})
                yr = [min(yr[0], v), max(yr[1], v + 0.02 * (yr[1] - yr[0]))]
    title = f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}" + (f" · colour: {LABELS.get(color, color)}" if color else "")
    page.figure(traces, {"title": {"text": title, "font": {"size": 14}}, "xaxis": {**_axis(x), "range": xr},
                         "yaxis": {**_axis(y), "range": yr}, "annotations": annotations, "shapes": shapes,
                         "legend": {"orientation": "h", "y": -0.2, "x": 0, "font": {"size": 11}}},
                height=480)


def made_from(data: StudyData) -> str:
    """What the report was made from, as HTML: the experiment file, or the study's name and storage."""
    if data.experiment:
        return f"experiment <code>{_esc(data.experiment)}</code>"
    return f"study <code>{_esc(data.study.study_name)}</code> in <code>{_esc(data.storage)}</code>"


def export_command(data: StudyData) -> str:
    """The command that exports a point of this study: by its experiment file, or by its name and storage."""
    if data.experiment:
        return f"resnext-nas export {data.experiment}"
    storage = "" if data.storage == DEFAULT_STORAGE else f" --storage {data.storage}"
    return f"resnext-nas export --study {data.study.study_name}{storage}"


def _front_table(data: StudyData) -> list[list]:
    rows = []
    for r in sorted(data.front, key=lambda r: r.number):
        tr = r is data.knee
        cells = [f"{r.number}" + (" (knee)" if tr else ""), f"<code>{_esc(r.attrs.get('spec_name', ''))}</code>"]
        cells += [f'<span class="num">{_num(r.values[o], o)}</span>' for o in data.objectives]
        cells.append(f"<code>{_esc(r.attrs.get('spec_hash', ''))}</code>")
        rows.append(cells)
    return rows


def _edf_traces(curves: dict[str, dict], norm: bool, xaxis: str = "x", yaxis: str = "y", legend: bool = True,
                colors: list[str] | None = None) -> list[dict]:
    traces = []
    for i, (label, c) in enumerate(curves.items()):
        e, f = (c["errors_norm"], c["cum_norm"]) if norm else (c["errors"], c["cum"])
        traces.append({"type": "scatter", "mode": "lines", "x": [0.0 if not e else e[0]] + e, "y": [0.0] + f,
                       "line": {"shape": "hv", "width": 2, "color": (colors or COLORS)[i % len(colors or COLORS)]},
                       "name": f"{label}: n={c['n']}, min {c['min']:.3f}" if c["min"] is not None else label,
                       "legendgroup": label, "showlegend": legend, "xaxis": xaxis, "yaxis": yaxis,
                       "hovertemplate": f"{_esc(label)}: F(%{{x:.3f}}) = %{{y:.2f}}<extra></extra>"})
    return traces


def _two_panel_layout(title: str, left: str, right: str, xtitle: str = "error") -> dict:
    return {"title": {"text": title, "font": {"size": 14}},
            "xaxis": {"domain": [0, 0.46], "title": {"text": xtitle}, "gridcolor": "#e5e5e5"},
            "xaxis2": {"domain": [0.54, 1], "title": {"text": xtitle}, "gridcolor": "#e5e5e5"},
            "yaxis": {"title": {"text": "cumulative fraction"}, "range": [0, 1.02], "gridcolor": "#e5e5e5"},
            "yaxis2": {"anchor": "x2", "range": [0, 1.02], "gridcolor": "#e5e5e5"},
            "annotations": [{"text": left, "xref": "paper", "yref": "paper", "x": 0.23, "y": 1.0, "showarrow": False,
                             "xanchor": "center", "yanchor": "bottom", "font": {"size": 12}},
                            {"text": right, "xref": "paper", "yref": "paper", "x": 0.77, "y": 1.0,
                             "showarrow": False, "xanchor": "center", "yanchor": "bottom", "font": {"size": 12}}],
            "legend": {"orientation": "h", "y": -0.24, "yanchor": "top", "x": 0, "font": {"size": 11}},
            "margin": {"l": 70, "r": 30, "t": 60, "b": 90}}


def _hv_figure(page: Page, series: dict[str, dict], title: str) -> None:
    """Hypervolume against trials, cumulative epochs and cumulative training seconds (one line per study)."""
    traces = []
    for i, (label, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        for j, (key, axis) in enumerate((("trial", "x"), ("epochs", "x2"), ("seconds", "x3"))):
            traces.append({"type": "scatter", "mode": "lines", "x": s[key], "y": s["hv"], "xaxis": axis,
                           "yaxis": "y" if j == 0 else f"y{j + 1}", "name": label, "legendgroup": label,
                           "showlegend": j == 0 and len(series) > 1, "line": {"shape": "hv", "color": color},
                           "hovertemplate": f"{_esc(label)}<br>{key} %{{x:,.4g}}: "
                                            "hypervolume %{y:.4f}<extra></extra>"})
    grid = {"gridcolor": "#e5e5e5"}
    page.figure(traces, {
        "title": {"text": title, "font": {"size": 14}},
        "xaxis": {"domain": [0, 0.3], "title": {"text": "trial number"}, **grid},
        "xaxis2": {"domain": [0.35, 0.65], "title": {"text": "cumulative training epochs"}, **grid},
        "xaxis3": {"domain": [0.7, 1], "title": {"text": "cumulative training seconds"}, **grid},
        "yaxis": {"title": {"text": "hypervolume (normalised)"}, "rangemode": "tozero", **grid},
        "yaxis2": {"anchor": "x2", "matches": "y", **grid}, "yaxis3": {"anchor": "x3", "matches": "y", **grid},
        "legend": {"orientation": "h", "y": -0.25, "x": 0}}, height=400)


def _good_table(page: Page, ds_list: list[tuple[str, dict]]) -> None:
    dims = []
    for _, ds in ds_list:
        dims += [d for d in ds["good"] if d not in dims]
    header = ["dimension"]
    for label, _ in ds_list:
        prefix = f"{label}: " if len(ds_list) > 1 else ""
        header += [f"{prefix}best network", f"{prefix}good range (95%)", f"{prefix}median"]
    rows = []
    for d in sorted(dims, key=dim_order):
        cells = [DIM_LABELS.get(d, d.replace("depth_", "depth of stage "))]
        for _, ds in ds_list:
            g = ds["good"].get(d)
            best = (ds.get("best") or {}).get("values", {}).get(d)
            if g is None:
                cells += ["-", "-", "-"]
                continue
            rng = "-" if g["lo"] is None else f"[{format_value(round(g['lo'], 3))}, {format_value(round(g['hi'], 3))}]"
            if g["absent"] > 0:
                rng += f" (absent in {g['absent']:.0%})"
            cells += ["-" if best is None else format_value(best), rng,
                      "-" if g["median"] is None else format_value(round(g["median"], 3))]
        rows.append(cells)
    page.table(header, rows)


def _dims_figures(page: Page, ds: dict) -> None:
    for name, curves in ds["dims"].items():
        if not curves:
            continue
        label = DIM_LABELS.get(name, name.replace("depth_", "depth of stage "))
        traces = _edf_traces(curves, False) + _edf_traces(curves, True, "x2", "y2", legend=False)
        page.figure(traces, _two_panel_layout(f"error EDF by {label}", "raw",
                                              f"normalised by {ds['complexity']}"), height=400)


# -- the reports ---------------------------------------------------------------------------------------------

def study_report(data: StudyData, environment: dict | None = None) -> str:
    """The HTML report of one study."""
    page = Page(f"Study report: {data.label}")
    env = environment or environment_info()
    page.data = {"study": data.label, "experiment": data.experiment, "storage": data.storage,
                 "objectives": list(data.objectives), "counts": data.counts,
                 "front": [{"trial": r.number, "name": r.attrs.get("spec_name"), "hash": r.attrs.get("spec_hash"),
                            **r.values} for r in data.front],
                 "knee": None if data.knee is None else data.knee.number, "hv_reference": data.ref}
    c = data.counts
    page.note(f"{made_from(data)} · fingerprint <code>{_esc(data.fingerprint)}</code>"
              f" · {c.get(TRAINED, 0)} networks trained, {c.get('reused', 0)} reused, {c.get(OVER_BUDGET, 0)} over "
              f"budget, {c.get(OUT_OF_MEMORY, 0)} out of memory, {c.get('failed', 0)} failed, {data.pruned} pruned"
              f"{', ' + str(c['running']) + ' running' if c.get('running') else ''} · "
              f"{len(data.front)} networks on the feasible Pareto front", "intro")

    page.section("front", "Pareto front", "Every pair of objectives. Grey: trained networks the front dominates; "
                 "red crosses: proposals that were infeasible (over budget, out of memory, over a latency "
                 "budget), a value never measured drawn on the axis' worse edge; dashed lines: budgets. "
                 "Hover a point for its network, trial and objectives.")
    if not data.front:
        page.note("No feasible trained network yet: the front is empty.", "warn")
    else:
        page.open_row()
        for x, y in _pairs(data.objectives):
            rest = [o for o in data.objectives if o not in (x, y)]
            _front_figure(page, data, x, y, rest[0] if rest else None)
        page.close_row()
        if data.knee is not None:
            page.note(f"The knee (the balanced point, closest to the ideal after scaling each objective to [0, 1]) is "
                      f"trial {data.knee.number}, <code>{_esc(data.knee.attrs.get('spec_name'))}</code>: "
                      f"<code>{_esc(export_command(data))} --pick knee --out knee.yaml</code> writes "
                      "it as a YAML that <code>space.load_spec</code> rebuilds. Other points: "
                      "<code>--pick max-accuracy</code>, <code>min-params</code>, <code>min-latency</code> or a bound "
                      "such as <code>'params&lt;=1e6'</code>; each is named below by trial and hash.")
        page.parts.append(f"<details{' open' if len(data.front) <= 15 else ''}><summary>the {len(data.front)} "
                          "networks of the front</summary><div class=\"scroll\">")
        page.table(["trial", "network", *data.objectives, "hash"], _front_table(data),
                   row_classes=["knee" if r is data.knee else "" for r in sorted(data.front, key=lambda r: r.number)])
        page.parts.append("</div></details>")

    if data.models:
        page.data["registered_models"] = [vars(m) for m in data.models]
        page.note("Registered in the MLflow Model Registry (links open the dashboard of <code>resnext-nas ui</code>): "
                  + "; ".join(f'<a href="{_esc(m.version_url)}">{_esc(m.name)} version {_esc(m.version)}</a> '
                              f"(trial {_esc(m.trial)}, <code>{_esc(m.network)}</code>)" for m in data.models),
                  "models")

    page.section("hypervolume", "Hypervolume", "The volume the front dominates, after each completed trial, against "
                 "the study's fixed reference point (accuracy from 0, each cost normalised by the reference below). "
                 "Compute counts trained networks only: reused and skipped proposals are free.")
    series = hv_series(data)
    page.data["hypervolume"] = series
    if series["trial"]:
        _hv_figure(page, {data.label: series}, "hypervolume against trials and compute")
        page.note("reference point: " + ", ".join(f"{k} = {_num(v, k)}" for k, v in data.ref.items())
                  + f"; final hypervolume {series['hv'][-1]:.4f}")
    else:
        page.note("No completed trial, or no reference point recorded on the study.", "warn")
    st = data.strategy
    page.data["strategy"] = st
    about = "" if st["exact"] else "about "
    page.note(f"Strategy: sampler <code>{_esc(st['sampler'])}</code>, pruner <code>{_esc(st['pruner'])}</code>; "
              f"{st['trained']} networks trained of {about}{st['in_budget']:,} within the budgets "
              f"({st['share']:.1%}; the space holds {st['space']:,}). {_esc(st['advice'])}", "note intro")

    ds = design_space(data.trained)
    page.data["design_space"] = ds
    page.section("design-space", "Design space", "Error EDFs as in Radosavovic et al., <i>On Network Design Spaces "
                 "for Visual Recognition</i> (2019): F(e) is the fraction of trained networks with error "
                 "(1 - validation accuracy) at most e; a curve further up and left is a better region of the space. "
                 "Right panels reweight "
                 f"the networks so that each of {COMPLEXITY_BINS} log-{ds['complexity']} bins carries the same weight,"
                 " removing the advantage of simply holding larger networks. Values with fewer than "
                 f"{MIN_EDF} trained networks get no curve.")
    if ds["n"] == 0:
        page.note("No trained network yet.", "warn")
    else:
        page.figure(_edf_traces({"all trained networks": ds["all"]}, False)
                    + _edf_traces({"all trained networks": ds["all"]}, True, "x2", "y2", legend=False),
                    _two_panel_layout(f"error EDF of the {ds['n']} trained networks", "raw",
                                      f"normalised by {ds['complexity']}"), height=360)
        page.open_row()
        _dims_figures(page, ds)
        page.close_row()
        page.h3("Good ranges")
        page.note(f"Bootstrap as in pycls (<code>sweep/analysis.get_filters</code>, Radosavovic et al. 2020): "
                  f"{BOOTSTRAP} times, draw {BOOT_SAMPLE:.0%} of the {ds['n']} trained networks with replacement and "
                  "keep the one with the lowest error; the good range is the 2.5-97.5 percentile interval of its "
                  "value, the median its most likely best value. 'Best network' is the lowest-error network "
                  f"(trial {ds['best']['trial']}).")
        _good_table(page, [(data.label, ds)])

    page.section("importance", "What matters for reaching the front")
    scores, note = importance(data)
    page.data["importance"] = scores
    if scores is None:
        page.note(note, "warn")
    else:
        names = list(scores)[::-1]
        page.figure([{"type": "bar", "orientation": "h", "x": [scores[n] for n in names], "y": names,
                      "marker": {"color": COLORS[0]}, "hovertemplate": "%{y}: %{x:.3f}<extra></extra>"}],
                    {"xaxis": {"title": {"text": "importance (PED-ANOVA, sums to 1)"}, "gridcolor": "#e5e5e5"},
                     "yaxis": {"automargin": True}, "margin": {"l": 150, "r": 30, "t": 40, "b": 50}},
                    height=max(220, 40 + 28 * len(names)), width="min(100%, 800px)")
        page.note(_esc(note))

    page.section("curves", "Learning curves of the front")
    curves = [(r, r.attrs.get("curve") or {}) for r in sorted(data.front, key=lambda r: r.number)]
    curves = [(r, c) for r, c in curves if c.get("val_accuracy")]
    if not curves:
        page.note("No learning curve recorded for the front's networks.", "warn")
    else:
        many = len(curves) > len(COLORS)
        traces = []
        for i, (r, curve) in enumerate(sorted(curves, key=lambda rc: rc[0] is data.knee)):  # the knee drawn last
            acc = curve["val_accuracy"]
            is_knee = r is data.knee
            color = "#e8590c" if is_knee else "rgba(31,119,180,0.35)" if many else COLORS[i % len(COLORS)]
            traces.append({"type": "scatter", "mode": "lines+markers", "x": list(range(1, len(acc) + 1)), "y": acc,
                           "name": f"{r.attrs.get('spec_name')} (trial {r.number}{', knee' if is_knee else ''})",
                           "showlegend": is_knee or not many,
                           "line": {"width": 3.5 if is_knee else 1.5, "color": color}, "marker": {"size": 4},
                           "hovertemplate": f"{_esc(r.attrs.get('spec_name'))}<br>trial {r.number}: epoch %{{x}}, "
                                            "val accuracy %{y:.4f}<extra></extra>"})
        page.figure(traces, {"xaxis": {"title": {"text": "epoch"}, "dtick": 1, "gridcolor": "#e5e5e5"},
                             "yaxis": {"title": {"text": "validation accuracy"}, "gridcolor": "#e5e5e5"},
                             "legend": {"orientation": "h", "y": -0.2, "x": 0, "font": {"size": 11}}}, height=440)
        if many:
            page.note(f"{len(curves)} networks: the knee in orange, the others in blue; hover a line for its network.")

    page.section("outcomes", "Trials by outcome")
    page.table(["outcome", "trials"], [[k.replace("_", " "), data.counts.get(k, 0)] for k in
                                       (TRAINED, "reused", OVER_BUDGET, OUT_OF_MEMORY, "failed", "running")]
               + [["pruned", data.pruned]])
    if data.failures:
        page.table(["kind", "reason", "count", "trials"],
                   [[_esc(f["kind"]), _esc(f["reason"]), f["count"],
                     ", ".join(map(str, f["trials"][:12])) + (" ..." if len(f["trials"]) > 12 else "")]
                    for f in data.failures])
    else:
        page.note("No failed or out-of-memory trial.")

    page.section("recipe", "Recipe, versions and device")
    page.table(["", ""], [["study", _esc(data.label)], ["fingerprint", f"<code>{_esc(data.fingerprint)}</code>"],
                          ["training device type", _esc(data.recipe.get("train.device_type", "?"))],
                          ["hosts that ran trials", _esc(", ".join(data.hosts) or "-")],
                          *[[_esc(k), _esc(v)] for k, v in env.items()]])
    page.table(["recipe key", "value"], [[f"<code>{_esc(k)}</code>", _esc(json.dumps(v))]
                                         for k, v in sorted(data.recipe.items())])
    return page.render(_plotly_js())


def compare_report(datas: list[StudyData], environment: dict | None = None) -> str:
    """The HTML report comparing several studies."""
    labels = [d.label for d in datas]
    page = Page("Study comparison: " + " vs ".join(labels))
    env = environment or environment_info()
    ref = common_reference(datas)
    page.data = {"studies": labels, "common_reference": ref}
    own = {d.label: hv_series(d) for d in datas}
    common = {d.label: hv_series(d, ref) for d in datas}
    page.data["hypervolume"] = common
    page.table(["study", "made from", "objectives", "trained", "front", "knee", "hypervolume (own reference)",
                "hypervolume (common reference)"],
               [[f'<span style="color:{COLORS[i % len(COLORS)]}">&#9632;</span> {_esc(d.label)}',
                 made_from(d), _esc(", ".join(d.objectives)), d.counts.get(TRAINED, 0),
                 len(d.front), "-" if d.knee is None else f"trial {d.knee.number} <code>"
                 f"{_esc(d.knee.attrs.get('spec_name'))}</code>",
                 f"{own[d.label]['hv'][-1]:.4f}" if own[d.label]["hv"] else "-",
                 f"{common[d.label]['hv'][-1]:.4f}" if common[d.label]["hv"] else "-"]
                for i, d in enumerate(datas)])

    page.section("differences", "What differs", "Recipe keys (<code>study.user_attrs['recipe']</code>) whose "
                 "values differ between the studies; every other key is the same.")
    diff = recipe_differences(datas)
    if diff:
        page.table(["recipe key", *labels], [[f"<code>{_esc(k)}</code>", *(_esc(json.dumps(v)) for v in vals)]
                                             for k, vals in diff])
    else:
        page.note("The recipes are identical.")
    page.data["recipe_differences"] = {k: v for k, v in diff}

    objectives = [o for o in datas[0].objectives if all(o in d.objectives for d in datas)]
    page.section("front", "Pareto fronts", "Each study's front in its colour (knee: star), its dominated networks "
                 "faint; objectives the studies share.")
    page.open_row()
    for x, y in _pairs(tuple(objectives)):
        traces = []
        for i, d in enumerate(datas):
            color = COLORS[i % len(COLORS)]
            front_ids = {r.number for r in d.front}
            rest = [r for r in d.trained if r.number not in front_ids]
            front = sorted(d.front, key=lambda r: r.values[x])
            traces.append({"type": "scatter", "mode": "markers", "name": f"{d.label}: dominated",
                           "legendgroup": d.label, "x": [r.values[x] for r in rest], "y": [r.values[y] for r in rest],
                           "text": [_hover(d, r) for r in rest], "hovertemplate": "%{text}<extra></extra>",
                           "marker": {"color": color, "size": 5, "opacity": 0.18}})
            traces.append({"type": "scatter", "mode": "markers", "name": f"{d.label}: front ({len(front)})",
                           "legendgroup": d.label, "x": [r.values[x] for r in front],
                           "y": [r.values[y] for r in front], "text": [_hover(d, r) for r in front],
                           "hovertemplate": "%{text}<extra></extra>",
                           "marker": {"color": color, "size": 10, "line": {"width": 1, "color": "#222"}}})
            if d.knee is not None:
                traces.append({"type": "scatter", "mode": "markers", "name": f"{d.label}: knee (trial {d.knee.number})",
                               "legendgroup": d.label, "x": [d.knee.values[x]], "y": [d.knee.values[y]],
                               "hoverinfo": "skip", "marker": {"symbol": "star", "size": 20, "color": color,
                                                               "line": {"width": 1.5, "color": "#222"}}})
        page.figure(traces, {"title": {"text": f"{LABELS.get(y, y)} vs {LABELS.get(x, x)}", "font": {"size": 14}},
                             "xaxis": _axis(x), "yaxis": _axis(y),
                             "legend": {"orientation": "h", "y": -0.2, "x": 0, "font": {"size": 11}}}, height=500)
    page.close_row()

    page.section("hypervolume", "Hypervolume against compute")
    if ref:
        _hv_figure(page, common, "hypervolume on the common reference point")
        refs = "; ".join(f"{d.label}: " + ", ".join(f"{k} = {_num(v, k)}" for k, v in d.ref.items()) for d in datas)
        page.note(f"The studies' own reference points differ ({_esc(refs)}), so their own hypervolumes do not "
                  "compare. Here every study is measured against one common reference: "
                  + ", ".join(f"{k} = {_num(v, k)}" for k, v in ref.items())
                  + " (each cost at the largest of the studies' references, over the objectives they share).")
    else:
        page.note("The studies share no objective with a reference point: no common hypervolume.", "warn")

    cx_range = complexity_range(datas)
    dss = [(d.label, design_space(d.trained, cx_range=cx_range)) for d in datas]
    page.data["design_space"] = {label: ds for label, ds in dss}
    page.section("design-space", "Design spaces", "Error EDFs of each study's trained networks, raw and normalised "
                 f"by parameters over one common range ({_num(cx_range[0], 'params')} .. "
                 f"{_num(cx_range[1], 'params')}, {COMPLEXITY_BINS} log bins), as Radosavovic et al. (2019) compare "
                 "design spaces; then each dimension's good range per study.")
    curves = {label: ds["all"] for label, ds in dss if ds["n"]}
    if curves:
        page.figure(_edf_traces(curves, False) + _edf_traces(curves, True, "x2", "y2", legend=False),
                    _two_panel_layout("error EDF per study", "raw", "normalised by parameters"), height=380)
    _good_table(page, [(label, ds) for label, ds in dss if ds["n"]])

    page.section("environment", "Versions and device")
    page.table(["", ""], [[_esc(k), _esc(v)] for k, v in env.items()]
               + [[f"hosts of {_esc(d.label)}", _esc(", ".join(d.hosts) or "-")] for d in datas])
    return page.render(_plotly_js())


def environment_info() -> dict[str, str]:
    """Versions (``search.export.versions``) and the machine the report is made on."""
    import torch

    from search.devices import device_name
    from search.export import versions

    info = {f"version: {k}": v for k, v in versions().items()}
    try:
        import plotly

        info["version: plotly"] = plotly.__version__
    except ImportError:  # pragma: no cover
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    info["report made on"] = f"{device_name(torch.device('cpu'))}; GPU: {gpu}"
    return info


# -- entry points ----------------------------------------------------------------------------------------

def default_out(labels: list[str]) -> Path:
    """``mlruns/reports/<study>.html``, or ``compare_<a>_<b>.html`` for several."""
    safe = [re.sub(r"[^A-Za-z0-9_.-]+", "_", s) for s in labels]
    return Path("mlruns/reports") / (f"{safe[0]}.html" if len(safe) == 1 else "compare_" + "_".join(safe) + ".html")


def write_report(datas: list[StudyData], out: str | Path) -> Path:
    """Write the report of one study, or the comparison of several, to ``out``."""
    text = study_report(datas[0]) if len(datas) == 1 else compare_report(datas)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def log_report(summary, cfg: ExperimentConfig, experiment: str | None = None) -> None:
    """Write the study's report as ``report.html`` on its parent run (never raises).

    Args:
        summary: ``search.results.Summary`` at the end of the study (its study, tracker, parent run).
        cfg: the experiment.
        experiment: the experiment file the report names (default: the file ``cfg`` was read from).
    """
    if summary.parent_id is None:
        return
    try:
        text = study_report(collect(summary.study, cfg, experiment))
    except Exception as e:  # the report is a view: it must never fail a study
        print(f"warning: the study report was not made ({type(e).__name__}: {e})", file=sys.stderr)
        return
    summary.tracker.log_text(summary.parent_id, text, "report.html")
