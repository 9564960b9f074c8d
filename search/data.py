"""Datasets as tensors resident on the training device: split, normalise, augment, batch.

No DataLoader: a whole dataset is loaded once (from sklearn, a generator, IDX files or
torchvision's on-disk arrays), split into stratified train/val parts of the *training* set, normalised
with the train part's per-channel mean/std, resized once, and moved to the device.
Augmentation (random pad-and-crop, horizontal flip) and batching are batched tensor ops
on that device, so nothing moves between host and device during training (airbench style).

The test set of a dataset is never used by the search; ``load_test`` exists only to score
an exported network.
"""

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# the config section and the dataset table live in search.config (no torch); importable from here
from search import sources
from search.config import DATASETS, DataConfig, DatasetInfo, dataset_info  # noqa: F401
from space import SpecError

# -- datasets ------------------------------------------------------------------------------

DIGITS_TEST_FRACTION = 0.2  # digits has no test set: this stratified share is held out for it
DIGITS_TEST_SEED = 0  # fixed, so the held-out test part never depends on DataConfig.seed
SYNTHETIC_SEED = 1234  # the synthetic dataset is one fixed dataset, like the others
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 640, 256


@dataclass
class Splits:
    """Train and validation tensors on the device, normalised with the train split's stats.

    Args:
        train_x: float images, ``(N, C, S, S)``.
        train_y: int64 labels, ``(N,)``.
        val_x: float images, ``(M, C, S, S)``.
        val_y: int64 labels, ``(M,)``.
        info: the dataset's DatasetInfo.
        input_size: S.
        mean: per-channel mean of the train split (raw pixel scale) used to normalise.
        std: per-channel std of the train split used to normalise.
        pad: random-crop padding for training batches (0 = no crop).
        flip: random horizontal flips for training batches.
    """

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    info: DatasetInfo
    input_size: int
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    pad: int = 0
    flip: bool = False


# -- sources: (images (N, C, H, W) any numeric dtype on CPU, labels int64 (N,)) ------------------


def _digits(train: bool) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    from sklearn.model_selection import train_test_split  # here: ~1 s of imports for what reads no data

    idx_train, idx_test = train_test_split(
        np.arange(len(d.target)), test_size=DIGITS_TEST_FRACTION, stratify=d.target,
        random_state=DIGITS_TEST_SEED,
    )
    idx = np.sort(idx_train if train else idx_test)
    x = torch.from_numpy(d.images[idx]).float().unsqueeze(1)  # 0..16
    return x, torch.from_numpy(d.target[idx]).long()


def _synthetic(train: bool) -> tuple[Tensor, Tensor]:
    """Four classes of noisy coloured patterns: horizontal/vertical stripes, checkers, rings.

    Each image has a random frequency, phase, colour and Gaussian noise; every class is
    invariant to horizontal flips and small shifts, so the usual augmentation keeps labels.
    """
    g = torch.Generator().manual_seed(SYNTHETIC_SEED + (0 if train else 1))
    n, s = (SYNTHETIC_TRAIN if train else SYNTHETIC_TEST), DATASETS["synthetic"].size
    y = torch.arange(n) % 4
    y = y[torch.randperm(n, generator=g)]
    coords = torch.arange(s, dtype=torch.float32)
    yy, xx = coords[:, None], coords[None, :]
    freq = (2 + 2 * torch.rand(n, generator=g))[:, None, None] * (2 * math.pi / s)
    phase = (2 * math.pi * torch.rand(n, generator=g))[:, None, None]
    centre = (s / 2 + 2 * torch.randn(n, 2, generator=g))[:, :, None, None]
    radius = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2).sqrt()
    rows, cols = torch.sin(freq * yy + phase), torch.sin(freq * xx + phase)  # (n, s, 1), (n, 1, s)
    patterns = torch.stack([
        rows.expand(n, s, s),  # horizontal stripes
        cols.expand(n, s, s),  # vertical stripes
        2 * rows * cols,  # checkers
        torch.cos(freq * radius + phase),  # rings
    ], 1)  # (n, 4, s, s)
    img = patterns[torch.arange(n), y]  # (n, s, s)
    colour = 0.5 + torch.rand(n, 3, 1, 1, generator=g)
    x = img[:, None] * colour + 0.8 * torch.randn(n, 3, s, s, generator=g)
    return x, y


# name -> (torchvision class name, folder under root holding the files (torchvision's layout))
TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "mnist": ("MNIST", os.path.join("MNIST", "raw")),
    "fashionmnist": ("FashionMNIST", os.path.join("FashionMNIST", "raw")),
    "svhn": ("SVHN", ""),  # train_32x32.mat / test_32x32.mat directly in root
}


def dataset_dir(cfg: DataConfig) -> str:
    """The absolute directory where torchvision keeps (or downloads) ``cfg.dataset``'s files."""
    return os.path.abspath(os.path.join(cfg.root, TORCHVISION[cfg.dataset][1]))


def _fashionmnist(cfg: DataConfig, train: bool) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST from its gzip IDX files, read directly: torchvision's layout under ``root``, else
    Debian's ``dataset-fashion-mnist``; only when neither is there, torchvision (and its download)."""
    pair = sources.find_idx(cfg.root, train)
    if pair is None:
        package = f"nor in {sources.SYSTEM_FASHIONMNIST} (apt-get install dataset-fashion-mnist)"
        return _torchvision(cfg, train, also=package)
    x, y = sources.load_idx(*pair)
    return torch.from_numpy(x), torch.from_numpy(y)


def _torchvision(cfg: DataConfig, train: bool, also: str = "") -> tuple[Tensor, Tensor]:
    """Read a torchvision dataset's arrays (``.data``, ``.targets``/``.labels``) into tensors.

    Args:
        cfg: the data config.
        train: the training or the test set.
        also: where else the dataset was looked for, for the message when it is missing.
    """
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION[cfg.dataset][0])
    split = {"split": "train" if train else "test"} if cfg.dataset == "svhn" else {"train": train}
    try:
        ds = cls(cfg.root, download=cfg.download, **split)
    except (RuntimeError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        how = ("the download failed" if cfg.download
               else "data.download is false")
        raise SpecError(
            f"data.dataset '{cfg.dataset}': not found in {dataset_dir(cfg)}{' ' + also if also else ''} and {how} "
            f"({reason}). Put torchvision's files for it in that directory, or set "
            f"`download: true` on a machine with internet to fetch them."
        ) from e
    if cfg.dataset == "svhn":
        x, y = torch.from_numpy(ds.data), torch.from_numpy(ds.labels)  # (N, 3, 32, 32)
    elif cfg.dataset.startswith("cifar"):
        x, y = torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.as_tensor(ds.targets)  # HWC
    else:
        x, y = ds.data.unsqueeze(1), torch.as_tensor(ds.targets)  # (N, 28, 28) uint8
    return x.contiguous(), y.long()


def load_source(cfg: DataConfig, train: bool) -> tuple[Tensor, Tensor]:
    """The raw training (or test) set of ``cfg.dataset`` on the CPU, before any split.

    Args:
        cfg: the data config.
        train: the training set (which the search splits into train/val) or the test set.

    Returns:
        images ``(N, C, H, W)`` at the native size and pixel scale, labels int64 ``(N,)``.
    """
    if cfg.dataset == "digits":
        return _digits(train)
    if cfg.dataset == "synthetic":
        return _synthetic(train)
    if cfg.dataset == "fashionmnist":
        return _fashionmnist(cfg, train)
    return _torchvision(cfg, train)


# -- split, normalise, resize --------------------------------------------------------------


def split_indices(labels: Tensor | np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/val indices into the training set, then the train subset.

    The val part does not depend on ``train_subset``: a subset only thins the train part,
    so trials with different subsets are scored on the same images.

    Args:
        labels: the training set's labels.
        cfg: gives ``val_fraction``, ``train_subset`` and ``seed``.

    Returns:
        (train indices, val indices), each sorted and disjoint.
    """
    from sklearn.model_selection import train_test_split  # here: ~1 s of imports for what reads no data

    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    try:
        train, val = train_test_split(idx, test_size=cfg.val_fraction, stratify=labels,
                                      random_state=cfg.seed)
    except ValueError as e:
        raise SpecError(
            f"data.val_fraction {cfg.val_fraction} of {len(labels)} images cannot hold every "
            f"class of '{cfg.dataset}' ({e}); raise val_fraction"
        ) from None
    if cfg.train_subset is not None and cfg.train_subset < len(train):
        try:
            train, _ = train_test_split(train, train_size=cfg.train_subset,
                                        stratify=labels[train], random_state=cfg.seed)
        except ValueError as e:
            raise SpecError(
                f"data.train_subset {cfg.train_subset} cannot hold every class of "
                f"'{cfg.dataset}' ({e}); raise train_subset or use null for all images"
            ) from None
    return np.sort(train), np.sort(val)


def _to_device(x: Tensor, size: int, device: torch.device, chunk: int = 4096) -> Tensor:
    """Float copy of ``x`` on the device, resized to ``size`` (bilinear) in chunks."""
    n, c, h, w = x.shape
    out = torch.empty(n, c, size, size, device=device, dtype=torch.float32)
    for i in range(0, n, chunk):
        part = x[i:i + chunk].to(device, non_blocking=False).float()
        if (h, w) != (size, size):
            part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=size < min(h, w))
        out[i:i + chunk] = part
    return out


def _normalise_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    return mean, var.sqrt().clamp_min(1e-6)


def load_splits(cfg: DataConfig, device: torch.device) -> Splits:
    """Load the training set, split it into train/val, normalise, resize and move it once.

    Args:
        cfg: the data config.
        device: where the tensors live for the whole study.

    Raises:
        SpecError: for an unknown or missing dataset, or a split too small for its classes.
    """
    info = dataset_info(cfg.dataset)
    x, y = load_source(cfg, train=True)
    train_idx, val_idx = split_indices(y, cfg)
    train_x = _to_device(x[train_idx], cfg.size, device)
    val_x = _to_device(x[val_idx], cfg.size, device)
    mean, std = _channel_stats(train_x)  # of the images as the network sees them (resized)
    _normalise_(train_x, mean, std)
    _normalise_(val_x, mean, std)
    return Splits(
        train_x, y[train_idx].to(device), val_x, y[val_idx].to(device), info, cfg.size,
        mean=tuple(mean.tolist()), std=tuple(std.tolist()), pad=cfg.pad,
        flip=cfg.augment and info.flip,
    )


def train_statistics(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The train split's per-channel mean/std of the resized images, as ``load_splits`` normalises with.

    Computed on the CPU from the dataset's files (the same source, split and resize as a study's).
    """
    x, y = load_source(cfg, train=True)
    train_idx, _ = split_indices(y, cfg)
    mean, std = _channel_stats(_to_device(x[train_idx], cfg.size, torch.device("cpu")))
    return tuple(mean.tolist()), tuple(std.tolist())


def load_test(cfg: DataConfig, device: torch.device,
              splits: Splits | None = None) -> tuple[Tensor, Tensor]:
    """The dataset's test set, resized and normalised as ``load_splits`` does the train split.

    Only for scoring exported networks: the search never sees it.

    Args:
        cfg: the data config of the study.
        device: where to put the tensors.
        splits: the study's splits, to reuse their mean/std; None recomputes them from cfg.
    """
    stats = train_statistics(cfg) if splits is None else (splits.mean, splits.std)
    mean, std = (torch.tensor(s, device=device) for s in stats)
    x, y = load_source(cfg, train=False)
    return _normalise_(_to_device(x, cfg.size, device), mean, std), y.to(device)


# -- augmentation and batching (tensor ops on the data's device) ----------------------------


def augment(x: Tensor, pad: int, flip: bool, generator: torch.Generator | None = None,
            mode: str = "reflect") -> Tensor:
    """Random crops after padding, and random horizontal flips, for a whole batch at once.

    Each image gets its own offset in ``[0, 2 * pad]`` and flip coin; the crop and flip are
    one gather, so there is no Python loop over images.

    Args:
        x: images ``(N, C, H, W)``.
        pad: pixels of padding on each side (0 = no crop).
        flip: flip each image horizontally with probability 1/2.
        generator: random generator on ``x``'s device (None = torch's global one).
        mode: ``reflect`` or ``constant`` (zeros) padding; reflect falls back to zeros when
            ``pad`` is not smaller than the image.
    """
    if pad == 0 and not flip:
        return x
    n, c, h, w = x.shape
    dev = x.device
    if pad:
        if mode == "reflect" and pad >= min(h, w):
            mode = "constant"
        x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    rows = dy + torch.arange(h, device=dev)  # (n, h)
    cols = dx + torch.arange(w, device=dev)  # (n, w)
    if flip:
        flipped = torch.rand(n, 1, device=dev, generator=generator) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    # one gather along the flattened pixels: ~5x faster on the CPU than indexing with four
    # broadcast index tensors (benchmarks.datapath shows the before/after), and the same pixels
    width = x.shape[-1]
    flat = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of ``(x, y)``; the permutation is drawn on the data's device.

    Args:
        x: inputs, first dimension N.
        y: labels, ``(N,)``.
        batch_size: images per batch.
        shuffle: visit the images in a random order (training) or in order (evaluation).
        generator: random generator on the data's device, for the order.
        drop_last: drop the last partial batch, but only when there is at least one full
            batch (training); evaluation keeps every image.
    """
    n = len(x)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    if not shuffle:
        for i in range(0, stop, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    order = torch.randperm(n, device=x.device, generator=generator)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training steps in one pass with ``batches(..., drop_last=True)``."""
    return max(1, n // batch_size)

