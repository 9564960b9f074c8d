"""Export a Pareto point as a self-contained YAML, evaluate it, and use it without the study.

The YAML holds the NetSpec, its analytic complexity (checked when ``space.load_spec`` reads it
back), the trial's metrics, where it came from (the recipe's fingerprint among it), the
preprocessing its inputs need and the class names. ``resnext-nas evaluate --weights`` trains it
and writes a safetensors file whose metadata carries the same (spec, preprocessing, classes,
fingerprint), so the weights file alone is enough to classify images:

    model, prep = load_model("w.safetensors")
    probs = model(prep("digit.png")).softmax(1)

The preprocessing is the training data path (``search.data``), step for step: the image's
pixels on the training data's raw scale (8-bit values v -> round(v * pixel_max / 255); float
arrays as they are), resized to ``input_size`` (bilinear, ``align_corners=False``, antialiased
when shrinking, as ``torch.nn.functional.interpolate``; for 8-bit training data, rounded back to
whole numbers 0..255), then ``(x - mean) / std`` per channel with the train split's statistics of
the resized images.

Only this module's study-side functions (``export_best``, ``evaluate_exported``) import the
study machinery (optuna, mlflow); loading and running an exported network needs torch,
safetensors, PyYAML and ``space``.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from space import NetSpec, complexity
from space.errors import SpecError

if TYPE_CHECKING:
    from search.config import ExperimentConfig
    from search.data import DataConfig

WEIGHTS_FORMAT = "resnext-nas-weights/1"  # metadata of a weights file written by evaluate_exported
# the white of each dataset's raw pixel scale (what search.data feeds the network before normalising):
# sklearn's digits are 0..16 (17 grey levels), the torchvision datasets 8-bit 0..255; the synthetic
# set is float noise with no 8-bit form (None: only float arrays on its own scale are accepted)
PIXEL_MAX: dict[str, float | None] = {"digits": 16.0, "synthetic": None}
DEFAULT_PIXEL_MAX = 255.0
ONNX_ATOL = 1e-4  # largest |onnxruntime - torch| output difference an exported ONNX graph may have


def pixel_max(dataset: str) -> float | None:
    """The white of ``dataset``'s raw pixel scale (None: no 8-bit form)."""
    return PIXEL_MAX.get(dataset, DEFAULT_PIXEL_MAX)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("resnext-nas", "torch", "torchvision", "optuna", "mlflow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# -- preprocessing: what a deployment does to an image before the network sees it ------------------


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Preprocessing:
    """The input pipeline of an exported network: ``prep(image)`` is the batch the network takes.

    It reproduces ``search.data``'s training path exactly: raw pixels on the dataset's scale ->
    resize to ``input_size`` (bilinear, ``align_corners=False``, antialiased when shrinking) ->
    ``(x - mean) / std`` per channel. ``mean``/``std`` are the train split's statistics of the
    resized images, on the raw pixel scale (``Splits.mean``/``Splits.std``).

    Args:
        input_size: height and width the network takes.
        channels: image channels the network takes (1: grey, 3: RGB).
        mean: per-channel mean subtracted, on the raw pixel scale.
        std: per-channel std divided by, on the raw pixel scale.
        pixel_max: the white of the raw scale (digits 16, 8-bit datasets 255); 8-bit input
            values v become ``round(v * pixel_max / 255)``. None: the network was trained on
            float data with no 8-bit form, and only float arrays are accepted.
        classes: class names in label order (index = the network's output index).
        dataset: the dataset it was trained on.
        round_resized: the training images were 8-bit and kept so after resizing: resized pixels
            are rounded to whole numbers in 0..255 (``search.data.to_resident``).
    """

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_max: float | None = DEFAULT_PIXEL_MAX
    classes: tuple[str, ...] = ()
    dataset: str = ""
    round_resized: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.channels not in (1, 3):
            raise SpecError(f"preprocessing.channels must be 1 or 3, got {self.channels!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise SpecError(f"preprocessing: {len(self.mean)} means and {len(self.std)} stds for "
                            f"{self.channels} channels")
        if not all(s > 0 for s in self.std):
            raise SpecError(f"preprocessing.std must be positive, got {list(self.std)}")

    # -- the record --------------------------------------------------------------------------

    @property
    def pipeline(self) -> str:
        """The pipeline in words, exact enough to reimplement it in another language."""
        s = self.input_size
        eight_bit = (f"8-bit values v -> round(v * {self.pixel_max:g} / 255)" if self.pixel_max is not None
                     else "8-bit images not accepted (float data)")
        rounded = ", then round to whole numbers and clamp to 0..255" if self.round_resized else ""
        return (f"image -> {'grey (L)' if self.channels == 1 else 'RGB'} -> float32 pixels on the training "
                f"scale ({eight_bit}; float arrays as they are) -> resize to {s}x{s} if it is another size "
                f"(bilinear, align_corners=False, antialias when shrinking: torch.nn.functional.interpolate"
                f"{rounded}) -> (x - mean) / std per channel -> NCHW float32")

    def to_dict(self) -> dict:
        """The ``preprocessing`` section of an export (classes are the export's ``classes``)."""
        return {
            "pipeline": self.pipeline,
            "input_size": self.input_size,
            "channels": self.channels,
            "layout": "NCHW float32",
            "pixel_max": self.pixel_max,
            "resize": {"mode": "bilinear", "align_corners": False, "antialias": "when shrinking",
                       "round_to_8bit": self.round_resized},
            "mean": list(self.mean),
            "std": list(self.std),
            "dataset": self.dataset,
        }

    @classmethod
    def from_dict(cls, d: dict, classes=()) -> Preprocessing:
        """Read ``to_dict``'s output back (``pipeline``, ``layout``, ``resize`` are descriptive)."""
        if not isinstance(d, dict):
            raise SpecError(f"preprocessing must be a mapping, got {type(d).__name__}")
        try:
            return cls(int(d["input_size"]), int(d["channels"]), d["mean"], d["std"], d.get("pixel_max"),
                       tuple(classes or ()), d.get("dataset", ""),
                       bool((d.get("resize") or {}).get("round_to_8bit", False)))
        except KeyError as e:
            raise SpecError(f"preprocessing lacks {e.args[0]!r}") from None

    @classmethod
    def for_data(cls, data: DataConfig, mean, std) -> Preprocessing:
        """The preprocessing of a study's data config, with its train split's ``mean``/``std``."""
        info = data.info
        return cls(data.size, info.in_ch, mean, std, info.pixel_max, info.classes, data.dataset,
                   round_resized=info.pixel_max == DEFAULT_PIXEL_MAX)

    def matches(self, other: Preprocessing, tol: float = 1e-4) -> bool:
        """Same pipeline: mean and std within ``tol`` std of each other (the statistics computed on two
        devices differ in the last bits)."""
        scale = tol * np.asarray(self.std)
        return (self.input_size == other.input_size and self.channels == other.channels
                and self.pixel_max == other.pixel_max and self.round_resized == other.round_resized
                and bool(np.all(np.abs(np.subtract(self.mean, other.mean)) <= scale))
                and bool(np.all(np.abs(np.subtract(self.std, other.std)) <= scale)))

    # -- the pipeline --------------------------------------------------------------------------

    def __call__(self, image) -> Tensor:
        """The normalised batch ``(N, channels, input_size, input_size)`` float32 of ``image``.

        Args:
            image: a PIL image; a file (PNG/JPEG/... read with PIL, or ``.npy``); an array or
                tensor ``HxW``, ``HxWxC``, ``CxHxW`` or a batch ``NxCxHxW``/``NxHxWxC`` (uint8: an
                8-bit image; any other dtype: raw pixel values on the training scale); or a list
                of these (one batch).
        """
        if isinstance(image, list | tuple):
            if not image:
                raise SpecError("no images")
            return torch.cat([self(i) for i in image])
        return self.normalise(self.resize(self.pixels(image)))

    def pixels(self, image) -> Tensor:
        """``image`` as float32 ``(N, channels, H, W)`` pixels on the training scale (not resized)."""
        if isinstance(image, str | Path):
            image = read_image(image)
        if _is_pil(image):
            image = np.asarray(image.convert("L" if self.channels == 1 else "RGB"))
        x = image.detach().cpu() if isinstance(image, Tensor) else torch.from_numpy(np.array(image))
        x = self._channels(_nchw(x))
        if x.dtype == torch.uint8:
            if self.pixel_max is None:
                raise SpecError(f"this network was trained on float data ({self.dataset or 'no 8-bit form'}); "
                                "pass float arrays on its training scale, not an 8-bit image")
            x = x.float()
            if self.pixel_max != 255:
                x = torch.round(x * (self.pixel_max / 255.0))
            return x
        if x.dtype == torch.bool or x.is_complex():
            raise SpecError(f"images must be numeric, got {x.dtype}")
        return x.float()

    def _channels(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c == 4:  # RGBA: the alpha channel is not an input
            x, c = x[:, :3], 3
        if c == self.channels:
            return x
        if c == 1 and self.channels == 3:
            return x.expand(-1, 3, -1, -1)
        if c == 3 and self.channels == 1:  # luma, ITU-R 601: PIL's "L" conversion, bit for bit on 8-bit input
            if x.dtype == torch.uint8:
                r, g, b = (x[:, i:i + 1].int() for i in range(3))
                return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)
            x = x.double() if x.dtype == torch.float64 else x.float()
            return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        raise SpecError(f"an image with {c} channels cannot be fed to a network of {self.channels} channels")

    def resize(self, x: Tensor) -> Tensor:
        """Resize float ``(N, C, H, W)`` to ``input_size`` exactly as ``search.data.to_resident`` does
        (rounded back to 8-bit values when ``round_resized``)."""
        s, (h, w) = self.input_size, x.shape[-2:]
        if (h, w) == (s, s):
            return x
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=s < min(h, w))
        return x.round_().clamp_(0, 255) if self.round_resized else x

    def normalise(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel, as ``search.data._normalise_`` (in place on a copy)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return x.to(torch.float32, copy=True).sub_(mean).div_(std)


def _is_pil(obj) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(obj, Image.Image)


def _nchw(x: Tensor) -> Tensor:
    """An image or batch as ``(N, C, H, W)``: ``HxW``, ``HxWxC``, ``CxHxW``, ``NxCxHxW``, ``NxHxWxC``."""
    chans = (1, 3, 4)
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        if x.shape[0] in chans and x.shape[-1] not in chans:
            return x[None]
        if x.shape[-1] in chans:
            return x.permute(2, 0, 1)[None]
    if x.ndim == 4:
        if x.shape[1] in chans:
            return x
        if x.shape[-1] in chans:
            return x.permute(0, 3, 1, 2)
    raise SpecError(f"an image array must be HxW, HxWxC, CxHxW, NxCxHxW or NxHxWxC with C in 1, 3, 4; "
                    f"got shape {tuple(x.shape)}")


def read_image(path: str | Path):
    """A ``.npy`` array (no pickle) or an image PIL can read (PNG, JPEG, ...), loaded."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such image file")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise SpecError(f"{path}: not a readable .npy array ({e})") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError) as e:
        raise SpecError(f"{path}: not an image PIL can read, nor a .npy array ({e})") from None


# -- exporting a Pareto point ----------------------------------------------------------------------


def export_best(cfg: ExperimentConfig, how: str, out: str | Path, storage_url: str | None = None) -> dict:
    """Write the Pareto point chosen by ``how`` to ``out``; returns the written document.

    Besides the network and where it came from, the file records the preprocessing its inputs
    need (the train split's statistics are recomputed from the data, as the study computed
    them) and the class names.

    Args:
        cfg: the experiment whose study is read.
        how: ``knee``, ``max-accuracy``, ``min-latency``, ``min-params``, ``min-macs`` or a bound
            like ``params<=1e6`` (see ``search.pareto.pick``).
        out: the YAML file to write.
        storage_url: Optuna storage overriding the experiment's.
    """
    from search.data import train_statistics
    from search.errors import redact
    from search.pareto import pick
    from search.results import finished_rows, front_table, pareto_rows
    from search.storage import load_study

    study = load_study(cfg, storage_url, reading=True)
    front = pareto_rows(finished_rows(study, cfg.objectives), cfg.directions)
    table = front_table(front, cfg.objectives)
    try:
        chosen = pick(table, how, dict(zip(cfg.objectives, cfg.directions, strict=True)))
    except ValueError as e:
        raise SpecError(f"export: {e}") from None
    row = next(r for r in front if r.number == chosen["trial"])
    spec = NetSpec.from_dict(row.spec)
    cx = complexity(spec)
    try:
        prep = Preprocessing.for_data(cfg.data, *train_statistics(cfg.data))
    except SpecError as e:
        raise SpecError(f"export: the preprocessing needs the train split's statistics: {e}") from None
    doc = {
        "spec": spec.to_dict(),
        "name": spec.name,
        "hash": spec.hash,
        "complexity": {"params": cx.params, "macs": cx.macs},
        "metrics": {k: v for k, v in (row.attrs.get("metrics") or row.values).items()},
        "preprocessing": prep.to_dict(),
        "classes": list(prep.classes),
        "provenance": {
            "experiment": cfg.name,
            "study": cfg.study_name,
            "storage": redact(storage_url or cfg.storage_url),
            "trial": row.number,
            "pick": how,
            "seed": row.attrs.get("seed"),
            "threads": row.attrs.get("threads"),
            "recipe_fingerprint": study.user_attrs.get("fingerprint"),
            "study_seed": cfg.search.seed,
            "sampler": cfg.search.sampler,
            "dataset": cfg.data.dataset,
            "mlflow_run_id": row.attrs.get("mlflow_run_id"),
            "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# resnext-nas export: rebuild with space.build_model(space.load_spec(this_file)); with trained "
                   "weights,\n# search.export.load_model(this_file, weights) gives the network and its "
                   "preprocessing\n" + yaml.safe_dump(doc, sort_keys=False))
    return doc


def _read_export(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such exported network; write one with `resnext-nas export`")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not an exported YAML (binary data; a weights file ends in .safetensors)") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: not an exported network (expected a mapping)")
    return doc


def exported_provenance(path: str | Path) -> dict:
    """The ``provenance`` section of an exported YAML (empty when it has none)."""
    return _read_export(path).get("provenance") or {}


def evaluate_exported(cfg: ExperimentConfig, path: str | Path, *, epochs: float | None = None,
                      weights_out: str | Path | None = None) -> dict:
    """Retrain an exported network with its trial's seed and score it on the test set.

    The test set is touched here only, never during the search. With the trial's seed, settings
    and thread count (``resnext-nas evaluate`` sets the recorded one) on the CPU, the validation
    accuracy reproduces the trial's; the report holds both.

    Args:
        cfg: the experiment that produced the export (data and training settings).
        path: the exported YAML.
        epochs: training epochs overriding ``train.epochs`` (e.g. a longer final training).
        weights_out: save the trained weights here (safetensors; no pickle), with the spec, the
            preprocessing (this training's train-split statistics), the class names and the
            recipe fingerprint as metadata: the file alone rebuilds a usable network
            (``load_model``).
    """
    import dataclasses

    from search.data import load_splits, load_test
    from search.devices import resolve_device
    from search.objective import build_and_train
    from search.storage import fingerprint, recipe
    from search.train import evaluate
    from space import load_spec

    spec = load_spec(path)
    doc = _read_export(path)
    provenance = doc.get("provenance") or {}
    seed = provenance.get("seed") or 0
    recorded = provenance.get("recipe_fingerprint")
    current = fingerprint(recipe(cfg))
    if recorded is not None and epochs is None and recorded != current:
        raise SpecError(f"{path} was searched with another recipe than {cfg.name}'s as given now (fingerprint "
                        f"{recorded} vs {current}); evaluate it with the experiment file and "
                        "--set overrides of its study")
    train_cfg = cfg.train if epochs is None else dataclasses.replace(cfg.train, epochs=float(epochs))
    device = resolve_device(train_cfg.device)
    splits = load_splits(cfg.data, device)
    model, result = build_and_train(spec, splits, train_cfg, device, seed)
    test_x, test_y = load_test(cfg.data, device, splits)
    test_acc = evaluate(model, test_x, test_y, train_cfg.eval_batch_size, bf16=train_cfg.bf16)
    report = {"name": spec.name, "seed": seed, "epochs": train_cfg.epochs, "threads": torch.get_num_threads(),
              "val_accuracy": result.val_accuracy,
              "search_val_accuracy": (doc.get("metrics") or {}).get("val_accuracy"),
              "test_accuracy": test_acc, "test_images": len(test_y)}
    if weights_out is not None:
        save_weights(model, spec, Preprocessing.for_data(cfg.data, splits.mean, splits.std), weights_out,
                     recipe_fingerprint=recorded or current, provenance={
                         "experiment": cfg.name, "study": cfg.study_name, "trial": provenance.get("trial"),
                         "dataset": cfg.data.dataset, "seed": seed, "epochs": train_cfg.epochs,
                         "val_accuracy": result.val_accuracy, "test_accuracy": test_acc})
        report["weights"] = str(weights_out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return report


# -- using an exported network: load, classify, convert to ONNX -----------------------------------


def save_weights(model: nn.Module, spec: NetSpec, prep: Preprocessing, path: str | Path, *,
                 recipe_fingerprint: str | None = None, provenance: dict | None = None) -> None:
    """Write ``model``'s weights as safetensors, with everything ``load_model`` needs as metadata.

    Args:
        model: the trained network of ``spec``.
        spec: its NetSpec.
        prep: the preprocessing it was trained with.
        path: the .safetensors file.
        recipe_fingerprint: the fingerprint of the study's recipe.
        provenance: where the weights come from (JSON-serialisable).
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": WEIGHTS_FORMAT,
        "spec": json.dumps(spec.to_dict()),
        "hash": spec.hash,
        "name": spec.name,
        "preprocessing": json.dumps(prep.to_dict()),
        "classes": json.dumps(list(prep.classes)),
        "recipe_fingerprint": recipe_fingerprint or "",
        "provenance": json.dumps({**(provenance or {}),
                                  "saved": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                  "versions": versions()}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def weights_metadata(weights: str | Path) -> dict[str, str]:
    """The metadata of a safetensors weights file (``evaluate_exported`` writes it)."""
    from safetensors import safe_open

    weights = Path(weights)
    if not weights.is_file():
        raise SpecError(f"{weights}: no such weights file; `resnext-nas evaluate EXP.yaml best.yaml --weights "
                        f"{weights.name}` trains the network and writes it")
    try:
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a file that is not one
        raise SpecError(f"{weights}: not a safetensors file ({type(e).__name__}: {e})") from None
    if "spec" not in meta:
        raise SpecError(f"{weights}: no network spec in its metadata; it was not written by resnext-nas")
    return meta


def load_weights(weights: str | Path) -> nn.Module:
    """Rebuild a network from a safetensors file written by ``evaluate_exported`` (train mode, as built)."""
    from safetensors.torch import load_file

    from space import build_model

    spec = NetSpec.from_dict(json.loads(weights_metadata(weights)["spec"]))
    model = build_model(spec)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model


def load_model(path: str | Path, weights: str | Path | None = None) -> tuple[nn.Module, Preprocessing]:
    """A trained exported network in eval mode on the CPU, and the preprocessing its inputs need.

    ``model, prep = load_model("w.safetensors")``; ``model(prep("img.png")).softmax(1)`` are the
    class probabilities, ``prep.classes`` their names.

    Args:
        path: a weights file written by ``resnext-nas evaluate --weights`` (self-contained), or an
            exported YAML; a YAML holds no weights, so ``weights`` is then needed.
        weights: the safetensors weights of the YAML's network. Its spec must be the YAML's (same
            hash), and its preprocessing the YAML's (the same train split).

    Raises:
        SpecError: a missing or foreign file, a YAML without weights, weights of another network.
    """
    path = Path(path)
    doc = None
    if path.suffix.lower() == ".safetensors":
        if weights is not None and Path(weights) != path:
            raise SpecError(f"two weights files given ({path} and {weights}); give the weights alone, or the "
                            "export YAML and its weights")
        weights = path
    else:
        doc = _read_export(path)
        if weights is None:
            raise SpecError(f"{path} holds the network's architecture, not its trained weights: train them with "
                            f"`resnext-nas evaluate EXPERIMENT.yaml {path} --weights w.safetensors`, then pass "
                            "them too (--weights w.safetensors; load_model(path, 'w.safetensors')) or the weights "
                            "file alone")
    meta = weights_metadata(weights)
    model = load_weights(weights)
    spec_hash = NetSpec.from_dict(json.loads(meta["spec"])).hash
    prep = None
    if "preprocessing" in meta:
        prep = Preprocessing.from_dict(json.loads(meta["preprocessing"]), json.loads(meta.get("classes", "[]")))
    if doc is not None:
        from space import load_spec

        yaml_spec = load_spec(path)
        if yaml_spec.hash != spec_hash:
            raise SpecError(f"{weights} holds the weights of network {meta.get('name', '?')} (hash {spec_hash}), "
                            f"but {path} is {yaml_spec.name} (hash {yaml_spec.hash}); pass the weights "
                            "`resnext-nas evaluate` wrote for this export")
        if doc.get("preprocessing"):
            recorded = Preprocessing.from_dict(doc["preprocessing"], doc.get("classes") or ())
            if prep is None:
                prep = recorded
            elif not prep.matches(recorded):
                raise SpecError(f"{weights} was trained with other preprocessing than {path} records (mean "
                                f"{list(prep.mean)} vs {list(recorded.mean)}, std {list(prep.std)} vs "
                                f"{list(recorded.std)}): the data or its split changed; export and evaluate "
                                "again from the same study")
    if prep is None:
        raise SpecError(f"{weights} records no preprocessing (written by an older resnext-nas) and no exported "
                        "YAML with one was given; evaluate the export again to write self-contained weights")
    model.eval()
    return model, prep


def classify(model: nn.Module, prep: Preprocessing, image, top: int = 1) -> list[list[tuple[str, float]]]:
    """The ``top`` classes and probabilities of each image in ``image`` (anything ``prep`` takes).

    Returns:
        one list per image (a file or array may hold a batch), of ``(class name, probability)``,
        most probable first.
    """
    x = prep(image)
    with torch.inference_mode():
        probs = model(x).float().softmax(1)
    k = min(top, probs.shape[1])
    values, idx = probs.topk(k, dim=1)
    names = prep.classes or tuple(str(i) for i in range(probs.shape[1]))
    return [[(names[int(i)], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values, idx, strict=True)]


def export_onnx(weights: str | Path, out: str | Path, *, exported: str | Path | None = None,
                atol: float = ONNX_ATOL, threads: int = 1) -> dict:
    """Write the trained network as an ONNX graph, checked against PyTorch with onnxruntime.

    The graph takes ``input`` ``(batch, channels, size, size)`` float32 (the preprocessed batch,
    see ``Preprocessing``) and gives ``logits``; its metadata (``metadata_props``) carries the
    spec, the preprocessing, the class names and the recipe fingerprint. Before the file is
    written, onnxruntime runs the graph on a batch of 1 and of 4 random inputs and the largest
    absolute difference from PyTorch's outputs must be at most ``atol``.

    Args:
        weights: the safetensors weights (``resnext-nas evaluate --weights``).
        out: the .onnx file to write.
        exported: the export YAML the weights belong to (checked as ``load_model`` does).
        atol: the largest output difference allowed.
        threads: onnxruntime intra-op threads for the check.

    Raises:
        SpecError: onnx/onnxscript/onnxruntime missing (``pip install 'resnext-nas[onnx]'``), the
            weights do not belong to ``exported``, or the outputs differ by more than ``atol``.
    """
    from search.latency import onnx_graph, onnx_session, require_onnx

    require_onnx("--onnx")
    import onnx
    import onnxruntime as ort

    model, prep = load_model(weights) if exported is None else load_model(exported, weights)
    meta = weights_metadata(weights)
    proto = onnx.load_from_string(onnx_graph(model, prep.channels, prep.input_size))
    for key, value in {"resnext_nas.spec": meta["spec"], "resnext_nas.hash": meta.get("hash", ""),
                       "resnext_nas.preprocessing": json.dumps(prep.to_dict()),
                       "resnext_nas.classes": json.dumps(list(prep.classes)),
                       "resnext_nas.recipe_fingerprint": meta.get("recipe_fingerprint", "")}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    graph = proto.SerializeToString()
    session = onnx_session(graph, threads)
    g = torch.Generator().manual_seed(0)
    diff = 0.0
    for batch in (1, 4):
        x = torch.randn(batch, prep.channels, prep.input_size, prep.input_size, generator=g)
        with torch.inference_mode():
            want = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != want.shape:
            raise SpecError(f"the ONNX graph gives outputs of shape {got.shape} for {want.shape} from PyTorch")
        diff = max(diff, float(np.abs(got - want).max()))
    if not diff <= atol:
        raise SpecError(f"the ONNX graph's outputs differ from PyTorch's by up to {diff:.3g} (> {atol:g}); "
                        f"{out} was not written")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(graph)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"path": str(out), "max_abs_diff": diff, "atol": atol, "opset": opset, "onnxruntime": ort.__version__,
            "input": [None, prep.channels, prep.input_size, prep.input_size], "bytes": len(graph)}
