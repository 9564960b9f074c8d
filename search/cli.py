"""The ``resnext-nas`` command line.

The modules that import torch (training, export, latency) are imported inside the commands
that use them: ``pareto``, ``space`` and ``build`` (without ``--check``) never import torch,
which alone takes longer to import than the rest of such a command.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from search.errors import StorageUnavailable, guarded, redact, redact_text
from space import SearchSpace, complexity, layer_complexity, load_spec, preset
from space.errors import SpecError

DASHBOARD = "http://127.0.0.1:5000"  # where `resnext-nas ui` serves the MLflow dashboard by default


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
        from space import build_model  # imports torch: only --check builds the network

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


def _read(command: str, experiment: str | None, study: str | None, overrides: list[str], storage: str | None,
          tracking_uri: str | None = None):
    """The study a reading command names (``pareto``, ``report``, ``export``) and the experiment it was run with.

    By its experiment file (the file's study name and storage; ``--set`` may change them) or by
    ``--study NAME``; either way the experiment is the study's recorded recipe (``read_study``).

    Args:
        command: the command, for the messages.
        experiment: the experiment file, or None to read ``study`` by name.
        study: the study's name (``--study``), or None to take the file's.
        overrides: ``--set`` assignments for the experiment file.
        storage: the storage URL (``--storage``), or None for the file's (or the default).
        tracking_uri: the MLflow tracking URI (``--tracking-uri``), or None for the file's (or the default).
    """
    import dataclasses

    from search.config import DEFAULT_STORAGE, load_experiment
    from search.storage import read_study

    base = None
    if experiment:
        base = load_experiment(experiment, overrides)
        if study and study != base.study_name:
            raise SpecError(f"{experiment} names study '{base.study_name}' but --study names '{study}'; give one of "
                            "them (an experiment file of another study may set search.study_name)")
        study = base.study_name
    elif overrides:
        raise SpecError(f"{command}: --set changes an experiment file, and none is given: a study read by --study "
                        "NAME uses its recorded recipe, and --storage URL says where it lives")
    elif not study:
        raise SpecError(f"{command}: name the study: an experiment file, or --study NAME (`resnext-nas studies` "
                        "lists them)")
    url = storage or (base.storage_url if base is not None else DEFAULT_STORAGE)
    study, cfg = read_study(study, url, base)
    if tracking_uri:
        cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=tracking_uri))
    return study, cfg


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
    if cfg.tracking.enabled and summary.parent_id:
        report = summary.tracker.artifact_uri(summary.parent_id, "report.html")
        if report:
            print(f"report: {report}   (one HTML file; `resnext-nas report {args.experiment}` writes it anew)")
        print(f"dashboard: resnext-nas ui {args.experiment}   (prints the links to the front and the trials; "
              f"MLflow store {redact(summary.tracker.uri)})")
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


def cmd_sync(args) -> int:
    from search.outage import sync_runs
    from search.study import end_study_run
    from search.tracking import Tracker

    study, cfg = _read("sync", args.experiment, None, args.set, args.storage, args.tracking_uri)
    if not cfg.tracking.enabled:
        raise SpecError("tracking.enabled is false for this experiment: there is no MLflow store to sync")
    tracker = Tracker(cfg.tracking, cfg.name)
    tracker.check()
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is None or tracker.experiment_id is None:
        raise SpecError(f"study '{cfg.study_name}' has no MLflow run in {redact(tracker.uri)}: it was run with "
                        "another tracking.uri (--tracking-uri) or with tracking off")
    done = sync_runs(study, cfg, tracker, parent_id)
    if done is None:
        raise SpecError(f"the MLflow tracking store {redact(tracker.uri)} stopped answering (see above); "
                        "rerun `resnext-nas sync` once it is back")
    ended = end_study_run(study, cfg, tracker, parent_id)
    print(f"study '{cfg.study_name}': {done['created']} trial runs created and {done['ended']} completed from the "
          "Optuna record; pareto tags match `resnext-nas pareto`"
          + ("; the study's run, left running, got its front, plots and report and was ended" if ended else ""))
    return 0


def cmd_pareto(args) -> int:
    from search.results import describe_counts, finished_rows, front_table, outcome_counts, pareto_rows

    study, cfg = _read("pareto", args.experiment, args.study, args.set, args.storage, args.tracking_uri)
    table = front_table(pareto_rows(finished_rows(study, cfg.objectives), cfg.directions), cfg.objectives)
    print(f"study '{cfg.study_name}': {describe_counts(outcome_counts(study))}; {len(table)} networks on the "
          "feasible Pareto front")
    print_table(table)
    return 0


def cmd_export(args) -> int:
    from search.export import export_best, export_onnx

    if args.onnx and not args.weights:
        raise SpecError("--onnx needs trained weights (an export holds only the architecture): export without "
                        f"--onnx, train it with `resnext-nas evaluate {args.experiment or 'EXPERIMENT.yaml'} "
                        f"{args.out} --weights w.safetensors`, then rerun this with --weights w.safetensors")
    _, cfg = _read("export", args.experiment, args.study, args.set, args.storage, args.tracking_uri)
    if args.register:
        from search.registry import check_registry

        check_registry(cfg.tracking.uri, args.register)
    doc = export_best(cfg, args.pick, args.out, cfg.storage_url)
    print(f"wrote {args.out}: {doc['name']} from trial {doc['provenance']['trial']} "
          f"({doc['complexity']['params']:,} params)")
    if args.onnx:
        rep = export_onnx(args.weights, args.onnx, exported=args.out)
        print(f"wrote {rep['path']}: ONNX graph (opset {rep['opset']}, input {rep['input']}, output logits); "
              f"onnxruntime {rep['onnxruntime']} vs PyTorch: max abs diff {rep['max_abs_diff']:.2e} "
              f"(tolerance {rep['atol']:g})")
    if args.register:
        _register(cfg, args.out, args.weights, args.register)
    return 0


def _trained(report: dict) -> str:
    return (f"{report['epochs']:g} epochs, seed {report['seed']}, {report['threads']} threads; test accuracy "
            f"{report['test_accuracy']:.4f} on {report['test_images']} test images")


def _register(cfg, exported, weights, name: str, note: str | None = None) -> None:
    """``--register NAME``: the exported network, with ``weights`` (else retrained now), as an MLflow model."""
    import json
    import tempfile

    from search.export import evaluate_exported, exported_provenance, weights_metadata
    from search.registry import describe, register_network
    from search.tracking import quiet_mlflow

    quiet_mlflow()
    with tempfile.TemporaryDirectory(prefix="resnext-nas-weights-") as tmp:
        if weights is None:
            prov = exported_provenance(exported)
            print(f"no trained weights given (--weights): retraining trial {prov.get('trial')}'s network with the "
                  f"trial's seed ({prov.get('seed')}) and threads ({prov.get('threads') or 'all'})", flush=True)
            _tune(prov.get("threads"))
            weights = Path(tmp) / "weights.safetensors"
            note = "retrained for the registration: " + _trained(evaluate_exported(cfg, exported, weights_out=weights))
        elif note is None:
            meta = json.loads(weights_metadata(weights).get("provenance", "{}"))
            note = (f"the weights file {Path(weights).name} (`resnext-nas evaluate`: {meta.get('epochs')} epochs, "
                    f"seed {meta.get('seed')}; test accuracy {meta.get('test_accuracy')})")
        print(f"weights: {note}")
        print(describe(register_network(cfg, exported, weights, name, note)))


def cmd_predict(args) -> int:
    from search.export import classify, load_model

    if args.top < 1:
        raise SpecError(f"--top must be at least 1, got {args.top}")
    model, prep = load_model(args.model, args.weights)
    rows = []
    for image in args.images:
        tops = classify(model, prep, image, args.top)  # a .npy may hold a batch: one row per image
        for i, top in enumerate(tops):
            name = image if len(tops) == 1 else f"{image}[{i}]"
            row = {"image": name, "class": top[0][0], "probability": f"{top[0][1]:.4f}"}
            if args.top > 1:
                row[f"top-{len(top)}"] = ", ".join(f"{c} {p:.4f}" for c, p in top)
            rows.append(row)
    print_table(rows)
    return 0


def cmd_report(args) -> int:
    from search.analysis import collect, unique_labels
    from search.report import default_out, write_report

    sources = [(e, None) for e in args.experiments] + [(None, name) for name in args.study or []]
    storages = args.storage or []
    if not sources:
        raise SpecError("report: name the study: an experiment file, or --study NAME (`resnext-nas studies` lists "
                        "them); several compare")
    if args.set and not args.experiments:
        raise SpecError("report: --set changes the experiment files, and none is given: a study read by --study "
                        "NAME uses its recorded recipe")
    if len(storages) > 1 and len(storages) != len(sources):
        raise SpecError(f"report: {len(storages)} --storage values for {len(sources)} studies; give one (used for "
                        "all) or one per study: experiment files first, then each --study, in the same order")
    read = [_read("report", experiment, name, args.set if experiment else [],
                  storages[0] if len(storages) == 1 else storages[i] if storages else None, args.tracking_uri)
            for i, (experiment, name) in enumerate(sources)]
    origins = [experiment or redact(cfg.storage_url) for (experiment, _), (_, cfg) in zip(sources, read, strict=True)]
    labels = unique_labels([cfg.study_name for _, cfg in read], origins)
    datas = [collect(study, cfg, experiment, label, cfg.storage_url)
             for (study, cfg), (experiment, _), label in zip(read, sources, labels, strict=True)]
    for data, (_, cfg) in zip(datas, read, strict=True):
        data.models = _registered(cfg.tracking.uri if cfg.tracking.enabled else None, DASHBOARD, cfg.study_name)
    out = write_report(datas, args.out or default_out(labels))
    what = f"study '{labels[0]}'" if len(datas) == 1 else f"{len(datas)} studies ({', '.join(labels)})"
    print(f"wrote {out}: the report of {what}; open it in a browser (works offline)")
    return 0


def _registered(uri: str | None, base_url: str, study: str) -> list:
    """A study's registered model versions with their dashboard links; none without a tracking store (None),
    or where the store has no registry (a file store) or cannot be read: links never make a command fail."""
    if uri is None:
        return []
    from search.registry import study_models

    try:
        return study_models(uri, base_url, study)
    except SpecError:
        return []


def cmd_evaluate(args) -> int:
    import tempfile

    from search.export import evaluate_exported, exported_provenance

    cfg = _experiment(args)
    if args.register:
        from search.registry import check_registry

        check_registry(cfg.tracking.uri, args.register)
    recorded = exported_provenance(args.exported).get("threads")
    _tune(recorded)  # the trial's thread count: CPU results depend on it
    tmp = tempfile.TemporaryDirectory(prefix="resnext-nas-weights-") if args.register and not args.weights else None
    weights = args.weights or (str(Path(tmp.name) / "weights.safetensors") if tmp else None)
    report = evaluate_exported(cfg, args.exported, epochs=args.epochs, weights_out=weights)
    search_acc = report["search_val_accuracy"]
    print(f"{report['name']}: trained {report['epochs']:g} epochs (seed {report['seed']}, {report['threads']} "
          f"threads): val accuracy {report['val_accuracy']:.4f} (in the search: "
          + (f"{search_acc:.4f}" if search_acc is not None else "not recorded")
          + f"), test accuracy {report['test_accuracy']:.4f} on {report['test_images']} test images")
    if args.weights:
        print(f"weights saved to {args.weights} (safetensors)")
    if args.register:
        _register(cfg, args.exported, weights, args.register, "trained by `resnext-nas evaluate`: " + _trained(report))
    return 0


def cmd_confirm(args) -> int:
    from search.confirm import confirm_front

    cfg = _experiment(args)
    _tune(cfg.train.threads)
    result = confirm_front(cfg, seeds=args.seeds, top=args.top, storage_url=args.storage, quiet=args.quiet)
    rows = []
    for number, e in result.entries.items():
        row = {"network": e["name"], "trial": number, "seeds": len(e["seeds"]),
               "val_accuracy (mean ± sd)": f"{e['mean']:.4f} ± {e['sd']:.4f}"}
        if result.latency:
            row["latency_ms (mean ± sd)"] = f"{e['latency_ms_mean']:.3f} ± {e['latency_ms_sd']:.3f}"
        row.update({k: v for k, v in result.values[number].items() if k in ("params", "macs")})
        row["robust"] = "yes" if e["robust"] else "no"
        rows.append(row)
    robust = sum(e["robust"] for e in result.entries.values())
    print(f"study '{cfg.study_name}': {len(result.chosen)} networks confirmed with {args.seeds} seeds each "
          f"({result.trained} trained now); {robust} of {len(rows)} confirmed front points are robust "
          "(no other confirmed point beats them by more than one sd)")
    print_table(rows)
    if result.left_front:
        print(f"confirmed earlier but no longer on the front: trials {', '.join(map(str, result.left_front))}")
    if result.failed:
        print(f"{len(result.failed)} retrainings failed (not recorded; rerun to try them again)", file=sys.stderr)
        return 1
    return 0


def cmd_studies(args) -> int:
    from search.config import DEFAULT_STORAGE
    from search.housekeeping import list_studies

    url = args.storage or DEFAULT_STORAGE
    infos = list_studies(url)
    if not infos:
        print(f"no studies in {redact(url)}")
        return 0
    rows = []
    for i in infos:
        best = ", ".join(f"{o} {human(v) if o in ('params', 'macs') else f'{v:.4g}'}" for o, v in i.best.items())
        rows.append({"study": i.name, "trained": i.counts["trained"], "reused": i.counts["reused"],
                     "over budget": i.counts["over_budget"], "out of memory": i.counts["out_of_memory"],
                     "failed": i.counts["failed"], "running": i.counts["running"], "front": i.front,
                     "confirmed": i.confirmed, "best on the front": best or "-",
                     "last activity": i.last_activity.strftime("%Y-%m-%d %H:%M") if i.last_activity else "-"})
    print(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} in {redact(url)}")
    print_table(rows)
    return 0


def cmd_delete(args) -> int:
    from search.config import DEFAULT_STORAGE
    from search.housekeeping import DEFAULT_TRACKING, delete_study

    url, uri = args.storage or DEFAULT_STORAGE, args.tracking_uri or DEFAULT_TRACKING

    def confirm(plan) -> bool:
        runs = (f"{len(plan.runs)} MLflow runs in experiment '{plan.experiment}'" if plan.runs
                else "no MLflow runs") + f" ({plan.tracking or redact(uri)})"
        print(f"study '{plan.name}' in {redact(url)}: {plan.trials} trials; {runs}")
        if plan.running:
            print(f"warning: {plan.running} of its trials are RUNNING: a worker may still be training them",
                  file=sys.stderr)
        if args.yes:
            return True
        try:
            typed = input(f"type the study name ({plan.name}) to delete it: ")
        except EOFError:
            typed = ""
        return typed.strip() == plan.name

    plan = delete_study(args.name, url, uri, confirm=confirm)
    if not plan.done:
        print("not confirmed: nothing deleted", file=sys.stderr)
        return 1
    print(f"deleted study '{plan.name}' ({plan.trials} trials) and {len(plan.runs)} MLflow runs (in MLflow's "
          "trash until `mlflow gc`)")
    if plan.experiment:
        print(f"MLflow experiment '{plan.experiment}' kept ({plan.runs_left} runs of other studies left"
              "; a deleted experiment's name cannot be made again, so it stays for the next study)")
    return 0


def ui_command(mlflow: str, uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow ui`` command line of ``resnext-nas ui``: ``workers`` server processes (MLflow's default is 4).

    Args:
        mlflow: the ``mlflow`` executable.
        uri: the tracking store.
        host: the address to bind (loopback by default).
        port: the port.
        workers: uvicorn worker processes; one serves one person browsing.
    """
    return [mlflow, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", str(workers)]


def ui_env() -> dict[str, str]:
    """The environment of the dashboard's server: this one, without MLflow's job runner unless it is asked for.

    MLflow 3's server starts a job runner (with 3.17: the runner and seven huey consumers, 175-265 MB
    each; ``benchmarks/ui_footprint.py``) for its GenAI jobs (scorers, evaluations, trace rollups);
    browsing runs, metrics, artifacts and saved views needs none of it.
    ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true`` in the environment keeps it.
    """
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def cmd_ui(args) -> int:
    from search.tracking import _abs_sqlite, dashboard_links, quiet_mlflow

    if args.workers < 1:
        raise SpecError(f"ui: --workers must be at least 1, got {args.workers}")
    quiet_mlflow()
    experiment = study = None
    if args.experiment:
        cfg = _experiment(args)
        uri, experiment, study = cfg.tracking.uri, cfg.tracking.experiment or cfg.name, cfg.study_name
    else:
        uri = args.tracking_uri or "sqlite:///mlruns/mlflow.db"
    uri = _abs_sqlite(uri)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    url = f"http://{args.host}:{args.port}"
    links = dashboard_links(uri, url, experiment, study)
    print(f"MLflow dashboard on {url} (store {redact(uri)}); Ctrl-C stops it", flush=True)
    for link in links:
        print(f"\n{link.experiment} / study {link.study}: {link.front_size} networks on the Pareto front, "
              f"{link.trials} trial runs\n  Pareto front: {link.front}\n  all trials:   {link.all_trials}\n"
              f"  report:       {link.report}", flush=True)
        for m in _registered(uri, url, link.study):
            print(f"  model:        {m.name} version {m.version} (trial {m.trial}): {m.version_url}", flush=True)
    if not links:
        print("no study in this store yet: run `resnext-nas search EXP.yaml`", flush=True)
    cmd = ui_command(mlflow, uri, args.host, args.port, args.workers)
    if os.name == "posix":  # this process becomes the server's: nothing of it (mlflow imported) stays in memory
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(mlflow, cmd, ui_env())
    proc = subprocess.Popen(cmd, env=ui_env())

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

    def experiment_cmd(name, help_text, fn, storage=True, by_name=False):
        s = sub.add_parser(name, help=help_text)
        if by_name:  # a command that only reads a study: its file, or its name
            s.add_argument("experiment", nargs="?", help="experiment YAML file (see experiments/), or --study NAME")
            s.add_argument("--study", metavar="NAME", help="read the study by its name, with the recipe it "
                                                           "recorded (no experiment file needed; `resnext-nas "
                                                           "studies` lists them)")
        else:
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

    experiment_cmd("sync", "write the MLflow runs a tracking outage missed, from the study's Optuna record",
                   cmd_sync)

    experiment_cmd("pareto", "print the feasible Pareto front of the study", cmd_pareto, by_name=True)

    s = experiment_cmd("export", "write one Pareto point as a self-contained YAML", cmd_export, by_name=True)
    s.add_argument("--pick", default="knee",
                   help="knee | max-accuracy | min-latency | min-params | min-macs | 'params<=1e6'")
    s.add_argument("--out", required=True, help="output YAML path")
    s.add_argument("--onnx", metavar="PATH", help="also write the trained network as an ONNX graph (needs --weights), "
                                                  "checked against PyTorch with onnxruntime")
    s.add_argument("--weights", metavar="W", help="the network's trained weights (`evaluate --weights W`), for --onnx "
                                                  "and --register")
    s.add_argument("--register", metavar="NAME", help="also log the trained network as an MLflow model and register "
                                                      "it as a new version of NAME (retrained now without --weights)")

    s = sub.add_parser("report", help="one self-contained HTML report of a study; several experiments: compare")
    s.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="experiment YAML file(s)")
    s.add_argument("--study", action="append", metavar="NAME", help="a study by its name, with the recipe it recorded "
                                                                   "(no experiment file needed; repeatable)")
    s.add_argument("--out", help="HTML file (default mlruns/reports/<study>.html, or compare_<a>_<b>.html)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every experiment, e.g. --set search.study_name=x (repeatable)")
    s.add_argument("--storage", action="append", metavar="URL",
                   help="Optuna storage URL (default: search.storage); once for all or once per experiment")
    s.add_argument("--tracking-uri", help="MLflow tracking URI, for the registered models' links (default: "
                                          "tracking.uri)")
    s.set_defaults(fn=cmd_report)

    s = experiment_cmd("evaluate", "retrain an exported network and report its test accuracy", cmd_evaluate,
                       False)
    s.add_argument("exported", help="YAML written by `resnext-nas export`")
    s.add_argument("--epochs", type=float, help="training epochs (default: train.epochs of the experiment)")
    s.add_argument("--weights", help="save the trained weights to this .safetensors file")
    s.add_argument("--register", metavar="NAME", help="also log the trained network as an MLflow model and register "
                                                      "it as a new version of NAME")

    s = sub.add_parser("predict", help="classify image files with a trained exported network")
    s.add_argument("model", help="weights written by `evaluate --weights` (self-contained), or the export YAML "
                                 "with --weights")
    s.add_argument("images", nargs="+", help="PNG/JPEG/... files (read with PIL) or .npy arrays (HxW, HxWxC, "
                                             "CxHxW, or a batch; uint8 = 8-bit, other dtypes = the training scale)")
    s.add_argument("--weights", help="the trained weights of the export YAML given as MODEL")
    s.add_argument("--top", type=int, default=1, metavar="K", help="also list the K most probable classes")
    s.set_defaults(fn=cmd_predict)

    s = experiment_cmd("confirm", "retrain the front's networks with more seeds; mean ± sd and which points "
                                  "stay non-dominated", cmd_confirm)
    s.add_argument("--seeds", type=int, default=3, help="results per network, the trial's own included (default 3)")
    s.add_argument("--top", type=int, metavar="K", help="only the K front points closest to the knee")
    s.add_argument("--quiet", action="store_true", help="no progress lines")

    s = sub.add_parser("studies", help="list the studies of a storage: counts, front, best values, last activity")
    s.add_argument("--storage", help="Optuna storage URL (default journal:mlruns/optuna.journal)")
    s.set_defaults(fn=cmd_studies)

    s = sub.add_parser("delete", help="delete a study and its MLflow runs (asks for its name first)")
    s.add_argument("name", help="the study's name (`resnext-nas studies` lists them)")
    s.add_argument("--storage", help="Optuna storage URL (default journal:mlruns/optuna.journal)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    s.add_argument("--yes", action="store_true", help="do not ask")
    s.set_defaults(fn=cmd_delete)

    s = sub.add_parser("ui", help="open the MLflow dashboard on the tracking store; print each study's links")
    s.add_argument("experiment", nargs="?", help="only this experiment's study (its tracking.uri is the store)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of EXPERIMENT")
    s.add_argument("--tracking-uri", help="default sqlite:///mlruns/mlflow.db (or EXPERIMENT's tracking.uri)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=int(DASHBOARD.rsplit(":", 1)[1]))
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server worker processes (default 1: enough for one person browsing; MLflow's own default 4)")
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
        except StorageUnavailable as e:  # past search.storage_patience_s, or a journal that cannot be written
            print(f"error: {redact_text(str(e))}", file=sys.stderr)
            return 3
        except KeyboardInterrupt:
            print("\ninterrupted: finished trials are kept; rerun the same command to resume", file=sys.stderr)
            return 130
    return guarded(run)


if __name__ == "__main__":
    sys.exit(main())
