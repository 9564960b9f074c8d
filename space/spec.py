"""NetSpec: a frozen, validated description of one ResNeXt network.

Cardinality (``groups``) and ``base_width`` live on each stage, not on the network.
The networks of the ResNeXt paper share them across stages, and the search space
samples them that way by default, but the per-stage form is the general one (pycls
AnyNet/RegNet vary group width per stage) and costs nothing: a network-wide value is
simply repeated. It also lets the space resolve a too-small width per stage (see
``space.searchspace``) while keeping every other stage exactly as sampled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from space.analytic import bottleneck_width, complexity
from space.errors import SpecError, check_keys

STEM_STRIDE = {"cifar": 1, "imagenet": 4}  # 3x3/s1 conv; 7x7/s2 conv + 3x3/s2 maxpool

# Names: layer count -> (depths, stem kind) of the known networks of that depth (torchvision's
# ResNe(X)t-50/101/152, the paper's CIFAR ResNeXt-29), and each stem's usual input
# (in_ch, input_size, num_classes). A name spells out only what differs from these.
NAME_PATTERNS = {
    29: ((3, 3, 3), "cifar"),
    50: ((3, 4, 6, 3), "imagenet"),
    101: ((3, 4, 23, 3), "imagenet"),
    152: ((3, 8, 36, 3), "imagenet"),
}
STEM_INPUT = {"cifar": (3, 32, 10), "imagenet": (3, 224, 1000)}


def _base_width_range(stage: StageSpec) -> tuple[int, int]:
    """(lowest, highest) base_width giving ``stage`` its width: the ``d`` of its name."""
    per_group = stage.width // stage.groups
    return (-(-64 * per_group // stage.bottleneck_ch),
            -(-64 * (per_group + 1) // stage.bottleneck_ch) - 1)


def positive_int(value, where: str, fix: str = "") -> None:
    """Raise SpecError unless ``value`` is an int (not a bool) > 0; ``fix`` says how to mend it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise SpecError(f"{where} must be > 0, got {value}" + (f"; {fix}" if fix else ""))


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` bottleneck blocks; only the first carries ``stride`` and projection.

    Args:
        depth: number of blocks.
        bottleneck_ch: "planes" of torchvision; the stage outputs ``bottleneck_ch * expansion``.
        stride: stride of the first block's grouped 3x3 (and its projection).
        groups: cardinality of the grouped 3x3.
        base_width: channels per group at ``bottleneck_ch == 64``.
    """

    depth: int
    bottleneck_ch: int
    stride: int = 1
    groups: int = 1
    base_width: int = 64

    @property
    def width(self) -> int:
        return bottleneck_width(self.bottleneck_ch, self.base_width, self.groups)

    def validate(self, where: str) -> None:
        positive_int(self.depth, f"{where}.depth", "a stage needs at least one block")
        positive_int(self.bottleneck_ch, f"{where}.bottleneck_ch", "use e.g. 64")
        positive_int(self.stride, f"{where}.stride", "use 1 (keep size) or 2 (halve it)")
        positive_int(self.groups, f"{where}.groups", "use 1 for a plain ResNet block")
        positive_int(self.base_width, f"{where}.base_width", "use e.g. 4")
        if self.width == 0:
            need = -(-64 // self.bottleneck_ch)
            raise SpecError(
                f"{where}: int(bottleneck_ch * base_width / 64) = "
                f"int({self.bottleneck_ch} * {self.base_width} / 64) = 0 channels per group; "
                f"raise base_width to >= {need} or bottleneck_ch so the product is >= 64"
            )


@dataclass(frozen=True)
class NetSpec:
    """One ResNeXt network, valid by validation in ``__post_init__``.

    Args:
        stages: the stages, in order.
        stem: ``cifar`` (3x3 conv, stride 1) or ``imagenet`` (7x7/2 conv + 3x3/2 maxpool).
        stem_ch: output channels of the stem conv.
        expansion: output channels of a block = ``bottleneck_ch * expansion``.
        num_classes: outputs of the final linear layer.
        in_ch: input image channels.
        input_size: input height and width in pixels.
    """

    stages: tuple[StageSpec, ...]
    stem: str = "cifar"
    stem_ch: int = 64
    expansion: int = 4
    num_classes: int = 10
    in_ch: int = 3
    input_size: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple) or not self.stages:
            raise SpecError("stages must be a non-empty tuple of StageSpec; add at least one stage")
        if not isinstance(self.stem, str) or self.stem not in STEM_STRIDE:
            raise SpecError(
                f"stem: unknown kind '{self.stem}'; use one of {', '.join(STEM_STRIDE)}"
            )
        positive_int(self.stem_ch, "stem_ch", "use e.g. 64")
        positive_int(self.expansion, "expansion", "ResNeXt uses 4")
        positive_int(self.num_classes, "num_classes", "set it to the dataset's class count")
        positive_int(self.in_ch, "in_ch", "use 3 for RGB or 1 for grayscale")
        positive_int(self.input_size, "input_size", "use the image size, e.g. 32")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, StageSpec):
                raise SpecError(f"stages[{i}] must be a StageSpec, got {type(stage).__name__}")
            stage.validate(f"stages[{i}]")
        if self.input_size < self.total_stride:
            raise SpecError(
                f"input_size {self.input_size} shrinks below 1 pixel through a total stride of "
                f"{self.total_stride} (stem {STEM_STRIDE[self.stem]} x stages "
                f"{[s.stride for s in self.stages]}); use input_size >= {self.total_stride}, "
                "fewer stride-2 stages, or the cifar stem"
            )

    @property
    def total_stride(self) -> int:
        total = STEM_STRIDE[self.stem]
        for stage in self.stages:
            total *= stage.stride
        return total

    @property
    def out_ch(self) -> int:
        return self.stages[-1].bottleneck_ch * self.expansion

    @property
    def num_layers(self) -> int:
        """Weighted layers as in the paper's names: 3 per block + stem + fc."""
        return 3 * sum(s.depth for s in self.stages) + 2

    @property
    def name(self) -> str:
        """Short, unique name in torchvision's style, e.g. ``resnext50_32x4d``.

        ``resnext{layers}_{C}x{d}d``, then a token for each part that differs from its
        default, in this order (lists are per stage, joined by ``-``):

        - ``_d2-1`` depths, unless they are a known pattern's for the layer count
          (29: 3-3-3; 50: 3-4-6-3; 101: 3-4-23-3; 152: 3-8-36-3);
        - ``_b16-32`` bottleneck channels, unless 64, 128, 256, ...;
        - ``_stride1-1-2`` strides, unless 1, 2, 2, ...;
        - ``_s16`` stem channels, unless 64;
        - ``_imagenetstem`` / ``_cifarstem`` stem kind, unless the pattern's (imagenet for
          50, 101 and 152 layers, cifar otherwise);
        - ``_e2`` expansion, unless 4;
        - ``_in1x28x28`` input channels x size x size, unless the stem's usual input
          (3x32x32 for cifar, 3x224x224 for imagenet);
        - ``_cls100`` classes, unless the stem's usual count (10 for cifar, 1000 for imagenet).

        ``C x d`` is cardinality x base width: one pair when one C and one d fit every stage,
        else one per stage (``4x8d-8x4d``). ``d`` is the smallest base_width that gives the
        stage(s) their width, so specs whose base_widths floor to the same widths (and hash
        equal) share a name; for the presets it is their base_width.

        So the name follows from exactly what ``hash`` reads, and two specs share a name
        if and only if they share a hash: e.g. depths 2-1 and 1-2 are
        ``resnext11_1x8d_d2-1_b16-32_s8`` and ``resnext11_1x8d_d1-2_b16-32_s8``.
        """
        pattern_depths, pattern_stem = NAME_PATTERNS.get(self.num_layers, ((), "cifar"))
        stem_in_ch, stem_size, stem_classes = STEM_INPUT[self.stem]

        def join(values) -> str:
            return "-".join(str(v) for v in values)

        stages = self.stages
        ranges = [_base_width_range(s) for s in stages]
        low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
        if len({s.groups for s in stages}) == 1 and low <= high:
            card = f"{stages[0].groups}x{low}d"
        else:
            card = join(f"{s.groups}x{r[0]}d" for s, r in zip(stages, ranges, strict=True))
        name = f"resnext{self.num_layers}_{card}"
        if tuple(s.depth for s in stages) != pattern_depths:
            name += "_d" + join(s.depth for s in stages)
        if [s.bottleneck_ch for s in stages] != [64 << i for i in range(len(stages))]:
            name += "_b" + join(s.bottleneck_ch for s in stages)
        if [s.stride for s in stages] != [1 if i == 0 else 2 for i in range(len(stages))]:
            name += "_stride" + join(s.stride for s in stages)
        if self.stem_ch != 64:
            name += f"_s{self.stem_ch}"
        if self.stem != pattern_stem:
            name += f"_{self.stem}stem"
        if self.expansion != 4:
            name += f"_e{self.expansion}"
        if (self.in_ch, self.input_size) != (stem_in_ch, stem_size):
            name += f"_in{self.in_ch}x{self.input_size}x{self.input_size}"
        if self.num_classes != stem_classes:
            name += f"_cls{self.num_classes}"
        return name

    @property
    def hash(self) -> str:
        """Stable 12-hex-digit hash of the network's structure.

        Two specs that build the same modules hash equal, even if their base_width differs
        but yields the same width (``int(bottleneck_ch * base_width / 64)`` floors).
        """
        d = self.to_dict()
        for stage in d["stages"]:
            stage["width"] = bottleneck_width(
                stage["bottleneck_ch"], stage.pop("base_width"), stage["groups"]
            )
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> NetSpec:
        """Build and validate from a plain dict (as read from YAML); unknown keys are errors."""
        check_keys(data, [f.name for f in fields(cls)], "spec")
        if "stages" not in data:
            raise SpecError("spec: missing 'stages' (a list of {depth, bottleneck_ch, ...})")
        stages = data["stages"]
        if not isinstance(stages, list):
            raise SpecError(f"spec.stages must be a list of mappings, got {type(stages).__name__}")
        stage_keys = [f.name for f in fields(StageSpec)]
        parsed = []
        for i, s in enumerate(stages):
            check_keys(s, stage_keys, f"spec.stages[{i}]")
            if "depth" not in s or "bottleneck_ch" not in s:
                raise SpecError(f"spec.stages[{i}]: needs at least 'depth' and 'bottleneck_ch'")
            parsed.append(StageSpec(**s))
        return cls(**{**data, "stages": tuple(parsed)})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> NetSpec:
        return cls.from_dict(yaml.safe_load(text))


def load_spec(path: str | Path) -> NetSpec:
    """Read a NetSpec from a YAML file: a bare spec, or an exported file with a ``spec:`` key.

    An exported file also records ``complexity.params``; it is checked against the rebuilt
    spec so a file edited by hand (or written by another version) cannot silently differ.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with the spec's keys")
    if "spec" not in data:
        return NetSpec.from_dict(data)
    spec = NetSpec.from_dict(data["spec"])
    recorded = (data.get("complexity") or {}).get("params")
    if recorded is not None and recorded != complexity(spec).params:
        raise SpecError(
            f"{path}: the file records {recorded} parameters but its spec builds "
            f"{complexity(spec).params}; the spec was edited or comes from another version"
        )
    return spec
