"""Latency: statistics, recorded protocol, restored state, and a big net measuring slower."""

import dataclasses
import sys

import pytest
import torch

from search.latency import REFERENCE, LatencyConfig, _reference, interleaves, measure_latency, reference_latency_ms
from space import NetSpec, SpecError, StageSpec, build_model, complexity

CPU = torch.device("cpu")
SMALL = NetSpec((StageSpec(1, 8, 1, 2, 16),), stem_ch=8, num_classes=4, in_ch=3, input_size=16)
BIG = NetSpec((StageSpec(2, 32, 1, 4, 16), StageSpec(2, 64, 2, 4, 16)), stem_ch=32, num_classes=4,
              in_ch=3, input_size=32)
QUICK = LatencyConfig(warmup=2, repeats=7, device="cpu")


def test_statistics_protocol_and_restored_state():
    model = build_model(SMALL)
    model.train()
    model.layer1.eval()  # a mixed state must come back exactly
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        lat = measure_latency(model, 3, 16, QUICK, CPU)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert lat.median_ms > 0 and lat.p10_ms <= lat.median_ms <= lat.p90_ms
    assert len(lat.samples) == 7 and all(s > 0 for s in lat.samples) and lat.cv >= 0
    for key in ("device", "dtype", "batch_size", "threads", "warmup", "repeats", "torch",
                "channels_last", "timer"):
        assert key in lat.protocol
    assert lat.protocol["timer"] == "perf_counter" and lat.protocol["threads"] == 1
    assert lat.protocol["repeats"] == 7 and lat.protocol["dtype"] == "float32"
    assert model.training and model.conv1.training and not model.layer1.training
    assert all(p.grad is None for p in model.parameters())


def test_channels_last_measures_a_copy_and_train_device_is_used():
    model = build_model(SMALL)
    lat = measure_latency(model, 3, 16, LatencyConfig(warmup=1, repeats=3), CPU, channels_last=True,
                          bf16=True)
    assert lat.protocol["channels_last"] is True and lat.protocol["device_type"] == "cpu"
    assert lat.protocol["dtype"] == "float32"  # bf16 autocast is a CUDA-only option
    assert model.conv1.weight.is_contiguous()  # the caller's model keeps its layout


def test_bigger_network_measures_slower():
    assert complexity(BIG).macs > 50 * complexity(SMALL).macs
    small = measure_latency(build_model(SMALL), 3, 16, QUICK, CPU)
    big = measure_latency(build_model(BIG), 3, 32, QUICK, CPU)
    assert big.median_ms > 2 * small.median_ms


def test_interleaved_passes_are_in_units_of_the_reference_network():
    """Each pass is timed beside the reference's; scaled to the study's reference latency, the
    reference itself measures about that (the unit), and a network 50x its MACs far more."""
    model, _ = _reference()
    unit = reference_latency_ms(QUICK)
    assert unit > 0
    for ms in (unit, 1000.0):  # any unit: the result follows it
        lat = measure_latency(model, REFERENCE.in_ch, REFERENCE.input_size, QUICK, CPU, reference_ms=ms)
        assert 0.5 * ms < lat.ms < 2 * ms, (ms, lat.ms)
        assert lat.protocol["interleaved"] and lat.protocol["reference_ms"] == ms
        assert lat.ms == lat.p10_ms and lat.protocol["statistic"] == "p10 over the reference's p10"
    assert complexity(BIG).macs > 50 * complexity(REFERENCE).macs
    big = measure_latency(build_model(BIG), 3, 32, QUICK, CPU, reference_ms=1000.0)
    assert big.ms > 2000.0
    plain = measure_latency(model, REFERENCE.in_ch, REFERENCE.input_size, dataclasses.replace(QUICK, interleave=False),
                            CPU, reference_ms=1000.0)
    assert not plain.protocol["interleaved"] and plain.ms < 100  # milliseconds as timed: no reference
    assert plain.ms == plain.median_ms and plain.protocol["statistic"] == "median"
    assert interleaves(QUICK, CPU) and not interleaves(dataclasses.replace(QUICK, interleave=False), CPU)
    assert not interleaves(QUICK, torch.device("cuda"))  # CUDA events time the GPU alone


@pytest.mark.parametrize("kwargs, field", [
    ({"enabled": 1}, "latency.enabled"),
    ({"batch_size": 0}, "latency.batch_size"),
    ({"warmup": -1}, "latency.warmup"),
    ({"repeats": 0}, "latency.repeats"),
    ({"threads": 0}, "latency.threads"),
    ({"interleave": "yes"}, "latency.interleave"),
    ({"device": "training"}, "latency.device"),
])
def test_latency_config_rejects_bad_values(kwargs, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        LatencyConfig(**kwargs)


def test_cuda_latency_device_without_cuda_is_a_spec_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SpecError, match="no CUDA GPU"):
        measure_latency(build_model(SMALL), 3, 16, LatencyConfig(device="cuda"), CPU)


# -- backends: torch and onnxruntime ---------------------------------------------------------------

def _has_onnxruntime() -> bool:
    from search.latency import missing_onnx_packages

    return not missing_onnx_packages()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_both_backends_measure_the_same_protocol(backend):
    import math

    if backend == "onnxruntime" and not _has_onnxruntime():
        pytest.skip("SKIPPED LOUDLY: onnxruntime backend needs pip install 'resnext-nas[onnx]'")
    model = build_model(SMALL)
    model.train()
    cfg = LatencyConfig(warmup=2, repeats=7, device="cpu", threads=1, backend=backend)
    lat = measure_latency(model, 3, 16, cfg, CPU)
    assert math.isfinite(lat.median_ms) and lat.median_ms > 0 and lat.p10_ms <= lat.median_ms <= lat.p90_ms
    assert len(lat.samples) == 7 and all(s > 0 for s in lat.samples) and math.isfinite(lat.cv)
    assert lat.protocol["backend"] == backend and lat.protocol["threads"] == 1 and lat.protocol["repeats"] == 7
    assert lat.protocol["input_shape"] == [1, 3, 16, 16] and lat.protocol["timer"] == "perf_counter"
    if backend == "onnxruntime":
        import onnxruntime

        assert lat.protocol["onnxruntime"] == onnxruntime.__version__
    else:
        assert "onnxruntime" not in lat.protocol
    assert model.training and all(p.grad is None for p in model.parameters())  # the caller's model untouched


def test_onnxruntime_runs_the_network_itself():
    if not _has_onnxruntime():
        pytest.skip("SKIPPED LOUDLY: needs pip install 'resnext-nas[onnx]'")
    from search.latency import onnx_graph, onnx_session

    model = build_model(BIG).eval()
    session = onnx_session(onnx_graph(model, 3, 32), threads=1)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        want = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (3, 4) and abs(got - want).max() < 1e-4


def test_onnxruntime_backend_refuses_a_gpu_and_a_missing_install(monkeypatch):
    with pytest.raises(SpecError, match=r"latency\.backend: unknown value 'onnx'"):
        LatencyConfig(backend="onnx")
    with pytest.raises(SpecError, match="measures on the CPU"):
        LatencyConfig(backend="onnxruntime", device="cuda")
    if _has_onnxruntime():
        from search.latency import check_backend

        cfg = LatencyConfig(backend="onnxruntime")  # device: train, resolved at the study's start
        check_backend(cfg, CPU)
        with pytest.raises(SpecError, match="measures on the CPU"):
            check_backend(cfg, torch.device("cuda", 0))
    # without onnxruntime installed (sys.modules[name] = None is how Python spells "not importable")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    missing = r"needs onnxruntime, which is not installed: pip install 'resnext-nas\[onnx\]'"
    with pytest.raises(SpecError, match=missing):
        LatencyConfig(backend="onnxruntime", device="cpu")
    from search.config import experiment_from_dict

    with pytest.raises(SpecError, match=r"resnext-nas\[onnx\]"):
        experiment_from_dict({"latency": {"backend": "onnxruntime"}}, name="x")
    LatencyConfig(backend="torch")  # the default backend needs none of it
