"""The bottleneck block: shapes, shortcut, width formula, names, and its complexity twin."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.resnet import Bottleneck as TvBottleneck

from space.blocks import Bottleneck, block_complexity, bottleneck_width, conv_out

# (in_ch, bottleneck_ch, stride, groups, base_width, expansion)
CONFIGS = [
    (64, 16, 1, 1, 64, 4),   # in == out, stride 1: identity
    (32, 16, 1, 4, 16, 4),   # channel change at stride 1: projection
    (64, 16, 2, 2, 32, 4),   # same channels, stride 2: projection
    (24, 32, 2, 8, 4, 4),    # both change
    (16, 16, 1, 3, 8, 1),    # expansion 1, in == out: identity
    (8, 12, 2, 2, 24, 2),    # odd-ish widths, expansion 2
    (48, 16, 3, 1, 64, 2),   # stride 3
]


def _has_projection(in_ch, bch, stride, expansion) -> bool:
    return stride != 1 or in_ch != bch * expansion


@pytest.mark.parametrize("in_ch,bch,stride,groups,bw,exp", CONFIGS)
@pytest.mark.parametrize("size", [8, 9])
def test_output_shape(in_ch, bch, stride, groups, bw, exp, size):
    block = Bottleneck(in_ch, bch, stride, groups, bw, exp)
    out = block(torch.randn(2, in_ch, size, size))
    expected = (size - 1) // stride + 1  # 3x3 pad 1 and 1x1 pad 0 agree on this size
    assert out.shape == (2, bch * exp, expected, expected)
    assert conv_out(size, stride) == expected
    assert (out >= 0).all()  # ends with ReLU


@pytest.mark.parametrize("in_ch,bch,stride,groups,bw,exp", CONFIGS)
def test_projection_exactly_when_shape_changes(in_ch, bch, stride, groups, bw, exp):
    block = Bottleneck(in_ch, bch, stride, groups, bw, exp)
    if not _has_projection(in_ch, bch, stride, exp):
        assert block.downsample is None
        return
    assert isinstance(block.downsample, nn.Sequential) and len(block.downsample) == 2
    conv, bn = block.downsample
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert conv.kernel_size == (1, 1) and conv.padding == (0, 0) and conv.bias is None
    assert conv.in_channels == in_ch and conv.out_channels == bch * exp
    assert conv.stride == (stride, stride), "the projection must carry the block's stride"
    assert bn.num_features == bch * exp


@pytest.mark.parametrize("in_ch,bch,stride,groups,bw,exp", CONFIGS)
def test_stride_on_grouped_3x3_only(in_ch, bch, stride, groups, bw, exp):
    block = Bottleneck(in_ch, bch, stride, groups, bw, exp)
    assert block.conv1.kernel_size == (1, 1) and block.conv1.stride == (1, 1)
    assert block.conv2.kernel_size == (3, 3) and block.conv2.stride == (stride, stride)
    assert block.conv2.padding == (1, 1)
    assert block.conv3.kernel_size == (1, 1) and block.conv3.stride == (1, 1)
    assert block.conv2.groups == groups
    assert block.conv1.groups == 1 and block.conv3.groups == 1
    assert all(c.bias is None for c in (block.conv1, block.conv2, block.conv3))


@pytest.mark.parametrize(
    "bch,bw,groups,width",
    [
        (64, 4, 32, 128),    # resnext50 layer1: 64 * 4 / 64 = 4 per group
        (512, 4, 32, 1024),  # resnext50 layer4
        (64, 64, 8, 512),    # resnext29 8x64d stage 1
        (16, 6, 2, 2),       # 16 * 6 / 64 = 1.5 floors to 1
        (24, 5, 3, 3),       # 1.875 floors to 1
        (40, 8, 1, 5),
        (100, 3, 7, 28),     # 4.6875 -> 4
    ],
)
def test_width_formula(bch, bw, groups, width):
    assert bottleneck_width(bch, bw, groups) == width
    block = Bottleneck(64, bch, 1, groups, bw, 4)
    assert block.conv1.out_channels == width
    assert block.conv2.in_channels == block.conv2.out_channels == width
    assert block.conv3.in_channels == width and block.conv3.out_channels == bch * 4
    assert block.conv2.weight.shape == (width, width // groups, 3, 3)


@pytest.mark.parametrize("in_ch,bch,stride", [(64, 16, 1), (32, 16, 1), (64, 16, 2)])
def test_module_names(in_ch, bch, stride):
    block = Bottleneck(in_ch, bch, stride, 2, 16)
    names = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"}
    if _has_projection(in_ch, bch, stride, 4):
        names.add("downsample")
    assert {n for n, _ in block.named_children()} == names
    params = {n.split(".")[0] for n, _ in block.named_parameters()}
    assert params == names - {"relu"}


def _zero_residual_branch(block: Bottleneck) -> None:
    nn.init.zeros_(block.bn3.weight)
    nn.init.zeros_(block.bn3.bias)


def test_identity_shortcut_adds_input():
    torch.manual_seed(0)
    block = Bottleneck(64, 16, 1, 4, 16).eval()
    _zero_residual_branch(block)
    x = torch.randn(2, 64, 5, 5)
    with torch.no_grad():
        assert torch.equal(block(x.clone()), torch.relu(x))


def test_projection_shortcut_is_added():
    torch.manual_seed(0)
    block = Bottleneck(32, 16, 2, 4, 16).eval()
    _zero_residual_branch(block)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(block.downsample(x)))


def test_forward_does_not_modify_input():
    block = Bottleneck(64, 16, 1, 2, 32)
    x = torch.randn(2, 64, 4, 4)
    x0 = x.clone()
    block(x)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("in_ch,bch,stride,groups,bw", [
    (64, 64, 1, 32, 4), (256, 64, 1, 32, 4), (256, 128, 2, 32, 4), (64, 16, 1, 4, 16),
    (32, 24, 2, 3, 10), (128, 32, 1, 8, 8),
])
def test_matches_torchvision_bottleneck(in_ch, bch, stride, groups, bw):
    """Same module tree, state_dict and output as torchvision's Bottleneck (expansion 4)."""
    ours = Bottleneck(in_ch, bch, stride, groups, bw)
    downsample = None
    if _has_projection(in_ch, bch, stride, 4):
        downsample = nn.Sequential(nn.Conv2d(in_ch, bch * 4, 1, stride, bias=False), nn.BatchNorm2d(bch * 4))
    ref = TvBottleneck(in_ch, bch, stride, downsample, groups, bw)
    for m in ref.modules():  # non-trivial BN statistics so eval mode exercises them
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, in_ch, 7, 7)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), ref.eval()(x), atol=1e-6)


@pytest.mark.parametrize("in_ch,bch,stride,groups,bw,exp", CONFIGS)
@pytest.mark.parametrize("size", [7, 10])
def test_block_complexity_twin(in_ch, bch, stride, groups, bw, exp, size):
    block = Bottleneck(in_ch, bch, stride, groups, bw, exp).eval()
    cx, h, w = block_complexity(size, size, in_ch, bch, stride, groups, bw, exp)
    assert cx.params == sum(p.numel() for p in block.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = block(torch.randn(1, in_ch, size, size))
    assert cx.macs * 2 == counter.get_total_flops()
    assert (h, w) == tuple(out.shape[2:])
