"""The offline Fashion-MNIST recipe's trade-offs: train_subset, input size and epochs against time and accuracy.

Trains the same few networks of ``experiments/fashionmnist.yaml``'s space (the smallest, one near the
middle of the parameter range and the largest under ``constraints.max_params``) under each
setting, as a study's trial would (``search.objective.build_and_train`` with the file's training
settings, validation after every epoch), and prints per network and setting: the validation
accuracy and the seconds of the trial (training + validation), plus a mean per setting and the
projected minutes of a 30-network study on ``--workers`` worker processes (``threads`` each).

    python -m benchmarks.fashionmnist_recipe                      # the settings grid below
    python -m benchmarks.fashionmnist_recipe --grid 16:10000:4 28:10000:4 --threads 1

Each setting is ``input_size:train_subset:epochs``. Needs the Fashion-MNIST files (Debian's
``dataset-fashion-mnist``, or torchvision's layout under ``data/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from benchmarks._report import env_header, footer, load_average, set_threads
from search.config import load_experiment
from search.data import load_splits
from search.objective import build_and_train
from space import complexity

GRID = ("16:5000:4", "16:10000:4", "16:20000:4", "16:10000:8", "28:10000:4")


def networks(cfg, k: int = 3):
    """``k`` networks of the space spanning its parameter range under ``max_params`` (smallest .. largest)."""
    limit = cfg.constraints.max_params or float("inf")
    specs = sorted((s for s in cfg.space.enumerate() if complexity(s).params <= limit),
                   key=lambda s: complexity(s).params)
    picks = [round(i * (len(specs) - 1) / (k - 1)) for i in range(k)]
    return [specs[i] for i in picks]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="experiments/fashionmnist.yaml")
    parser.add_argument("--grid", nargs="+", default=list(GRID), help="input_size:train_subset:epochs settings")
    parser.add_argument("--networks", type=int, default=3, help="networks per setting, spanning the space")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one study worker's)")
    parser.add_argument("--workers", type=int, default=2, help="study workers the projection assumes")
    parser.add_argument("--trials", type=int, default=30, help="trained networks the projection assumes")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="overrides of the experiment file, as `resnext-nas search --set`")
    parser.add_argument("--pick", type=int, nargs="+", default=None,
                        help="only these of the --networks spanning networks (0 = the smallest)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device("cpu")
    base = load_experiment(args.experiment, args.set)
    specs_by_size = {}
    print("benchmark: the Fashion-MNIST recipe's settings, time per trained network and validation accuracy")
    print(env_header(device))
    sets = " ".join("--set " + a for a in args.set)
    print(f"recipe:      {args.experiment} {sets}; train: batch {base.train.batch_size}, lr {base.train.lr}, "
          f"{base.train.schedule}; val_fraction {base.data.val_fraction}; threads {args.threads}")
    rows = []
    for setting in args.grid:
        size, subset, epochs = (int(v) for v in setting.split(":"))
        cfg = load_experiment(args.experiment, [*args.set, f"data.input_size={size}",
                                                f"data.train_subset={subset}", f"train.epochs={epochs}"])
        splits = load_splits(cfg.data, device)
        specs = specs_by_size.setdefault(size, networks(cfg, args.networks))
        specs = [specs[i] for i in args.pick] if args.pick is not None else specs
        times, accs = [], []
        for spec in specs:
            t0 = time.perf_counter()
            _, result = build_and_train(spec, splits, dataclasses.replace(cfg.train, threads=args.threads), device,
                                        seed=0)
            seconds = time.perf_counter() - t0
            times.append(seconds)
            accs.append(result.val_accuracy)
            rows.append({"setting": setting, "network": spec.name, "params": complexity(spec).params,
                         "seconds": seconds, "train_s": result.train_time_s, "val_accuracy": result.val_accuracy})
            print(f"  {setting:<12} {spec.name:<40} params {complexity(spec).params:>7,}  {seconds:6.1f} s "
                  f"(train {result.train_time_s:6.1f} s)  val {result.val_accuracy:.4f}   load {load_average()}",
                  flush=True)
        mean_s = statistics.fmean(times)
        print(f"setting     {setting:<12} mean {mean_s:6.1f} s/network, val {min(accs):.4f}..{max(accs):.4f} "
              f"(spread {100 * (max(accs) - min(accs)):.1f} points); {args.trials} networks on {args.workers} "
              f"workers ~ {args.trials * mean_s / args.workers / 60:.1f} min", flush=True)
    print(footer())
    return rows


if __name__ == "__main__":
    main()
