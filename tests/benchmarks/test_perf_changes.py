"""The performance changes the benchmarks motivated keep behaviour: the flat-gather augmentation
draws the same pixels as the indexing version it replaced. (The CPU allocator tuning is tested by
its effect in tests/search/test_devices.py.)"""

import pytest
import torch

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
