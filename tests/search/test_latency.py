"""Latency: statistics, recorded protocol, restored state, and a big net measuring slower."""

import pytest
import torch

from search.latency import LatencyConfig, measure_latency
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


@pytest.mark.parametrize("kwargs, field", [
    ({"enabled": 1}, "latency.enabled"),
    ({"batch_size": 0}, "latency.batch_size"),
    ({"warmup": -1}, "latency.warmup"),
    ({"repeats": 0}, "latency.repeats"),
    ({"threads": 0}, "latency.threads"),
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
