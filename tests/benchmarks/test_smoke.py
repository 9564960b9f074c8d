"""Every benchmark runs in its --quick mode and prints its evidence: the environment header
and at least one ratio line. Structure only: these machines are too noisy for timed asserts."""

import json
import re

import pytest

from benchmarks import (
    complexity,
    datapath,
    gpu,
    gpu_study,
    latency,
    memory,
    overhead,
    pareto,
    report,
    run_all,
    scale,
    search_quality,
    trainer,
)

HEADER = ("device:", "torch:", "threads:", "load:")
RATIO = re.compile(r"^ratio\s+.+:\s+[\d,]+\.\d+x", re.M)  # "ratio       <what>: 1.234x"


def check(out: str, ratio: re.Pattern = RATIO) -> None:
    for field in HEADER:
        assert re.search(rf"^{field}", out, re.M), f"no '{field}' line in the header:\n{out[:2000]}"
    assert ratio.search(out), f"no ratio line:\n{out[-3000:]}"
    assert re.search(r"^load:\s.* at end$", out, re.M), "no closing load line"


@pytest.mark.parametrize("module", [trainer, latency, datapath, pareto, scale, report], ids=lambda m: m.__name__)
def test_quick_benchmarks_print_header_and_ratio(module, capsys):
    module.main(["--quick"])
    out = capsys.readouterr().out
    check(out)
    assert "target " in out


def test_complexity_quick(capsys):
    complexity.main(["--quick"])
    check(capsys.readouterr().out, re.compile(r"^analytic vs build \(params\)\s+[\d,]+\.\dx", re.M))


@pytest.mark.slow
def test_overhead_quick_runs_the_real_study_and_the_proposal(capsys):
    overhead.main(["--quick"])
    out = capsys.readouterr().out
    check(out)
    assert list(overhead.VARIANTS) == ["current", "+ sqlite WAL"]
    for variant in overhead.VARIANTS:
        assert f"== {variant}" in out
    # the current code (incremental tag sync) and the variant leave every Pareto tag right
    assert "disagree" not in out, "a study left Pareto tags that differ from its final front"
    assert out.count("agree with the final front") == len(overhead.VARIANTS)
    assert re.search(r"database commits \+ [\d.]+ journal appends", out), "no per-trial store write counts"
    assert re.search(r"\+ sqlite WAL: .*journal_mode: mlflow\.db wal", out), "the WAL variant was not applied"
    # search.tracking puts the MLflow store in WAL mode
    assert re.search(r"current: .*journal_mode: mlflow\.db wal", out)


@pytest.mark.slow
def test_memory_quick(capsys):
    memory.main(["--quick"])
    out = capsys.readouterr().out
    check(out)
    assert re.search(r"^\s+5\s+[\d.]+\s", out, re.M), "no RSS row for trial 5"
    assert "target      no RSS growth trend" in out
    assert "agree with the final front" in out and "disagree" not in out


@pytest.mark.slow
def test_gpu_script_smoke_on_this_machine(capsys):
    gpu.main(["--quick"])
    out = capsys.readouterr().out
    check(out)
    assert "recommendation: fastest memory format per (cardinality, dtype)" in out
    for card in gpu.CARDINALITIES:
        assert re.search(rf"^\s+{card} (fp32|bf16)\s+(NCHW|channels_last)\s", out, re.M)
    assert "probe:" in out and "per-trial overhead" in out


def test_run_all_rejects_unknown_names():
    with pytest.raises(SystemExit):
        run_all.main(["--only", "trainer,nope"])


def test_run_all_lists_every_benchmark_module():
    import importlib

    for name in run_all.BENCHMARKS:
        assert hasattr(importlib.import_module(f"benchmarks.{name}"), "main")


def test_idle_gaps_merges_overlaps_and_measures_the_gaps():
    busy, span, gaps = trainer.idle_gaps([(0, 10), (5, 12), (20, 25), (25, 30), (31, 32)])
    assert span == 32 and busy == 12 + 10 + 1
    assert gaps == [(8, 12), (1, 30)]
    assert trainer.idle_gaps([(3, 4)]) == (1, 1, [])


def test_analyse_trace_finds_the_gaps_between_steps(capsys):
    """Two steps: the optimizer's kernel ends step 1 at 30 us, step 2 starts 20 us later."""
    ops = [("conv", 0, 10), ("bn", 12, 18), ("multi_tensor_apply_kernel<SGD>", 20, 30), ("conv", 50, 60),
           ("multi_tensor_apply_kernel<SGD>", 60, 70)]
    trace = {"traceEvents": [{"cat": "kernel", "name": n, "ts": a, "dur": b - a} for n, a, b in ops]
             + [{"cat": "cpu_op", "name": "aten::add", "ts": 0, "dur": 100}]}
    out = trainer.analyse_trace(trace)
    assert out["span_ms"] == pytest.approx(0.070) and out["busy"] == pytest.approx(46 / 70)
    assert out["boundary_ms"] == pytest.approx(0.020)  # only the gap after the optimizer counts
    assert "1 step boundaries" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_study_quick_runs_the_cifar10_recipe_through_its_real_path(capsys):
    out_ = gpu_study.main(["--quick"])
    out = capsys.readouterr().out
    check(out)
    assert "experiments/cifar10.yaml" in out and "read by torchvision" in out
    assert len(out_["rates"]) >= 2 and all(r > 0 for r in out_["rates"])
    assert re.search(r"pareto tags: all \d+ trial runs agree with the final front", out)
    assert "out of memory:" not in out  # the CUDA-only checks are skipped on the CPU


@pytest.mark.slow
def test_search_quality_quick_replays_the_shipped_table(capsys):
    result = search_quality.main(["--quick"])
    out = capsys.readouterr().out
    check(out)
    assert "true front" in out and "difference to random" in out and "epochs to reach" in out
    for (name, budget), ratio in ((k, v) for k, v in result.items() if len(k) == 2 and k[1] not in (0.9, 0.95)):
        assert 0 < ratio <= 1.0 + 1e-9, (name, budget, ratio)  # a ratio to the true front's hypervolume


def test_replay_spends_the_budget_and_stops_trials_at_rungs_only_with_the_pruner():
    cfg = search_quality.experiment()
    data = json.loads(search_quality.TABLE.read_text())
    table = search_quality.Table(data, list(cfg.objectives), cfg.directions)
    for pruner in (False, True):
        history, study = search_quality.replay(table, cfg, "random", pruner, seed=1, budget=80)
        spent = [s for s, _, _ in history]
        assert spent == sorted(spent) and 80 <= spent[-1] < 80 + table.epochs
        ratios = [h for _, h, _ in history]
        assert ratios == sorted(ratios) and 0 < ratios[-1] <= 1  # a front only grows
        pruned = [t for t in study.trials if t.state.name == "PRUNED"]
        assert bool(pruned) == pruner
        assert not any(t.intermediate_values for t in study.trials)


def test_a_probe_replay_pays_each_probe_and_trains_in_full_only_what_ranks():
    cfg = search_quality.experiment()
    table = search_quality.Table(json.loads(search_quality.TABLE.read_text()), list(cfg.objectives), cfg.directions)
    probe = {r["hash"]: r for r in json.loads(search_quality.PROBES[1].read_text())["rows"]}  # 3-epoch runs
    history = search_quality.replay_probe(table, cfg, probe, seed=2, budget=120)
    steps = [b[0] - a[0] for a, b in zip(history, history[1:], strict=False)]
    assert set(steps) == {3, 3 + table.epochs}  # every new network pays its probe; some go on to full training
    trained = [n for _, _, n in history]
    assert trained[-1] == steps.count(3 + table.epochs) and trained == sorted(trained)
