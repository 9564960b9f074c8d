"""Build a NetSpec into a torchvision-compatible module.

Its analytic complexity (``complexity``, ``layer_complexity``) lives in ``space.analytic``,
which needs no torch; the names stay importable from here.
"""

from __future__ import annotations

from torch import Tensor, nn

from space.analytic import complexity, layer_complexity  # noqa: F401
from space.blocks import Bottleneck
from space.spec import NetSpec


class ResNeXt(nn.Module):
    """ResNeXt with torchvision's module names: conv1, bn1, relu, maxpool, layer1.., avgpool, fc."""

    def __init__(self, spec: NetSpec, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.spec = spec
        if spec.stem == "imagenet":
            self.conv1 = nn.Conv2d(spec.in_ch, spec.stem_ch, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(spec.in_ch, spec.stem_ch, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(spec.stem_ch)
        self.relu = nn.ReLU(inplace=True)
        in_ch = spec.stem_ch
        self.num_stages = len(spec.stages)
        for i, stage in enumerate(spec.stages):
            blocks = []
            for b in range(stage.depth):
                stride = stage.stride if b == 0 else 1
                blocks.append(
                    Bottleneck(in_ch, stage.bottleneck_ch, stride, stage.groups,
                               stage.base_width, spec.expansion)
                )
                in_ch = stage.bottleneck_ch * spec.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, spec.num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def build_model(spec: NetSpec, zero_init_residual: bool = False) -> ResNeXt:
    """Build the network a spec describes.

    Args:
        spec: a validated NetSpec.
        zero_init_residual: zero the last BN of every block so each starts as identity.
    """
    return ResNeXt(spec, zero_init_residual)

