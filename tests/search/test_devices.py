"""Process-wide settings happen at the entry points only; a library call leaves the process as it was.

Each case runs in a fresh interpreter: glibc's allocator settings cannot be undone in a process,
and the allocator's own state is what is checked (glibc's ``mallinfo2``: is a live 64 MiB tensor
in a fresh mmap, as glibc's defaults do, or in the heap, where the tuned allocator keeps it for
the next step?), with the garbage collector's frozen objects and torch's thread count.
"""

import json
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, gc, json, sys
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

def mmapped_mb():
    # MiB in mmapped blocks while a 64 MiB tensor lives: >= 64 with glibc's defaults (a fresh mmap,
    # unmapped on free and faulted in again next time), a few MiB once the heap holds it
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    x = torch.ones(16 * 2**20)
    return libc.mallinfo2().hblkhd / 2**20

threads0 = torch.get_num_threads()
mode = sys.argv[1]
if mode == "library":  # what a notebook does: import the package, run a trial's building blocks
    from search.data import DataConfig, load_splits
    from search.devices import release_memory
    from search.objective import build_and_train
    from search.train import TrainConfig
    from space import NetSpec, StageSpec
    spec = NetSpec((StageSpec(1, 8, 1, 2, 16),), stem_ch=8, num_classes=4, in_ch=3, input_size=16)
    splits = load_splits(DataConfig(dataset="synthetic"), torch.device("cpu"))
    build_and_train(spec, splits, TrainConfig(epochs=0.2, device="cpu"), torch.device("cpu"), 0)
    release_memory()
    tuned = None
else:  # what resnext-nas and its workers do at start
    from search.devices import release_memory, tune_process, unfreeze
    tuned = tune_process(1)
    release_memory()
frozen = gc.get_freeze_count()
if mode != "library":
    unfreeze()
print(json.dumps({"mmapped_mb": mmapped_mb(), "frozen": frozen, "after_unfreeze": gc.get_freeze_count(),
                  "threads": torch.get_num_threads(), "threads0": threads0, "tuned": tuned}))
"""


def probe(mode: str, **env) -> dict:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "RESNEXT_NAS"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                         env={**clean, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_a_library_call_changes_nothing_in_the_process():
    r = probe("library")
    assert r["mmapped_mb"] >= 64  # glibc's defaults: a fresh mmap for the 64 MiB
    assert r["frozen"] == 0  # no gc.freeze
    assert r["threads"] == r["threads0"]  # torch's thread count as it was


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_the_entry_points_tune_allocator_collector_and_threads():
    r = probe("entry")
    assert r["tuned"] == {"threads": 1, "malloc": True, "gc_freeze": True}
    assert r["mmapped_mb"] < 32  # in the heap, kept for reuse
    assert r["frozen"] > 1000 and r["after_unfreeze"] == 0
    assert r["threads"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_opting_out_keeps_allocator_and_collector_but_sets_threads():
    r = probe("entry", RESNEXT_NAS_TUNE="0")
    assert r["tuned"] == {"threads": 1, "malloc": False, "gc_freeze": False}
    assert r["mmapped_mb"] >= 64 and r["frozen"] == 0
    assert r["threads"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_a_users_own_glibc_malloc_settings_are_left_alone():
    for env in ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000"}, {"MALLOC_TRIM_THRESHOLD_": "1000"}):
        r = probe("entry", **env)
        assert r["tuned"]["malloc"] is False and r["mmapped_mb"] >= 64, env
