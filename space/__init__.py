"""The ResNeXt design space: specs, blocks, networks (plain PyTorch), complexity and presets.

Specs, the search space, presets and the analytic complexity are plain Python. The modules
(``Bottleneck``, ``ResNeXt``, ``build_model``) need torch, so they are imported on first use
(PEP 562 ``__getattr__``): reading a spec or an experiment file does not pay for torch.
"""

from typing import TYPE_CHECKING

from space.analytic import Complexity, complexity, layer_complexity
from space.errors import SpecError
from space.presets import PRESETS, preset
from space.searchspace import Dim, SearchSpace
from space.spec import NetSpec, StageSpec, load_spec

if TYPE_CHECKING:
    from space.blocks import Bottleneck
    from space.model import ResNeXt, build_model

# the names that need torch -> the module that defines them, imported when first asked for
TORCH_NAMES = {"Bottleneck": "space.blocks", "ResNeXt": "space.model", "build_model": "space.model"}

__all__ = [
    "Bottleneck", "Complexity", "Dim", "NetSpec", "PRESETS", "ResNeXt", "SearchSpace",
    "SpecError", "StageSpec", "build_model", "complexity", "layer_complexity", "load_spec",
    "preset",
]


def __getattr__(name: str):
    """Import a torch-backed name of ``TORCH_NAMES`` on first access (``from space import build_model``)."""
    if name not in TORCH_NAMES:
        raise AttributeError(f"module 'space' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(TORCH_NAMES[name]), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value
