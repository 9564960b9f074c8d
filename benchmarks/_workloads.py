"""Shared workloads of the benchmarks: networks, device-resident data and tiny study configs.

Kept in one place so every benchmark that says "the small network" or "the tiny study" means
the same thing, and so the GPU script reuses the CPU benchmarks' code paths.
"""

from __future__ import annotations

from pathlib import Path

import torch

from search.config import ExperimentConfig, experiment_from_dict
from search.data import DatasetInfo, Splits
from space import NetSpec, StageSpec


def net(cardinality: int = 4, *, stages: int = 2, stem_ch: int = 16, bottleneck_ch: int = 16,
        base_width: int = 8, depth: int = 1, input_size: int = 32, in_ch: int = 3,
        num_classes: int = 10) -> NetSpec:
    """A CIFAR-stem ResNeXt: ``stages`` stages, bottleneck channels doubling per stage.

    Args:
        cardinality: groups of every grouped 3x3 conv.
        stages: number of stages (stride 2 from the second on).
        stem_ch: stem conv output channels.
        bottleneck_ch: bottleneck channels of the first stage.
        base_width: channels per group at bottleneck_ch = 64.
        depth: blocks per stage.
        input_size: image side in pixels.
        in_ch: image channels.
        num_classes: outputs of the classifier.
    """
    return NetSpec(
        tuple(StageSpec(depth, bottleneck_ch << i, 1 if i == 0 else 2, cardinality, base_width)
              for i in range(stages)),
        stem="cifar", stem_ch=stem_ch, num_classes=num_classes, in_ch=in_ch, input_size=input_size,
    )


def random_splits(n_train: int, n_val: int, size: int, device: torch.device | str, *, in_ch: int = 3,
                  num_classes: int = 10, pad: int | None = None, flip: bool = True, seed: int = 0) -> Splits:
    """Standard-normal images and uniform labels already on ``device``, as ``load_splits`` returns.

    Throughput does not depend on the pixel values, so random data stands in for a dataset of
    the same shape without a download.

    Args:
        n_train: training images.
        n_val: validation images.
        size: image side in pixels.
        device: where the tensors live.
        in_ch: image channels.
        num_classes: label range.
        pad: random-crop padding; None = size // 8 (4 at 32 px, as CIFAR training uses).
        flip: random horizontal flips.
        seed: seed of the generated data.
    """
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, in_ch, size, size, generator=g).to(device)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, num_classes, (n,), generator=g).to(device)

    info = DatasetInfo(in_ch, num_classes, size, flip)
    return Splits(images(n_train), labels(n_train), images(n_val), labels(n_val), info, size,
                  mean=(0.0,) * in_ch, std=(1.0,) * in_ch, pad=size // 8 if pad is None else pad, flip=flip)


def tiny_study(tmp: Path, n_trials: int, *, name: str = "bench", device: str = "cpu", epochs: float = 1.0,
               sampler: str = "tpe", latency: bool = True, storage: str = "journal", **sections) -> ExperimentConfig:
    """A study over small networks on the bundled synthetic dataset, its stores under ``tmp``.

    Optuna on ``journal:tmp/optuna.journal`` (the default storage's kind) or
    ``sqlite:///tmp/optuna.db``, MLflow on ``sqlite:///tmp/mlflow.db`` (artifacts in
    ``tmp/artifacts``): the real study path, with the local stores a default config uses.

    Args:
        tmp: directory for the stores.
        n_trials: trials to complete.
        name: experiment (and study) name.
        device: train.device.
        epochs: train.epochs of every trial.
        sampler: search.sampler.
        latency: measure latency (an objective then).
        storage: Optuna storage kind, ``journal`` (the default's) or ``sqlite``.
        **sections: section -> mapping merged over the defaults (e.g. ``train={"batch_size": 64}``).
    """
    if storage not in ("journal", "sqlite"):
        raise ValueError(f"storage must be 'journal' or 'sqlite', not {storage!r}")
    optuna_url = f"journal:{tmp}/optuna.journal" if storage == "journal" else f"sqlite:///{tmp}/optuna.db"
    raw = {
        "data": {"dataset": "synthetic", "val_fraction": 0.25},
        # 738 distinct networks: few trials reuse an identical network's result, even over 50 trials
        "space": {"num_stages": [1, 2, 3], "stem_ch": [4, 8, 16], "bottleneck_ch": [4, 8, 16], "channel_mult": 2,
                  "cardinality": [1, 2, 4], "base_width": [8, 16], "depth": {"low": 1, "high": 2}},
        "objectives": ["val_accuracy", "params", "latency_ms"] if latency else ["val_accuracy", "params"],
        "search": {"n_trials": n_trials, "seed": 0, "sampler": sampler, "storage": optuna_url},
        "train": {"epochs": epochs, "batch_size": 32, "device": device},
        "latency": {"enabled": latency, "repeats": 20, "warmup": 5, "threads": 1},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "artifacts": str(Path(tmp) / "artifacts")},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return experiment_from_dict(raw, name=name)


class StoreWrites:
    """Counts a study's store writes by trial: database commits and Optuna journal appends (each an fsync).

    For a benchmark's clock with ``trial`` (the trial in progress) and ``commits``/``appends``
    dicts; ``commit`` is an SQLAlchemy ``Engine`` commit listener, ``counted_append`` wraps
    ``search.outage.SafeJournalFileBackend.append_logs`` (the backend studies write with).
    """

    trial: int
    commits: dict[int, int]
    appends: dict[int, int]

    def commit(self, conn) -> None:
        self.commits[self.trial] = self.commits.get(self.trial, 0) + 1

    def counted_append(self, append):
        def append_logs(backend, logs):
            self.appends[self.trial] = self.appends.get(self.trial, 0) + 1
            return append(backend, logs)
        return append_logs
