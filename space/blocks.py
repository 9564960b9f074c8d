"""The ResNeXt bottleneck block.

The block is the final form of ../shared/seed/resnext-block-step-by-step.md, which is
torchvision's ``Bottleneck`` with ``groups``/``width_per_group``:

    1x1 reduce -> BN -> ReLU -> grouped 3x3 (stride) -> BN -> ReLU -> 1x1 expand -> BN
    (+ identity, or 1x1 conv with the stride + BN when the shape changes) -> ReLU

``space.analytic.block_complexity`` mirrors the constructor line for line (pycls style) so
that the parameter count and MACs are known without building a module (or importing torch).
"""

from __future__ import annotations

from torch import Tensor, nn

# the complexity twin lives in space.analytic (no torch); its names stay importable from here
from space.analytic import Complexity, block_complexity, bn_cx, bottleneck_width, conv_cx, conv_out  # noqa: F401


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

