"""The ResNeXt design space: specs, blocks, networks, complexity and presets (pure PyTorch)."""

from space.blocks import Bottleneck, Complexity
from space.errors import SpecError
from space.model import ResNeXt, build_model, complexity, layer_complexity
from space.presets import PRESETS, preset
from space.searchspace import Dim, SearchSpace
from space.spec import NetSpec, StageSpec, load_spec

__all__ = [
    "Bottleneck", "Complexity", "Dim", "NetSpec", "PRESETS", "ResNeXt", "SearchSpace",
    "SpecError", "StageSpec", "build_model", "complexity", "layer_complexity", "load_spec",
    "preset",
]
