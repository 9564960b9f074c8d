"""The data benchmarks run in their --quick mode and print their evidence (structure only, no timed asserts)."""

import pytest

from benchmarks import data_memory, decode

from .test_smoke import check


@pytest.mark.slow
def test_data_memory_quick_compares_uint8_and_float32_residency(capsys):
    results = data_memory.main(["--quick"])
    out = capsys.readouterr().out
    check(out)
    for size in (28, 16):
        assert results[size]["bytes_float32"] == 4 * (results[size]["bytes_uint8"])  # float32 is 4 bytes a pixel
    assert "ratio       uint8 / float32 training step time" in out


@pytest.mark.slow
def test_decode_quick_compares_with_imagefolder_and_reloads(capsys, tmp_path):
    results = decode.main(["--quick", "--images", "300", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    check(out)
    assert "target      reload from the cache <= 2 s" in out and results["reload_s"] > 0
    assert set(results["rates"]) == {"decode + cache", "ImageFolder + DataLoader w2"}
