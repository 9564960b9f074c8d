"""Data sources that read files: image folders, ``.npz`` arrays, gzip IDX (Fashion-MNIST).

A source turns the ``data:`` section into raw images and labels at their native size and pixel
scale (numpy, ``(N, C, H, W)``) plus a ``DatasetInfo``; everything after that (split, resize,
normalise, device, augment, export preprocessing) is ``search.data``'s and shared by every
source. This module does not import torch: the experiment file needs a source's
``DatasetInfo`` (channels, classes) before anything else is loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.config import DatasetInfo
from space.errors import SpecError, check_keys

if TYPE_CHECKING:
    from search.config import DataConfig

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


# -- shared by the file sources -----------------------------------------------------------------------

FILE_SOURCES = ("folder", "arrays")  # data.dataset values whose DatasetInfo comes from data.path's files
CACHE_VERSION = 1  # bump when the decode cache's layout or the decoding changes
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # PIL modes without colour
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Images:
    """What a file source gives: uint8 or float images ``(N, C, H, W)`` and int64 labels per split.

    Args:
        info: the dataset's DatasetInfo (channels, classes and their names, size, flips, pixel scale).
        train: (images, labels) of the training set.
        val: (images, labels) of an explicit validation set, or None (a stratified split of train).
        test: (images, labels) of the test set (``evaluate`` only), or None.
        content: a hash of the images, labels and class names (the recipe's ``data.content``).
    """

    info: DatasetInfo
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray] | None
    content: str


def _where(cfg: DataConfig) -> str:
    return f"data.path {cfg.path}"


def _hash(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def content_hash(x: np.ndarray, ys: list[np.ndarray], classes: tuple[str, ...]) -> str:
    """The data's identity: a hash of the images' bytes, shape and dtype, the labels and the class names."""
    h = hashlib.sha256(f"{x.dtype}{x.shape}{json.dumps(list(classes))}".encode())
    for i in range(0, len(x), 4096):
        h.update(np.ascontiguousarray(x[i:i + 4096]).tobytes())
    for y in ys:
        h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def luma_uint8(x: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(N, 3, H, W)`` to grey ``(N, 1, H, W)``: ITU-R 601 luma, PIL's ``convert("L")`` bit for bit."""
    r, g, b = (x[:, i:i + 1].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Images ``(N, C, H, W)`` with ``channels`` channels: RGB -> grey by luma, grey -> RGB by repeating,
    as ``search.export.Preprocessing`` converts an image."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1:
        return np.repeat(x, 3, axis=1)
    if x.dtype == np.uint8:
        return luma_uint8(x)
    x = x.astype(np.float32)
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# -- image folders ------------------------------------------------------------------------------------

def image_extensions() -> frozenset[str]:
    """File extensions Pillow reads (``.png``, ``.jpg``, ...), lower case."""
    from PIL import Image

    return frozenset(e.lower() for e in Image.registered_extensions())


@dataclass(frozen=True)
class FolderScan:
    """An image folder's files, without opening any image.

    Args:
        root: the folder (``data.path``).
        classes: class names, sorted: the training folder's subfolders.
        files: split -> [(absolute path, label)], each class's files in sorted order.
        ignored: files that are not images (by extension), ignored.
        key: a hash of every image file's path, size and modification time.
    """

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]
    ignored: int
    key: str


def scan_folder(path: str) -> FolderScan:
    """List an image folder (one subfolder per class; optional ``train/``, ``val/``, ``test/``).

    Raises:
        SpecError: no such folder, no class folders, a class folder without an image file, or a
            ``val/``/``test/`` class the training folder does not have.
    """
    root = Path(path)
    if not root.exists():
        raise SpecError(f"data.path {path}: no such directory; give a folder with one subfolder of images per "
                        "class (e.g. DIR/cat/1.png, DIR/dog/2.png)")
    if not root.is_dir():
        raise SpecError(f"data.path {path}: not a directory; data.dataset folder reads a folder with one subfolder "
                        "per class (a .npz file is data.dataset arrays)")
    named = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if named and "train" not in named:
        raise SpecError(f"data.path {path}: has {'/, '.join(named)}/ but no train/; put the training classes in "
                        f"{root / 'train'}/ (or use no train/, val/, test/ folders at all)")
    roots = named or {"train": root}

    def subdirs(d: Path) -> list[str]:
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    classes = tuple(subdirs(roots["train"]))
    if not classes:
        raise SpecError(f"data.path {roots['train']}: empty: no class folders; put each class's images in a "
                        f"subfolder named after it (e.g. {roots['train'] / 'cat' / '1.png'})")
    exts = image_extensions()
    cut = len(str(root).rstrip(os.sep)) + 1  # a file's path relative to the root (os.path.relpath is 10x slower)
    files: dict[str, list[tuple[str, int]]] = {}
    ignored = 0
    h = hashlib.sha256(f"{CACHE_VERSION}".encode())
    for split, d in roots.items():
        if split != "train":
            unknown = sorted(set(subdirs(d)) - set(classes))
            if unknown:
                raise SpecError(f"data.path {d}: class folder {unknown[0]!r} is not a class of {roots['train']} "
                                f"({', '.join(classes)}); every {split} class must have training images")
        rows: list[tuple[str, int]] = []
        for label, name in enumerate(classes):
            folder = d / name
            found = 0
            for dirpath, dirnames, names in os.walk(folder, followlinks=True):
                dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
                for fname in sorted(names):
                    full = os.path.join(dirpath, fname)
                    if os.path.splitext(fname)[1].lower() not in exts or fname.startswith("."):
                        ignored += 1
                        continue
                    st = os.stat(full)
                    rows.append((full, label))
                    h.update(f"{split}\0{label}\0{full[cut:]}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                    found += 1
            if split == "train" and not found:
                raise SpecError(f"data.path {folder}: class {name!r} has no image file (one Pillow reads: .png, "
                                ".jpg, .bmp, .gif, .tif, .webp, ...); add images or remove the folder")
        files[split] = rows
    return FolderScan(root, classes, files, ignored, h.hexdigest()[:24])


def _resize_uint8(a: np.ndarray, size: int) -> np.ndarray:
    """One uint8 image ``(C, H, W)`` resized to ``size`` and rounded back to 8 bits, as ``search.data.to_resident``."""
    import torch
    import torch.nn.functional as F

    h, w = a.shape[1:]
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(a)).float()[None], size=(size, size), mode="bilinear",
                      align_corners=False, antialias=size < min(h, w))
    return x.round_().clamp_(0, 255).to(torch.uint8)[0].numpy()


def _decode_one(path: str, mode: str) -> tuple[np.ndarray | None, tuple[int, int], bool, str]:
    """(image ``(C, H, W)`` uint8 at its size or None, (width, height), grey, error) of one file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            grey = im.mode in GREY_MODES
            want = mode if mode != "auto" else ("L" if grey else "RGB")
            a = np.array(im if im.mode == want else im.convert(want))  # writable, for torch
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ... for bad files
        return None, (0, 0), False, f"{type(e).__name__}: {e}"
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return np.ascontiguousarray(a), (a.shape[2], a.shape[1]), grey, ""


def _decode_chunk(paths: list[str], mode: str) -> list:
    return [_decode_one(p, mode) for p in paths]


DECODE_CHUNK = 256  # files per task of a decode process
POOL_FROM = 1000  # files from which the decode runs in parallel processes


def _pool_context():
    """Forked decode processes where the OS can fork (no interpreter start, no imports: they only run Pillow
    and NumPy), spawned ones elsewhere."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def decode_files(paths: list[str], mode: str, size: int | None, workers: int | None = None,
                 desc: str = "decoding", pool_from: int = POOL_FROM) -> list:
    """Decode image files, in parallel processes for many files, with a progress bar on a terminal.

    Args:
        paths: the files.
        mode: ``L``, ``RGB`` or ``auto`` (grey images as ``L``, others as ``RGB``).
        size: resize every image of another size to ``size`` x ``size`` (bilinear, antialiased when
            shrinking, rounded to 8 bits; in this process, with torch); None keeps each image's size.
        workers: processes; None = the cores this process may use.
        desc: the progress bar's label.
        pool_from: files from which processes decode them (fewer: this process).

    Returns:
        per file: (image ``(C, H, W)`` uint8 or None, (width, height), grey, error message).
    """
    from tqdm import tqdm

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=None, file=sys.stderr, leave=False)
    chunks = [paths[i:i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    out: list = []

    def take(part: list) -> None:
        if size is not None:
            part = [(_resize_uint8(img, size) if img is not None and img.shape[1:] != (size, size) else img, *rest)
                    for img, *rest in part]
        out.extend(part)
        bar.update(len(part))
    try:
        if len(paths) < pool_from or workers < 2:
            for chunk in chunks:
                take(_decode_chunk(chunk, mode))
            return out
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
            for part in pool.map(_decode_chunk, chunks, [mode] * len(chunks)):
                take(part)
        return out
    finally:
        bar.close()


def free_host_memory() -> int | None:
    """Bytes of memory available to new allocations on this machine (Linux ``MemAvailable``; None: unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


DATA_MEMORY_SHARE = 0.8  # the resident data may take at most this share of the device's free memory


def size_text(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def memory_refusal(cfg: DataConfig, nbytes: int, where: str, free: int | None) -> SpecError | None:
    """The error for data of ``nbytes`` that does not fit in ``free`` bytes of ``where``, or None when it fits."""
    if free is None or nbytes <= DATA_MEMORY_SHARE * free:
        return None
    return SpecError(
        f"data.dataset '{cfg.dataset}' needs {size_text(nbytes)} resident on {where} (uint8 where the pixels are "
        f"8-bit), more than {DATA_MEMORY_SHARE:.0%} of its {size_text(free)} free; lower data.input_size "
        f"(now {cfg.input_size or 'the images size'}) or data.train_subset "
        f"(now {cfg.train_subset or 'all the images'})"
    )


def cache_dir(cfg: DataConfig) -> Path:
    """Where decoded folders are cached: ``<data.root>/cache``."""
    return Path(cfg.root) / "cache"


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _folder_cache(cfg: DataConfig) -> tuple[dict, Path]:
    """The decode cache of ``cfg``'s folder (its metadata and the images' ``.npy``), decoded first when missing.

    The images are decoded once, in parallel, into one uint8 array ``(N, C, S, S)`` (train, then
    val, then test) keyed by every file's path, size and modification time, the channels and the
    resize; a study, a resume or another worker reading the same folder loads it in seconds.
    """
    scan = scan_folder(cfg.path)
    key = _hash(scan.key, str(cfg.channels), str(cfg.input_size), str(cfg.skip_unreadable))[:24]
    folder = cache_dir(cfg)
    meta_path, npy_path = folder / f"folder-{key}.json", folder / f"folder-{key}.npy"
    if meta_path.is_file() and npy_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("version") == CACHE_VERSION:
                return meta, npy_path
        except (OSError, ValueError):
            pass  # a damaged cache is decoded again
    rows = [(split, path, label) for split in SPLITS for path, label in scan.files.get(split, [])]
    if cfg.input_size is not None:
        channels = 1 if cfg.channels in ("auto", 1) else 3
        error = memory_refusal(cfg, len(rows) * channels * cfg.input_size ** 2, "this machine (decoding)",
                               free_host_memory())
        if error is not None:
            raise error
    mode = {"auto": "auto", 1: "L", 3: "RGB"}[cfg.channels]
    t0 = time.perf_counter()
    decoded = decode_files([r[1] for r in rows], mode, cfg.input_size,
                           desc=f"decoding {scan.root} (once; cached in {folder})")
    seconds = time.perf_counter() - t0
    keep, skipped, sizes = [], [], {}
    for (split, path, label), (img, wh, grey, err) in zip(rows, decoded, strict=True):
        if img is None:
            if not cfg.skip_unreadable:
                raise SpecError(f"{path}: unreadable or truncated image ({err[:160]}); fix or remove it, or set "
                                "data.skip_unreadable: true to skip such images")
            skipped.append(path)
            continue
        sizes.setdefault(wh, path)
        keep.append((split, label, img, grey))
    if len(sizes) > 1 and cfg.input_size is None:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise SpecError(f"data.path {cfg.path}: the images differ in size ({pa} is {a[0]}x{a[1]}, {pb} is "
                        f"{b[0]}x{b[1]}); set data.input_size to the side they are all resized to (e.g. 32)")
    if cfg.input_size is None:
        (w, h), path = next(iter(sizes.items()), ((0, 0), ""))
        if w != h:
            raise SpecError(f"data.path {cfg.path}: the images are {w}x{h}, not square; set data.input_size to "
                            "the side they are resized to")
    for label, name in enumerate(scan.classes):
        if not any(s == "train" and lab == label for s, lab, _, _ in keep):
            raise SpecError(f"data.path {scan.root}: class folder {name!r} has no readable image "
                            f"({len(skipped)} unreadable skipped); add images or remove the folder")
    channels = cfg.channels if cfg.channels != "auto" else (1 if all(g for *_, g in keep) else 3)
    x = np.stack([img if img.shape[0] == channels else np.repeat(img, 3, axis=0) for _, _, img, _ in keep])
    labels = {s: [lab for split, lab, _, _ in keep if split == s] for s in SPLITS if s in scan.files}
    ys = [np.asarray(labels[s], np.int64) for s in labels]
    meta = {"version": CACHE_VERSION, "path": str(scan.root), "classes": list(scan.classes), "channels": channels,
            "size": int(x.shape[-1]), "counts": {s: len(v) for s, v in labels.items()}, "labels": labels,
            "skipped": skipped, "ignored": scan.ignored, "content": content_hash(x, ys, scan.classes),
            "decode_s": round(seconds, 3)}
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(npy_path, lambda p: np.save(open(p, "wb"), x))
    _write_atomic(meta_path, lambda p: p.write_text(json.dumps(meta)))
    print(f"data: decoded {len(x):,} images of {len(scan.classes)} classes in {scan.root} in {seconds:.1f} s "
          f"({len(x) / max(seconds, 1e-9):,.0f} images/s); {scan.ignored} non-image files ignored, {len(skipped)} "
          f"unreadable images skipped; cached in {npy_path}", file=sys.stderr)
    return meta, npy_path


def _meta_info(meta: dict) -> DatasetInfo:
    classes = tuple(meta["classes"])
    return DatasetInfo(meta["channels"], len(classes), meta["size"], True, classes, 255.0)


def _folder_images(cfg: DataConfig) -> Images:
    meta, npy_path = _folder_cache(cfg)
    x = np.load(npy_path, mmap_mode="r")
    parts, start = {}, 0
    for split, n in meta["counts"].items():
        parts[split] = (np.array(x[start:start + n]), np.asarray(meta["labels"][split], np.int64))
        start += n
    return Images(_meta_info(meta), parts["train"], parts.get("val"), parts.get("test"), meta["content"])


# -- arrays (.npz) ---------------------------------------------------------------------------------------

NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "classes")


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of an array in an ``.npz`` without reading its data."""
    with zf.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), dtype


def _layout(shape: tuple[int, ...], key: str, where: str) -> str:
    """``NHW``, ``NCHW`` or ``NHWC`` for an image array's shape."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "NCHW"
    if len(shape) == 4 and shape[3] in (1, 3):
        return "NHWC"
    raise SpecError(f"{where}: {key} has shape {shape}; images must be N x H x W, N x C x H x W or N x H x W x C "
                    "with C 1 (grey) or 3 (RGB)")


def _npz_check(cfg: DataConfig) -> tuple[dict, tuple[int, int, int], np.dtype, tuple[str, ...]]:
    """Check an ``.npz`` for data.dataset arrays from its headers and labels, without reading the images.

    Returns:
        ({split: labels}, (C, H, W) in NCHW, the images' dtype, class names).
    """
    path, where = Path(cfg.path), _where(cfg)
    if not path.is_file():
        raise SpecError(f"{where}: no such file; give an .npz with x_train and y_train (np.savez(path, "
                        "x_train=images, y_train=labels))")
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise SpecError(f"{where}: not an .npz archive ({e}); write it with numpy.savez") from None
    with zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        check_keys(dict.fromkeys(names), NPZ_KEYS, where)
        missing = [k for k in ("x_train", "y_train") if k not in names]
        if missing:
            raise SpecError(f"{where}: missing {' and '.join(missing)} (it has {', '.join(names) or 'no arrays'}); "
                            "an .npz for data.dataset arrays holds x_train, y_train and optionally x_val/y_val, "
                            "x_test/y_test and classes")
        for split in ("val", "test"):
            if (f"x_{split}" in names) != (f"y_{split}" in names):
                have, lack = (f"x_{split}", f"y_{split}") if f"x_{split}" in names else (f"y_{split}", f"x_{split}")
                raise SpecError(f"{where}: has {have} but no {lack}; give both or neither")
        splits = [s for s in SPLITS if f"x_{s}" in names]
        headers = {s: _npy_header(zf, f"x_{s}") for s in splits}
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = {s: z[f"y_{s}"] for s in splits}
            names_arr = z["classes"] if "classes" in names else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise SpecError(f"{where}: cannot read its arrays ({e}); write it with numpy.savez without objects") from None
    shapes = {}
    for s in splits:
        shape, dtype = headers[s]
        layout = _layout(shape, f"x_{s}", where)
        if dtype.kind not in "uif":
            raise SpecError(f"{where}: x_{s} is {dtype}; images must be uint8 (8-bit) or float numbers")
        chw = ((1, *shape[1:]) if layout == "NHW" else shape[1:] if layout == "NCHW"
               else (shape[3], shape[1], shape[2]))
        shapes[s] = (chw, dtype)
        y = labels[s]
        if y.ndim == 2 and y.shape[1] == 1:
            y = labels[s] = y[:, 0]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise SpecError(f"{where}: y_{s} is {y.dtype} of shape {y.shape}; labels must be whole numbers, one "
                            "per image (shape (N,))")
        if len(y) != shape[0]:
            raise SpecError(f"{where}: x_{s} has {shape[0]} images but y_{s} has {len(y)} labels; give one label "
                            "per image")
    chw, dtype = shapes["train"]
    for s in splits:
        if shapes[s][0] != chw:
            raise SpecError(f"{where}: x_{s} images are {shapes[s][0]} (C, H, W) but x_train's are {chw}; every "
                            "split needs images of one shape")
    if len(labels["train"]) == 0:
        raise SpecError(f"{where}: x_train holds no images")
    top = max(int(y.max()) for y in labels.values() if len(y))
    low = min(int(y.min()) for y in labels.values() if len(y))
    if names_arr is not None:
        if names_arr.ndim != 1 or names_arr.dtype.kind not in "UuiS" or len(set(names_arr.tolist())) != len(names_arr):
            raise SpecError(f"{where}: classes must be a 1-d array of distinct names, got {names_arr.dtype} "
                            f"of shape {names_arr.shape}")
        classes = tuple(str(c.decode() if isinstance(c, bytes) else c) for c in names_arr.tolist())
    else:
        classes = tuple(str(i) for i in range(top + 1))
    if low < 0 or top >= len(classes):
        bad = low if low < 0 else top
        raise SpecError(f"{where}: label {bad} is out of range: labels must be 0..{len(classes) - 1} "
                        + ("(one per name in classes)" if names_arr is not None else ""))
    return labels, chw, dtype, classes


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _arrays_info(cfg: DataConfig) -> tuple[DatasetInfo, str]:
    _, (c, h, w), dtype, classes = _npz_check(cfg)
    if h != w and cfg.input_size is None:
        raise SpecError(f"{_where(cfg)}: the images are {h}x{w} (H x W), not square; set data.input_size to the "
                        "side they are resized to")
    channels = c if cfg.channels == "auto" else cfg.channels
    return (DatasetInfo(channels, len(classes), h, True, classes, 255.0 if dtype == np.uint8 else None),
            _file_hash(cfg.path))


def _arrays_images(cfg: DataConfig) -> Images:
    labels, _, _, classes = _npz_check(cfg)
    info, content = _arrays_info(cfg)
    parts = {}
    with np.load(cfg.path, allow_pickle=False) as z:
        for s in labels:
            x = z[f"x_{s}"]
            layout = _layout(x.shape, f"x_{s}", _where(cfg))
            x = x[:, None] if layout == "NHW" else x.transpose(0, 3, 1, 2) if layout == "NHWC" else x
            x = np.ascontiguousarray(x if x.dtype == np.uint8 else x.astype(np.float32))
            parts[s] = (convert_channels(x, info.in_ch), labels[s].astype(np.int64))
    return Images(info, parts["train"], parts.get("val"), parts.get("test"), content)


# -- the file sources' interface -------------------------------------------------------------------------

def describe(cfg: DataConfig) -> tuple[DatasetInfo, str]:
    """A file source's DatasetInfo and content hash (a folder is decoded and cached the first time).

    Args:
        cfg: a data config with ``dataset`` in ``FILE_SOURCES``.
    """
    return _folder_info(cfg) if cfg.dataset == "folder" else _arrays_info(cfg)


def _folder_info(cfg: DataConfig) -> tuple[DatasetInfo, str]:
    meta, _ = _folder_cache(cfg)
    return _meta_info(meta), meta["content"]


def load_files(cfg: DataConfig) -> Images:
    """A file source's images and labels per split (``Images``), at their size and pixel scale.

    Args:
        cfg: a data config with ``dataset`` in ``FILE_SOURCES``.
    """
    return _folder_images(cfg) if cfg.dataset == "folder" else _arrays_images(cfg)
