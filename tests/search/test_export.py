"""Using an exported network without the study: preprocessing, weights, load_model, predict, ONNX.

The deployment path (``search.export.Preprocessing``) must give the network the very tensors the
training data path (``search.data``) gave it; these tests compare the two on real images.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from search.cli import main
from search.data import (
    DATASETS,
    DataConfig,
    _normalise_,
    _to_device,
    load_source,
    load_splits,
    load_test,
    train_statistics,
)
from search.export import (
    Preprocessing,
    classify,
    evaluate_exported,
    export_best,
    export_onnx,
    load_model,
    save_weights,
    weights_metadata,
)
from space import NetSpec, SpecError, StageSpec, build_model, load_spec

from .conftest import tiny_raw

CPU = torch.device("cpu")
DIGITS = DataConfig(dataset="digits", val_fraction=0.25, augment=False)  # input 16: the 8x8 digits upsampled
NET = NetSpec((StageSpec(1, 8, 1, 2, 16),), stem_ch=8, num_classes=10, in_ch=1, input_size=16)
OTHER = NetSpec((StageSpec(1, 4, 1, 1, 16),), stem_ch=4, num_classes=10, in_ch=1, input_size=16)


def has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


needs_onnx = pytest.mark.skipif(not has_onnx(), reason="SKIPPED LOUDLY: onnx, onnxscript or onnxruntime is not "
                                                        "installed (pip install 'resnext-nas[onnx]')")


@pytest.fixture(scope="module")
def digits_prep():
    return Preprocessing.for_data(DIGITS, *train_statistics(DIGITS))


@pytest.fixture(scope="module")
def digits_test():
    """The raw digits test images (0..16 floats, (N, 1, 8, 8)) and the data path's tensors for them."""
    raw, labels = load_source(DIGITS, train=False)
    x, y = load_test(DIGITS, CPU)
    assert torch.equal(y, labels)
    return raw, x


def as_png(raw8x8: torch.Tensor, path) -> None:
    """A digit (0..16) as an 8-bit grey PNG, white = 16: how anyone would save it as an image."""
    Image.fromarray(np.round(raw8x8.numpy() * 255 / 16).astype(np.uint8)).save(path)


def write_weights(tmp_path, spec, prep, name="w.safetensors", seed=0):
    torch.manual_seed(seed)
    model = build_model(spec)
    for m in model.modules():  # BN statistics that are not the identity, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / name
    save_weights(model, spec, prep, path, recipe_fingerprint="f" * 16, provenance={"test": True})
    return model.eval(), path


# -- class names -----------------------------------------------------------------------------------


def test_every_dataset_names_its_classes():
    for name, info in DATASETS.items():
        assert len(info.classes) == info.num_classes == len(set(info.classes)), name
    c100 = DATASETS["cifar100"].classes
    assert (c100[0], c100[19], c100[48], c100[99]) == ("apple", "cattle", "motorcycle", "worm")
    assert c100 == tuple(sorted(c100))  # the meta file's fine labels are in alphabetical order
    assert DATASETS["cifar10"].classes[0] == "airplane" and DATASETS["cifar10"].classes[9] == "truck"
    assert DATASETS["fashionmnist"].classes[9] == "Ankle boot"
    assert DATASETS["digits"].classes == DATASETS["mnist"].classes == DATASETS["svhn"].classes == tuple("0123456789")
    assert DATASETS["synthetic"].classes[3] == "rings"


# -- preprocessing = the training data path --------------------------------------------------------


def test_statistics_are_those_of_the_study_split(digits_prep):
    splits = load_splits(DIGITS, CPU)
    assert digits_prep.mean == splits.mean and digits_prep.std == splits.std  # same numbers, bit for bit
    assert digits_prep.input_size == 16 and digits_prep.channels == 1 and digits_prep.pixel_max == 16
    assert digits_prep.classes == tuple("0123456789")
    again = Preprocessing.from_dict(yaml.safe_load(yaml.safe_dump(digits_prep.to_dict())), digits_prep.classes)
    assert again == digits_prep  # the YAML record reads back exactly (floats included)


def test_images_files_and_arrays_give_the_training_tensors(tmp_path, digits_prep, digits_test):
    raw, want = digits_test
    n = 12
    paths = []
    for i in range(n):
        as_png(raw[i, 0], tmp_path / f"{i}.png")
        np.save(tmp_path / f"{i}.npy", raw[i, 0].numpy().astype(np.float64))  # HxW on the 0..16 scale
        paths.append(tmp_path / f"{i}.png")
    # 8-bit PNGs: 0..255 back to the 17 grey levels the network was trained on, exactly
    assert torch.equal(digits_prep(paths), want[:n])
    assert torch.equal(digits_prep([tmp_path / f"{i}.npy" for i in range(n)]), want[:n])
    with Image.open(paths[3]) as im:
        assert torch.equal(digits_prep(im), want[3:4])
    # every layout of the same pixels
    img = raw[5, 0]
    for variant in (img, img[:, :, None], img[None], img.numpy(), img[None, :, :, None].numpy(), raw[:n]):
        got = digits_prep(variant)
        assert torch.equal(got, want[5:6] if len(got) == 1 else want[:n])
    # an RGB photo of a digit becomes grey like PIL's "L" conversion
    rgb = np.repeat(np.round(img.numpy() * 255 / 16).astype(np.uint8)[:, :, None], 3, axis=2)
    assert torch.equal(digits_prep(rgb), want[5:6])
    # a bigger image is shrunk with antialiasing, as the data path does for a dataset larger than input_size
    big = torch.randint(0, 256, (1, 1, 40, 40), dtype=torch.uint8)
    ref = _to_device(torch.round(big.float() * (16 / 255)), 16, CPU)
    mean, std = torch.tensor(digits_prep.mean), torch.tensor(digits_prep.std)
    assert torch.equal(digits_prep(big), _normalise_(ref, mean, std))


def test_colour_conversions_match_pil():
    prep = Preprocessing(8, 1, (0.0,), (1.0,))
    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgba[:, :, :3]).convert("L")).astype(np.float32)
    assert torch.equal(prep(rgba)[0, 0], torch.from_numpy(grey))  # alpha dropped, then PIL's luma bit for bit
    assert torch.equal(prep(np.ascontiguousarray(rgba[:, :, :3].transpose(2, 0, 1)))[0, 0], torch.from_numpy(grey))
    rgb_prep = Preprocessing(8, 3, (1.0, 2.0, 3.0), (2.0, 2.0, 2.0))
    out = rgb_prep(grey.astype(np.uint8))
    assert out.shape == (1, 3, 8, 8)
    assert torch.equal(out[0, 1], (torch.from_numpy(grey) - 2.0) / 2.0)


def test_inputs_that_cannot_be_fed_are_clear_errors(tmp_path, digits_prep):
    float_only = Preprocessing(16, 3, (0.0,) * 3, (1.0,) * 3, pixel_max=None, dataset="synthetic")
    with pytest.raises(SpecError, match="trained on float data"):
        float_only(np.zeros((16, 16, 3), dtype=np.uint8))
    assert float_only(np.zeros((16, 16, 3), dtype=np.float32)).shape == (1, 3, 16, 16)
    with pytest.raises(SpecError, match="got shape"):
        digits_prep(np.zeros((2, 8, 8, 8, 1)))
    with pytest.raises(SpecError, match="got shape"):
        digits_prep(np.zeros((2, 8, 8)))  # two channels: neither grey nor colour
    with pytest.raises(SpecError, match="no such image"):
        digits_prep(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SpecError, match="not an image PIL can read"):
        digits_prep(tmp_path / "notes.png")
    with pytest.raises(SpecError, match="means and"):
        Preprocessing(16, 3, (0.0,), (1.0,))


# -- weights, load_model, predict, ONNX (an untrained network: what is tested is the plumbing) ---------


def test_weights_alone_rebuild_network_and_preprocessing(tmp_path, digits_prep, digits_test):
    model, path = write_weights(tmp_path, NET, digits_prep)
    meta = weights_metadata(path)
    assert json.loads(meta["classes"]) == list("0123456789") and meta["recipe_fingerprint"] == "f" * 16
    loaded, prep = load_model(path)
    assert prep == digits_prep and not loaded.training
    _, x = digits_test
    with torch.inference_mode():
        assert torch.equal(loaded(x[:20]), model(x[:20]))


def test_export_yaml_with_weights_and_mismatches(tmp_path, digits_prep):
    _, path = write_weights(tmp_path, NET, digits_prep)
    exported = tmp_path / "best.yaml"
    exported.write_text(yaml.safe_dump({"spec": NET.to_dict(), "preprocessing": digits_prep.to_dict(),
                                        "classes": list(digits_prep.classes)}))
    _, prep = load_model(exported, path)
    assert prep == digits_prep
    with pytest.raises(SpecError, match="not its trained weights"):
        load_model(exported)
    _, other = write_weights(tmp_path, OTHER, digits_prep, "other.safetensors")
    with pytest.raises(SpecError, match="holds the weights of network"):
        load_model(exported, other)
    # statistics another device computed (last bits differ) are the same preprocessing ...
    nearly = Preprocessing(16, 1, (digits_prep.mean[0] * (1 + 1e-6),), (digits_prep.std[0] * (1 - 1e-6),), 16.0)
    exported.write_text(yaml.safe_dump({"spec": NET.to_dict(), "preprocessing": nearly.to_dict()}))
    assert load_model(exported, path)[1] == digits_prep  # the weights' own statistics are used
    # ... another split's are not
    shifted = Preprocessing(16, 1, (digits_prep.mean[0] + 0.01,), digits_prep.std, 16.0)
    exported.write_text(yaml.safe_dump({"spec": NET.to_dict(), "preprocessing": shifted.to_dict()}))
    with pytest.raises(SpecError, match="other preprocessing"):
        load_model(exported, path)
    with pytest.raises(SpecError, match="no such weights file"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(SpecError, match="not a safetensors file"):
        load_model(tmp_path / "junk.safetensors")


def test_predict_command_prints_the_networks_own_answers(tmp_path, capsys, digits_prep, digits_test):
    model, path = write_weights(tmp_path, NET, digits_prep)
    raw, x = digits_test
    files = []
    for i in range(4):
        as_png(raw[i, 0], tmp_path / f"d{i}.png")
        files.append(str(tmp_path / f"d{i}.png"))
    np.save(tmp_path / "batch.npy", raw[4:7].numpy())  # a batch, NCHW float on the 0..16 scale
    files.append(str(tmp_path / "batch.npy"))
    assert main(["predict", str(path), *files, "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "class", "probability", "top-3"]
    with torch.inference_mode():
        probs = model(x[:7]).softmax(1)
    names = files[:4] + [f"{files[4]}[{i}]" for i in range(3)]
    for line, name, p in zip(lines[1:], names, probs, strict=True):
        cells = line.split()
        top = p.topk(3)
        assert cells[0] == name and cells[1] == str(int(top.indices[0]))
        assert float(cells[2]) == pytest.approx(float(top.values[0]), abs=6e-5)
        assert [c.rstrip(",") for c in cells[3::2]] == [str(int(i)) for i in top.indices]
    assert classify(model, digits_prep, files[0], top=2)[0][0][0] == lines[1].split()[1]
    assert main(["predict", str(path), str(tmp_path / "missing.png")]) == 2
    assert "no such image file" in capsys.readouterr().err
    assert main(["predict", str(path), files[0], "--top", "0"]) == 2


@needs_onnx
def test_onnx_graph_matches_pytorch_and_carries_the_preprocessing(tmp_path, digits_prep, digits_test):
    import onnx

    from search.latency import onnx_session

    model, path = write_weights(tmp_path, NET, digits_prep)
    rep = export_onnx(path, tmp_path / "m.onnx")
    assert 0 <= rep["max_abs_diff"] <= 1e-4 and rep["input"] == [None, 1, 16, 16]
    proto = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert Preprocessing.from_dict(json.loads(props["resnext_nas.preprocessing"]),
                                   json.loads(props["resnext_nas.classes"])) == digits_prep
    assert NetSpec.from_dict(json.loads(props["resnext_nas.spec"])) == NET
    # real digits through the graph, any batch size
    _, x = digits_test
    session = onnx_session(tmp_path / "m.onnx")
    got = session.run(None, {"input": x[:33].numpy()})[0]
    with torch.inference_mode():
        want = model(x[:33]).numpy()
    assert np.abs(got - want).max() <= 1e-4 and (got.argmax(1) == want.argmax(1)).all()
    if rep["max_abs_diff"] > 0:  # a tolerance below the difference refuses the graph and writes nothing
        with pytest.raises(SpecError, match=r"differ from PyTorch's by up to"):
            export_onnx(path, tmp_path / "strict.onnx", atol=rep["max_abs_diff"] / 2)
        assert not (tmp_path / "strict.onnx").exists()


# -- the whole way: a study, its export, evaluate --weights, predict, --onnx ---------------------------


@pytest.mark.slow
def test_study_export_evaluate_predict_onnx(tmp_path, capsys):
    raw_cfg = tiny_raw(tmp_path, data={"dataset": "digits", "val_fraction": 0.25, "augment": False},
                       space={"num_stages": [1], "stem_ch": [8], "bottleneck_ch": [4, 8], "cardinality": [1, 2]},
                       objectives=["val_accuracy", "params"], search={"n_trials": 2},
                       train={"epochs": 1, "batch_size": 64}, tracking={"enabled": False})
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(raw_cfg))
    assert main(["search", str(exp), "--quiet", "--export-dir", str(tmp_path / "exports")]) == 0
    from search.config import load_experiment

    cfg = load_experiment(str(exp))
    out = tmp_path / "best.yaml"
    doc = export_best(cfg, "max-accuracy", out)
    splits = load_splits(cfg.data, CPU)
    pre = yaml.safe_load(out.read_text())["preprocessing"]
    assert pre["mean"] == list(splits.mean) and pre["std"] == list(splits.std)
    assert pre["input_size"] == 16 and pre["channels"] == 1 and pre["pixel_max"] == 16
    assert doc["classes"] == list("0123456789") and len(doc["provenance"]["recipe_fingerprint"]) == 16

    weights = tmp_path / "w.safetensors"
    report = evaluate_exported(cfg, out, weights_out=weights)
    assert weights_metadata(weights)["recipe_fingerprint"] == doc["provenance"]["recipe_fingerprint"]
    model, prep = load_model(weights)
    model2, prep2 = load_model(out, weights)
    assert prep == prep2 and prep.mean == splits.mean
    raw, _ = load_source(cfg.data, train=False)
    test_x, test_y = load_test(cfg.data, CPU, splits)
    files = []
    for i in range(6):
        as_png(raw[i, 0], tmp_path / f"t{i}.png")
        files.append(str(tmp_path / f"t{i}.png"))
    np.save(tmp_path / "t6.npy", raw[6, 0].numpy())
    files.append(str(tmp_path / "t6.npy"))
    assert torch.equal(prep(files), test_x[:7])  # deployment preprocessing == the study's data path
    with torch.inference_mode():
        want = model(test_x).softmax(1)
        assert torch.equal(model2(test_x), model(test_x))
    assert (want.argmax(1) == test_y).float().mean().item() == pytest.approx(report["test_accuracy"])
    capsys.readouterr()
    assert main(["predict", str(out), "--weights", str(weights), *files]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[1] for line in lines] == [str(int(c)) for c in want[:7].argmax(1)]
    assert [float(line.split()[2]) for line in lines] == pytest.approx(want[:7].max(1).values.tolist(), abs=6e-5)

    assert main(["export", str(exp), "--pick", "max-accuracy", "--out", str(out), "--onnx",
                 str(tmp_path / "m.onnx")]) == 2
    assert "--onnx needs trained weights" in capsys.readouterr().err
    if not has_onnx():
        pytest.skip("SKIPPED LOUDLY: the --onnx part needs pip install 'resnext-nas[onnx]'")
    assert main(["export", str(exp), "--pick", "max-accuracy", "--out", str(out), "--onnx",
                 str(tmp_path / "m.onnx"), "--weights", str(weights)]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and (tmp_path / "m.onnx").is_file()
    assert load_spec(out).hash == doc["hash"]
