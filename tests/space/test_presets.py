"""Presets: the name table, its error message, and a golden complexity per preset."""

from __future__ import annotations

import pytest

from space import PRESETS, NetSpec, SpecError, complexity, preset

# Golden (params, MACs) per preset, pycls-style. The ImageNet params are torchvision's published
# counts and resnext50's MACs are checked against FlopCounterMode on torchvision's model in
# test_model.py; the rest pin today's values so a change to the builder or twin shows up here.
GOLDEN = {
    "resnext50_32x4d": (25_028_904, 4_230_479_872),
    "resnext101_32x8d": (88_791_336, 16_414_015_488),
    "resnext101_64x4d": (83_455_272, 15_460_270_080),
    "resnext29_8x64d": (34_426_698, 5_387_266_048),
    "resnext29_16x64d": (68_155_210, 10_688_866_304),
}


def test_golden_covers_every_preset():
    assert set(GOLDEN) == set(PRESETS)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_contract(name):
    spec = preset(name)
    assert isinstance(spec, NetSpec)
    assert spec.name == name
    assert preset(name) == spec and preset(name) is not spec  # a fresh spec each call
    cx = complexity(spec)
    assert (cx.params, cx.macs) == GOLDEN[name]


@pytest.mark.parametrize(
    "bad,closest",
    [("resnext50_32x8d", "resnext50_32x4d"), ("resnext29_8x64", "resnext29_8x64d"),
     ("ResNeXt101_64x4d", "resnext101_64x4d"), ("resnext101_32x4d", "resnext101_32x8d")],
)
def test_unknown_preset_suggests_closest_and_lists_all(bad, closest):
    with pytest.raises(SpecError) as info:
        preset(bad)
    msg = str(info.value)
    assert f"'{bad}'" in msg
    assert f"did you mean '{closest}'?" in msg
    for name in PRESETS:
        assert name in msg


def test_unknown_preset_without_close_match_still_lists_names():
    with pytest.raises(SpecError) as info:
        preset("vgg")
    msg = str(info.value)
    assert "did you mean" not in msg
    assert all(name in msg for name in PRESETS)
