"""The ``resnext-nas`` command line."""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from search.errors import guarded, redact, redact_text
from space import SearchSpace, build_model, complexity, layer_complexity, load_spec, preset
from space.errors import SpecError


def human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def print_table(rows: list[dict], out=None) -> None:
    """Print dict rows as an aligned text table."""
    out = out or sys.stdout
    if not rows:
        print("(empty)", file=out)
        return
    fmt = {"val_accuracy": "{:.4f}", "latency_ms": "{:.3f}"}

    def cell(k, v):
        if k in ("params", "macs") and isinstance(v, int | float):
            return human(v)
        return fmt.get(k, "{}").format(v) if v is not None else "-"

    cols = list(rows[0])
    cells = [[cell(c, r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=out)


def cmd_space(args) -> int:
    from search.config import load_experiment

    cfg = load_experiment(args.experiment, args.set)
    space: SearchSpace = cfg.space
    lo, hi = space.complexity_range()
    print(f"experiment {cfg.name}: dataset {cfg.data.dataset}, input {space.in_ch}x{space.input_size}x"
          f"{space.input_size}, {space.num_classes} classes")
    print(f"space: {space.size():,} distinct networks ({space.num_combinations():,} parameter combinations)")
    print(f"params: {human(lo.params)} .. {human(hi.params)}   MACs: {human(lo.macs)} .. {human(hi.macs)}")
    rng = random.Random(args.seed)
    rows = []
    for _ in range(args.samples):
        spec = space.sample(rng)
        cx = complexity(spec)
        rows.append({"name": spec.name, "depths": "-".join(str(s.depth) for s in spec.stages),
                     "params": cx.params, "macs": cx.macs, "hash": spec.hash})
    print(f"\n{args.samples} sampled networks (seed {args.seed}):")
    print_table(rows)
    return 0


def cmd_build(args) -> int:
    spec = preset(args.spec) if args.preset else load_spec(args.spec)
    print(f"{spec.name}  (hash {spec.hash})")
    rows = [{"layer": name, "out (C,H,W)": "x".join(map(str, shape)), "params": cx.params, "macs": cx.macs}
            for name, cx, shape in layer_complexity(spec)]
    print_table(rows)
    cx = complexity(spec)
    print(f"total: {cx.params:,} params, {cx.macs:,} MACs, {cx.acts:,} activations")
    if args.check:
        n = sum(p.numel() for p in build_model(spec).parameters())
        print(f"built model: {n:,} params ({'matches' if n == cx.params else 'MISMATCH'})")
        return 0 if n == cx.params else 1
    return 0


def _experiment(args):
    from search.config import load_experiment

    overrides = list(args.set)
    if getattr(args, "tracking_uri", None):
        overrides.append(f"tracking.uri={args.tracking_uri}")
    return load_experiment(args.experiment, overrides)


def _tune(threads: int | None) -> None:
    """The process-wide settings of a command that trains (see ``search.devices.tune_process``)."""
    from search.devices import cpu_cores, tune_process

    tune_process(threads or cpu_cores())


def cmd_search(args) -> int:
    from search.export import export_best
    from search.results import front_table
    from search.study import StudyAborted, end_note, run_search

    cfg = _experiment(args)
    _tune(cfg.train.threads)
    try:
        summary = run_search(cfg, storage_url=args.storage, quiet=args.quiet, workers=args.workers)
    except StudyAborted as e:
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 1
    table = front_table(summary.front, cfg.objectives)
    print(f"\n{end_note(summary, cfg)}")
    print(f"Pareto front: {len(table)} networks")
    print_table(table)
    if table:
        out = Path(args.export_dir) / f"{cfg.study_name}_{args.pick}.yaml"
        export_best(cfg, args.pick, out, args.storage)
        print(f"\nexported the {args.pick} network to {out}")
    if cfg.tracking.enabled:
        print(f"dashboard: resnext-nas ui   (MLflow store {redact(summary.tracker.uri)})")
    return 0


def cmd_worker(args) -> int:
    from search.study import StudyAborted, end_note, join_study

    cfg = _experiment(args)
    try:
        summary = join_study(cfg, storage_url=args.storage, workers=args.workers, quiet=args.quiet)
    except StudyAborted as e:
        print(f"error: {redact_text(str(e))}", file=sys.stderr)
        return 1
    print(f"{end_note(summary, cfg)}; {len(summary.front)} networks on the feasible Pareto front "
          "(`resnext-nas pareto` shows them)")
    return 0


def cmd_pareto(args) -> int:
    from search.results import describe_counts, finished_rows, front_table, outcome_counts, pareto_rows
    from search.storage import load_study

    cfg = _experiment(args)
    study = load_study(cfg, args.storage)
    table = front_table(pareto_rows(finished_rows(study, cfg.objectives), cfg.directions), cfg.objectives)
    print(f"study '{cfg.study_name}': {describe_counts(outcome_counts(study))}; {len(table)} networks on the "
          "feasible Pareto front")
    print_table(table)
    return 0


def cmd_export(args) -> int:
    from search.export import export_best

    cfg = _experiment(args)
    doc = export_best(cfg, args.pick, args.out, args.storage)
    print(f"wrote {args.out}: {doc['name']} from trial {doc['provenance']['trial']} "
          f"({doc['complexity']['params']:,} params)")
    return 0


def cmd_evaluate(args) -> int:
    from search.export import evaluate_exported, exported_provenance

    cfg = _experiment(args)
    recorded = exported_provenance(args.exported).get("threads")
    _tune(recorded)  # the trial's thread count: CPU results depend on it
    report = evaluate_exported(cfg, args.exported, epochs=args.epochs, weights_out=args.weights)
    search_acc = report["search_val_accuracy"]
    print(f"{report['name']}: trained {report['epochs']:g} epochs (seed {report['seed']}, {report['threads']} "
          f"threads): val accuracy {report['val_accuracy']:.4f} (in the search: "
          + (f"{search_acc:.4f}" if search_acc is not None else "not recorded")
          + f"), test accuracy {report['test_accuracy']:.4f} on {report['test_images']} test images")
    if args.weights:
        print(f"weights saved to {args.weights} (safetensors)")
    return 0


def cmd_ui(args) -> int:
    from search.tracking import _abs_sqlite

    uri = _abs_sqlite(args.tracking_uri or "sqlite:///mlruns/mlflow.db")
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    url = f"http://{args.host}:{args.port}"
    print(f"MLflow dashboard on {url} (store {uri}); Ctrl-C stops it", flush=True)
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    proc = subprocess.Popen(cmd)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # SIGTERM must not leave the server running
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resnext-nas", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def experiment_cmd(name, help_text, fn, storage=True):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("experiment", help="experiment YAML file (see experiments/)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key, e.g. --set search.n_trials=20 (repeatable)")
        if storage:
            s.add_argument("--storage", help="Optuna storage URL (default: search.storage)")
            s.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri)")
        s.set_defaults(fn=fn)
        return s

    s = experiment_cmd("space", "validate an experiment and describe its design space", cmd_space, False)
    s.add_argument("--samples", type=int, default=5, help="networks to sample and show")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("build", help="layer summary and complexity of one network")
    s.add_argument("spec", help="NetSpec YAML (bare or exported), or a preset name with --preset")
    s.add_argument("--preset", action="store_true", help="treat SPEC as a preset name")
    s.add_argument("--check", action="store_true", help="also build it and compare parameter counts")
    s.set_defaults(fn=cmd_build)

    s = experiment_cmd("search", "run or resume the experiment's search study", cmd_search)
    s.add_argument("--quiet", action="store_true", help="no progress display")
    s.add_argument("--pick", default="knee", help="which front point to export at the end")
    s.add_argument("--export-dir", default="mlruns/exports", help="where the exported YAML goes")
    s.add_argument("--workers", type=int, metavar="N",
                   help="worker processes sharing the study (default: one per GPU, pinned; 1 on a CPU machine, "
                        "where N workers get cores/N threads each); see docs/scaling.md")

    s = experiment_cmd("worker", "join a study started by `search` (another machine, same experiment file)",
                       cmd_worker)
    s.add_argument("--workers", type=int, metavar="N", help="worker processes on this machine (default: one "
                                                          "per GPU, else 1)")
    s.add_argument("--quiet", action="store_true", help="no progress lines")

    experiment_cmd("pareto", "print the feasible Pareto front of the study", cmd_pareto)

    s = experiment_cmd("export", "write one Pareto point as a self-contained YAML", cmd_export)
    s.add_argument("--pick", default="knee",
                   help="knee | max-accuracy | min-latency | min-params | min-macs | 'params<=1e6'")
    s.add_argument("--out", required=True, help="output YAML path")

    s = experiment_cmd("evaluate", "retrain an exported network and report its test accuracy", cmd_evaluate,
                       False)
    s.add_argument("exported", help="YAML written by `resnext-nas export`")
    s.add_argument("--epochs", type=float, help="training epochs (default: train.epochs of the experiment)")
    s.add_argument("--weights", help="save the trained weights to this .safetensors file")

    s = sub.add_parser("ui", help="open the MLflow dashboard on the tracking store")
    s.add_argument("--tracking-uri", help="default sqlite:///mlruns/mlflow.db")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def run() -> int:
        try:
            return args.fn(args)
        except SpecError as e:
            print(f"error: {redact_text(str(e))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted: finished trials are kept; rerun the same command to resume", file=sys.stderr)
            return 130
    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
