"""Brief training of one network on device-resident data (one readable file, airbench style).

Each batch of the resident images (uint8 where they are 8-bit) is made network input on the
device (``Splits.prepare``: float, resize, normalise) before it is augmented.

SGD with Nesterov momentum, label smoothing, a one-cycle (or cosine, or constant) learning
rate over a budget of epochs and/or seconds, bf16 autocast on CUDA, batched augmentation on
the device. Timing uses CUDA events on CUDA and ``perf_counter`` on the CPU, and counts
training only (validation after each epoch is not charged to the budget). The loss is
accumulated on the device and checked for NaN/inf every ``FINITE_CHECK_EVERY`` steps and at
every epoch's end, so a diverging run stops within a few steps without a host sync per step.
"""

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

# the config section lives in search.config (no torch); importable from here
from search.config import SCHEDULES, TrainConfig  # noqa: F401
from search.data import Splits, augment, batches, steps_per_epoch
from space import Bottleneck

FINITE_CHECK_EVERY = 50  # steps between the NaN/inf checks (one host sync each)


@dataclass
class EpochRecord:
    """One (possibly partial) epoch: mean training loss, validation accuracy, training time."""

    epoch: int
    train_loss: float
    val_accuracy: float
    elapsed_s: float  # training time since the start, evaluation excluded


@dataclass
class TrainResult:
    """The outcome of ``train_model``.

    Args:
        val_accuracy: validation accuracy after the last epoch, in [0, 1].
        history: one record per (possibly partial) epoch.
        train_time_s: training time, validation excluded.
        steps: optimizer steps taken.
        images: training images seen (with repeats across epochs).
        stopped_by: ``epochs`` or ``seconds``: which budget ended training.
    """

    val_accuracy: float
    history: list[EpochRecord] = field(default_factory=list)
    train_time_s: float = 0.0
    steps: int = 0
    images: int = 0
    stopped_by: str = "epochs"


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the message says at which step."""


def seed_everything(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) and return a generator on ``device``.

    Args:
        seed: the seed.
        device: where the returned generator draws (the data order and augmentation).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def lr_factor(progress: float, schedule: str, warmup: float) -> float:
    """Multiplier of the peak learning rate at ``progress`` in [0, 1] of the budget.

    Args:
        progress: share of the budget used.
        schedule: onecycle (linear up over ``warmup``, then linearly down to 0), cosine
            (from 1 down to 0), or constant.
        warmup: share of the budget spent rising (onecycle).
    """
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * p))
    if p < warmup:
        return p / warmup
    return (1 - p) / (1 - warmup)


def zero_init_residual(model: nn.Module) -> None:
    """Zero the last BN weight of every bottleneck, so each block starts as its shortcut."""
    for m in model.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class _Timer:
    """Accumulated training time: CUDA events on CUDA, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.total = 0.0
        self._host0: float | None = None  # host clock at start(); None while stopped

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        self._host0 = time.perf_counter()

    def running(self) -> float:
        """Time so far without a device sync (host clock; CUDA work may still be queued)."""
        if self._host0 is None:
            return self.total
        return self.total + time.perf_counter() - self._host0

    def stop(self) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            end.synchronize()
            self.total += self._start.elapsed_time(end) / 1000
        else:
            self.total += time.perf_counter() - self._host0
        self._host0 = None
        return self.total


def _check_finite(losses: Tensor, lo: int, hi: int, total: int, epoch: int, lr: float) -> None:
    """Raise NonFiniteLoss if any of ``losses[lo:hi]`` is NaN/inf (one host sync)."""
    bad = ~torch.isfinite(losses[lo:hi])
    if hi > lo and bool(bad.any()):
        first = lo + int(bad.nonzero()[0, 0])
        raise NonFiniteLoss(
            f"training loss is {losses[first].item()} at step {first + 1} of {total} (epoch "
            f"{epoch}, lr {lr:.3g}); lower train.lr or raise train.warmup"
        )


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, *, bf16: bool = True,
             channels_last: bool = False, prepare: Callable[[Tensor], Tensor] | None = None) -> float:
    """Accuracy of ``model`` on ``(x, y)`` in [0, 1]; eval mode, inference mode, one host sync.

    Args:
        model: the network, on ``x``'s device; its training flag is restored afterwards.
        x: images ``(N, C, H, W)``.
        y: labels ``(N,)``.
        batch_size: images per forward pass.
        bf16: bf16 autocast on CUDA.
        channels_last: feed NHWC inputs.
        prepare: makes a batch of ``x`` network input (``Splits.prepare``); None: ``x`` is already.
    """
    if len(x) == 0:
        raise ValueError("evaluate: no images to evaluate")
    was_training = model.training
    model.eval()
    cuda = x.device.type == "cuda"
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    try:
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda and bf16):
            for xb, yb in batches(x, y, batch_size, shuffle=False):
                if prepare is not None:
                    xb = prepare(xb)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                correct += (model(xb).argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    return correct.item() / len(x)


def train_model(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    *,
    device: torch.device,
    seed: int,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``splits.train_*``, scoring ``splits.val_*`` after every epoch.

    The budget is ``ceil(epochs * steps_per_epoch)`` steps, cut short when ``cfg.seconds``
    of training have passed; the learning rate follows ``max(steps, seconds)`` progress, so
    a time budget also anneals. A fractional last epoch gets its own record.

    Args:
        model: the network; moved to ``device`` (and NHWC when ``cfg.nhwc(device)``).
        splits: the data, already on ``device`` (moved once if not).
        cfg: the training config.
        device: the training device (``resolve_device(cfg.device)``).
        seed: seeds the data order and augmentation (and torch's global RNG).
        on_epoch: called with each EpochRecord (e.g. to log or to prune the trial).

    Raises:
        NonFiniteLoss: when the loss becomes NaN/inf (within ``FINITE_CHECK_EVERY`` steps).
    """
    gen = seed_everything(seed, device)
    model.to(device)
    nhwc = cfg.nhwc(device)
    if nhwc:
        model.to(memory_format=torch.channels_last)
    if cfg.zero_init_residual:
        zero_init_residual(model)
    train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
    val_x, val_y = splits.val_x.to(device), splits.val_y.to(device)
    cuda = device.type == "cuda"

    total = max(1, math.ceil(round(cfg.epochs * steps_per_epoch(len(train_x), cfg.batch_size), 6)))
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    losses = torch.zeros(total, device=device)  # per-step loss, written without a host sync
    timer = _Timer(device)
    history: list[EpochRecord] = []
    step = checked = images = epoch = 0
    lr = 0.0
    stopped_by = "epochs"

    def out_of_time() -> bool:
        return cfg.seconds is not None and step > 0 and timer.running() >= cfg.seconds

    while step < total:
        if out_of_time():
            stopped_by = "seconds"
            break
        epoch += 1
        first = step
        model.train()
        timer.start()
        for xb, yb in batches(train_x, train_y, cfg.batch_size, shuffle=True, generator=gen,
                              drop_last=True):
            if step >= total:
                break
            if out_of_time():
                stopped_by = "seconds"
                break
            progress = (step + 0.5) / total  # mid-step: the first step learns, the last one too
            if cfg.seconds is not None:
                progress = max(progress, timer.running() / cfg.seconds)
            lr = cfg.lr * lr_factor(progress, cfg.schedule, cfg.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            xb = augment(splits.prepare(xb), splits.pad, splits.flip, gen)
            if nhwc:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda and cfg.bf16):
                loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = loss.detach()
            step += 1
            images += len(xb)
            if step - checked >= FINITE_CHECK_EVERY:
                _check_finite(losses, checked, step, total, epoch, lr)
                checked = step
        timer.stop()
        if step == first:  # the time ran out between epochs
            epoch -= 1
            break
        _check_finite(losses, checked, step, total, epoch, lr)
        checked = step
        record = EpochRecord(
            epoch, losses[first:step].mean().item(),
            evaluate(model, val_x, val_y, cfg.eval_batch_size, bf16=cfg.bf16, channels_last=nhwc,
                     prepare=splits.prepare),
            timer.total,
        )
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if stopped_by == "seconds":
            break
    return TrainResult(history[-1].val_accuracy, history, timer.total, step, images, stopped_by)
