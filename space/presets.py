"""Named networks (a name -> constructor table, as pycls builders and timm's registry)."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from space.errors import SpecError
from space.spec import NetSpec, StageSpec


def _imagenet(depths: tuple[int, ...], groups: int, base_width: int) -> NetSpec:
    stages = tuple(
        StageSpec(d, 64 << i, 1 if i == 0 else 2, groups, base_width) for i, d in enumerate(depths)
    )
    return NetSpec(stages, stem="imagenet", stem_ch=64, num_classes=1000, input_size=224)


def _cifar(groups: int, base_width: int) -> NetSpec:
    """ResNeXt-29 of the paper: 3 stages of 3 blocks, bottleneck 64/128/256, CIFAR stem."""
    stages = tuple(StageSpec(3, 64 << i, 1 if i == 0 else 2, groups, base_width) for i in range(3))
    return NetSpec(stages, stem="cifar", stem_ch=64, num_classes=10, input_size=32)


PRESETS: dict[str, Callable[[], NetSpec]] = {
    "resnext50_32x4d": lambda: _imagenet((3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": lambda: _imagenet((3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": lambda: _imagenet((3, 4, 23, 3), 64, 4),
    "resnext29_8x64d": lambda: _cifar(8, 64),
    "resnext29_16x64d": lambda: _cifar(16, 64),
}


def preset(name: str) -> NetSpec:
    """The NetSpec of a named network; the ImageNet ones are torchvision's exactly."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SpecError(f"unknown preset '{name}'{hint}; valid names: {', '.join(PRESETS)}")
    return PRESETS[name]()
