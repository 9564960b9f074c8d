"""An end-to-end study on the GPU: the cifar10 recipe through ``run_search``, with its real stores.

``experiments/cifar10.yaml`` as shipped (its space, batch 512, bf16, latency on the training
device), except: 1 epoch per trial, ``--trials`` trials, and every store in a temp dir (Optuna on
a journal file, MLflow on SQLite). The data goes through the real CIFAR-10 path (torchvision's
files, read, split 45k/5k, normalised and moved to the GPU once) but the files are generated:
nothing can be downloaded on the GPU machine. They are torchvision's layout with random pixels
plus a per-class brightness offset (so accuracy above 10% shows the network learned); only
torchvision's MD5 check of the files is switched off in this process.

After trial ``--oom-after`` the process's CUDA memory is capped (``set_per_process_memory_fraction``)
just above what is allocated, so the next trial that trains cannot fit: it must end as an
out-of-memory trial (recorded infeasible), and the study must go on once the cap is lifted.

Per trial it prints: outcome, params, training images/s (the trainer's CUDA-event training time,
validation excluded), the whole trial's cycle and the overhead around ``train_model`` (sampler,
stores, building, latency, Pareto tags), and the CUDA memory still allocated after the trial
(the data alone should remain: flat over the study).

    python -m benchmarks.gpu_study                  # on the GPU machine (benchmarks/gpu.sh runs it)
    python -m benchmarks.gpu_study --quick          # CPU smoke: 3 trials, 2,000 images, 16 px
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from benchmarks import overhead
from benchmarks._report import env_header, footer, median, set_threads, target
from search.config import load_experiment
from search.devices import cpu_cores, resolve_device, tune_process
from search.results import trial_attrs

ROOT = Path(__file__).resolve().parent.parent
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_cifar10(root: Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> None:
    """Write CIFAR-10 in torchvision's layout (5 training batches, a test batch, the meta file)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 160, (n, 3072), dtype=np.uint8) + (labels[:, None] * 9).astype(np.uint8)
        return {"data": data, "labels": labels.tolist()}

    per = -(-n_train // 5)
    for i in range(5):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump(batch(min(per, n_train - i * per)), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_NAMES}, f)


class MemoryCap:
    """``on_trial`` hook: after trial ``after``, cap CUDA memory until a trial ends out of memory."""

    def __init__(self, device: torch.device, after: int, margin_mb: float = 16) -> None:
        self.device, self.after, self.margin = device, after, margin_mb * 2**20
        self.done = 0
        self.capped_at: int | None = None  # trials done when the cap was set
        self.cap_mb = 0.0  # the cap while it holds
        self.was_mb = 0.0  # the cap that was set

    def __call__(self, summary) -> None:
        self.done += 1
        if self.device.type != "cuda":
            return
        total = torch.cuda.get_device_properties(self.device).total_memory
        if self.capped_at is None and self.done == self.after:
            allowed = torch.cuda.memory_allocated(self.device) + self.margin
            torch.cuda.set_per_process_memory_fraction(allowed / total, self.device)
            self.capped_at, self.cap_mb = self.done, allowed / 2**20
            self.was_mb = self.cap_mb
        elif self.capped_at is not None and self.cap_mb and (summary.counts.get("out_of_memory", 0)
                                                             or self.done >= self.capped_at + 3):
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
            self.cap_mb = 0.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke: 3 trials on 2,000 images at 16 px")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    parser.add_argument("--trials", type=int, default=None, help="trials to complete (11; 3 with --quick)")
    parser.add_argument("--oom-after", type=int, default=4, help="cap CUDA memory after this many trials")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    quick = args.quick or not cuda
    if cuda:  # as `resnext-nas search` sets up its process (threads, allocator, collector)
        tune_process(cpu_cores())
    else:
        set_threads(1)
    n_trials = args.trials or (3 if quick else 11)
    overrides = ["train.epochs=1", f"search.n_trials={n_trials}", f"train.device={device}", "data.download=false"]
    if quick:  # a CPU smoke run: the same path at a size a CPU trains in seconds
        overrides += ["data.train_subset=2000", "data.input_size=16", "train.batch_size=64",
                      "space.stem_ch=[8,16]", "space.bottleneck_ch=[4,8]", "space.num_stages=2",
                      "latency.repeats=5", "latency.warmup=2"]

    print("benchmark: an end-to-end study on the training device (the cifar10 recipe, 1 epoch per trial)")
    print(env_header(device))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-study-") as tmp, ExitStack() as stack:
        tmp = Path(tmp)
        fake_cifar10(tmp / "data")
        stack.enter_context(mock.patch("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True))
        cfg = load_experiment(ROOT / "experiments" / "cifar10.yaml", overrides + [
            f"data.root={tmp / 'data'}", f"search.storage=journal:{tmp}/optuna.journal",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"tracking.artifacts={tmp}/artifacts"])
        print(f"study:       {n_trials} trials of experiments/cifar10.yaml's {cfg.space.size():,}-network space "
              f"(max_params {cfg.constraints.max_params}), {cfg.train.epochs:g} epoch of batch "
              f"{cfg.train.batch_size}, bf16 {cfg.train.bf16}, channels_last {cfg.train.channels_last} "
              f"({'on' if cfg.train.nhwc(device) else 'off'} here); "
              f"latency on {cfg.latency.device} ({cfg.latency.warmup} + {cfg.latency.repeats} passes)")
        print(f"data:        generated CIFAR-10 files (50k train / 10k test, random pixels + class offset), "
              f"read by torchvision, split {1 - cfg.data.val_fraction:.0%}/{cfg.data.val_fraction:.0%}"
              + (f", subset {cfg.data.train_subset}, {cfg.data.input_size} px" if quick else ""))
        print("stores:      Optuna journal:TMP/optuna.journal, MLflow sqlite:///TMP/mlflow.db (temp dir)")
        cap = MemoryCap(device, args.oom_after)
        spans, trials, _, tags = overhead.run_study(cfg, on_trial=cap)
    wall = time.perf_counter() - t0
    rows = overhead.analyse(spans, trials)["rows"]

    print(f"\n{'trial':>5} {'outcome':<14} {'network':<44} {'params':>8} {'val acc':>7} {'img/s':>9} "
          f"{'train':>7} {'+ val':>6} {'cycle':>7} {'overhead':>8} {'latency':>7} {'cuda MiB':>8}")
    memory, rates = [], []
    for t in trials:
        k = t.number
        outcome = t.user_attrs.get("outcome", t.state.name.lower())
        train = spans.train_time.get(k, 0.0)
        images = spans.images.get(k, 0)
        rate = images / train if train else 0.0
        row = rows[k - 1] if k >= 1 else None
        mem = (t.user_attrs.get("memory_after_mb") or {}).get("cuda_mb")
        if outcome == "trained":
            rates.append(rate)
            if mem is not None:
                memory.append(mem)
        attrs = trial_attrs(t)
        acc = (attrs.get("metrics") or {}).get("val_accuracy")
        print(f"{k + 1:>5} {outcome:<14} {attrs.get('spec_name', '?'):<44.44} "
              f"{attrs.get('params', 0) / 1e6:>7.2f}M {acc if acc is not None else float('nan'):>7.3f} "
              f"{rate:>9,.0f} {train:>6.2f}s "
              + (f"{row['train_model'] - train:>5.2f}s {row['cycle']:>6.2f}s {row['overhead'] * 1e3:>6.0f}ms "
                 f"{row['latency'] * 1e3:>5.0f}ms" if row else f"{'':>6} {'(setup)':>7} {'':>8} {'':>7}")
              + f" {mem if mem is not None else float('nan'):>8.1f}")
    trained = [r for r in rows if r["trained"]]
    result = {"wall_s": wall, "rates": rates, "memory": memory}
    print(f"\nstudy:       {len(trials)} trials in {wall:.1f} s (setup, data and generated files included); "
          f"{tags}")
    if rates:
        print(f"images/s:    trained trials: median {median(rates):,.0f}, min {min(rates):,.0f}, max {max(rates):,.0f} "
              "(training only; the networks differ in size)")
    if trained:
        over = median([r["overhead"] for r in trained])
        lat = median([r["latency"] for r in trained])
        cycle = median([r["cycle"] for r in trained])
        share = over / cycle
        result.update(overhead=over, share_of_10s=over / overhead.TRIAL_S)
        print(f"overhead:    median {over * 1e3:.0f} ms per trained trial (latency {lat * 1e3:.0f} ms of it) = "
              f"{share:.1%} of this study's median cycle ({cycle:.2f} s), {over / overhead.TRIAL_S:.2%} of a "
              f"{overhead.TRIAL_S:g}-s trial")
        print(f"ratio       whole trial / train_model time (median): "
              f"{cycle / median([r['train_model'] for r in trained]):.3f}x")
        print(target(f"per-trial overhead <= {overhead.TARGET_SHARE:.0%} of a {overhead.TRIAL_S:g}-s trial",
                     over / overhead.TRIAL_S <= overhead.TARGET_SHARE, f"{over / overhead.TRIAL_S:.2%}"))
    if cuda:
        oom = [t.number + 1 for t in trials if t.user_attrs.get("outcome") == "out_of_memory"]
        after = [t for t in trials if oom and t.number + 1 > oom[0] and t.user_attrs.get("outcome") == "trained"]
        result["oom"] = oom
        print(f"out of memory: memory capped at {cap.was_mb:.0f} MiB after trial {cap.capped_at}; trials "
              f"{oom or 'none'} ended out_of_memory; {len(after)} trained after it")
        print(target("a CUDA out-of-memory trial is contained and the study goes on", bool(oom and after),
                     f"{len(oom)} OOM trial(s), {len(after)} trained after"))
        if len(memory) >= 2:
            growth = max(memory) - memory[0]
            print(f"memory:      CUDA allocated after each trained trial: {memory[0]:.1f} .. {max(memory):.1f} MiB")
            print(target("CUDA memory flat over the study (<= 1 MiB above the first trained trial)",
                         growth <= 1.0, f"+{growth:.1f} MiB"))
        print(f"peak:        CUDA max allocated {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB")
    print(f"elapsed:     {wall:.1f} s")
    print(footer())
    return result


if __name__ == "__main__":
    main()
