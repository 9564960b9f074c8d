"""build_model and the analytic complexity against the built module, FlopCounterMode and torchvision."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from space import (
    Bottleneck,
    NetSpec,
    SearchSpace,
    StageSpec,
    build_model,
    complexity,
    layer_complexity,
    preset,
)
from space.searchspace import Dim

SPACES = {
    "default": SearchSpace(),
    "imagenet_gray_33": SearchSpace(
        num_stages=Dim((2, 3, 4)), stem_ch=Dim((8, 24)), bottleneck_ch=Dim((8, 12)), cardinality=Dim((1, 3)),
        base_width=Dim((2, 16)), stem="imagenet", input_size=33, in_ch=1, num_classes=7, expansion=2,
    ),
    "cifar_17_exp1": SearchSpace(
        num_stages=Dim((1, 2, 3)), stem_ch=Dim((8, 16)), bottleneck_ch=Dim((8, 16)),
        channel_mult=Dim((1, 2, 3)), cardinality=Dim((1, 2, 4)), base_width=Dim((1, 8)), depth=Dim((1, 3)),
        input_size=17, expansion=1,
    ),
}


def random_spec(rng: random.Random) -> NetSpec:
    """A valid spec drawn directly (not through a SearchSpace): per-stage groups, base_width,
    bottleneck channels and strides (including 3 and a stride-2 first stage) vary freely."""
    stages = []
    for i in range(rng.randint(1, 4)):
        bch = rng.choice([4, 6, 8, 12, 16, 24])
        bw = max(rng.choice([1, 3, 4, 7, 16, 40]), -(-64 // bch))
        stride = rng.choice([1, 2, 2, 3]) if i else rng.choice([1, 1, 2])
        stages.append(StageSpec(rng.randint(1, 2), bch, stride, rng.choice([1, 2, 3, 4, 8]), bw))
    stem = rng.choice(["cifar", "imagenet"])
    total = 4 if stem == "imagenet" else 1
    for s in stages:
        total *= s.stride
    return NetSpec(
        tuple(stages), stem=stem, stem_ch=rng.choice([3, 8, 16, 24]), expansion=rng.choice([1, 2, 4]),
        num_classes=rng.randint(1, 12), in_ch=rng.choice([1, 3]),
        input_size=max(total, rng.randint(5, 40)),
    )


def mixed_specs(n: int, seed: int) -> list[NetSpec]:
    """``n`` specs: half from the SPACES, half drawn directly by ``random_spec``."""
    rng = random.Random(seed)
    spaces = list(SPACES.values())
    return [spaces[i % len(spaces)].sample(rng) if i % 2 else random_spec(rng) for i in range(n)]


HAND_SPECS = [
    # per-stage groups and base widths, odd input size, grayscale
    NetSpec((StageSpec(1, 16, 1, 2, 16), StageSpec(2, 24, 2, 3, 11), StageSpec(1, 32, 2, 8, 2)),
            stem_ch=8, expansion=2, num_classes=5, in_ch=1, input_size=33),
    # imagenet stem at the smallest input its stride allows: 1x1 maps from the stem on
    NetSpec((StageSpec(2, 8, 1, 1, 64), StageSpec(1, 8, 2, 4, 8)), stem="imagenet", stem_ch=16,
            input_size=8),
    # stem_ch == bottleneck_ch * expansion: the first block has an identity shortcut
    NetSpec((StageSpec(2, 16, 1, 4, 4),), stem_ch=64, input_size=9),
]


def _forward_backward(spec: NetSpec) -> None:
    torch.manual_seed(0)
    model = build_model(spec).train()
    x = torch.randn(2, spec.in_ch, spec.input_size, spec.input_size)
    out = model(x)
    assert out.shape == (2, spec.num_classes)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("spec", mixed_specs(20, seed=1) + HAND_SPECS, ids=lambda s: f"{s.name}-{s.hash}")
def test_valid_specs_build_forward_backward(spec):
    _forward_backward(spec)


def test_specs_cover_the_requested_variety():
    specs = mixed_specs(20, seed=1) + HAND_SPECS
    assert {s.stem for s in specs} == {"cifar", "imagenet"}
    assert {s.expansion for s in specs} == {1, 2, 4}
    assert {1, 3} <= {s.in_ch for s in specs}
    assert {17, 33} <= {s.input_size for s in specs}
    assert any(len({st.groups for st in s.stages}) > 1 for s in specs)


def test_module_layout_follows_spec():
    spec = HAND_SPECS[0]
    model = build_model(spec)
    top = [n for n, _ in model.named_children()]
    assert top == ["conv1", "maxpool", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
    in_ch = spec.stem_ch
    for i, st in enumerate(spec.stages):
        layer = getattr(model, f"layer{i + 1}")
        assert len(layer) == st.depth
        for b, block in enumerate(layer):
            assert isinstance(block, Bottleneck)
            assert block.conv2.stride == ((st.stride,) * 2 if b == 0 else (1, 1))
            assert block.conv2.groups == st.groups and block.conv1.out_channels == st.width
            projection = b == 0 and (st.stride != 1 or in_ch != st.bottleneck_ch * spec.expansion)
            assert (block.downsample is not None) == projection
            in_ch = st.bottleneck_ch * spec.expansion
    assert model.fc.in_features == spec.out_ch and model.fc.out_features == spec.num_classes


def test_zero_init_residual():
    model = build_model(HAND_SPECS[0], zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert blocks and all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for b in blocks)


# -- analytic complexity == measured ----------------------------------------------------------


def _measure(spec: NetSpec):
    """(params, flops, activations, per-layer output shapes) of the built model, batch 1, eval."""
    model = build_model(spec).eval()
    acts, shapes = [], {}
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o.numel()))
             for m in model.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)]
    for name in ["maxpool"] + [f"layer{i + 1}" for i in range(len(spec.stages))] + ["fc"]:
        hooks.append(getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, spec.in_ch, spec.input_size, spec.input_size))
    for h in hooks:
        h.remove()
    params = {name: sum(p.numel() for p in mod.parameters()) for name, mod in model.named_children()}
    return model, params, counter.get_total_flops(), sum(acts), shapes


@pytest.mark.parametrize("spec", mixed_specs(40, seed=2) + HAND_SPECS, ids=lambda s: f"{s.name}-{s.hash}")
def test_analytic_complexity_equals_measured(spec):
    model, params, flops, acts, shapes = _measure(spec)
    cx = complexity(spec)
    assert cx.params == sum(p.numel() for p in model.parameters())
    assert 2 * cx.macs == flops
    assert cx.acts == acts  # outputs of every conv, BN and the linear layer

    rows = layer_complexity(spec)
    assert [r[0] for r in rows] == ["stem"] + [f"layer{i + 1}" for i in range(len(spec.stages))] + ["fc"]
    for field in ("params", "macs", "acts"):
        assert sum(getattr(r[1], field) for r in rows) == getattr(cx, field)
    by_name = {name: (c, shape) for name, c, shape in rows}
    assert by_name["stem"][0].params == params["conv1"] + params["bn1"]
    assert by_name["stem"][1] == shapes["maxpool"]
    for i in range(len(spec.stages)):
        name = f"layer{i + 1}"
        assert by_name[name][0].params == params[name]
        assert by_name[name][1] == shapes[name]
    assert by_name["fc"][0].params == params["fc"]
    assert by_name["fc"][1] == (*shapes["fc"], 1, 1)


# -- torchvision and the paper ------------------------------------------------------------------

TORCHVISION = {
    # name: reference parameter count (torchvision's model docs)
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
}


@pytest.mark.parametrize("name", [
    "resnext50_32x4d",
    "resnext101_64x4d",
    pytest.param("resnext101_32x8d", marks=pytest.mark.slow),  # 2-5 s on 2 CPU cores: two 89M-param inits
])
def test_torchvision_weights_load_and_match(name):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    spec = preset(name)
    ours = build_model(spec).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert complexity(spec).params == TORCHVISION[name]
    assert sum(p.numel() for p in ref.parameters()) == TORCHVISION[name]
    assert sum(p.numel() for p in ours.parameters()) == TORCHVISION[name]
    x = torch.randn(1, 3, 64, 64)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        with counter:
            expected = ref(x)
        got = ours(x)
    assert torch.allclose(got, expected, atol=1e-5)
    at_64 = NetSpec(spec.stages, "imagenet", 64, 4, 1000, 3, input_size=64)
    assert 2 * complexity(at_64).macs == counter.get_total_flops()


def test_resnext50_macs_at_224():
    spec = preset("resnext50_32x4d")
    assert spec.input_size == 224
    macs = complexity(spec).macs
    assert abs(macs - 4.23e9) / 4.23e9 < 0.002  # torchvision's docs: 4.23 GFLOPS (multiply-adds)
    ref = torchvision.models.resnext50_32x4d(weights=None).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        ref(torch.randn(1, 3, 224, 224))
    assert 2 * macs == counter.get_total_flops()


@pytest.mark.parametrize("name,paper", [("resnext29_8x64d", 34.4e6), ("resnext29_16x64d", 68.1e6)])
def test_resnext29_params_match_paper(name, paper):
    # Xie et al. 2017, Table 7 (CIFAR): 34.4M and 68.1M parameters
    params = complexity(preset(name)).params
    assert abs(params - paper) / paper < 0.002
    assert params == sum(p.numel() for p in build_model(preset(name)).parameters())
