"""Inference latency of a network, measured with a protocol that is recorded with the numbers.

Eval mode, ``torch.inference_mode``, a fixed random input, ``warmup`` untimed passes, then
``repeats`` timed passes: CUDA events around each pass (synchronised per repeat) on CUDA,
``perf_counter`` on the CPU with ``torch.set_num_threads(threads)``. The median is the
headline (``Latency.ms``; interleaved, see below); p10/p90 and the coefficient of variation say
how much to trust it.

On the CPU the machine itself drifts: another tenant or process can slow every pass of a call
by 2x for seconds, which no statistic of one call's passes removes (benchmarks/latency.py
measured 2.5-57% spread between calls on a 2-core VM in a busy hour). With ``interleave`` (the default) each
pass of the network is timed right after a pass of a fixed reference network (``REFERENCE``),
and the reported latency is the network's 10th-percentile pass over the reference's, times the
reference's own latency measured once when the study was made (``reference_latency_ms``,
recorded on the study): a slowdown that outlasts a pass slows both alike and cancels, and the
low percentile keeps the passes a preemption did not hit.

Two backends run the passes: ``torch`` (the module itself) and ``onnxruntime`` (the network
exported to an ONNX graph by ``torch.onnx.export``, as a deployment would run it, on
onnxruntime's CPU execution provider with ``intra_op_num_threads = threads``); the protocol is
the same and names the backend.
"""

import copy
import dataclasses
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
from space.spec import NetSpec, StageSpec


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
        ms: the protocol's figure, what a study records as ``latency_ms`` (``protocol["statistic"]``):
            the median of the passes; interleaved, the 10th percentile of the network's passes
            over the 10th percentile of the reference's, times the study's reference latency.
        median_ms: median of the timed passes.
        p10_ms: 10th percentile.
        p90_ms: 90th percentile.
        cv: coefficient of variation (std / mean) of the samples.
        samples: every timed pass, in order.
        protocol: backend (``torch`` | ``onnxruntime``, with its version), device, dtype, batch,
            threads, warmup, repeats, torch version, channels_last, timer (``cuda-events`` |
            ``perf_counter``), input shape.
    """

    ms: float
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
    reference_ms: float | None = None,
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
        reference_ms: the study's reference latency (``reference_latency_ms``): with
            ``cfg.interleave`` on the CPU, the samples are scaled to it; None leaves them as timed.
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
    ref_samples: list[float] = []
    ref, xr = _reference() if interleaves(cfg, dev) else (None, None)
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
            elif ref is not None:
                for _ in range(cfg.warmup):
                    ref(xr)
                for _ in range(cfg.repeats):
                    t0 = time.perf_counter()
                    ref(xr)
                    t1 = time.perf_counter()
                    net(x)
                    t2 = time.perf_counter()
                    ref_samples.append((t1 - t0) * 1000)
                    samples.append((t2 - t1) * 1000)
            else:
                for _ in range(cfg.repeats):
                    t0 = time.perf_counter()
                    net(x)
                    samples.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(threads)
        for m, training in flags:
            m.training = training

    if ref_samples:  # in units of the reference, times its latency when the study was made
        # the 10th percentiles: the passes a preemption did not hit (a busy machine's other trouble)
        own = float(np.percentile(ref_samples, 10))
        samples = [v * (reference_ms or own) / own for v in samples]
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
        "statistic": "p10 over the reference's p10" if ref is not None else "median",
        "interleaved": ref is not None,
        **({"reference": REFERENCE.name, "reference_ms": reference_ms} if ref is not None else {}),
    }
    return _summary(samples, protocol)


# The network timed beside every CPU pass (``LatencyConfig.interleave``): fixed and small (a
# quickstart-sized ResNeXt), so its cost is a unit a study keeps across machines states and resumes.
REFERENCE = NetSpec((StageSpec(1, 8, 1, 2, 8), StageSpec(1, 16, 2, 2, 8)), stem="cifar", stem_ch=8,
                    num_classes=10, in_ch=1, input_size=16)
_REFERENCE: dict = {}


def _reference() -> tuple[nn.Module, torch.Tensor]:
    """The reference network (fixed weights, eval mode, CPU) and its input; built once per process."""
    if not _REFERENCE:
        from space import build_model

        with torch.random.fork_rng(devices=[]):  # fixed weights; the caller's random stream untouched
            torch.manual_seed(0)
            _REFERENCE["model"] = build_model(REFERENCE).eval()
            _REFERENCE["x"] = torch.randn(1, REFERENCE.in_ch, REFERENCE.input_size, REFERENCE.input_size)
    return _REFERENCE["model"], _REFERENCE["x"]


LATENCY_REFERENCE = "latency_reference_ms"  # the study's user attribute holding reference_latency_ms


def interleaves(cfg: LatencyConfig, device: torch.device) -> bool:
    """Whether measurements on ``device`` (the latency device) are interleaved with the reference."""
    return cfg.enabled and cfg.interleave and cfg.backend == "torch" and device.type == "cpu"


def reference_latency_ms(cfg: LatencyConfig, calls: int = 5) -> float:
    """The reference network's own CPU latency under ``cfg``, its passes' 10th percentile (median of
    ``calls`` calls): a study's unit.

    Measured once when a study is made and recorded on it; every interleaved measurement of the
    study is scaled by it, so its latencies stay comparable between workers and resumes.
    """
    model, _ = _reference()
    alone = dataclasses.replace(cfg, interleave=False, device="cpu")
    return statistics.median(measure_latency(model, REFERENCE.in_ch, REFERENCE.input_size, alone,
                                             torch.device("cpu")).p10_ms for _ in range(calls))


def _summary(samples: list[float], protocol: dict) -> Latency:
    p10, median, p90 = np.percentile(samples, [10, 50, 90]).tolist()
    mean = statistics.fmean(samples)
    cv = statistics.stdev(samples) / mean if len(samples) > 1 and mean > 0 else 0.0
    return Latency(median if protocol["statistic"] == "median" else p10, median, p10, p90, cv, samples, protocol)


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
