"""SearchSpace: parsing, size/enumeration against brute force, sampling, suggest, grid, ranges."""

from __future__ import annotations

import itertools
import random

import optuna
import pytest

from space import Complexity, NetSpec, SearchSpace, SpecError, build_model, complexity
from space.searchspace import Dim

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(**kw) -> SearchSpace:
    return SearchSpace.from_dict(kw)


SMALL = {
    # base_width 4 is raised to 8 at bottleneck_ch 8, merging with base_width 8
    "merge_bw": space(num_stages=[1, 2], stem_ch=8, bottleneck_ch=[8, 16], cardinality=[1, 2],
                      base_width=[4, 8, 16], depth=[1, 2]),
    # every base_width below 4 is raised; 5 floors to the same width as 4 at bottleneck_ch 16
    "resolve_up": space(num_stages=[2, 3], stem_ch=16, bottleneck_ch=16, channel_mult=[1, 2],
                        cardinality=[2], base_width=[1, 2, 3, 4, 5], depth=[1, 2]),
    # channel_mult is irrelevant for one stage; ranges with a step
    "ranges": space(num_stages=[1, 2], stem_ch=[16, 32], bottleneck_ch=16, channel_mult=[2, 3],
                    cardinality={"low": 1, "high": 4, "step": 3}, base_width=4, depth={"low": 1, "high": 3,
                                                                                        "step": 2}),
    # stem_ch == bottleneck_ch * expansion drops the first projection: a larger stem is cheaper
    "identity_stem": space(num_stages=[1, 2], stem_ch=[32, 64], bottleneck_ch=[8, 16], cardinality=[1, 2],
                           base_width=[4, 8], depth=[1, 2]),
    "imagenet": space(num_stages=[2, 3], stem="imagenet", input_size=35, in_ch=1, expansion=2,
                      stem_ch=[8, 16], bottleneck_ch=[4, 8], cardinality=[1, 3], base_width=[2, 20],
                      depth=1),
    "default": SearchSpace(),
}


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,needles",
    [
        ({"cardinality": "4"}, ["space.cardinality", "integer", "'4'"]),
        ({"cardinality": 4.0}, ["space.cardinality", "integer"]),
        ({"cardinality": True}, ["space.cardinality", "integer"]),
        ({"cardinality": None}, ["space.cardinality", "integer"]),
        ({"cardinality": 0}, ["space.cardinality", "> 0"]),
        ({"depth": []}, ["space.depth", "empty"]),
        ({"depth": [1, 1]}, ["space.depth", "repeated"]),
        ({"depth": [2, 1, 2]}, ["space.depth", "repeated"]),
        ({"depth": [1, "2"]}, ["space.depth[1]", "integer"]),
        ({"depth": [1, -2]}, ["space.depth[1]", "> 0"]),
        ({"depth": [1, 2.5]}, ["space.depth[1]", "integer"]),
        ({"depth": {"low": 3, "high": 1}}, ["space.depth", "low <= high"]),
        ({"depth": {"low": 1, "high": 4, "step": 0}}, ["space.depth.step", "> 0"]),
        ({"depth": {"low": 1, "high": 4, "step": 2}}, ["space.depth", "multiple of step"]),
        ({"depth": {"low": 0, "high": 2}}, ["space.depth.low", "> 0"]),
        ({"depth": {"low": 1.0, "high": 2}}, ["space.depth.low", "integer"]),
        ({"depth": {"low": 1}}, ["space.depth", "'low' and 'high'"]),
        ({"depth": {"low": 1, "hi": 4}}, ["space.depth", "unknown key 'hi'", "did you mean 'high'?"]),
        ({"cardinalty": [1, 2]}, ["space", "unknown key 'cardinalty'", "did you mean 'cardinality'?"]),
        ({"basewidth": 4}, ["did you mean 'base_width'?"]),
        ({"depths": 4}, ["did you mean 'depth'?"]),
        ({"stem": 3}, ["space.stem", "string"]),
        ({"stem": "imagent"}, ["space.stem", "imagent", "cifar", "imagenet"]),
        ({"input_size": "32"}, ["space.input_size", "integer"]),
        ({"num_classes": 0}, ["space.num_classes", "> 0"]),
        ({"expansion": 1.5}, ["space.expansion", "integer"]),
        ({"in_ch": -1}, ["space.in_ch", "> 0"]),
        ({"num_stages": [3, 4], "input_size": 4}, ["space.num_stages", "input_size >= 8", "remove 4"]),
        ({"num_stages": 4, "input_size": 16, "stem": "imagenet"}, ["space.num_stages", "input_size >= 32"]),
        ({"num_stages": {"low": 1, "high": 6}, "input_size": 16}, ["space.num_stages", "6"]),
    ],
)
def test_parse_errors(data, needles):
    with pytest.raises(SpecError) as info:
        SearchSpace.from_dict(data)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


@pytest.mark.parametrize("data", [[1, 2], "cardinality: 4", 3])
def test_space_must_be_a_mapping(data):
    with pytest.raises(SpecError, match="space"):
        SearchSpace.from_dict(data)


def test_parse_forms_and_round_trip():
    sp = space(cardinality=[8, 1, 4], depth={"low": 1, "high": 5, "step": 2}, stem_ch=24,
               base_width={"low": 2, "high": 3})
    assert sp.cardinality == Dim((1, 4, 8))
    assert sp.depth == Dim((1, 3, 5), 2)
    assert sp.stem_ch == Dim((24,))
    assert sp.base_width == Dim((2, 3), 1)
    assert SearchSpace.from_dict(sp.to_dict()) == sp
    assert SearchSpace.from_dict(None) == SearchSpace() == SearchSpace.from_dict({})


def test_fixed_defaults_from_the_data_source():
    sp = SearchSpace.from_dict({"in_ch": 1}, in_ch=3, num_classes=5, input_size=8)
    assert (sp.in_ch, sp.num_classes, sp.input_size) == (1, 5, 8)


@pytest.mark.parametrize("name", list(SMALL))
def test_small_space_dict_round_trip(name):
    assert SearchSpace.from_dict(SMALL[name].to_dict()) == SMALL[name]


# -- size and enumeration against brute force -------------------------------------------------


def _all_params(sp: SearchSpace):
    """Every parameter assignment, written out here independently of the space's own loops."""
    shared = ["stem_ch", "bottleneck_ch", "channel_mult", "cardinality", "base_width"]
    for n in sp.num_stages.choices:
        names = shared + [f"depth_{i + 1}" for i in range(n)]
        values = [getattr(sp, k).choices for k in shared] + [sp.depth.choices] * n
        for combo in itertools.product(*values):
            yield {"num_stages": n, **dict(zip(names, combo, strict=True))}


def _module_key(spec: NetSpec) -> tuple:
    """What makes two built networks different: parameter names/shapes and conv hyper-parameters."""
    model = build_model(spec)
    convs = tuple((n, m.stride, m.groups) for n, m in model.named_modules() if hasattr(m, "groups"))
    return (tuple((n, tuple(p.shape)) for n, p in model.state_dict().items()), convs, spec.input_size)


def _resolved_base_width(bch: int, bw: int) -> int:
    """Smallest base_width >= bw giving at least one channel per group (brute force)."""
    while bch * bw // 64 == 0:
        bw += 1
    return bw


@pytest.mark.parametrize("name", ["merge_bw", "resolve_up", "ranges", "identity_stem", "imagenet"])
def test_size_equals_enumerate_equals_brute_force(name):
    sp = SMALL[name]
    combos = list(_all_params(sp))
    assert sp.num_combinations() == len(combos)
    keys = set()
    for params in combos:
        spec = sp.from_params(params)
        for i, st in enumerate(spec.stages):  # base_width kept, or raised minimally
            bch = params["bottleneck_ch"] * params["channel_mult"] ** i
            assert st.bottleneck_ch == bch
            assert st.base_width == _resolved_base_width(bch, params["base_width"])
        keys.add(_module_key(spec))
    specs = sp.enumerate()
    assert len({s.hash for s in specs}) == len(specs)
    assert sp.size() == len(specs) == len(keys)
    if name != "imagenet":  # all but this one merge some combinations
        assert len(keys) < len(combos)


def test_resolution_merges_as_designed():
    # resolve_up, widths per group for base_width 1..5 once raised: bch 16 -> 1 1 1 1 1,
    # bch 32 -> 1 1 1 2 2, bch 64 -> 1 2 3 4 5. Distinct width tuples: 2 stages: mult 1 -> 1,
    # mult 2 -> 2; 3 stages: mult 1 -> 1, mult 2 -> 5. Times the depths: 3 * 2**2 + 6 * 2**3.
    assert SMALL["resolve_up"].size() == 3 * 4 + 6 * 8 == 60
    assert SMALL["resolve_up"].num_combinations() == 120


def _random_small_space(rng: random.Random) -> SearchSpace:
    def pick(pool, k_max=3):
        return sorted(rng.sample(pool, rng.randint(1, k_max)))

    stem = rng.choice(["cifar", "imagenet"])
    return SearchSpace.from_dict({
        "num_stages": pick([1, 2, 3]), "stem_ch": pick([8, 16, 32, 64], 2),
        "bottleneck_ch": pick([4, 8, 16, 24]), "channel_mult": pick([1, 2, 3], 2),
        "cardinality": pick([1, 2, 3, 4]),
        "base_width": pick([1, 2, 3, 5, 8, 16, 32]), "depth": pick([1, 2, 3], 2), "stem": stem,
        "input_size": 32 if stem == "imagenet" else rng.choice([9, 16]), "expansion": rng.choice([1, 2, 4]),
    })


@pytest.mark.parametrize("seed", range(12))
def test_random_spaces_size_and_range(seed):
    sp = _random_small_space(random.Random(seed))
    specs = sp.enumerate()
    assert sp.size() == len(specs) == len({s.hash for s in specs})
    assert sp.size() <= sp.num_combinations()
    _check_range(sp, specs)


def _check_range(sp: SearchSpace, specs: list[NetSpec]) -> None:
    cxs = [complexity(s) for s in specs]
    fields = ("params", "macs", "acts")
    lo = Complexity(*(min(getattr(c, f) for c in cxs) for f in fields))
    hi = Complexity(*(max(getattr(c, f) for c in cxs) for f in fields))
    assert sp.complexity_range() == (lo, hi)


@pytest.mark.parametrize("name", list(SMALL))
def test_complexity_range_equals_enumerated_extremes(name):
    _check_range(SMALL[name], SMALL[name].enumerate())


def test_identity_stem_space_is_not_monotone():
    # the case complexity_range must handle: the larger stem costs fewer parameters
    sp = space(num_stages=1, stem_ch=[32, 64], bottleneck_ch=16, cardinality=1, base_width=4, depth=1)
    small, large = sorted(sp.enumerate(), key=lambda s: s.stem_ch)
    assert complexity(large).params < complexity(small).params
    assert sp.complexity_range()[0] == complexity(large)


def test_enumerate_limit():
    sp = SMALL["default"]
    assert sp.num_combinations() == 256
    assert len(sp.enumerate(limit=256)) == 256
    with pytest.raises(SpecError, match="limit 255"):
        sp.enumerate(limit=255)
    big = space(num_stages=4, depth={"low": 1, "high": 8}, cardinality={"low": 1, "high": 32})
    with pytest.raises(SpecError, match="combinations"):
        big.enumerate()
    assert big.size() == 2 * 2 * 32 * 2 * 8**4  # no width merges: base_width 4/8 at bch >= 16


# -- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_sample_is_deterministic_and_in_space(name):
    sp = SMALL[name]
    a = _samples(sp, 3, 30)
    assert a == _samples(sp, 3, 30)
    assert [s.hash for s in a] == [s.hash for s in _samples(sp, 3, 30)]
    hashes = {s.hash for s in sp.enumerate()}
    assert all(s.hash in hashes for s in a)


def _samples(sp: SearchSpace, seed: int, n: int) -> list[NetSpec]:
    rng = random.Random(seed)
    return [sp.sample(rng) for _ in range(n)]


def test_different_seeds_differ():
    sp = SMALL["default"]
    runs = [_samples(sp, seed, 20) for seed in range(4)]
    assert all(runs[i] != runs[j] for i in range(4) for j in range(i + 1, 4))


def test_sample_reaches_every_network_of_a_small_space():
    sp = SMALL["resolve_up"]
    seen = {s.hash for s in _samples(sp, 0, 3000)}
    assert seen == {s.hash for s in sp.enumerate()}


def _suggest_many(sp: SearchSpace, n: int, sampler=None):
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        spec = sp.suggest(trial)
        yield trial, spec
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", list(SMALL))
def test_suggest_valid_and_reproducible_from_params(name):
    sp = SMALL[name]
    hashes = {s.hash for s in sp.enumerate()}
    grid = sp.grid()
    for trial, spec in _suggest_many(sp, 40):
        assert isinstance(spec, NetSpec)
        assert spec.hash in hashes
        assert sp.from_params(trial.params) == spec
        assert set(trial.params) <= set(grid)
        assert all(v in grid[k] for k, v in trial.params.items())
        assert len(spec.stages) == trial.params["num_stages"]


def test_suggest_uses_int_distribution_for_ranges():
    sp = SMALL["ranges"]
    trial, _ = next(_suggest_many(sp, 1))
    dist = trial.distributions
    assert isinstance(dist["cardinality"], optuna.distributions.IntDistribution)
    assert dist["cardinality"].step == 3 and (dist["cardinality"].low, dist["cardinality"].high) == (1, 4)
    assert isinstance(dist["stem_ch"], optuna.distributions.CategoricalDistribution)


def test_suggest_on_a_large_space_builds():
    sp = space(num_stages=[2, 3, 4], stem_ch={"low": 8, "high": 64, "step": 8},
               bottleneck_ch={"low": 4, "high": 64, "step": 4}, channel_mult=[1, 2],
               cardinality={"low": 1, "high": 64}, base_width={"low": 1, "high": 64},
               depth={"low": 1, "high": 6}, input_size=64, stem="imagenet")
    with pytest.raises(SpecError):
        sp.enumerate()
    lo, hi = sp.complexity_range()
    for trial, spec in _suggest_many(sp, 60):
        assert sp.from_params(trial.params) == spec
        cx = complexity(spec)
        assert lo.params <= cx.params <= hi.params and lo.macs <= cx.macs <= hi.macs


def test_grid_sampler_covers_enumeration():
    sp = SMALL["merge_bw"]
    grid = sp.grid()
    n_points = 1
    for values in grid.values():
        n_points *= len(values)
    seen = set()

    def objective(trial):
        seen.add(sp.suggest(trial).hash)
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(objective, n_trials=n_points + 5)  # the sampler stops the study when done
    assert len(study.trials) == n_points
    assert seen == {s.hash for s in sp.enumerate()}


@pytest.mark.parametrize("name", list(SMALL))
def test_grid_keys(name):
    sp = SMALL[name]
    grid = sp.grid()
    depths = [f"depth_{i + 1}" for i in range(max(sp.num_stages.choices))]
    shared = {"num_stages", "stem_ch", "bottleneck_ch", "channel_mult", "cardinality", "base_width"}
    expected = shared | set(depths)
    assert set(grid) == expected
    assert grid["cardinality"] == list(sp.cardinality.choices)
