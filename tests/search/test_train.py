"""Trainer: learns, is reproducible, stops on NaN, keeps its step/time budgets, validates config."""

import math

import pytest
import torch

from search.data import DataConfig, load_splits, steps_per_epoch
from search.devices import resolve_device
from search.train import (
    FINITE_CHECK_EVERY,
    NonFiniteLoss,
    TrainConfig,
    evaluate,
    lr_factor,
    seed_everything,
    train_model,
    zero_init_residual,
)
from space import NetSpec, SpecError, StageSpec, build_model

CPU = torch.device("cpu")
SPEC = NetSpec((StageSpec(1, 8, 1, 2, 16),), stem_ch=8, num_classes=4, in_ch=3, input_size=16)
FAST = {"batch_size": 32, "lr": 0.2, "device": "cpu"}


@pytest.fixture(scope="module")
def synthetic():
    return load_splits(DataConfig(dataset="synthetic"), CPU)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny nets run faster and are not slowed by a busy neighbour."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(splits, seed=0, on_epoch=None, **kwargs):
    seed_everything(seed)
    model = build_model(SPEC)
    cfg = TrainConfig(**{**FAST, **kwargs})
    return model, train_model(model, splits, cfg, device=CPU, seed=seed, on_epoch=on_epoch)


def test_learns_synthetic_well_above_chance(synthetic):
    _, result = _train(synthetic, epochs=3)
    assert result.val_accuracy > 0.25 + 0.4, result.history
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert result.val_accuracy == result.history[-1].val_accuracy


def test_same_seed_same_history_other_seed_differs(synthetic):
    _, a = _train(synthetic, seed=1, epochs=1)
    _, b = _train(synthetic, seed=1, epochs=1)
    _, c = _train(synthetic, seed=2, epochs=1)
    assert [(r.train_loss, r.val_accuracy) for r in a.history] == \
        [(r.train_loss, r.val_accuracy) for r in b.history]
    assert a.history[0].train_loss != c.history[0].train_loss


def test_huge_lr_raises_nonfinite_loss_promptly(synthetic):
    seed_everything(0)
    model = build_model(SPEC)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(m.training))
    cfg = TrainConfig(epochs=50, batch_size=64, lr=1e6, device="cpu")
    with pytest.raises(NonFiniteLoss, match=r"at step \d+ of 450"):
        train_model(model, synthetic, cfg, device=CPU, seed=0)
    # stopped within one check window (or the end of the epoch), never validated a NaN net
    spe = steps_per_epoch(len(synthetic.train_y), 64)
    assert sum(calls) <= max(spe, FINITE_CHECK_EVERY)
    assert not any(not training for training in calls)


def test_fractional_epochs_run_the_right_number_of_steps(synthetic):
    n = len(synthetic.train_y)  # 576 -> 18 full batches of 32
    records = []
    _, r = _train(synthetic, epochs=1.5, on_epoch=records.append)
    spe = steps_per_epoch(n, 32)
    assert r.steps == math.ceil(1.5 * spe) == 27
    assert r.images == 27 * 32
    assert len(r.history) == 2 and records == r.history  # the half epoch has its own record
    assert r.stopped_by == "epochs"
    _, tiny = _train(synthetic, epochs=0.01)
    assert tiny.steps == 1 and len(tiny.history) == 1


def test_seconds_budget_stops_early(synthetic):
    _, r = _train(synthetic, epochs=1000, seconds=0.3)
    assert r.stopped_by == "seconds"
    assert 0 < r.steps < 1000 * steps_per_epoch(len(synthetic.train_y), 32)
    assert 0.3 <= r.train_time_s < 5
    assert r.history[-1].elapsed_s == pytest.approx(r.train_time_s)
    assert all(math.isfinite(h.train_loss) for h in r.history)


def _spy_steps(monkeypatch) -> list[dict]:
    """Record, at every optimizer step, the learning rate and the memory format of a conv weight."""
    seen = []
    real = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        weight = next(p for g in self.param_groups for p in g["params"] if p.ndim == 4)
        seen.append({"lr": self.param_groups[0]["lr"],
                     "nhwc": weight.is_contiguous(memory_format=torch.channels_last)
                     and not weight.is_contiguous()})
        return real(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return seen


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_each_schedule_sets_the_learning_rate_of_every_step(synthetic, monkeypatch, schedule):
    seen = _spy_steps(monkeypatch)
    _, r = _train(synthetic, epochs=0.5, schedule=schedule, warmup=0.2, lr=0.1)
    assert r.steps == len(seen) == 9
    want = [0.1 * lr_factor((i + 0.5) / 9, schedule, 0.2) for i in range(9)]
    assert [s["lr"] for s in seen] == pytest.approx(want)
    assert all(s["lr"] > 0 for s in seen)  # the first step learns, and so does the last


def test_channels_last_really_trains_nhwc(synthetic, monkeypatch):
    seen = _spy_steps(monkeypatch)
    _train(synthetic, epochs=0.5, channels_last=True)
    assert seen and all(s["nhwc"] for s in seen)
    seen.clear()
    _train(synthetic, epochs=0.5, channels_last=False)
    assert seen and not any(s["nhwc"] for s in seen)


def test_channels_last_auto_means_nhwc_on_cuda_only(synthetic, monkeypatch):
    cfg = TrainConfig()
    assert cfg.channels_last == "auto"
    assert cfg.nhwc(torch.device("cuda:1")) and cfg.nhwc("cuda") and not cfg.nhwc(CPU) and not cfg.nhwc("cpu")
    assert TrainConfig(channels_last=True).nhwc("cpu") and not TrainConfig(channels_last=False).nhwc("cuda")
    seen = _spy_steps(monkeypatch)
    _train(synthetic, epochs=0.5)  # auto on the CPU trains NCHW
    assert seen and not any(s["nhwc"] for s in seen)
    for bad in ("yes", "nhwc", 1, None):
        with pytest.raises(SpecError, match="train.channels_last must be auto, true or false"):
            TrainConfig(channels_last=bad)


def test_a_single_step_changes_the_weights(synthetic):
    """One step of a one-cycle schedule (epochs=0.01) used to have learning rate 0: nothing learned."""
    seed_everything(0)
    model = build_model(SPEC)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = train_model(model, synthetic, TrainConfig(epochs=0.01, **FAST), device=CPU, seed=0)
    assert r.steps == 1
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert "conv1.weight" in changed and "fc.weight" in changed


def test_lr_schedules():
    assert lr_factor(0.0, "onecycle", 0.2) == 0.0
    assert lr_factor(0.2, "onecycle", 0.2) == pytest.approx(1.0)
    assert lr_factor(0.6, "onecycle", 0.2) == pytest.approx(0.5)
    assert lr_factor(1.0, "onecycle", 0.2) == 0.0
    assert lr_factor(0.5, "onecycle", 0.0) == pytest.approx(0.5)
    assert lr_factor(0.0, "cosine", 0.2) == 1.0 and lr_factor(0.5, "cosine", 0.2) == pytest.approx(0.5)
    assert lr_factor(2.0, "cosine", 0.2) == pytest.approx(0.0)  # a time overrun clamps at the end
    assert lr_factor(0.7, "constant", 0.2) == 1.0


def test_evaluate_restores_the_training_flag_and_counts_correct(synthetic):
    model = build_model(SPEC)
    model.train()
    acc = evaluate(model, synthetic.val_x, synthetic.val_y, 7)
    assert 0 <= acc <= 1 and model.training
    model.eval()
    evaluate(model, synthetic.val_x[:5], synthetic.val_y[:5], 2)
    assert not model.training
    with pytest.raises(ValueError):
        evaluate(model, synthetic.val_x[:0], synthetic.val_y[:0], 2)


def test_zero_init_residual_zeroes_last_bn_of_every_block():
    model = build_model(NetSpec((StageSpec(2, 8, 1, 2, 16),), stem_ch=8, input_size=16))
    zero_init_residual(model)
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in model.layer1)


def test_resolve_device_on_this_machine():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(SpecError, match="no CUDA GPU.*device: cpu"):
            resolve_device("cuda")
    if torch.cuda.device_count() <= 7:
        with pytest.raises(SpecError, match="cuda:7"):
            resolve_device("cuda:7")
    with pytest.raises(SpecError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.parametrize("kwargs, field", [
    ({"epochs": 0}, "train.epochs"),
    ({"epochs": -1.0}, "train.epochs"),
    ({"epochs": float("nan")}, "train.epochs"),
    ({"seconds": 0}, "train.seconds"),
    ({"batch_size": 0}, "train.batch_size"),
    ({"batch_size": 32.0}, "train.batch_size"),
    ({"lr": 0}, "train.lr"),
    ({"momentum": 1.0}, "train.momentum"),
    ({"momentum": 0.0}, "train.nesterov"),
    ({"weight_decay": -1e-4}, "train.weight_decay"),
    ({"label_smoothing": 1.0}, "train.label_smoothing"),
    ({"schedule": "cosin"}, "train.schedule.*did you mean 'cosine'"),
    ({"warmup": 1.0}, "train.warmup"),
    ({"device": "gpu:0"}, "train.device"),
    ({"bf16": "true"}, "train.bf16"),
    ({"channels_last": None}, "train.channels_last"),
    ({"eval_batch_size": -5}, "train.eval_batch_size"),
    ({"zero_init_residual": 0}, "train.zero_init_residual"),
])
def test_train_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(SpecError, match=field.replace("train.", r"train\.")):
        TrainConfig(**kwargs)


def test_train_config_accepts_ints_for_floats():
    cfg = TrainConfig(epochs=2, seconds=10, lr=1, warmup=0, momentum=0, nesterov=False)
    assert isinstance(cfg.epochs, float) and isinstance(cfg.seconds, float) and isinstance(cfg.lr, float)
