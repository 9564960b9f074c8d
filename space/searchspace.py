"""The design space: which ResNeXt networks a study may sample.

A space is a product of integer dimensions. Each is written in YAML as a fixed value
(``4``), a list of choices (``[1, 2, 4, 8]``) or an integer range (``{low: 1, high: 4}``,
optional ``step``). Stage ``i`` (0-based) of a sampled network has
``bottleneck_ch * channel_mult**i`` bottleneck channels, ``depth_{i+1}`` blocks, stride 1 for
the first stage and 2 after (torchvision's layout), and the network-wide ``cardinality`` and
``base_width`` (as the ResNeXt paper's template: one C x d per network).

Valid by construction: when ``int(bottleneck_ch * base_width / 64)`` would be 0 channels per
group, base_width is raised to the smallest value giving one channel per group in that stage.
Numbers of stages that the input size cannot take are refused when the space is parsed.

No optuna here: ``suggest`` uses only the ``suggest_int``/``suggest_categorical`` methods of the
trial it is given.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

from space.analytic import Complexity, complexity
from space.errors import SpecError, check_keys
from space.spec import STEM_STRIDE, NetSpec, StageSpec, positive_int


@dataclass(frozen=True)
class Dim:
    """An integer dimension: the allowed values, and the step when it was given as a range."""

    choices: tuple[int, ...]
    step: int | None = None

    @classmethod
    def parse(cls, value, where: str) -> Dim:
        if isinstance(value, dict):
            check_keys(value, ["low", "high", "step"], where)
            if "low" not in value or "high" not in value:
                raise SpecError(f"{where}: a range needs 'low' and 'high', e.g. {{low: 1, high: 4}}")
            low, high, step = value["low"], value["high"], value.get("step", 1)
            for k, v in (("low", low), ("high", high), ("step", step)):
                positive_int(v, f"{where}.{k}")
            if step <= 0 or high < low:
                raise SpecError(f"{where}: need low <= high and step > 0, got {value}")
            if (high - low) % step:
                raise SpecError(f"{where}: high - low must be a multiple of step, got {value}")
            return cls(tuple(range(low, high + 1, step)), step)
        if isinstance(value, list):
            if not value:
                raise SpecError(f"{where}: empty list of choices; give at least one value")
            for i, v in enumerate(value):
                positive_int(v, f"{where}[{i}]")
            if len(set(value)) != len(value):
                raise SpecError(f"{where}: repeated choices in {value}; list each value once")
            return cls(tuple(sorted(value)))
        positive_int(value, where)
        return cls((value,))

    def to_yaml_value(self):
        if self.step is not None:
            return {"low": self.choices[0], "high": self.choices[-1], "step": self.step}
        return self.choices[0] if len(self.choices) == 1 else list(self.choices)


DIMS = ("num_stages", "stem_ch", "bottleneck_ch", "channel_mult", "cardinality", "base_width",
        "depth")
FIXED = {"stem": str, "input_size": int, "in_ch": int, "num_classes": int, "expansion": int}


@dataclass(frozen=True)
class SearchSpace:
    """Dimensions to sample plus the fixed fields every sampled NetSpec shares."""

    num_stages: Dim = Dim((3,))  # stages; each stage after the first halves the resolution
    stem_ch: Dim = Dim((16, 32))  # channels out of the stem conv
    bottleneck_ch: Dim = Dim((16, 32))  # bottleneck channels of the first stage ("planes")
    channel_mult: Dim = Dim((2,))  # bottleneck channels multiply by this at every stage
    cardinality: Dim = Dim((1, 2, 4, 8))  # groups of the 3x3 conv, one value per network
    base_width: Dim = Dim((4, 8))  # channels per group at bottleneck_ch = 64 (the "d" of 32x4d)
    depth: Dim = Dim((1, 2))  # blocks per stage (each stage sampled on its own)
    stem: str = "cifar"  # cifar (3x3 conv, stride 1) | imagenet (7x7/2 conv + 3x3/2 max-pool)
    input_size: int = 32  # pixels; taken from the data (data.input_size or the dataset's size)
    in_ch: int = 3  # image channels; taken from the dataset
    num_classes: int = 10  # classes; taken from the dataset
    expansion: int = 4  # block output channels = bottleneck channels * expansion

    def __post_init__(self) -> None:
        if not isinstance(self.stem, str) or self.stem not in STEM_STRIDE:
            raise SpecError(f"space.stem: unknown kind '{self.stem}'; use one of "
                            f"{', '.join(STEM_STRIDE)}")
        for name in FIXED:
            if name != "stem":
                positive_int(getattr(self, name), f"space.{name}")
        for n in self.num_stages.choices:
            total = STEM_STRIDE[self.stem] * 2 ** (n - 1)
            if self.input_size < total:
                raise SpecError(
                    f"space.num_stages: {n} stages need input_size >= {total} with the "
                    f"'{self.stem}' stem (stride 2 per stage after the first), got "
                    f"{self.input_size}; remove {n} from num_stages or raise input_size"
                )

    @classmethod
    def from_dict(cls, data: dict, **fixed) -> SearchSpace:
        """Parse the ``space:`` block of an experiment file.

        Args:
            data: the mapping read from YAML.
            **fixed: defaults for fixed fields the data source knows (in_ch, num_classes,
                input_size); values written in ``data`` take precedence.
        """
        check_keys(data or {}, [f.name for f in fields(cls)], "space")
        data = dict(data or {})
        kwargs = {**fixed}
        for key, value in data.items():
            if key in FIXED:
                if FIXED[key] is str and not isinstance(value, str):
                    raise SpecError(f"space.{key} must be a string, got {value!r}")
                kwargs[key] = value
            else:
                kwargs[key] = Dim.parse(value, f"space.{key}")
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return {f.name: (v.to_yaml_value() if isinstance(v := getattr(self, f.name), Dim) else v)
                for f in fields(self)}

    # -- sampling ---------------------------------------------------------------------------

    def _build(self, pick: Callable[[str, Dim], int]) -> NetSpec:
        """The one place a spec is made from dimension values; ``pick(name, dim)`` chooses."""
        n = pick("num_stages", self.num_stages)
        stem_ch = pick("stem_ch", self.stem_ch)
        bch0 = pick("bottleneck_ch", self.bottleneck_ch)
        mult = pick("channel_mult", self.channel_mult)
        groups = pick("cardinality", self.cardinality)
        base_width = pick("base_width", self.base_width)
        stages = []
        for i in range(n):
            bch = bch0 * mult**i
            bw = max(base_width, -(-64 // bch))  # at least one channel per group
            depth = pick(f"depth_{i + 1}", self.depth)
            stages.append(StageSpec(depth, bch, 1 if i == 0 else 2, groups, bw))
        return NetSpec(tuple(stages), self.stem, stem_ch, self.expansion, self.num_classes,
                       self.in_ch, self.input_size)

    def suggest(self, trial) -> NetSpec:
        """Sample a NetSpec through an Optuna trial (define-by-run)."""

        def pick(name: str, dim: Dim) -> int:
            if dim.step is not None:
                return trial.suggest_int(name, dim.choices[0], dim.choices[-1], step=dim.step)
            return trial.suggest_categorical(name, list(dim.choices))

        return self._build(pick)

    def sample(self, rng: random.Random) -> NetSpec:
        """Sample a NetSpec uniformly per dimension, without Optuna."""
        return self.from_params(self.sample_params(rng))

    def sample_params(self, rng: random.Random) -> dict[str, int]:
        """One uniform draw per dimension, as the parameters a trial records (``from_params`` rebuilds it)."""
        params: dict[str, int] = {}
        self._build(lambda name, dim: params.setdefault(name, rng.choice(dim.choices)))
        return params

    def from_params(self, params: dict) -> NetSpec:
        """Rebuild the NetSpec of a trial from its parameters (``trial.params``)."""
        return self._build(lambda name, dim: params[name])

    # -- size and enumeration ---------------------------------------------------------------

    def grid(self) -> dict[str, list[int]]:
        """Every parameter name with its values, for a grid sampler."""
        grid = {name: list(getattr(self, name).choices) for name in DIMS if name != "depth"}
        for i in range(max(self.num_stages.choices)):
            grid[f"depth_{i + 1}"] = list(self.depth.choices)
        return grid

    def _assignments(self) -> Iterator[dict[str, int]]:
        for n in self.num_stages.choices:
            names = [d for d in DIMS if d not in ("num_stages", "depth")]
            names += [f"depth_{i + 1}" for i in range(n)]
            dims = [getattr(self, d if not d.startswith("depth_") else "depth") for d in names]
            for values in itertools.product(*(d.choices for d in dims)):
                yield {"num_stages": n, **dict(zip(names, values, strict=True))}

    def enumerate(self, limit: int = 100_000) -> list[NetSpec]:
        """All distinct networks of a small space (distinct by ``NetSpec.hash``).

        Raises:
            SpecError: when the space has more than ``limit`` parameter combinations.
        """
        combos = self.num_combinations()
        if combos > limit:
            raise SpecError(f"the space has {combos} parameter combinations, more than the "
                            f"enumeration limit {limit}; use a sampler instead of a grid")
        specs = {}
        for params in self._assignments():
            spec = self.from_params(params)
            specs.setdefault(spec.hash, spec)
        return list(specs.values())

    def num_combinations(self) -> int:
        """Parameter combinations (before identical networks are merged)."""
        rest = 1
        for name in DIMS:
            if name not in ("num_stages", "depth"):
                rest *= len(getattr(self, name).choices)
        return sum(rest * len(self.depth.choices) ** n for n in self.num_stages.choices)

    def size(self) -> int:
        """Number of distinct valid networks, computed without enumerating the depths.

        Depth and stem choices never make two networks equal; only the width resolution can
        (two base_widths that floor to one width), so only the width dimensions are merged.
        """
        total = 0
        per_net = len(self.stem_ch.choices)
        for n in self.num_stages.choices:
            widths = set()
            for bch0, mult, g, bw in itertools.product(
                self.bottleneck_ch.choices, self.channel_mult.choices,
                self.cardinality.choices, self.base_width.choices,
            ):
                widths.add(tuple(
                    (bch0 * mult**i, g, StageSpec(1, bch0 * mult**i, 1, g,
                                                  max(bw, -(-64 // (bch0 * mult**i)))).width)
                    for i in range(n)
                ))
            total += per_net * len(widths) * len(self.depth.choices) ** n
        return total

    def largest(self) -> NetSpec:
        """The network of the space with the most MACs (its every dimension at the top, best stem pair)."""
        corners = [self._build(lambda name, dim, p={"stem_ch": s, "bottleneck_ch": b}: p.get(name, dim.choices[-1]))
                   for s, b in itertools.product(self.stem_ch.choices, self.bottleneck_ch.choices)]
        return max(corners, key=lambda spec: complexity(spec).macs)

    def complexity_range(self) -> tuple[Complexity, Complexity]:
        """(smallest, largest) complexity the space can produce, each field taken on its own.

        Every dimension adds parameters and MACs when it grows (more stages, blocks, channels,
        groups at a fixed base_width), with one exception: the first block drops its
        projection when ``stem_ch == bottleneck_ch * expansion``, so a larger stem_ch or
        bottleneck_ch can cost less. Each (stem_ch, bottleneck_ch) pair is therefore taken
        at the low and high corners of the other dimensions; tests check this against
        enumeration.
        """
        lows, highs = [], []
        for stem_ch, bch0 in itertools.product(self.stem_ch.choices, self.bottleneck_ch.choices):
            pair = {"stem_ch": stem_ch, "bottleneck_ch": bch0}
            lows.append(complexity(self._build(lambda name, dim, p=pair: p.get(name, dim.choices[0]))))
            highs.append(complexity(self._build(lambda name, dim, p=pair: p.get(name, dim.choices[-1]))))
        keys = Complexity._fields
        return (Complexity(*(min(getattr(c, k) for c in lows) for k in keys)),
                Complexity(*(max(getattr(c, k) for c in highs) for k in keys)))
