"""The performance changes the benchmarks motivated keep behaviour: the flat-gather augmentation
draws the same pixels as the indexing version it replaced, and the CPU allocator tuning is a
guarded, once-per-process no-op where it cannot apply."""

import pytest
import torch

import search.train
from benchmarks.datapath import augment_indexing
from search.data import augment


@pytest.mark.parametrize("shape", [(7, 3, 8, 8), (5, 1, 16, 12), (4, 2, 5, 9), (1, 3, 4, 4)])
@pytest.mark.parametrize("pad", [0, 1, 2, 6])
@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_augment_gather_equals_previous_indexing(shape, pad, mode):
    for flip in (False, True):
        for channels_last in (False, True):
            x = torch.randn(*shape)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            want = augment_indexing(x, pad, flip, torch.Generator().manual_seed(3), mode)
            got = augment(x, pad, flip, torch.Generator().manual_seed(3), mode)
            assert got.shape == want.shape and torch.equal(got, want)


def test_tune_cpu_malloc_runs_once_and_reports(monkeypatch):
    first = search.train.tune_cpu_malloc()
    assert isinstance(first, bool)
    assert search.train.tune_cpu_malloc() is first  # cached: mallopt is not called again


def test_tune_cpu_malloc_leaves_a_user_choice_alone(monkeypatch):
    monkeypatch.setattr(search.train, "_malloc_tuned", None)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # not one of the settings it would override
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000")
    assert search.train.tune_cpu_malloc() is False
    monkeypatch.setattr(search.train, "_malloc_tuned", None)
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    assert search.train.tune_cpu_malloc() is False
