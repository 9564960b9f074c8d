"""Your own data: image folders and .npz arrays as sources, the decode cache, bad input, and the way to predict.

Every bad input is refused by `resnext-nas search` with exit status 2 and one line, and nothing is recorded.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from search.cli import main
from search.config import DataConfig, load_experiment
from search.data import load_source, load_splits, load_test
from search.storage import recipe

from .conftest import tiny_raw

CPU = torch.device("cpu")
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "emu": (40, 40, 200)}


def make_folder(root, counts=None, size=(12, 12), grey=False, seed=0, start=0):
    """One subfolder per class of PNGs whose colour says the class (plus noise)."""
    rng = np.random.default_rng(seed)
    for name, n in (counts or {"cat": 8, "dog": 8, "emu": 8}).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            a = np.clip(np.array(COLOURS[name])[None, None] + rng.integers(-30, 30, (*size[::-1], 3)), 0, 255)
            im = Image.fromarray(a.astype(np.uint8))
            (im.convert("L") if grey else im).save(root / name / f"{i}.png")
    return root


def folder_cfg(tmp_path, path, **kw):
    return DataConfig(dataset="folder", path=str(path), root=str(tmp_path / "data"), val_fraction=0.25, **kw)


# -- folders ----------------------------------------------------------------------------------------


def test_a_folder_gives_classes_channels_and_uint8_splits(tmp_path):
    imgs = make_folder(tmp_path / "imgs")
    (imgs / "cat" / "notes.txt").write_text("not an image")
    (imgs / "README").write_text("not a class")
    cfg = folder_cfg(tmp_path, imgs)
    info = cfg.info
    assert info.classes == ("cat", "dog", "emu") and info.num_classes == 3 and info.in_ch == 3
    assert info.size == 12 and info.pixel_max == 255
    s = load_splits(cfg, CPU)
    assert s.train_x.dtype == torch.uint8 and s.train_x.shape[1:] == (3, 12, 12)
    assert len(s.train_y) + len(s.val_y) == 24 and sorted(set(s.val_y.tolist())) == [0, 1, 2]
    meta = json.loads(next((tmp_path / "data" / "cache").glob("folder-*.json")).read_text())
    assert meta["ignored"] == 1 and meta["skipped"] == [] and meta["counts"] == {"train": 24}
    # the cat images are red: the decoded pixels are the files' pixels
    cat = s.train_x[s.train_y == 0].float().mean((0, 2, 3))
    assert cat[0] > 150 and cat[1] < 90


def test_channels_auto_is_grey_only_when_every_image_is_and_can_be_forced(tmp_path):
    grey = make_folder(tmp_path / "grey", grey=True)
    assert folder_cfg(tmp_path, grey).info.in_ch == 1
    mixed = make_folder(tmp_path / "mixed", grey=True)
    make_folder(mixed, {"cat": 1}, start=100)  # one colour image
    assert folder_cfg(tmp_path, mixed).info.in_ch == 3
    forced = folder_cfg(tmp_path, mixed, channels=1)
    assert forced.info.in_ch == 1
    x, _ = load_source(forced, train=True)
    rgb = np.asarray(Image.open(mixed / "cat" / "100.png").convert("L"))
    names = sorted(p.name for p in (mixed / "cat").iterdir())
    assert np.array_equal(x[names.index("100.png"), 0].numpy(), rgb)  # PIL's luma, bit for bit


def test_the_decode_cache_is_reused_and_a_changed_folder_is_another_recipe(tmp_path, capfd):
    imgs = make_folder(tmp_path / "imgs")
    raw = tiny_raw(tmp_path, data={"dataset": "folder", "path": str(imgs), "root": str(tmp_path / "data")})
    raw["space"]["num_stages"] = [1]
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(raw))
    before = recipe(load_experiment(exp))
    assert "decoded 24 images of 3 classes" in capfd.readouterr().err
    again = load_experiment(exp)
    assert recipe(again) == before and capfd.readouterr().err == ""  # read from the cache, not decoded
    assert before["data.classes"] == ["cat", "dog", "emu"] and len(before["data.content"]) == 16
    assert "data.path" not in before  # where the files are is not the recipe; what they hold is
    make_folder(imgs, {"dog": 1}, seed=5)  # dog/0.png rewritten with other pixels
    assert recipe(load_experiment(exp))["data.content"] != before["data.content"]
    os.utime(imgs / "dog" / "0.png")  # touched, same pixels: decoded again, same content
    assert recipe(load_experiment(exp))["data.content"] == recipe(load_experiment(exp))["data.content"]


def test_train_val_test_folders_and_resizing_images_of_several_sizes(tmp_path):
    root = tmp_path / "imgs"
    make_folder(root / "train", {"cat": 6, "dog": 6, "emu": 6}, size=(16, 12))
    make_folder(root / "train", {"cat": 2}, size=(20, 20), start=50)
    make_folder(root / "val", {"cat": 2, "dog": 3}, size=(16, 16), seed=1)
    make_folder(root / "test", {"cat": 2, "dog": 2, "emu": 2}, size=(10, 10), seed=2)
    with pytest.raises(Exception, match="differ in size.*data.input_size"):
        _ = folder_cfg(tmp_path, root).info
    cfg = folder_cfg(tmp_path, root, input_size=8)
    s = load_splits(cfg, CPU)
    assert s.train_x.shape == (20, 3, 8, 8) and s.val_x.shape == (5, 3, 8, 8)  # val/ as it is: no split
    assert s.val_y.tolist() == [0, 0, 1, 1, 1]
    x, y = load_test(cfg, CPU, s)
    assert x.shape == (6, 3, 8, 8) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert load_splits(folder_cfg(tmp_path, root, input_size=8, train_subset=9), CPU).val_x.shape[0] == 5


def test_decoding_in_processes_gives_what_decoding_here_gives(tmp_path):
    from search.sources import decode_files

    imgs = make_folder(tmp_path / "imgs", {"cat": 5, "dog": 5}, size=(14, 10))
    make_folder(imgs, {"emu": 3}, size=(8, 8), grey=True)
    (imgs / "emu" / "bad.png").write_bytes(b"not a png")
    paths = sorted(str(p) for p in imgs.rglob("*.png"))
    here = decode_files(paths, "auto", 8, workers=1)
    there = decode_files(paths, "auto", 8, workers=2, pool_from=1)
    assert len(here) == len(there) == 14
    for (a, wh, grey, err), (b, wh2, grey2, err2) in zip(here, there, strict=True):
        assert (wh, grey, err) == (wh2, grey2, err2)
        assert (a is None and b is None) or np.array_equal(a, b)
    assert sum(r[0] is None for r in there) == 1 and all(r[0].shape[1:] == (8, 8) for r in there if r[0] is not None)


def test_skip_unreadable_skips_and_counts_the_broken_images(tmp_path):
    imgs = make_folder(tmp_path / "imgs")
    (imgs / "dog" / "broken.png").write_bytes((imgs / "dog" / "0.png").read_bytes()[:60])
    cfg = folder_cfg(tmp_path, imgs, skip_unreadable=True)
    assert cfg.info.num_classes == 3
    meta = json.loads(next((tmp_path / "data" / "cache").glob("folder-*.json")).read_text())
    assert [os.path.basename(p) for p in meta["skipped"]] == ["broken.png"] and meta["counts"]["train"] == 24


# -- arrays -----------------------------------------------------------------------------------------


def test_npz_arrays_nhwc_uint8_and_nchw_float_with_val_test_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(40) % 4
    x = (rng.integers(0, 50, (40, 10, 10, 3)) + y[:, None, None, None] * 50).astype(np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_val=x[:8], y_val=y[:8], x_test=x[:4], y_test=y[:4],
             classes=np.array(["a", "b", "c", "d"]))
    cfg = DataConfig(dataset="arrays", path=str(path))
    assert cfg.info.classes == ("a", "b", "c", "d") and cfg.info.in_ch == 3 and cfg.info.size == 10
    s = load_splits(cfg, CPU)
    assert s.train_x.dtype == torch.uint8 and s.train_x.shape == (40, 3, 10, 10) and len(s.val_y) == 8
    assert torch.equal(s.train_x[0], torch.from_numpy(x[0]).permute(2, 0, 1))
    assert load_test(cfg, CPU, s)[0].shape == (4, 3, 10, 10)
    floats = tmp_path / "f.npz"
    np.savez(floats, x_train=x.transpose(0, 3, 1, 2).astype(np.float32) / 255, y_train=y)
    fcfg = DataConfig(dataset="arrays", path=str(floats), channels=1, val_fraction=0.25)
    assert fcfg.info.pixel_max is None and fcfg.info.classes == ("0", "1", "2", "3") and fcfg.info.in_ch == 1
    fs = load_splits(fcfg, CPU)
    assert fs.train_x.dtype == torch.float32 and fs.train_x.shape[1:] == (1, 10, 10)
    assert fcfg.recipe()["content"] != cfg.recipe()["content"]


# -- bad input: exit status 2, one line, nothing recorded ---------------------------------------------


def _refused(tmp_path, capsys, data: dict, *, must: tuple[str, ...]) -> None:
    raw = tiny_raw(tmp_path, data={"root": str(tmp_path / "data"), **data})
    raw["space"]["num_stages"] = [1]
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(raw))
    assert main(["search", str(exp), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]  # one line; before it at most the decode's summary, when the folder was decoded
    assert err.startswith("error: ") and all(line.startswith("data: decoded") for line in lines[:-1]), lines
    for text in must:
        assert text in err, (text, err)
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_bad_folders_are_refused_with_one_line(tmp_path, capsys):
    folder = {"dataset": "folder", "val_fraction": 0.25}
    _refused(tmp_path, capsys, {**folder, "path": str(tmp_path / "nowhere")}, must=("nowhere: no such directory",))
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, capsys, {**folder, "path": str(tmp_path / "empty")}, must=("empty: no class folders",))
    imgs = make_folder(tmp_path / "imgs")
    (imgs / "zebra").mkdir()
    (imgs / "zebra" / "notes.txt").write_text("x")
    _refused(tmp_path, capsys, {**folder, "path": str(imgs)}, must=("class 'zebra' has no image file",))
    (imgs / "zebra" / "0.png").write_bytes(b"\x89PNG not really")
    _refused(tmp_path, capsys, {**folder, "path": str(imgs)},
             must=("zebra/0.png: unreadable or truncated image", "data.skip_unreadable: true"))
    _refused(tmp_path, capsys, {**folder, "path": str(imgs), "skip_unreadable": True},
             must=("class folder 'zebra' has no readable image", "1 unreadable skipped"))
    shutil.rmtree(imgs / "zebra")
    (imgs / "dog" / "3.png").write_bytes((imgs / "dog" / "4.png").read_bytes()[:-40])  # truncated
    _refused(tmp_path, capsys, {**folder, "path": str(imgs)}, must=("dog/3.png: unreadable or truncated image",))
    (imgs / "dog" / "3.png").unlink()
    (imgs / "zebra").mkdir()
    Image.new("RGB", (12, 12)).save(imgs / "zebra" / "only.png")
    _refused(tmp_path, capsys, {**folder, "path": str(imgs)},
             must=("class 'zebra'", "has 1 image; a stratified train/val split needs at least 2 per class"))
    _refused(tmp_path, capsys, {**folder, "path": str(imgs), "input_size": 200_000},
             must=("needs", "GiB", "free", "lower data.input_size (now 200000)", "data.train_subset"))


@pytest.mark.parametrize("arrays, must", [
    ({"x_train": np.zeros((4, 8, 8), np.uint8)}, "missing y_train"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(3, int)}, "4 images but y_train has 3"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.array([0, 1, 2, -1])}, "label -1 is out of range"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.array([0, 1, 2, 3]), "classes": np.array(["a", "b"])},
     "label 3 is out of range"),
    ({"x_train": np.zeros((4, 8), np.uint8), "y_train": np.zeros(4, int)}, "x_train has shape (4, 8)"),
    ({"x_train": np.zeros((4, 8, 8, 5), np.uint8), "y_train": np.zeros(4, int)}, "images must be N x H x W"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(4, int), "x_val": np.zeros((2, 9, 9))},
     "has x_val but no y_val"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(4, int), "x_valid": np.zeros(2)},
     "did you mean 'x_val'"),
    ({"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.zeros(4, np.float32)}, "labels must be whole numbers"),
])
def test_bad_npz_files_are_refused_with_one_line(tmp_path, capsys, arrays, must):
    np.savez(tmp_path / "d.npz", **arrays)
    _refused(tmp_path, capsys, {"dataset": "arrays", "path": str(tmp_path / "d.npz")}, must=(must,))


def test_a_missing_npz_and_a_path_for_a_built_in_dataset_are_refused(tmp_path, capsys):
    _refused(tmp_path, capsys, {"dataset": "arrays", "path": str(tmp_path / "no.npz")}, must=("no such file",))
    _refused(tmp_path, capsys, {"dataset": "folder"}, must=("needs data.path",))
    _refused(tmp_path, capsys, {"dataset": "digits", "path": "x"}, must=("data.path is read only for",))
    _refused(tmp_path, capsys, {"dataset": "digits", "channels": 2}, must=("data.channels must be auto, 1 or 3",))


# -- end to end: a folder -> search -> export -> predict ---------------------------------------------------


@pytest.mark.slow
def test_a_folder_study_exports_a_network_that_predicts_its_class_names(tmp_path, capsys):
    """The whole way with your own images: search -> export -> evaluate --weights -> predict, ONNX."""
    from search.export import load_model
    from tests.search.test_export import has_onnx

    imgs = tmp_path / "imgs"
    make_folder(imgs / "train", {"cat": 12, "dog": 12, "emu": 12})
    make_folder(imgs / "test", {"cat": 3, "dog": 3, "emu": 3}, seed=9)
    raw = tiny_raw(tmp_path, data={"dataset": "folder", "path": str(imgs), "root": str(tmp_path / "data"),
                                   "val_fraction": 0.25, "augment": False},
                   search={"n_trials": 2}, train={"epochs": 3, "batch_size": 8, "lr": 0.05})
    raw["space"]["num_stages"] = [1]
    exp = tmp_path / "my.yaml"
    exp.write_text(yaml.safe_dump(raw))
    assert main(["search", str(exp), "--quiet", "--export-dir", str(tmp_path / "exports")]) == 0
    exported = tmp_path / "exports" / "my_knee.yaml"
    doc = yaml.safe_load(exported.read_text())
    assert doc["classes"] == ["cat", "dog", "emu"] and doc["preprocessing"]["channels"] == 3
    weights = tmp_path / "w.safetensors"
    assert main(["evaluate", str(exp), str(exported), "--weights", str(weights)]) == 0
    assert "on 9 test images" in capsys.readouterr().out
    model, prep = load_model(weights)
    assert prep.classes == ("cat", "dog", "emu")
    new = tmp_path / "new.png"
    Image.fromarray(np.full((30, 30, 3), COLOURS["dog"], np.uint8)).save(new)  # another size: resized
    assert main(["predict", str(weights), str(new), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "new.png" in out and all(name in out for name in ("cat", "dog", "emu"))
    if has_onnx():
        import onnx

        assert main(["export", str(exp), "--out", str(tmp_path / "b.yaml"), "--onnx", str(tmp_path / "m.onnx"),
                     "--weights", str(weights)]) == 0
        meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
        assert json.loads(meta["resnext_nas.classes"]) == ["cat", "dog", "emu"]


# -- channels of a built-in dataset, and studies recorded before these keys --------------------------------


def test_channels_converts_a_built_in_dataset_and_sizes_the_network(tmp_path):
    from search.config import experiment_from_dict
    from search.export import Preprocessing

    cfg = DataConfig(dataset="digits", channels=3)
    s = load_splits(cfg, CPU)
    assert cfg.info.in_ch == 3 and s.train_x.shape[1:] == (3, 16, 16)
    assert torch.equal(s.train_x[:, 0], s.train_x[:, 2])  # grey repeated
    assert Preprocessing.for_data(cfg, s.mean, s.std).channels == 3
    exp = experiment_from_dict(tiny_raw(tmp_path, data={"dataset": "digits", "channels": 3}), name="c")
    assert exp.space.in_ch == 3


def test_a_study_recorded_before_channels_and_skip_unreadable_keeps_its_recipe(tmp_path):
    from search.storage import recipe_diff

    cfg = load_experiment_from_raw(tmp_path, tiny_raw(tmp_path))
    now = recipe(cfg)
    old = {k: v for k, v in now.items() if k not in ("data.channels", "data.skip_unreadable")}
    assert recipe_diff(old, now) == [] and recipe_diff(old, now, reading=True) == []
    assert recipe_diff(old, recipe(load_experiment_from_raw(tmp_path, tiny_raw(
        tmp_path, data={"channels": 1}))))  # a changed value is still a difference


def load_experiment_from_raw(tmp_path, raw):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_experiment(path)
