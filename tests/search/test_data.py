"""Data: loading, stratified seeded splits, normalisation, torchvision on-disk path, augment, batches."""

import os
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch

from search.data import (
    DATASETS,
    DataConfig,
    augment,
    batches,
    dataset_dir,
    dataset_info,
    load_source,
    load_splits,
    load_test,
    split_indices,
)
from space import SpecError

CPU = torch.device("cpu")


# -- configs and dataset table ------------------------------------------------------------------


def test_dataset_info_and_unknown_name_lists_valid_names():
    assert dataset_info("digits") == DATASETS["digits"]
    assert dataset_info("digits").size == 16 and not dataset_info("digits").flip
    assert not dataset_info("mnist").flip and not dataset_info("svhn").flip
    with pytest.raises(SpecError, match="did you mean .cifar10.") as e:
        dataset_info("cifar-10")
    for name in DATASETS:
        assert name in str(e.value)


@pytest.mark.parametrize("kwargs, field", [
    ({"dataset": "imagenet"}, "data.dataset"),
    ({"val_fraction": 0}, "data.val_fraction"),
    ({"val_fraction": 1.0}, "data.val_fraction"),
    ({"val_fraction": "0.1"}, "data.val_fraction"),
    ({"train_subset": 0}, "data.train_subset"),
    ({"train_subset": 2.5}, "data.train_subset"),
    ({"input_size": 2}, "data.input_size"),
    ({"augment": "yes"}, "data.augment"),
    ({"download": 1}, "data.download"),
    ({"crop_pad": -1}, "data.crop_pad"),
    ({"seed": -1}, "data.seed"),
    ({"root": ""}, "data.root"),
])
def test_data_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        DataConfig(**kwargs)


def test_data_config_normalises_int_floats_and_derives_pad():
    cfg = DataConfig(val_fraction=1 / 4)
    assert isinstance(DataConfig(dataset="synthetic", val_fraction=0.5).val_fraction, float)
    assert cfg.size == 16 and cfg.pad == 2
    assert DataConfig(dataset="cifar10").pad == 4
    assert DataConfig(augment=False).pad == 0
    assert DataConfig(crop_pad=3, input_size=32).pad == 3


# -- digits / synthetic -------------------------------------------------------------------------


def test_digits_shapes_classes_and_normalisation():
    cfg = DataConfig(dataset="digits", val_fraction=0.2)
    s = load_splits(cfg, CPU)
    # resident resized, on digits' 0..16 scale (no 8-bit form: float32); each batch is normalised
    assert s.train_x.shape[1:] == (1, 16, 16) and s.val_x.shape[1:] == (1, 16, 16)
    assert s.train_x.dtype == torch.float32 and float(s.train_x.max()) == 16
    assert s.input_size == 16 and s.info.num_classes == 10
    assert s.train_y.dtype == torch.int64
    assert len(s.train_x) + len(s.val_x) == 1797 - 360  # 20% of digits held out as its test set
    assert set(s.train_y.tolist()) == set(range(10)) == set(s.val_y.tolist())
    # normalised with the train split's own per-channel stats of the resized images
    train, val = s.prepare(s.train_x), s.prepare(s.val_x)
    assert train.shape[1:] == (1, 16, 16) and train.dtype == torch.float32
    assert train.mean().abs() < 1e-4 and (train.std() - 1).abs() < 1e-3
    assert val.mean().abs() < 0.2  # same stats, different images
    assert float(s.train_x.max()) == 16  # prepare never changes the data
    assert s.pad == 2 and s.flip is False


def test_prepared_batches_are_the_one_shot_path_bit_for_bit():
    """Normalising per batch gives exactly what normalising the whole resident set once gives (the
    float32-resident path before uint8, and what load_test and the export preprocessing do)."""
    from search.data import _normalise_

    for cfg in (DataConfig(dataset="digits", input_size=16), DataConfig(dataset="digits", input_size=6),
                DataConfig(dataset="synthetic", input_size=12)):
        s = load_splits(cfg, CPU)
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in (s.mean, s.std))
        whole = _normalise_(s.val_x.float().clone(), mean, std)
        batched = torch.cat([s.prepare(xb) for xb, _ in batches(s.val_x, s.val_y, 7, shuffle=False)])
        assert torch.equal(whole, batched), cfg


def test_8_bit_images_stay_uint8_resized_once_and_rounded(tmp_path):
    from search.data import to_resident

    _fake_fashionmnist(tmp_path)
    cfg = DataConfig(dataset="fashionmnist", root=str(tmp_path), download=False, input_size=16)
    s = load_splits(cfg, CPU)
    assert s.train_x.dtype == torch.uint8 and s.train_x.shape[1:] == (1, 16, 16)
    raw, _ = load_source(cfg, train=True)
    resized = torch.nn.functional.interpolate(raw[:5].float(), size=(16, 16), mode="bilinear",
                                              align_corners=False, antialias=True)
    assert torch.equal(to_resident(raw[:5], 16, CPU), resized.round().clamp(0, 255).to(torch.uint8))
    assert to_resident(raw[:5], 28, CPU).data_ptr() == raw[:5].data_ptr() or torch.equal(
        to_resident(raw[:5], 28, CPU), raw[:5])  # at its own size: as it is
    # statistics of the uint8 set (float64 sums) match the float32 statistics of the same pixels
    flat = s.train_x.double()
    assert s.mean[0] == pytest.approx(float(flat.mean()), rel=1e-12)
    assert s.std[0] == pytest.approx(float(flat.std(correction=0)), rel=1e-9)
    # one prepared batch is float32, normalised with them
    xb = s.prepare(s.train_x[:8])
    assert xb.dtype == torch.float32 and torch.equal(xb, (s.train_x[:8].float() - s.mean[0]) / torch.tensor(
        s.std[0], dtype=torch.float32))


def test_data_larger_than_the_free_memory_is_refused_with_size_free_memory_and_fix():
    from search.data import check_fits, data_bytes, free_memory

    free = free_memory(CPU)
    assert free is not None and free > 0
    cfg = DataConfig(dataset="digits", train_subset=1000)
    check_fits(cfg, data_bytes(1000, 1, 8, 8), CPU)  # fits
    with pytest.raises(SpecError) as e:
        check_fits(cfg, 2 * free, CPU)
    msg = str(e.value)
    assert "GiB" in msg and "free" in msg and "data.input_size" in msg and "data.train_subset (now 1000)" in msg


def test_input_size_resizes():
    s = load_splits(DataConfig(dataset="digits", input_size=24), CPU)
    assert s.prepare(s.train_x).shape[1:] == (1, 24, 24) and s.input_size == 24


def test_digits_test_set_is_fixed_and_disjoint_from_training_images():
    x_train, _ = load_source(DataConfig(dataset="digits"), train=True)
    x0, y0 = load_test(DataConfig(dataset="digits", seed=0), CPU)
    x1, y1 = load_test(DataConfig(dataset="digits", seed=5), CPU)
    assert torch.equal(y0, y1) and len(y0) == 360
    assert torch.bincount(y0).min() >= 35  # stratified
    s = load_splits(DataConfig(dataset="digits", seed=0), CPU)
    assert x0.shape[1:] == s.prepare(s.train_x).shape[1:]
    assert abs(x0.mean()) < 0.2  # normalised with the train stats
    # the reused-splits path gives the same tensors
    xs, _ = load_test(DataConfig(dataset="digits", seed=0), CPU, splits=s)
    assert torch.allclose(xs, x0, atol=1e-5)
    # no test image is one of the training set's images (the source rows differ as sets)
    x_test_raw, _ = load_source(DataConfig(dataset="digits"), train=False)
    assert len(x_train) + len(x_test_raw) == 1797


def test_synthetic_is_deterministic_and_shaped():
    a, b = load_source(DataConfig(dataset="synthetic"), True), load_source(DataConfig("synthetic"), True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape[1:] == (3, 16, 16) and set(a[1].tolist()) == {0, 1, 2, 3}
    x, y = load_test(DataConfig(dataset="synthetic"), CPU)
    assert x.shape[1:] == (3, 16, 16) and len(y) > 0


# -- split and subset ---------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_stratified():
    _, y = load_source(DataConfig(dataset="digits"), train=True)
    cfg = DataConfig(dataset="digits", val_fraction=0.25, seed=3)
    tr, va = split_indices(y, cfg)
    tr2, va2 = split_indices(y, cfg)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    tr3, va3 = split_indices(y, DataConfig(dataset="digits", val_fraction=0.25, seed=4))
    assert not np.array_equal(va, va3)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(y)
    assert abs(len(va) / len(y) - 0.25) < 0.01
    total, val = np.bincount(np.asarray(y)), np.bincount(np.asarray(y)[va])
    assert np.all(np.abs(val / total - 0.25) < 0.03)  # each class keeps its share


def test_subset_is_stratified_and_keeps_the_val_split():
    _, y = load_source(DataConfig(dataset="digits"), train=True)
    full_tr, full_va = split_indices(y, DataConfig(dataset="digits", seed=1))
    tr, va = split_indices(y, DataConfig(dataset="digits", seed=1, train_subset=200))
    assert len(tr) == 200 and set(tr) <= set(full_tr)
    assert np.array_equal(va, full_va)
    counts = np.bincount(np.asarray(y)[tr], minlength=10)
    assert counts.min() >= 18 and counts.max() <= 22
    s = load_splits(DataConfig(dataset="digits", seed=1, train_subset=200), CPU)
    assert len(s.train_y) == 200
    # a subset larger than the split is all of it
    assert len(split_indices(y, DataConfig(dataset="digits", train_subset=10**6))[0]) == len(full_tr)


def test_too_small_split_is_a_spec_error():
    _, y = load_source(DataConfig(dataset="digits"), train=True)
    with pytest.raises(SpecError, match="train_subset"):
        split_indices(y, DataConfig(dataset="digits", train_subset=3))


# -- torchvision on-disk format -----------------------------------------------------------------


def _write_idx(path: str, arr: np.ndarray) -> None:
    """An MNIST idx-ubyte file: magic (0, 0, 0x08 = uint8, ndim), big-endian dims, data."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, arr.ndim))
        f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def _fake_fashionmnist(root, n_train=120, n_test=40) -> None:
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        x = rng.integers(0, 50, (n, 28, 28))
        x[:, :, :] += (y * 20)[:, None, None]  # class-dependent brightness
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), x)
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), y)


def test_torchvision_dataset_loads_from_disk_without_download(tmp_path):
    _fake_fashionmnist(tmp_path)
    cfg = DataConfig(dataset="fashionmnist", root=str(tmp_path), download=False, val_fraction=0.25)
    s = load_splits(cfg, CPU)
    assert s.train_x.shape == (90, 1, 28, 28) and s.val_x.shape == (30, 1, 28, 28)
    assert s.train_x.dtype == torch.uint8
    assert s.info.num_classes == 10 and s.flip is True and s.pad == 3
    assert s.prepare(s.train_x).mean().abs() < 1e-4
    assert sorted(np.bincount(s.val_y.numpy()).tolist()) == [3] * 10
    x, y = load_test(cfg, CPU)
    assert x.shape == (40, 1, 28, 28) and y.tolist() == [i % 10 for i in range(40)]
    small = load_splits(DataConfig(dataset="fashionmnist", root=str(tmp_path), download=False,
                                   input_size=14), CPU)
    assert small.prepare(small.train_x).shape[1:] == (1, 14, 14)


def _write_gz_idx(path, arr: np.ndarray) -> None:
    import gzip

    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
                + arr.astype(np.uint8).tobytes())


def test_fashionmnist_reads_gzip_idx_under_root_before_the_system_package(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 20)):
        _write_gz_idx(raw / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 7))
        _write_gz_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    cfg = DataConfig(dataset="fashionmnist", root=str(tmp_path), download=False)
    x, y = load_source(cfg, train=True)
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.uint8 and int(x.max()) == 7
    assert y.dtype == torch.int64 and y.tolist() == [i % 10 for i in range(30)]
    assert load_source(cfg, train=False)[0].shape == (20, 1, 28, 28)


def test_truncated_idx_file_is_a_spec_error_naming_it(tmp_path):
    from search.sources import read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    _write_idx(str(path), np.zeros((4, 28, 28)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SpecError, match="train-images-idx3-ubyte.*truncated"):
        read_idx(path)
    path.write_bytes(b"not an idx file")
    with pytest.raises(SpecError, match="not an IDX file"):
        read_idx(path)


def test_fashionmnist_without_any_files_falls_back_to_torchvision_download(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    import search.sources

    def offline(self):
        raise URLError("Temporary failure in name resolution")

    monkeypatch.setattr(search.sources, "SYSTEM_FASHIONMNIST", str(tmp_path / "no-package"))
    monkeypatch.setattr(tvd.FashionMNIST, "download", offline)
    with pytest.raises(SpecError) as e:
        load_source(DataConfig(dataset="fashionmnist", root=str(tmp_path), download=True), train=True)
    msg = str(e.value)
    assert "download failed" in msg and "name resolution" in msg and "dataset-fashion-mnist" in msg


HAS_FASHIONMNIST_PACKAGE = all(os.path.isfile(os.path.join("/usr/share/datasets/fashion-mnist", f)) for f in (
    "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz"))


@pytest.mark.skipif(not HAS_FASHIONMNIST_PACKAGE, reason="SKIPPED LOUDLY: Debian's dataset-fashion-mnist is not "
                    "installed (apt-get install dataset-fashion-mnist; .ci/run installs it where apt-get can)")
def test_fashionmnist_from_the_debian_package_offline(tmp_path):
    cfg = DataConfig(dataset="fashionmnist", root=str(tmp_path / "empty"), download=False)
    x, y = load_source(cfg, train=True)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [6000] * 10
    xt, yt = load_source(cfg, train=False)
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10
    assert not (tmp_path / "empty").exists()  # nothing downloaded or written


def test_cifar_and_svhn_arrays_become_nchw_tensors(tmp_path, monkeypatch):
    """torchvision checks these files' md5 sums, so the check is bypassed for the fakes."""
    import pickle

    import scipy.io
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.CIFAR10, "_load_meta", lambda self: None)
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    # CIFAR rows are 3072 bytes: the R plane, then G, then B
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    planes = np.repeat(np.array([10, 100, 200], np.uint8), 1024)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.tile(planes, (10, 1)), "labels": list(range(10))}, f)
    x, y = load_source(DataConfig(dataset="cifar10", root=str(tmp_path), download=False), True)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert x[:, :, 5, 7].float().mean(0).tolist() == [10, 100, 200]
    # SVHN .mat: X is (32, 32, 3, N), y is (N, 1) with 10 meaning the digit 0
    for split in ("train", "test"):
        xs = np.zeros((32, 32, 3, 20), np.uint8)
        xs[:, :, 1] = 50
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat",
                         {"X": xs, "y": (np.arange(20) % 10 + 1).reshape(-1, 1)})
    x, y = load_source(DataConfig(dataset="svhn", root=str(tmp_path), download=False), False)
    assert x.shape == (20, 3, 32, 32) and x[:, 1].float().mean() == 50 and x[:, 0].sum() == 0
    assert sorted(set(y.tolist())) == list(range(10))


def test_missing_dataset_without_download_names_the_directory(tmp_path):
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(SpecError) as e:
        load_splits(cfg, CPU)
    msg = str(e.value)
    assert dataset_dir(cfg) in msg and "cifar-10-batches-py" in msg
    assert "download: true" in msg and "not found" in msg.lower()


def test_failed_download_is_a_spec_error_with_the_reason(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise URLError("Temporary failure in name resolution")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), download=True)
    with pytest.raises(SpecError) as e:
        load_splits(cfg, CPU)
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "MNIST", "raw") in msg
    assert "name resolution" in msg and "download failed" in msg
    assert isinstance(e.value.__cause__, URLError)


# -- augment ------------------------------------------------------------------------------------


def _images(n=16, c=3, s=8):
    return torch.arange(n * c * s * s, dtype=torch.float32).view(n, c, s, s)


def test_augment_shape_determinism_and_change():
    x = _images()
    a = augment(x, 2, True, torch.Generator().manual_seed(0))
    b = augment(x, 2, True, torch.Generator().manual_seed(0))
    c = augment(x, 2, True, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    assert augment(x, 0, False, None) is x


def test_augment_flip_only_mirrors_some_images_and_keeps_others():
    x = _images()
    out = augment(x, 0, True, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert any(same) and any(mirrored)


def test_augment_crop_is_a_window_of_the_padded_image_and_never_flips_when_off():
    x = _images(n=12)
    pad = 2
    out = augment(x, pad, False, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")
    offsets = set()
    for o, p in zip(out, padded, strict=True):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(o, p[:, dy:dy + 8, dx:dx + 8])]
        assert hits, "every output must be a crop of its padded input"
        offsets.add(hits[0])
    assert len(offsets) > 1
    # channels move together: a channel of an output never comes from another image
    assert torch.equal(out[:, 1] - out[:, 0], torch.full_like(out[:, 0], 64.0))


# -- batches ------------------------------------------------------------------------------------


def test_eval_batches_cover_every_index_once_in_order():
    x = torch.arange(10).float().view(10, 1)
    y = torch.arange(10)
    got = list(batches(x, y, 4, shuffle=False))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    assert torch.cat([b[1] for b in got]).tolist() == list(range(10))
    assert torch.equal(torch.cat([b[0] for b in got]).view(-1), x.view(-1))


def test_train_batches_shuffle_drop_partial_only_when_a_full_batch_exists():
    x, y = torch.arange(10).float().view(10, 1), torch.arange(10)
    got = list(batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0),
                       drop_last=True))
    idx = torch.cat([b[1] for b in got]).tolist()
    assert [len(b[1]) for b in got] == [4, 4] and len(set(idx)) == 8
    assert idx != sorted(idx)
    for bx, by in got:
        assert torch.equal(bx.view(-1), by.float())  # x and y stay paired
    again = list(batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0),
                         drop_last=True))
    assert idx == torch.cat([b[1] for b in again]).tolist()
    small = list(batches(x, y, 32, shuffle=True, generator=torch.Generator().manual_seed(0),
                         drop_last=True))
    assert len(small) == 1 and sorted(small[0][1].tolist()) == list(range(10))


def test_export_preprocessing_reproduces_the_8_bit_resized_path_bit_for_bit(tmp_path):
    from PIL import Image

    from search.data import train_statistics
    from search.export import Preprocessing

    _fake_fashionmnist(tmp_path)
    for size in (16, 28, 40):
        cfg = DataConfig(dataset="fashionmnist", root=str(tmp_path), download=False, input_size=size)
        prep = Preprocessing.for_data(cfg, *train_statistics(cfg))
        assert prep.round_resized and prep.pixel_max == 255
        assert Preprocessing.from_dict(prep.to_dict(), prep.classes) == prep
        raw, _ = load_source(cfg, train=False)
        want, _ = load_test(cfg, CPU)
        assert torch.equal(prep(raw.numpy()), want)  # a uint8 NCHW batch
        Image.fromarray(raw[3, 0].numpy()).save(tmp_path / "x.png")
        assert torch.equal(prep(tmp_path / "x.png"), want[3:4])  # an 8-bit PNG file
        s = load_splits(cfg, CPU)
        assert (s.mean, s.std) == (prep.mean, prep.std)
