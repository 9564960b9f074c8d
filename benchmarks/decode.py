"""Decoding an image folder once into the uint8 cache, against torchvision's ImageFolder + DataLoader.

A folder of generated PNGs (10 classes, one subfolder each, RGB, random pixels) is read, in one run:

- ``decode + cache``: what a study's first start does with ``data.dataset: folder`` (``search.sources``):
  list the folder (paths, sizes, mtimes), decode every image in parallel processes (one per core)
  and write the one uint8 ``.npy`` cache plus its metadata; images/s over the whole of it;
- ``ImageFolder + DataLoader``: ``torchvision.datasets.ImageFolder(transform=PILToTensor())`` read
  once through ``DataLoader(batch_size=256, num_workers=2)``: the usual way to read the same files
  (decoding only: nothing is written);
- ``reload``: what every later start, resume or worker does: list the folder, find the cache by its
  key and load it (``search.sources.load_files``); the target is at most 2 s for 50,000 images.

The two decoders run in alternating order, ``--repeats`` times each (a fresh cache directory every
time); the files are in the page cache for both (written just before).

    python -m benchmarks.decode                     # 50,000 32x32 PNGs under /tmp
    python -m benchmarks.decode --quick             # CI smoke: 2,000 PNGs
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from benchmarks._report import env_header, footer, load_average, target
from search import sources
from search.config import DataConfig


def generate(root: Path, n: int, size: int, classes: int = 10) -> None:
    """``n`` random RGB PNGs of ``size`` x ``size``, spread over ``classes`` subfolders."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / f"class{i % classes:02d}" / f"{i:06d}.png")


def ours(root: Path, cache_root: Path) -> tuple[float, int]:
    shutil.rmtree(cache_root, ignore_errors=True)
    cfg = DataConfig(dataset="folder", path=str(root), root=str(cache_root))
    t0 = time.perf_counter()
    meta, _ = sources._folder_cache(cfg)
    return time.perf_counter() - t0, sum(meta["counts"].values())


def torchvision_loader(root: Path, workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    loader = DataLoader(ImageFolder(str(root), transform=v2.PILToTensor()), batch_size=256, num_workers=workers)
    n = 0
    for xb, _ in loader:
        n += len(xb)
    return time.perf_counter() - t0, n


def reload(root: Path, cache_root: Path) -> tuple[float, tuple]:
    cfg = DataConfig(dataset="folder", path=str(root), root=str(cache_root))
    t0 = time.perf_counter()
    images = sources.load_files(cfg)
    x = torch.from_numpy(images.train[0])
    return time.perf_counter() - t0, tuple(x.shape)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2,000 images")
    parser.add_argument("--images", type=int, default=None, help="PNGs to generate (50,000)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each decoder, alternating")
    parser.add_argument("--dir", default=None, help="where to generate the folder (default: a new /tmp dir)")
    args = parser.parse_args(argv)
    n = args.images or (2000 if args.quick else 50_000)
    torch.set_num_threads(1)
    print("benchmark: decoding an image folder once into the uint8 cache vs torchvision ImageFolder + DataLoader")
    print(env_header("cpu"))
    import PIL
    import torchvision

    workers = len(__import__("os").sched_getaffinity(0))
    print(f"versions:    Pillow {PIL.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}")
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="resnext-nas-decode-"))
    try:
        t0 = time.perf_counter()
        generate(tmp / "imgs", n, args.size)
        print(f"data:        {n:,} random RGB PNGs {args.size}x{args.size} in 10 class folders under {tmp} "
              f"(written in {time.perf_counter() - t0:.1f} s); load {load_average()}")
        print(f"ours:        {workers} decode processes (one per core), one uint8 .npy cache")
        print("baseline:    ImageFolder(transform=PILToTensor()) + DataLoader(batch_size=256, num_workers=2), once")
        times = {"decode + cache": [], "ImageFolder + DataLoader w2": []}
        for r in range(args.repeats):
            order = [0, 1] if r % 2 == 0 else [1, 0]
            for which in order:
                if which == 0:
                    t, got = ours(tmp / "imgs", tmp / f"cache{r}")
                    times["decode + cache"].append(t)
                else:
                    t, got = torchvision_loader(tmp / "imgs", 2)
                    times["ImageFolder + DataLoader w2"].append(t)
                assert got == n, (got, n)
        rates = {}
        for name, ts in times.items():
            med = statistics.median(ts)
            rates[name] = n / med
            print(f"{name:<32} repeats {len(ts)}  median {med:7.2f} s for {n:,} img -> {n / med:10,.0f} img/s")
        ratio = rates["decode + cache"] / rates["ImageFolder + DataLoader w2"]
        print(f"ratio       decode + cache / ImageFolder + DataLoader w2 images/s: {ratio:.2f}x")
        reloads = []
        for _ in range(3):
            t, shape = reload(tmp / "imgs", tmp / "cache0")
            reloads.append(t)
        med = statistics.median(reloads)
        print(f"reload                           repeats 3  median {med:7.2f} s for {n:,} img ({shape} uint8, "
              f"list + key + load)")
        print(target("reload from the cache <= 2 s", med <= 2.0, f"{med:.2f} s"))
        print(footer())
        return {"rates": rates, "ratio": ratio, "reload_s": med}
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
