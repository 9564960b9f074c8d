"""Inference latency of a network, measured with a protocol that is recorded with the numbers.

Eval mode, ``torch.inference_mode``, a fixed random input, ``warmup`` untimed passes, then
``repeats`` timed passes: CUDA events around each pass (synchronised per repeat) on CUDA,
``perf_counter`` on the CPU with ``torch.set_num_threads(threads)``. The median is the
headline; p10/p90 and the coefficient of variation say how much to trust it.
"""

import copy
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from search.checks import check_bool, check_device_name, check_int
from search.devices import device_name, resolve_device


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured.

    Args:
        enabled: measure latency at all (the caller skips ``measure_latency`` when false).
        batch_size: images per forward pass.
        warmup: untimed forward passes first.
        repeats: timed forward passes; the median is reported.
        threads: torch CPU threads during a CPU measurement (restored afterwards).
        device: ``train`` (the training device) or cpu | cuda | cuda:N.
    """

    enabled: bool = True  # measure inference latency
    batch_size: int = 1  # images per forward pass
    warmup: int = 5  # untimed forward passes
    repeats: int = 20  # timed forward passes; median reported
    threads: int = 1  # torch CPU threads during measurement (restored after)
    device: str = "train"  # "train" = the training device, or cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        check_bool(self.enabled, "latency.enabled")
        check_int(self.batch_size, "latency.batch_size", low=1, fix="use 1 for per-image latency")
        check_int(self.warmup, "latency.warmup", low=0, fix="use e.g. 5")
        check_int(self.repeats, "latency.repeats", low=1, fix="use e.g. 20")
        check_int(self.threads, "latency.threads", low=1, fix="use 1 for a stable measurement")
        check_device_name(self.device, "latency.device", extra=("train",))


@dataclass
class Latency:
    """Forward-pass latency in milliseconds and the protocol that produced it.

    Args:
        median_ms: median of the timed passes.
        p10_ms: 10th percentile.
        p90_ms: 90th percentile.
        cv: coefficient of variation (std / mean) of the samples.
        samples: every timed pass, in order.
        protocol: device, dtype, batch, threads, warmup, repeats, torch version,
            channels_last, timer (``cuda-events`` | ``perf_counter``), input shape.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    cv: float
    samples: list[float] = field(default_factory=list)
    protocol: dict = field(default_factory=dict)


def measure_latency(
    model: nn.Module,
    in_ch: int,
    size: int,
    cfg: LatencyConfig,
    device: torch.device,
    *,
    bf16: bool = False,
    channels_last: bool = False,
) -> Latency:
    """Time ``cfg.repeats`` forward passes of ``model`` on a ``(batch, in_ch, size, size)`` input.

    The model's training flags (per module) and torch's CPU thread count are restored after.
    When the measurement needs another device or memory format than the model has, a copy of
    the model is measured, so the caller's model is never moved.

    Args:
        model: the network.
        in_ch: input channels.
        size: input height and width.
        cfg: the latency config.
        device: the training device; used when ``cfg.device`` is ``train``.
        bf16: bf16 autocast (CUDA only; the CPU measures float32).
        channels_last: NHWC model and input.
    """
    dev = device if cfg.device == "train" else resolve_device(cfg.device)
    cuda = dev.type == "cuda"
    param = next(model.parameters(), None)
    net = model
    if param is not None and (
        param.device != dev
        or (channels_last and param.ndim == 4
            and not param.is_contiguous(memory_format=torch.channels_last))
    ):
        net = copy.deepcopy(model).to(dev)
        if channels_last:
            net.to(memory_format=torch.channels_last)
    x = torch.randn(cfg.batch_size, in_ch, size, size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = cuda and bf16

    flags = [(m, m.training) for m in model.modules()]
    threads = torch.get_num_threads()
    samples: list[float] = []
    try:
        if not cuda:
            torch.set_num_threads(cfg.threads)
        net.eval()
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            for _ in range(cfg.warmup):
                net(x)
            if cuda:
                torch.cuda.synchronize(dev)
                stream = torch.cuda.current_stream(dev)
                for _ in range(cfg.repeats):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record(stream)
                    net(x)
                    end.record(stream)
                    end.synchronize()
                    samples.append(start.elapsed_time(end))
            else:
                for _ in range(cfg.repeats):
                    t0 = time.perf_counter()
                    net(x)
                    samples.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(threads)
        for m, training in flags:
            m.training = training

    p10, median, p90 = np.percentile(samples, [10, 50, 90]).tolist()
    mean = statistics.fmean(samples)
    cv = statistics.stdev(samples) / mean if len(samples) > 1 and mean > 0 else 0.0
    protocol = {
        "device": device_name(dev),
        "device_type": str(dev),
        "dtype": "bfloat16-autocast" if autocast else "float32",
        "batch_size": cfg.batch_size,
        "input_shape": [cfg.batch_size, in_ch, size, size],
        "threads": cfg.threads if not cuda else None,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "torch": torch.__version__,
        "channels_last": channels_last,
        "timer": "cuda-events" if cuda else "perf_counter",
        "statistic": "median",
    }
    return Latency(median, p10, p90, cv, samples, protocol)
