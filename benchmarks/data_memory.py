"""uint8-resident data normalised per batch against float32-resident data normalised once.

The same training split lives on the device two ways:

- ``uint8``: what ``search.data.load_splits`` keeps: the images resized once (rounded back to
  8-bit) as uint8; each batch is made network input by ``Splits.prepare`` (float, normalise);
- ``float32``: what it kept before: the whole split resized and normalised once, float32
  (``Splits(normalised=True)``: ``prepare`` passes batches through).

Printed side by side: the device memory the split takes (the tensors' bytes; on CUDA also
``torch.cuda.memory_allocated``), the data path's time per batch (batch + prepare + augment) and
a tiny network's training step with it (forward, backward, SGD), at the dataset's own size (28)
and at the offline recipe's input size (16).

    python -m benchmarks.data_memory                 # Fashion-MNIST (Debian's package) or random 28x28 images
    python -m benchmarks.data_memory --quick         # CI smoke: 2,048 images
    python -m benchmarks.data_memory --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch import nn

from benchmarks._report import env_header, footer, median, report, set_threads, sync_for, timeit_interleaved
from benchmarks._workloads import net
from search.config import DataConfig
from search.data import Splits, _normalise_, _to_device, augment, batches, load_splits
from search.devices import resolve_device
from space import build_model


def tensor_bytes(*xs: torch.Tensor) -> int:
    return sum(x.numel() * x.element_size() for x in xs)


def float_twin(s: Splits) -> Splits:
    """The same split resized and normalised once, float32, as the data path kept it before uint8."""
    mean, std = (torch.tensor(v, dtype=torch.float32, device=s.train_x.device) for v in (s.mean, s.std))
    prepared = [_normalise_(_to_device(x, s.input_size, x.device), mean, std) for x in (s.train_x, s.val_x)]
    return dataclasses.replace(s, train_x=prepared[0], val_x=prepared[1], normalised=True, _norm={})


def load(n: int, size: int, device: torch.device) -> tuple[Splits, str]:
    """Fashion-MNIST's training split when its files are there, else random 28x28 uint8 images."""
    cfg = DataConfig(dataset="fashionmnist", download=False, input_size=size, train_subset=n, val_fraction=0.1)
    try:
        return load_splits(cfg, device), "Fashion-MNIST (60,000 28x28 grey images; split 90/10, train subset)"
    except Exception as e:  # no files: random images of the same shape
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n + n // 9, 1, 28, 28), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (len(x),), generator=g)
        s = Splits(x[:n].to(device), y[:n].to(device), x[n:].to(device), y[n:].to(device), cfg.info, size,
                   mean=(72.9,), std=(90.0,), pad=cfg.pad, flip=True)
        return s, f"random 28x28 uint8 images (Fashion-MNIST not found: {e})"


def epoch_fn(s: Splits, bs: int, gen: torch.Generator, step=None):
    def run() -> int:
        n = 0
        for xb, yb in batches(s.train_x, s.train_y, bs, shuffle=True, generator=gen, drop_last=True):
            xb = augment(s.prepare(xb), s.pad, s.flip, gen)
            if step is not None:
                step(xb, yb)
            n += len(xb)
        return n
    return run


def make_step(device: torch.device, size: int):
    torch.manual_seed(0)
    model = build_model(net(1, stages=2, stem_ch=8, bottleneck_ch=8, base_width=8, in_ch=1,
                            input_size=size)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(xb, yb):
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2,048 images, 1 repeat")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs of each variant (3)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    n, bs, repeats, n_model = (2048, 128, 1, 512) if args.quick else (20_000, 128, 3, 4096)
    repeats = args.repeats or repeats
    sync = sync_for(device)
    print("benchmark: uint8-resident data normalised per batch vs float32-resident data normalised once")
    print(env_header(device))
    t0 = time.perf_counter()
    results = {}
    for size in (28, 16):
        s8, what = load(n, size, device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        s32 = float_twin(s8)
        grown = torch.cuda.memory_allocated(device) - before if device.type == "cuda" else None
        b8, b32 = tensor_bytes(s8.train_x, s8.val_x), tensor_bytes(s32.train_x, s32.val_x)
        print(f"\n== input {size}x{size}: {what}; {len(s8.train_x):,} train + {len(s8.val_x):,} val images, "
              f"batch {bs}, crop pad {s8.pad} + flip")
        print(f"memory      uint8   {b8 / 2**20:8.1f} MiB  ({tuple(s8.train_x.shape[1:])} {s8.train_x.dtype})")
        print(f"memory      float32 {b32 / 2**20:8.1f} MiB  ({tuple(s32.train_x.shape[1:])} {s32.train_x.dtype})"
              + (f"; cuda memory_allocated grew {grown / 2**20:.1f} MiB" if grown is not None else ""))
        print(f"ratio       float32 / uint8 memory: {b32 / b8:.2f}x")
        gen = torch.Generator(device=device).manual_seed(0)
        images = (len(s8.train_x) // bs) * bs
        paths = {"uint8 data path": epoch_fn(s8, bs, gen), "float32 data path": epoch_fn(s32, bs, gen)}
        times = timeit_interleaved(paths, repeats, warmup=1, sync=sync)
        for name, t in times.items():
            print(report(name, t, images, "img"))
        data_ratio = median(times["uint8 data path"]) / median(times["float32 data path"])
        print(f"ratio       uint8 / float32 data-path time per batch: {data_ratio:.2f}x")
        small8 = dataclasses.replace(s8, train_x=s8.train_x[:n_model], train_y=s8.train_y[:n_model], _norm={})
        small32 = dataclasses.replace(s32, train_x=s32.train_x[:n_model], train_y=s32.train_y[:n_model])
        steps = n_model // bs
        step8, step32 = make_step(device, size), make_step(device, size)
        times = timeit_interleaved({"uint8 + train step": epoch_fn(small8, bs, gen, step8),
                                    "float32 + train step": epoch_fn(small32, bs, gen, step32)},
                                   repeats, warmup=1, sync=sync)
        for name, t in times.items():
            print(report(name, t, steps, "step"))
        step_ratio = median(times["uint8 + train step"]) / median(times["float32 + train step"])
        print(f"ratio       uint8 / float32 training step time: {step_ratio:.2f}x")
        results[size] = {"bytes_uint8": b8, "bytes_float32": b32, "data_ratio": data_ratio, "step_ratio": step_ratio}
        del s8, s32, small8, small32
    print(f"\nelapsed:     {time.perf_counter() - t0:.1f} s")
    print(footer())
    return results


if __name__ == "__main__":
    main()
