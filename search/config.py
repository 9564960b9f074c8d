"""Experiment files: YAML -> validated, frozen config objects.

Every section of the file is a frozen dataclass defined here, in the file's order (``data``,
``constraints``, ``search``, ``train``, ``latency``, ``tracking``); the modules that use a
section re-export it (``from search.train import TrainConfig`` works). This module reads the
file, applies ``--set`` overrides and builds the sections generically from their type hints,
so a new field needs no parser code. Unknown keys are errors naming the closest valid key.

A field's inline comment is its unit and meaning on docs/experiment-file.md, which is generated
from these dataclasses: ``python -m search.docs --write`` (a test fails while the page is stale).

Nothing here imports torch (``tests/search/test_imports.py`` checks it): commands that only read
a study, such as ``pareto``, load the experiment file without paying for it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from search.checks import check_bool, check_choice, check_device_name, check_float, check_int, set_field
from space import SearchSpace
from space.errors import SpecError, check_keys

if TYPE_CHECKING:
    import torch

# name -> (optuna direction, unit shown in tables)
OBJECTIVES = {
    "val_accuracy": ("maximize", ""),
    "params": ("minimize", ""),
    "macs": ("minimize", ""),
    "latency_ms": ("minimize", "ms"),
}
SAMPLERS = ("tpe", "nsga2", "random", "grid", "costaware")
PRUNERS = ("none", "asha", "probes")
# Optuna's journal file: safe for several local worker processes (see docs/scaling.md)
DEFAULT_STORAGE = "journal:mlruns/optuna.journal"


# -- data: the datasets and DataConfig ---------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a network needs to know about a dataset.

    Args:
        in_ch: image channels.
        num_classes: number of classes.
        size: default input size in pixels (the native size, except digits: 8 -> 16).
        flip: horizontal flips keep the label (False for digits, where a flip changes them).
        classes: the name of each class, in label order (empty: unnamed).
        pixel_max: the white of the source's pixel scale: 255 for 8-bit images (kept uint8 on the
            device, rounded to whole numbers after a resize), digits' 16, None for float data with
            no 8-bit form.
    """

    in_ch: int
    num_classes: int
    size: int
    flip: bool
    classes: tuple[str, ...] = ()
    pixel_max: float | None = 255.0

    def __post_init__(self) -> None:
        if self.classes and len(self.classes) != self.num_classes:
            raise SpecError(f"DatasetInfo: {len(self.classes)} class names for {self.num_classes} classes")


# class names in label order: torchvision's for the torchvision datasets (CIFAR-100: the fine
# labels of the archive's `meta` file), the digit for digit datasets (SVHN's label 10 is stored as 0)
DIGIT_NAMES = tuple(str(i) for i in range(10))
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
FASHIONMNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot")
SYNTHETIC_NAMES = ("horizontal_stripes", "vertical_stripes", "checkers", "rings")  # drawn by search.data._synthetic

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(1, 10, 16, False, DIGIT_NAMES, 16.0),  # sklearn's 8x8 digits (0..16), upsampled to 16
    "synthetic": DatasetInfo(3, 4, 16, True, SYNTHETIC_NAMES, None),  # generated float noise, for tests
    "cifar10": DatasetInfo(3, 10, 32, True, CIFAR10_NAMES),
    "cifar100": DatasetInfo(3, 100, 32, True, CIFAR100_NAMES),
    "mnist": DatasetInfo(1, 10, 28, False, DIGIT_NAMES),
    "fashionmnist": DatasetInfo(1, 10, 28, True, FASHIONMNIST_NAMES),
    "svhn": DatasetInfo(3, 10, 32, False, DIGIT_NAMES),
}


# data.dataset values read from data.path, whose DatasetInfo comes from the files (search.sources)
FILE_SOURCES = ("folder", "arrays")
CHANNELS = ("auto", 1, 3)


def dataset_info(name: str) -> DatasetInfo:
    """The DatasetInfo of a built-in dataset's name (a folder's or an array file's: ``DataConfig.info``).

    Args:
        name: a key of ``DATASETS``.

    Raises:
        SpecError: when the name is unknown (the message lists the valid names), or names a file
            source, whose DatasetInfo depends on its files.
    """
    check_choice(name, "data.dataset", [*DATASETS, *FILE_SOURCES])
    if name in FILE_SOURCES:
        raise SpecError(f"data.dataset {name}: its channels and classes come from its files (data.path); "
                        "read them with DataConfig(dataset=..., path=...).info")
    return DATASETS[name]


@dataclass(frozen=True)
class DataConfig:
    """Which data a study trains on and how it is split and augmented.

    Args:
        dataset: digits | synthetic | cifar10 | cifar100 | mnist | fashionmnist | svhn (built in), or
            folder | arrays (read from ``path``: docs/data.md).
        root: directory of the torchvision datasets, and of the decode cache (``root/cache``).
        download: download torchvision datasets when missing (needs internet).
        val_fraction: share of the training set held out for validation (stratified).
        train_subset: at most this many training images (stratified); None = all.
        input_size: resize images to this size in pixels; None = the dataset's size.
        augment: random pad-and-crop (+ horizontal flip where the dataset allows it).
        crop_pad: padding in pixels of the random crop; None = input_size // 8 (4 at 32).
        seed: seed of the train/val split and of the subset.
        path: ``folder``: a directory with one subfolder of images per class (optionally under
            ``train/``, ``val/``, ``test/``); ``arrays``: an ``.npz`` with ``x_train``, ``y_train``
            (optionally ``x_val``/``y_val``, ``x_test``/``y_test``, ``classes``).
        channels: image channels the network takes: auto (a folder: 1 when every image is grey;
            arrays and built-in datasets: their own), 1 (grey) or 3 (RGB).
        skip_unreadable: a folder's unreadable or truncated images are skipped and counted
            instead of refused.
    """

    dataset: str = "digits"  # digits | synthetic | cifar10 | cifar100 | mnist | fashionmnist | svhn | folder | arrays
    root: str = "data"  # directory of torchvision datasets and of the decode cache (root/cache)
    download: bool = True  # download torchvision datasets when missing
    val_fraction: float = 0.1  # share of the training set held out for validation (stratified)
    train_subset: int | None = None  # at most this many training images (stratified), None = all
    input_size: int | None = None  # pixels; None = the dataset's size (digits: 16)
    augment: bool = True  # random pad-and-crop (+ flip where the dataset allows) on device
    crop_pad: int | None = None  # pixels of random-crop padding; None = input_size // 8
    seed: int = 0  # seed of the split and subset
    path: str | None = None  # folder: a directory of class subfolders; arrays: an .npz file
    channels: int | str = "auto"  # auto | 1 | 3: image channels the network takes
    skip_unreadable: bool = False  # folder: skip (and count) unreadable images instead of refusing them

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str):
            raise SpecError(f"data.dataset must be a string, got {self.dataset!r}")
        check_choice(self.dataset, "data.dataset", [*DATASETS, *FILE_SOURCES])
        if self.dataset in FILE_SOURCES:
            if not isinstance(self.path, str) or not self.path:
                what = "a folder of class subfolders" if self.dataset == "folder" else "an .npz file"
                raise SpecError(f"data.dataset {self.dataset} needs data.path: {what}")
        elif self.path is not None:
            raise SpecError(f"data.path is read only for data.dataset folder or arrays, not {self.dataset!r}; "
                            "remove it (or use null)")
        if self.channels not in CHANNELS or isinstance(self.channels, bool):
            raise SpecError(f"data.channels must be auto, 1 or 3, got {self.channels!r}")
        check_bool(self.skip_unreadable, "data.skip_unreadable")
        if not isinstance(self.root, str) or not self.root:
            raise SpecError(f"data.root must be a non-empty directory path, got {self.root!r}")
        check_bool(self.download, "data.download")
        set_field(self, "val_fraction", check_float(
            self.val_fraction, "data.val_fraction", low=0, high=1, low_open=True, high_open=True,
            fix="use e.g. 0.1 (a validation set is needed to score trials)"))
        if self.train_subset is not None:
            check_int(self.train_subset, "data.train_subset", low=1, fix="use null for all images")
        if self.input_size is not None:
            check_int(self.input_size, "data.input_size", low=4,
                      fix="use null for the dataset's size, or e.g. 32")
        check_bool(self.augment, "data.augment")
        if self.crop_pad is not None:
            check_int(self.crop_pad, "data.crop_pad", low=0, fix="use 0 for no crop, or null")
        check_int(self.seed, "data.seed", low=0)
        if self.seed >= 2**32:
            raise SpecError(f"data.seed must be < 2**32, got {self.seed}")

    @functools.cached_property
    def info(self) -> DatasetInfo:
        """The dataset's DatasetInfo: the table's for a built-in dataset (with ``channels`` applied), the
        files' for a folder (decoded and cached the first time) or an array file (``search.sources``)."""
        if self.dataset in FILE_SOURCES:
            return self._described[0]
        info = DATASETS[self.dataset]
        return info if self.channels == "auto" else dataclasses.replace(info, in_ch=self.channels)

    @functools.cached_property
    def _described(self) -> tuple[DatasetInfo, str]:
        from search.sources import describe

        return describe(self)

    @property
    def content(self) -> str | None:
        """A hash of a file source's images, labels and class names (None for a built-in dataset)."""
        return self._described[1] if self.dataset in FILE_SOURCES else None

    def recipe(self) -> dict:
        """The data's part of a study's recipe: every setting but where the files are (root, download,
        path); a file source adds its content hash and class names, so changed files are another recipe."""
        rec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("root", "download", "path")}
        if self.dataset in FILE_SOURCES:
            rec.update(content=self.content, classes=list(self.info.classes))
        return rec

    @property
    def size(self) -> int:
        """The input size images are resized to."""
        return self.input_size if self.input_size is not None else self.info.size

    @property
    def pad(self) -> int:
        """Random-crop padding used in training (0 when augmentation is off)."""
        if not self.augment:
            return 0
        return self.crop_pad if self.crop_pad is not None else self.size // 8


# -- constraints, search -----------------------------------------------------------------------


@dataclass(frozen=True)
class ConstraintsConfig:
    """Budgets a network must meet to count: over one, it is infeasible (skipped, or off the front)."""

    max_params: float | None = None      # parameters; checked before the network is built
    max_macs: float | None = None        # multiply-accumulates per image; checked before building
    max_latency_ms: float | None = None  # median latency in ms; checked after measuring

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and v <= 0:
                raise SpecError(f"constraints.{f.name} must be > 0 or null, got {v}")


@dataclass(frozen=True)
class SearchConfig:
    """The study: its name and storage, the sampler, how many networks it trains and when it stops."""

    study_name: str | None = None    # Optuna study name; null = the experiment file's name
    sampler: str = "costaware"       # costaware | nsga2 | tpe | random | grid (docs/search-quality.md: which when)
    n_trials: int = 12               # networks trained to completion (over the whole study: resuming tops up)
    timeout_s: float | None = None   # stop starting new trials after this many seconds
    seed: int = 0                    # seeds the sampler and, with the trial number, every trial
    storage: str | None = None       # Optuna storage URL; null = journal:mlruns/optuna.journal
    max_consecutive_failures: int = 5  # stop the study after this many failed trials in a row
    heartbeat_s: int = 30            # s between heartbeats of a running trial (RDB storages); 4 missed = lost
    storage_patience_s: float = 600  # s an unreachable storage is waited for before the command stops (exit 3)
    pruner: str = "none"             # none | asha | probes: train in full only the top 1/eta at each rung (search.asha)
    min_epochs: int = 1              # epochs at the first rung; rungs at min_epochs * eta**k < train.epochs
    eta: int = 3                     # reduction factor: a rung keeps the top 1/eta
    budget_epochs: float | None = None  # training epochs over all trials; the study stops when spent; null = none

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SpecError(f"search.sampler: unknown '{self.sampler}'; use one of {', '.join(SAMPLERS)}")
        if self.n_trials <= 0:
            raise SpecError(f"search.n_trials must be > 0, got {self.n_trials}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise SpecError(f"search.timeout_s must be > 0 or null, got {self.timeout_s}")
        if self.max_consecutive_failures <= 0:
            raise SpecError("search.max_consecutive_failures must be > 0")
        if self.heartbeat_s <= 0:
            raise SpecError(f"search.heartbeat_s must be a whole number of seconds > 0, got {self.heartbeat_s}")
        if self.storage_patience_s < 0:
            raise SpecError(f"search.storage_patience_s must be >= 0 seconds, got {self.storage_patience_s}")
        if self.pruner not in PRUNERS:
            raise SpecError(f"search.pruner: unknown '{self.pruner}'; use one of {', '.join(PRUNERS)}")
        if self.min_epochs < 1:
            raise SpecError(f"search.min_epochs must be a whole number of epochs >= 1, got {self.min_epochs}")
        if self.eta < 2:
            raise SpecError(f"search.eta must be an integer >= 2, got {self.eta}")
        if self.budget_epochs is not None and self.budget_epochs <= 0:
            raise SpecError(f"search.budget_epochs must be > 0 or null, got {self.budget_epochs}")
        if self.pruner != "none" and self.sampler in ("nsga2", "grid"):
            raise SpecError(f"search.pruner {self.pruner} with search.sampler {self.sampler}: "
                            + ("NSGA-II ignores stopped trials (they neither count towards a generation nor "
                               "inform it), so pruning only spends epochs it learns nothing from"
                               if self.sampler == "nsga2" else "a grid trains every network anyway")
                            + "; use sampler tpe or random with the pruner, or pruner none")


# -- train, latency ----------------------------------------------------------------------------

SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """How each trial's network is trained.

    Args:
        epochs: passes over the training split; fractional values allowed.
        seconds: training wall-clock budget; stops at whichever of epochs/seconds comes first.
        batch_size: images per step.
        lr: peak learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: L2 penalty on conv and linear weights (not on BN parameters or biases).
        label_smoothing: of the cross-entropy loss.
        schedule: onecycle | cosine | constant.
        warmup: fraction of the budget spent rising linearly to ``lr`` (onecycle only).
        device: auto | cpu | cuda | cuda:N.
        bf16: bf16 autocast on CUDA (ignored on the CPU).
        channels_last: NHWC memory format for the model and its inputs: true, false, or auto
            (on CUDA, off on the CPU: on an H100 NHWC trained 1.1-2.0x faster than NCHW at every
            cardinality and group width measured, fp32 and bf16; docs/benchmarks.md). ``nhwc``
            resolves it for a device.
        eval_batch_size: images per validation batch.
        zero_init_residual: zero the last BN of every block so each starts as identity.
        threads: torch CPU threads of each worker process, set by the entry points
            (``search.devices.tune_process``) and recorded with every trial; None = the cores
            the worker owns. Not part of the recipe: a resume may change the worker count.
    """

    epochs: float = 1.0  # passes over the training split; fractional allowed
    seconds: float | None = None  # training budget in s; stops at whichever of epochs/seconds first
    batch_size: int = 128  # images per step
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum
    weight_decay: float = 5e-4  # on conv/linear weights
    label_smoothing: float = 0.1  # of the cross-entropy targets
    schedule: str = "onecycle"  # onecycle | cosine | constant
    warmup: float = 0.2  # fraction of the budget spent warming up (onecycle)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool | str = "auto"  # NHWC memory format: true | false | auto (on CUDA, off on the CPU)
    eval_batch_size: int = 512  # images per validation batch
    zero_init_residual: bool = True  # each block starts as identity
    threads: int | None = None  # torch CPU threads of a worker; null = the cores it owns (cores / workers)

    def __post_init__(self) -> None:
        set_field(self, "epochs", check_float(self.epochs, "train.epochs", low=0, low_open=True,
                                         fix="use e.g. 1 or 0.5"))
        if self.seconds is not None:
            set_field(self, "seconds", check_float(self.seconds, "train.seconds", low=0, low_open=True,
                                              fix="use null for no time budget"))
        check_int(self.batch_size, "train.batch_size", low=1, fix="use e.g. 128")
        set_field(self, "lr", check_float(self.lr, "train.lr", low=0, low_open=True, fix="use e.g. 0.05"))
        set_field(self, "momentum", check_float(self.momentum, "train.momentum", low=0, high=1,
                                           high_open=True, fix="use e.g. 0.9"))
        check_bool(self.nesterov, "train.nesterov")
        if self.nesterov and self.momentum == 0:
            raise SpecError("train.nesterov needs momentum > 0; set momentum (e.g. 0.9) or "
                            "nesterov: false")
        set_field(self, "weight_decay", check_float(self.weight_decay, "train.weight_decay", low=0,
                                               fix="use e.g. 5e-4, or 0 for none"))
        set_field(self, "label_smoothing", check_float(
            self.label_smoothing, "train.label_smoothing", low=0, high=1, high_open=True,
            fix="use e.g. 0.1, or 0 for none"))
        check_choice(self.schedule, "train.schedule", SCHEDULES)
        set_field(self, "warmup", check_float(self.warmup, "train.warmup", low=0, high=1, high_open=True,
                                         fix="use e.g. 0.2"))
        check_device_name(self.device, "train.device")
        check_bool(self.bf16, "train.bf16")
        if self.channels_last != "auto" and not isinstance(self.channels_last, bool):
            raise SpecError(f"train.channels_last must be auto, true or false, got {self.channels_last!r}")
        check_int(self.eval_batch_size, "train.eval_batch_size", low=1, fix="use e.g. 512")
        check_bool(self.zero_init_residual, "train.zero_init_residual")
        if self.threads is not None:
            check_int(self.threads, "train.threads", low=1, fix="use null for the cores this worker owns")

    def nhwc(self, device: torch.device | str) -> bool:
        """Whether networks and inputs are channels_last on ``device`` (a device, its name or its type)."""
        if self.channels_last == "auto":
            return str(device).split(":")[0] == "cuda"  # torch.device("cuda:1") prints as cuda:1
        return self.channels_last


BACKENDS = ("torch", "onnxruntime")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx's exporter needs onnx + onnxscript
ONNX_INSTALL = "pip install 'resnext-nas[onnx]'"


def missing_onnx_packages(packages: tuple[str, ...] = ONNX_PACKAGES) -> list[str]:
    """The packages of ``packages`` that are not installed."""
    return [p for p in packages if importlib.util.find_spec(p) is None]


def require_onnx(what: str, packages: tuple[str, ...] = ONNX_PACKAGES) -> None:
    """Raise SpecError naming the install command when a package ``what`` needs is missing."""
    missing = missing_onnx_packages(packages)
    if missing:
        raise SpecError(f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                        f"installed: {ONNX_INSTALL}")


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured.

    Args:
        enabled: measure latency at all (the caller skips ``measure_latency`` when false).
        batch_size: images per forward pass.
        warmup: untimed forward passes first.
        repeats: timed forward passes; their median is the figure (interleaved: their 10th
            percentile over the reference's).
        threads: torch CPU threads during a CPU measurement (restored afterwards).
        interleave: on the CPU (torch backend), time each pass beside a pass of a fixed reference
            network and report the network's 10th-percentile pass over the reference's, times the
            reference's latency measured once when the study was made: a slowdown of the whole
            machine that outlasts a pass slows both alike and cancels (``search.latency``).
        device: ``train`` (the training device) or cpu | cuda | cuda:N.
        backend: ``torch`` (the module) or ``onnxruntime`` (its ONNX graph on onnxruntime's CPU
            execution provider; needs ``pip install 'resnext-nas[onnx]'`` and a CPU device).
    """

    enabled: bool = True  # measure inference latency
    batch_size: int = 1  # images per forward pass
    warmup: int = 5  # untimed forward passes
    repeats: int = 20  # timed forward passes; median reported (interleaved: p10 over the reference's)
    threads: int = 1  # torch CPU threads during measurement (restored after)
    interleave: bool = True  # CPU: each pass beside a reference network's (machine slowdowns cancel)
    device: str = "train"  # "train" = the training device, or cpu | cuda | cuda:N
    backend: str = "torch"  # torch | onnxruntime (the exported ONNX graph, CPU)

    def __post_init__(self) -> None:
        check_bool(self.enabled, "latency.enabled")
        check_int(self.batch_size, "latency.batch_size", low=1, fix="use 1 for per-image latency")
        check_int(self.warmup, "latency.warmup", low=0, fix="use e.g. 5")
        check_int(self.repeats, "latency.repeats", low=1, fix="use e.g. 20")
        check_int(self.threads, "latency.threads", low=1, fix="use 1 for a stable measurement")
        check_bool(self.interleave, "latency.interleave")
        check_device_name(self.device, "latency.device", extra=("train",))
        check_choice(self.backend, "latency.backend", BACKENDS)
        if self.backend == "onnxruntime":
            if self.device.startswith("cuda"):
                raise SpecError(f"latency.backend onnxruntime measures on the CPU, but latency.device is "
                                f"{self.device!r}; use latency.device: cpu, or backend: torch for the GPU")
            require_onnx("latency.backend onnxruntime")

    def resolve(self, train_device: torch.device) -> torch.device:
        """The device latency is measured on: ``train_device`` for ``train``, else ``device`` resolved."""
        from search.devices import resolve_device  # imports torch: only a study's start needs it

        return train_device if self.device == "train" else resolve_device(self.device)


# -- tracking, and the experiment --------------------------------------------------------------


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow records the study's runs, metrics and artifacts."""

    enabled: bool = True                            # log to MLflow
    uri: str = "sqlite:///mlruns/mlflow.db"         # MLflow tracking URI (database or http server)
    artifacts: str = "mlruns/artifacts"             # artifact root for new MLflow experiments
    experiment: str | None = None                   # MLflow experiment; null = the experiment file's name


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment file, validated."""

    name: str
    data: DataConfig
    space: SearchSpace
    objectives: tuple[str, ...]
    constraints: ConstraintsConfig
    search: SearchConfig
    train: TrainConfig
    latency: LatencyConfig
    tracking: TrackingConfig
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    source: str | None = field(default=None, compare=False)  # the file it was read from; None: built from a dict

    @property
    def study_name(self) -> str:
        return self.search.study_name or self.name

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    @property
    def storage_url(self) -> str:
        return self.search.storage or DEFAULT_STORAGE


SECTIONS = {
    "data": DataConfig, "constraints": ConstraintsConfig, "search": SearchConfig,
    "train": TrainConfig, "latency": LatencyConfig, "tracking": TrackingConfig,
}
TOP_KEYS = ["data", "space", "objectives", "constraints", "search", "train", "latency", "tracking"]
DEFAULT_OBJECTIVES = ("val_accuracy", "params", "latency_ms")


def _coerce(value, hint, where: str):
    """Check ``value`` against a simple type hint (int, float, str, bool, X | None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) > 1:  # e.g. bool | str: the section's own checks say which values
            if not isinstance(value, tuple(rest)):
                raise SpecError(f"{where} must be {' or '.join(a.__name__ for a in rest)}, got {value!r}")
            return value
        (hint,) = rest
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e6 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise SpecError(f"{where} must be {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def parse_section(cls, data, where: str):
    """Build the frozen dataclass ``cls`` from a mapping, checking keys and types.

    Args:
        cls: a dataclass whose fields have simple type hints.
        data: the mapping read from YAML (None means all defaults).
        where: section name used in error messages.
    """
    data = {} if data is None else data
    check_keys(data, [f.name for f in dataclasses.fields(cls)], where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``--set section.key=value`` (value read as YAML) to the raw mapping."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise SpecError(f"--set expects section.key=value, got '{assignment}'")
    *parents, leaf = key.strip().split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {key}: '{p}' is not a section")
    node[leaf] = yaml.safe_load(value)


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping; syntax errors name the file, line and column."""
    if not path.is_file():
        raise SpecError(f"{path}: no such experiment file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise SpecError(
            f"{path}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {e.problem}"
            + (f" ({e.context})" if e.context else "")
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of sections ({', '.join(TOP_KEYS)})")
    return data


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment file.

    Args:
        path: the YAML file.
        overrides: ``section.key=value`` strings applied before validation.
    """
    path = Path(path)
    raw = read_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return dataclasses.replace(experiment_from_dict(raw, name=path.stem), source=str(path))


def experiment_from_dict(raw: dict, name: str) -> ExperimentConfig:
    check_keys(raw, TOP_KEYS, "experiment")
    sections = {k: parse_section(cls, raw.get(k), k) for k, cls in SECTIONS.items()}
    data: DataConfig = sections["data"]
    info = data.info
    known = {"in_ch": info.in_ch, "num_classes": info.num_classes,
             "input_size": data.input_size or info.size}
    space_raw = raw.get("space") or {}
    for key, value in known.items():
        if key in space_raw and space_raw[key] != value:
            raise SpecError(f"space.{key} is {space_raw[key]} but dataset '{data.dataset}' gives {value}; "
                            f"remove space.{key} (it is taken from the data)"
                            + (" or set data.input_size" if key == "input_size" else ""))
    space = SearchSpace.from_dict(space_raw, **known)

    objectives = raw.get("objectives", list(DEFAULT_OBJECTIVES))
    if not isinstance(objectives, list) or not objectives:
        raise SpecError(f"objectives must be a non-empty list from {', '.join(OBJECTIVES)}")
    for o in objectives:
        if o not in OBJECTIVES:
            check_keys({o: None}, OBJECTIVES, "objectives")
    if len(set(objectives)) != len(objectives):
        raise SpecError(f"objectives: repeated entries in {objectives}")
    cfg = ExperimentConfig(name, data, space, tuple(objectives), raw=raw, **{
        k: v for k, v in sections.items() if k != "data"})
    if cfg.search.pruner != "none" and cfg.search.min_epochs >= cfg.train.epochs:
        raise SpecError(f"search.pruner {cfg.search.pruner} needs search.min_epochs ({cfg.search.min_epochs}) "
                        f"below train.epochs ({cfg.train.epochs:g}): there is no rung to stop a trial at; "
                        "lower min_epochs")
    needs_latency = "latency_ms" in cfg.objectives or cfg.constraints.max_latency_ms is not None
    if needs_latency and not cfg.latency.enabled:
        raise SpecError("latency.enabled is false but latency_ms is an objective or constraint; "
                        "enable latency or drop it from objectives/constraints")
    return cfg
