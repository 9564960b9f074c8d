"""Analytic complexity of a network: parameters, MACs and activations without building it.

Plain integer arithmetic that mirrors the constructors of ``space.blocks.Bottleneck`` and
``space.model.ResNeXt`` line for line (pycls style). It imports no torch, so the search
space, the experiment file and the commands that only read a study (``pareto``, ``space``,
``build``) stay fast; ``space.blocks`` and ``space.model`` re-export these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # space.spec imports bottleneck_width from here
    from space.spec import NetSpec


def bottleneck_width(bottleneck_ch: int, base_width: int, groups: int) -> int:
    """Channels of the grouped 3x3: ``int(bottleneck_ch * base_width / 64) * groups``."""
    return int(bottleneck_ch * base_width / 64) * groups


def conv_out(size: int, stride: int) -> int:
    """Output size of every conv/pool used here (3x3 pad 1, 1x1 pad 0, 7x7 pad 3, maxpool 3 pad 1)."""
    return (size - 1) // stride + 1


class Complexity(NamedTuple):
    """Analytic cost of a module: parameters, multiply-accumulates and output activations.

    A NamedTuple (immutable, and cheap to create: a study evaluates it for every sampled spec);
    ``+`` adds costs field by field and ``*`` repeats a module ``n`` times.
    """

    params: int = 0
    macs: int = 0
    acts: int = 0

    def __add__(self, other: Complexity) -> Complexity:  # type: ignore[override]
        return Complexity(self[0] + other[0], self[1] + other[1], self[2] + other[2])

    def __mul__(self, n: int) -> Complexity:  # type: ignore[override]
        return Complexity(self[0] * n, self[1] * n, self[2] * n)


def conv_cx(h: int, w: int, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1):
    """Complexity of a bias-free conv and its output size (pad = k // 2)."""
    h, w = conv_out(h, stride), conv_out(w, stride)
    params = c_out * (c_in // groups) * k * k
    return Complexity(params, params * h * w, c_out * h * w), h, w


def bn_cx(h: int, w: int, c: int) -> Complexity:
    """BatchNorm: weight and bias are parameters; running stats are buffers. MACs not counted."""
    return Complexity(2 * c, 0, c * h * w)


def block_complexity(
    h: int,
    w: int,
    in_ch: int,
    bottleneck_ch: int,
    stride: int = 1,
    groups: int = 1,
    base_width: int = 64,
    expansion: int = 4,
):
    """Complexity twin of ``Bottleneck.__init__``; returns (Complexity, h_out, w_out).

    One row per conv of the constructor, each followed by its BN (2 params per channel, one
    activation map); plain integer sums, since a study evaluates this for every sampled spec.
    """
    width = bottleneck_width(bottleneck_ch, base_width, groups)
    out_ch = bottleneck_ch * expansion
    h2, w2 = conv_out(h, stride), conv_out(w, stride)
    convs = [  # (c_in, c_out, kernel, groups, output pixels)
        (in_ch, width, 1, 1, h * w),                # conv1 + bn1
        (width, width, 3, groups, h2 * w2),         # conv2 + bn2 (carries the stride)
        (width, out_ch, 1, 1, h2 * w2),             # conv3 + bn3
    ]
    if stride != 1 or in_ch != out_ch:
        convs.append((in_ch, out_ch, 1, 1, h2 * w2))  # downsample: conv + BN
    params = macs = acts = 0
    for c_in, c_out, k, g, pixels in convs:
        weights = c_out * (c_in // g) * k * k
        params += weights + 2 * c_out
        macs += weights * pixels
        acts += 2 * c_out * pixels
    return Complexity(params, macs, acts), h2, w2


def layer_complexity(spec: NetSpec) -> list[tuple[str, Complexity, tuple[int, int, int]]]:
    """Per-layer twin of ``ResNeXt.__init__``: (name, complexity, output C/H/W) rows."""
    h = w = spec.input_size
    rows = []
    if spec.stem == "imagenet":
        cx, h, w = conv_cx(h, w, spec.in_ch, spec.stem_ch, 7, 2)
        cx += bn_cx(h, w, spec.stem_ch)
        h, w = conv_out(h, 2), conv_out(w, 2)  # maxpool: no params, MACs not counted
    else:
        cx, h, w = conv_cx(h, w, spec.in_ch, spec.stem_ch, 3, 1)
        cx += bn_cx(h, w, spec.stem_ch)
    rows.append(("stem", cx, (spec.stem_ch, h, w)))
    in_ch = spec.stem_ch
    for i, stage in enumerate(spec.stages):
        cx, h, w = block_complexity(h, w, in_ch, stage.bottleneck_ch, stage.stride,
                                    stage.groups, stage.base_width, spec.expansion)
        in_ch = stage.bottleneck_ch * spec.expansion
        if stage.depth > 1:  # the other blocks of a stage are identical: stride 1, in == out
            rest, h, w = block_complexity(h, w, in_ch, stage.bottleneck_ch, 1,
                                          stage.groups, stage.base_width, spec.expansion)
            cx += rest * (stage.depth - 1)
        rows.append((f"layer{i + 1}", cx, (in_ch, h, w)))
    fc = in_ch * spec.num_classes
    rows.append(("fc", Complexity(fc + spec.num_classes, fc, spec.num_classes),
                 (spec.num_classes, 1, 1)))
    return rows


def complexity(spec: NetSpec) -> Complexity:
    """Parameters, MACs (convs + fc, as FlopCounterMode counts / 2) and activations of a spec.

    ``params`` equals ``sum(p.numel() for p in build_model(spec).parameters())`` exactly.
    """
    total = Complexity()
    for _, cx, _ in layer_complexity(spec):
        total += cx
    return total
