"""Data sources that read files: gzip IDX (Fashion-MNIST from a system package or torchvision's layout).

A source turns the ``data:`` section into raw images and labels at their native size and pixel
scale (numpy, ``(N, C, H, W)``) plus a ``DatasetInfo``; everything after that (split, resize,
normalise, device, augment, export preprocessing) is ``search.data``'s and shared by every
source. This module does not import torch: the experiment file needs a source's
``DatasetInfo`` (channels, classes) before anything else is loaded.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from space.errors import SpecError

# -- IDX files (MNIST's format): Fashion-MNIST from Debian's package or torchvision's layout ----------

# Debian's `dataset-fashion-mnist` (`dpkg -L dataset-fashion-mnist`): the four original gzip IDX files
SYSTEM_FASHIONMNIST = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_UBYTE = 0x08  # the only element type the MNIST family uses


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``.gz`` or not) as a uint8 array of its dimensions.

    Args:
        path: the file; gzip is recognised by its magic bytes, not its name.

    Raises:
        SpecError: not an IDX file of unsigned bytes, or shorter than its header says.
    """
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            data = bytearray(f.read())  # writable: torch.from_numpy takes it as it is
    except (OSError, EOFError) as e:
        raise SpecError(f"{path}: cannot read it ({e}); reinstall the dataset's files") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UBYTE:
        raise SpecError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex() or 'empty'})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SpecError(f"{path}: {body.size} bytes of data for dimensions {dims} (truncated?); "
                        "reinstall the dataset's files")
    return body.reshape(dims)


def _idx_pair(folder: str | Path, train: bool) -> tuple[Path, Path] | None:
    """The images and labels files of a split in ``folder`` (plain or ``.gz``), or None when absent."""
    found = []
    for stem in IDX_FILES[train]:
        hit = next((Path(folder, stem + ext) for ext in ("", ".gz") if Path(folder, stem + ext).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def idx_dirs(root: str, name: str = "FashionMNIST") -> list[str]:
    """Where the IDX files of ``name`` are looked for, in order: torchvision's layout under ``root``,
    then the system package's directory (Fashion-MNIST only)."""
    dirs = [os.path.abspath(os.path.join(root, name, "raw"))]
    if name == "FashionMNIST":
        dirs.append(SYSTEM_FASHIONMNIST)
    return dirs


def find_idx(root: str, train: bool, name: str = "FashionMNIST") -> tuple[Path, Path] | None:
    """The first (images, labels) IDX pair of a split found in ``idx_dirs``, or None."""
    for folder in idx_dirs(root, name):
        pair = _idx_pair(folder, train)
        if pair is not None:
            return pair
    return None


def load_idx(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 1, H, W)`` uint8 and labels int64 ``(N,)`` from a pair of IDX files.

    Raises:
        SpecError: a file that is not IDX, or images and labels of different counts.
    """
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise SpecError(f"{images} ({x.shape}) and {labels} ({y.shape}) are not N images and their N labels")
    return x[:, None], y.astype(np.int64)
