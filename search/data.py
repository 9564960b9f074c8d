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
    """Train and validation tensors resident on the device; ``prepare`` makes a batch of them network input.

    Args:
        train_x: images ``(N, C, S, S)`` on the source's pixel scale (``to_resident``): uint8 where
            the pixels are 8-bit, float32 otherwise; or already normalised float32 when ``normalised``.
        train_y: int64 labels, ``(N,)``.
        val_x: images ``(M, C, S, S)`` as ``train_x``.
        val_y: int64 labels, ``(M,)``.
        info: the dataset's DatasetInfo.
        input_size: S, the side of the network's input.
        mean: per-channel mean of the train split (raw pixel scale, input size) used to normalise.
        std: per-channel std of the train split used to normalise.
        pad: random-crop padding for training batches (0 = no crop).
        flip: random horizontal flips for training batches.
        normalised: ``train_x``/``val_x`` are network input already (float32, resized and
            normalised); ``prepare`` passes them through.
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
    normalised: bool = False
    _norm: dict = field(default_factory=dict, repr=False, compare=False)

    def prepare(self, x: Tensor) -> Tensor:
        """A batch of resident images as the network takes it: float32, ``(x - mean) / std`` per channel
        (a new tensor; the resident data is never changed); resized first if it is not ``input_size``.

        The same steps, in the same order, as ``load_test`` and ``search.export.Preprocessing``.
        """
        if self.normalised:
            return x
        x = resize(x.float(), self.input_size)
        key = (x.device, self.mean, self.std)  # a copy made with dataclasses.replace may have other stats
        if key not in self._norm:
            self._norm[key] = tuple(torch.tensor(v, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
                                    for v in (self.mean, self.std))
        mean, std = self._norm[key]
        return (x - mean) / std


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


def _builtin(cfg: DataConfig, train: bool) -> tuple[Tensor, Tensor]:
    if cfg.dataset == "digits":
        return _digits(train)
    if cfg.dataset == "synthetic":
        return _synthetic(train)
    if cfg.dataset == "fashionmnist":
        return _fashionmnist(cfg, train)
    return _torchvision(cfg, train)


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, np.int64))


def load_training(cfg: DataConfig) -> tuple[Tensor, Tensor, int | None]:
    """The training set of ``cfg.dataset`` on the CPU, before any split, with where its validation set starts.

    Returns:
        images ``(N, C, H, W)`` at the source's size and pixel scale (``data.channels`` applied),
        labels int64 ``(N,)``, and the index from which the images are an explicit validation
        set (a folder's ``val/``, an ``.npz``'s ``x_val``), or None: the search splits them.
    """
    if cfg.dataset in sources.FILE_SOURCES:
        images = sources.load_files(cfg)
        (x, y), val = images.train, images.val
        if val is None:
            return (*_tensors(x, y), None)
        return (*_tensors(np.concatenate([x, val[0]]), np.concatenate([y, val[1]])), len(x))
    x, y = _builtin(cfg, True)
    return _channels(x, cfg), y, None


def _channels(x: Tensor, cfg: DataConfig) -> Tensor:
    return x if cfg.channels == "auto" else torch.from_numpy(sources.convert_channels(x.numpy(), cfg.channels))


def load_source(cfg: DataConfig, train: bool) -> tuple[Tensor, Tensor]:
    """The raw training (or test) set of ``cfg.dataset`` on the CPU, before any split.

    Args:
        cfg: the data config.
        train: the training set (which the search splits into train/val; a file source's explicit
            validation images follow its training images) or the test set.

    Returns:
        images ``(N, C, H, W)`` at the native size and pixel scale, labels int64 ``(N,)``.

    Raises:
        SpecError: a missing dataset, bad files, or (``train=False``) a file source without a test set.
    """
    if train:
        return load_training(cfg)[:2]
    if cfg.dataset in sources.FILE_SOURCES:
        test = sources.load_files(cfg).test
        if test is None:
            where = (f"{cfg.path}/test/ (one subfolder per class)" if cfg.dataset == "folder"
                     else f"x_test and y_test to {cfg.path}")
            raise SpecError(f"data.dataset {cfg.dataset}: no test set; add {where} to score networks on it")
        return _tensors(*test)
    x, y = _builtin(cfg, False)
    return _channels(x, cfg), y


# -- split, normalise, resize --------------------------------------------------------------


def _too_few(labels: np.ndarray, need: int, cfg: DataConfig, what: str) -> None:
    """Refuse a class with fewer than ``need`` images, naming it."""
    counts = np.bincount(labels, minlength=cfg.info.num_classes)
    low = int(np.argmin(counts))
    n = int(counts[low])
    if n < need:
        name = cfg.info.classes[low] if cfg.info.classes else str(low)
        where = f" ({cfg.path}/{name})" if cfg.dataset == "folder" else ""
        raise SpecError(f"class {name!r}{where} has {n} image{'s' * (n != 1)}; {what} needs at "
                        f"least {need} per class: add images"
                        + (f" or give a validation set ({cfg.path}/val/ or x_val/y_val)"
                           if cfg.dataset in sources.FILE_SOURCES else ""))


def split_indices(labels: Tensor | np.ndarray, cfg: DataConfig,
                  val_start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/val indices into the training set, then the train subset.

    The val part does not depend on ``train_subset``: a subset only thins the train part,
    so trials with different subsets are scored on the same images.

    Args:
        labels: the training set's labels.
        cfg: gives ``val_fraction``, ``train_subset`` and ``seed``.
        val_start: the images from this index on are the validation set as given (a folder's
            ``val/``): no split, only the subset of the images before it.

    Returns:
        (train indices, val indices), each sorted and disjoint.
    """
    from sklearn.model_selection import train_test_split  # here: ~1 s of imports for what reads no data

    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    if val_start is not None:
        _too_few(labels[:val_start], 1, cfg, "training")
        train, val = idx[:val_start], idx[val_start:]
        if not len(val):
            raise SpecError(f"data.dataset {cfg.dataset}: the validation set ({cfg.path}) holds no images")
    else:
        _too_few(labels, 2, cfg, "a stratified train/val split")
    try:
        if val_start is None:
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


def resize(x: Tensor, size: int) -> Tensor:
    """Float ``(N, C, H, W)`` resized to ``size`` (bilinear, ``align_corners=False``, antialiased when
    shrinking); unchanged when it is that size already. ``search.export.Preprocessing`` does the same."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < min(h, w))


def _to_device(x: Tensor, size: int, device: torch.device, chunk: int = 4096) -> Tensor:
    """Float copy of ``x`` on the device, resized to ``size`` (bilinear) in chunks."""
    n, c = x.shape[:2]
    out = torch.empty(n, c, size, size, device=device, dtype=torch.float32)
    for i in range(0, n, chunk):
        out[i:i + chunk] = resize(x[i:i + chunk].to(device, non_blocking=False).float(), size)
    return out


def _normalise_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def to_resident(x: Tensor, size: int, device: torch.device, chunk: int = 4096) -> Tensor:
    """``x`` as it stays on the device for a study, at the input size ``size``.

    8-bit images (uint8) stay uint8, a quarter of float32's memory: resized (when their size is
    not ``size``) in float, then rounded to whole numbers 0..255, as an image library's resize
    gives 8-bit images. Anything else (digits' 0..16, float arrays) becomes float32, resized.
    Either way ``Splits.prepare`` normalises each batch; ``search.export.Preprocessing`` repeats
    these steps for one image.

    Args:
        x: images ``(N, C, H, W)`` on the CPU.
        size: the input size.
        device: where they go.
    """
    if x.dtype != torch.uint8:
        return _to_device(x, size, device, chunk)
    if x.shape[-2:] == (size, size):
        return x.to(device)
    out = torch.empty(len(x), x.shape[1], size, size, dtype=torch.uint8, device=device)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = round_8bit(resize(x[i:i + chunk].to(device).float(), size))
    return out


def round_8bit(x: Tensor) -> Tensor:
    """Resized 8-bit pixels (float) back to whole numbers 0..255 (half-way rounds to even, as ``torch.round``)."""
    return x.round_().clamp_(0, 255)


def resized_stats(x: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of resident images (already at the input size), as floats.

    uint8 images: in chunks, accumulated in float64 (no float copy of the set). float32 images:
    ``torch.var_mean`` of the whole tensor, as the float path always computed them.

    Args:
        x: resident images ``(N, C, S, S)`` (``to_resident``), on any device.
    """
    if x.dtype != torch.uint8:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        return tuple(mean.tolist()), tuple(var.sqrt().clamp_min(1e-6).tolist())
    c = x.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64, device=x.device)
    s2 = torch.zeros(c, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].double()
        s1 += part.sum((0, 2, 3))
        s2 += part.square().sum((0, 2, 3))
    n = max(1, len(x) * x.shape[2] * x.shape[3])
    mean = s1 / n
    std = (s2 / n - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def data_bytes(n: int, channels: int, height: int, width: int, dtype: torch.dtype = torch.uint8) -> int:
    """Bytes of ``n`` images (and their int64 labels) resident on a device."""
    return n * (channels * height * width * torch.empty((), dtype=dtype).element_size() + 8)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now: CUDA's free memory, or the host's available memory (None: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return sources.free_host_memory()


def check_fits(cfg: DataConfig, nbytes: int, device: torch.device) -> None:
    """Refuse data that would not fit on the device next to the training (before anything is recorded).

    Args:
        cfg: the data config (named in the fix).
        nbytes: bytes the train and val splits take resident (``data_bytes``).
        device: the training device.

    Raises:
        SpecError: ``nbytes`` is more than ``sources.DATA_MEMORY_SHARE`` of the device's free memory;
            the message gives both and the fix (``input_size``, ``train_subset``).
    """
    error = sources.memory_refusal(cfg, nbytes, str(device), free_memory(device))
    if error is not None:
        raise error


def _checked(cfg: DataConfig, device: torch.device) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
    """The training set and its split, refused when the split lacks a class or the data does not fit."""
    x, y, val_start = load_training(cfg)
    train_idx, val_idx = split_indices(y, cfg, val_start)
    n, dtype = len(train_idx) + len(val_idx), torch.uint8 if x.dtype == torch.uint8 else torch.float32
    check_fits(cfg, data_bytes(n, x.shape[1], cfg.size, cfg.size, dtype), device)
    return x, y, train_idx, val_idx


def check_data(cfg: DataConfig, device: torch.device) -> None:
    """Every check of ``load_splits`` (the files, the split, the device's memory), keeping nothing.

    Raises:
        SpecError: as ``load_splits``.
    """
    _checked(cfg, device)


def load_splits(cfg: DataConfig, device: torch.device) -> Splits:
    """Load the training set, split it into train/val and move it to the device once, as uint8 where it is 8-bit.

    The images are resized once (``to_resident``: 8-bit images stay uint8, a quarter of float32's
    memory); each batch is normalised with the train split's per-channel statistics
    (``Splits.prepare``) and then augmented.

    Args:
        cfg: the data config.
        device: where the tensors live for the whole study.

    Raises:
        SpecError: for an unknown or missing dataset, a split too small for its classes, or data
            that does not fit in the device's free memory.
    """
    info = cfg.info
    x, y, train_idx, val_idx = _checked(cfg, device)
    train_x, val_x = to_resident(x[train_idx], cfg.size, device), to_resident(x[val_idx], cfg.size, device)
    mean, std = resized_stats(train_x)
    return Splits(
        train_x, y[train_idx].to(device), val_x, y[val_idx].to(device), info, cfg.size,
        mean=mean, std=std, pad=cfg.pad, flip=cfg.augment and info.flip,
    )


def train_statistics(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The train split's per-channel mean/std of the resized images, as ``load_splits`` normalises with.

    Computed on the CPU from the dataset's files (the same source, split and resize as a study's).
    """
    x, y, val_start = load_training(cfg)
    train_idx, _ = split_indices(y, cfg, val_start)
    return resized_stats(to_resident(x[train_idx], cfg.size, torch.device("cpu")))


def load_test(cfg: DataConfig, device: torch.device,
              splits: Splits | None = None) -> tuple[Tensor, Tensor]:
    """The dataset's test set, made network input as ``load_splits`` and ``Splits.prepare`` make a batch (float32).

    Only for scoring exported networks: the search never sees it.

    Args:
        cfg: the data config of the study.
        device: where to put the tensors.
        splits: the study's splits, to reuse their mean/std; None recomputes them from cfg.
    """
    stats = train_statistics(cfg) if splits is None else (splits.mean, splits.std)
    mean, std = (torch.tensor(s, dtype=torch.float32, device=device) for s in stats)
    x, y = load_source(cfg, train=False)
    return _normalise_(to_resident(x, cfg.size, device).float(), mean, std), y.to(device)


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

