"""Inference latency of a network, measured with a protocol that is recorded with the numbers.

Eval mode, ``torch.inference_mode``, a fixed random input, ``warmup`` untimed passes, then
``repeats`` timed passes: CUDA events around each pass (synchronised per repeat) on CUDA,
``perf_counter`` on the CPU with ``torch.set_num_threads(threads)``. The median is the
headline; p10/p90 and the coefficient of variation say how much to trust it.

Two backends run the passes: ``torch`` (the module itself) and ``onnxruntime`` (the network
exported to an ONNX graph by ``torch.onnx.export``, as a deployment would run it, on
onnxruntime's CPU execution provider with ``intra_op_num_threads = threads``); the protocol is
the same and names the backend.
"""

import copy
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

# the config section lives in search.config (no torch); importable from here
from search.config import (  # noqa: F401
    BACKENDS,
    ONNX_INSTALL,
    ONNX_PACKAGES,
    LatencyConfig,
    missing_onnx_packages,
    require_onnx,
)
from search.devices import device_name
from space.errors import SpecError


def check_backend(cfg: LatencyConfig, device: torch.device) -> None:
    """Raise SpecError when ``cfg.backend`` cannot measure on ``device`` (the resolved latency device).

    ``LatencyConfig`` checks what it can alone; this is the rest, for a study's start: onnxruntime
    measures on the CPU, so ``latency.device: train`` (or ``auto``) must not resolve to a GPU.
    """
    if cfg.backend == "onnxruntime":
        require_onnx("latency.backend onnxruntime")
        if device.type != "cpu":
            raise SpecError(f"latency.backend onnxruntime measures on the CPU, but latency.device {cfg.device!r} "
                            f"is {device}; set latency.device: cpu, or latency.backend: torch")


@dataclass
class Latency:
    """Forward-pass latency in milliseconds and the protocol that produced it.

    Args:
        median_ms: median of the timed passes.
        p10_ms: 10th percentile.
        p90_ms: 90th percentile.
        cv: coefficient of variation (std / mean) of the samples.
        samples: every timed pass, in order.
        protocol: backend (``torch`` | ``onnxruntime``, with its version), device, dtype, batch,
            threads, warmup, repeats, torch version, channels_last, timer (``cuda-events`` |
            ``perf_counter``), input shape.
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
        channels_last: NHWC model and input (torch backend).
    """
    dev = cfg.resolve(device)
    if cfg.backend == "onnxruntime":
        check_backend(cfg, dev)
        return _measure_onnxruntime(model, in_ch, size, cfg, dev)
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

    protocol = {
        "backend": "torch",
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
    return _summary(samples, protocol)


def _summary(samples: list[float], protocol: dict) -> Latency:
    p10, median, p90 = np.percentile(samples, [10, 50, 90]).tolist()
    mean = statistics.fmean(samples)
    cv = statistics.stdev(samples) / mean if len(samples) > 1 and mean > 0 else 0.0
    return Latency(median, p10, p90, cv, samples, protocol)


# -- ONNX: the exported graph, and onnxruntime -------------------------------------------------


def onnx_graph(model: nn.Module, in_ch: int, size: int, path: str | Path | None = None) -> bytes:
    """The ONNX graph of ``model`` in eval mode, float32, input ``input`` ``(batch, in_ch, size, size)``.

    ``torch.onnx.export`` (the torch.export-based exporter, torch's default) on a CPU copy of
    the model, with a dynamic batch dimension; the output is ``logits``. The model itself is
    left as it was (device, training flags).

    Args:
        model: the network.
        in_ch: input channels.
        size: input height and width.
        path: also write the graph to this file (one file: the weights inside it).

    Returns:
        the serialised ONNX model.
    """
    require_onnx("exporting to ONNX", ("onnx", "onnxscript"))
    param = next(model.parameters(), None)
    net = model if param is None or param.device.type == "cpu" else copy.deepcopy(model).to("cpu")
    flags = [(m, m.training) for m in net.modules()]
    x = torch.zeros(2, in_ch, size, size)  # batch 2: a batch of 1 would be specialised
    try:
        net.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's
            program = torch.onnx.export(
                net, (x,), None, dynamo=True, verbose=False, input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )
    except Exception as e:
        raise SpecError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") \
            from e
    finally:
        for m, training in flags:
            m.training = training
    graph = program.model_proto.SerializeToString()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(graph)
    return graph


def onnx_session(graph: bytes | str | Path, threads: int = 1):
    """An onnxruntime CPU session for an ONNX graph, with ``threads`` intra-op threads, sequential.

    Args:
        graph: the serialised graph (``onnx_graph``) or a .onnx file.
        threads: ``SessionOptions.intra_op_num_threads`` (inter-op: 1).
    """
    require_onnx("onnxruntime inference", ("onnxruntime",))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _measure_onnxruntime(model: nn.Module, in_ch: int, size: int, cfg: LatencyConfig,
                         dev: torch.device) -> Latency:
    """The latency protocol on onnxruntime: the model's ONNX graph, ``perf_counter`` per run."""
    import onnxruntime as ort

    session = onnx_session(onnx_graph(model, in_ch, size), cfg.threads)
    name = session.get_inputs()[0].name
    x = torch.randn(cfg.batch_size, in_ch, size, size).numpy()
    for _ in range(cfg.warmup):
        session.run(None, {name: x})
    samples: list[float] = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        samples.append((time.perf_counter() - t0) * 1000)
    protocol = {
        "backend": "onnxruntime",
        "onnxruntime": ort.__version__,
        "execution_provider": "CPUExecutionProvider",
        "exporter": "torch.onnx.export (dynamo)",
        "device": device_name(dev),
        "device_type": str(dev),
        "dtype": "float32",
        "batch_size": cfg.batch_size,
        "input_shape": [cfg.batch_size, in_ch, size, size],
        "threads": cfg.threads,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "torch": torch.__version__,
        "channels_last": False,
        "timer": "perf_counter",
        "statistic": "median",
    }
    return _summary(samples, protocol)
