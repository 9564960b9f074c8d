"""Device-resident data + batched tensor augmentation vs a torchvision DataLoader pipeline.

The same normalised images (on the training device) go through, per epoch:

- ``resident``: ``search.data.batches`` (a permutation drawn on the device, one gather per
  batch) + ``search.data.augment`` (random reflect-pad crop and horizontal flip for the whole
  batch as one gather), what ``train_model`` does;
- ``DataLoader wN``: a ``Dataset`` applying ``torchvision.transforms.v2`` ``RandomCrop(size,
  padding=pad, padding_mode="reflect")`` + ``RandomHorizontalFlip()`` per image, batched by
  ``torch.utils.data.DataLoader(shuffle=True, drop_last=True, num_workers=N)`` (N = 0, 2;
  with workers: ``persistent_workers=True``, started in the untimed warm-up epoch, the
  loader's best case), then moved to the device (``pin_memory`` on CUDA).

Images/s of the data path alone (each batch is only touched), then, in the full run, of the
same paths feeding a tiny network's forward + backward + SGD step. The data-path table also
runs ``resident, previous augment``: the same path with the augmentation written as indexing
with four broadcast index tensors (identical output), the baseline for ``augment``'s one flat
``gather``.

    python -m benchmarks.datapath           # 10,000 images 3x32x32, batch 128; + tiny model on 2,048
    python -m benchmarks.datapath --quick   # CI smoke: 256 images 3x16x16, batch 64
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from benchmarks._report import env_header, footer, median, report, set_threads, sync_for, target, timeit_interleaved
from benchmarks._workloads import net, random_splits
from search.data import augment, batches
from search.devices import resolve_device
from space import build_model


class AugmentedImages(Dataset):
    """Per-image torchvision v2 augmentation over CPU tensors, the usual Dataset pipeline."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int, flip: bool) -> None:
        self.x, self.y = x, y
        size = x.shape[-1]
        steps = [v2.RandomCrop(size, padding=pad, padding_mode="reflect")] if pad else []
        self.transform = v2.Compose(steps + ([v2.RandomHorizontalFlip()] if flip else []))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def augment_indexing(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None,
                     mode: str = "reflect") -> torch.Tensor:
    """``search.data.augment`` before this benchmark: same draws and pixels, advanced indexing."""
    if pad == 0 and not flip:
        return x
    n, c, h, w = x.shape
    dev = x.device
    if pad:
        if mode == "reflect" and pad >= min(h, w):
            mode = "constant"
        x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    rows = dy + torch.arange(h, device=dev)
    cols = dx + torch.arange(w, device=dev)
    if flip:
        flipped = torch.rand(n, 1, device=dev, generator=generator) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    return x[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


def resident_epoch(x, y, bs: int, pad: int, flip: bool, gen: torch.Generator, step=None, aug=augment) -> int:
    """One epoch of the device-resident path; returns the images served."""
    n = 0
    for xb, yb in batches(x, y, bs, shuffle=True, generator=gen, drop_last=True):
        xb = aug(xb, pad, flip, gen)
        if step is not None:
            step(xb, yb)
        n += len(xb)
    return n


def loader_epoch(loader: DataLoader, device: torch.device, step=None) -> int:
    """One epoch through a DataLoader, batches moved to ``device``; returns the images served."""
    n = 0
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if step is not None:
            step(xb, yb)
        n += len(xb)
    return n


def make_step(device: torch.device, size: int):
    """A tiny network's training step (forward, backward, SGD), to see the paths under load."""
    model = build_model(net(1, stages=1, stem_ch=8, bottleneck_ch=4, base_width=64, input_size=size)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(xb, yb):
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def compare(label: str, splits, bs: int, device: torch.device, workers: tuple[int, ...], repeats: int,
            step=None, previous: bool = False) -> dict[str, float]:
    """Time one epoch of every path, interleaved; print images/s and ratios; return the rates."""
    x, y = splits.train_x, splits.train_y
    gen = torch.Generator(device=device).manual_seed(0)
    cpu_x, cpu_y = x.cpu(), y.cpu()
    images = (len(x) // bs) * bs
    fns = {"resident (batches+augment)": lambda: resident_epoch(x, y, bs, splits.pad, splits.flip, gen, step)}
    if previous:
        fns["resident, previous augment"] = lambda: resident_epoch(x, y, bs, splits.pad, splits.flip, gen, step,
                                                                   augment_indexing)
    loaders = {}
    for w in workers:
        loaders[w] = DataLoader(AugmentedImages(cpu_x, cpu_y, splits.pad, splits.flip), batch_size=bs, shuffle=True,
                                drop_last=True, num_workers=w, persistent_workers=w > 0,
                                pin_memory=device.type == "cuda")
        fns[f"DataLoader v2 per-image w{w}"] = (lambda loader: lambda: loader_epoch(loader, device, step))(loaders[w])
    times = timeit_interleaved(fns, repeats, warmup=1, sync=sync_for(device))
    print(f"\n== {label}")
    rates = {}
    for name, t in times.items():
        print(report(name, t, images, "img"))
        rates[name] = images / median(t)
    base = rates["resident (batches+augment)"]
    for name, rate in rates.items():
        if name != "resident (batches+augment)":
            print(f"ratio       {label}: resident / {name} images/s: {base / rate:,.2f}x")
    del loaders  # shuts the persistent workers down
    return rates


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 256 images 16x16, no model run")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the main process")
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs of each path (3)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    if args.quick:
        n, size, bs, repeats, n_model = 256, 16, 64, 2, 0
    else:
        n, size, bs, repeats, n_model = 10_000, 32, 128, 3, 2048
    repeats = args.repeats or repeats
    workers = (0, 2)
    splits = random_splits(n, 16, size, device)
    print("benchmark: device-resident data + tensor augmentation vs torchvision DataLoader (v2 per image)")
    print(env_header(device))
    print(f"data:        {n:,} random images {splits.info.in_ch}x{size}x{size} (float32, normalised) on {device}; "
          f"batch {bs}, drop_last; crop pad {splits.pad} (reflect) + horizontal flip")
    print(f"loader:      DataLoader(shuffle, num_workers in {workers}, persistent workers, "
          f"pin_memory={device.type == 'cuda'}), v2.RandomCrop + v2.RandomHorizontalFlip per image")
    print(f"repeats:     {repeats} epochs per path, interleaved, after 1 warm-up epoch each (starts the workers); "
          "median reported")
    t0 = time.perf_counter()
    result = {"data": compare("data path only", splits, bs, device, workers, repeats, previous=True)}
    if n_model:
        small = random_splits(n_model, 16, size, device, seed=1)
        result["model"] = compare(f"with a tiny model's training step ({n_model:,} images)", small, bs, device,
                                  workers, repeats, step=make_step(device, size))
    rates = result["data"]
    best_loader = max(v for k, v in rates.items() if k.startswith("DataLoader"))
    r = rates["resident (batches+augment)"] / best_loader
    print()
    print(target("resident faster than the best DataLoader (data path only)", r > 1, f"{r:,.1f}x"))
    print(f"elapsed:     {time.perf_counter() - t0:.1f} s")
    print(footer())
    return result


if __name__ == "__main__":
    main()
