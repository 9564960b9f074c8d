"""The ResNeXt bottleneck block and its complexity twin.

The block is the final form of ../shared/seed/resnext-block-step-by-step.md, which is
torchvision's ``Bottleneck`` with ``groups``/``width_per_group``:

    1x1 reduce -> BN -> ReLU -> grouped 3x3 (stride) -> BN -> ReLU -> 1x1 expand -> BN
    (+ identity, or 1x1 conv with the stride + BN when the shape changes) -> ReLU

``block_complexity`` mirrors the constructor line for line (pycls style) so that the
parameter count and MACs are known without building a module.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


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


class Bottleneck(nn.Module):
    """ResNeXt bottleneck with torchvision's module names (conv1..3, bn1..3, downsample)."""

    def __init__(
        self,
        in_ch: int,
        bottleneck_ch: int,
        stride: int = 1,
        groups: int = 1,
        base_width: int = 64,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        width = bottleneck_width(bottleneck_ch, base_width, groups)
        out_ch = bottleneck_ch * expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


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
