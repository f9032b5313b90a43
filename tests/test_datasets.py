"""Manifests from CoOp split files (real ones when ../shared/datasets exists) and the demo generator."""

import json
import re

import numpy as np
import pytest

from conftest import shared_dataset
from pipeline import config, datasets, demo

REAL = [("eurosat", "split_zhou_EuroSAT.json"), ("caltech101", "split_zhou_Caltech101.json"),
        ("dtd", "split_zhou_DescribableTextures.json")]


@pytest.mark.parametrize("name, split_file", REAL)
def test_manifest_counts_match_split_file(name, split_file):
    root = shared_dataset(name)
    splits = json.loads((root / split_file).read_text())
    manifest = datasets.coop_manifest(name, root)
    for split in datasets.SPLITS:
        rows = manifest[manifest.split == split]
        assert len(rows) == len(splits[split])
        assert rows["label"].tolist() == [e[1] for e in splits[split]]
    assert manifest["item"].is_unique
    assert len(datasets.classnames(manifest)) == len({e[1] for e in splits["train"]})


def test_dtd_images_all_decode():
    root = shared_dataset("dtd")
    datasets.check_images(datasets.coop_manifest("dtd", root), root)


def _fake_coop(tmp_path, n=6):
    """A tiny EuroSAT-shaped dataset: real PNGs the test makes itself."""
    img_dir = tmp_path / "2750" / "Forest"
    img_dir.mkdir(parents=True)
    from PIL import Image
    entries = []
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(img_dir / f"{i}.png")
        entries.append([f"Forest/{i}.png", i % 2, ["Forest", "River"][i % 2]])
    split = {"train": entries[:4], "val": entries[4:5], "test": entries[5:]}
    (tmp_path / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    return tmp_path, img_dir


def test_missing_and_corrupt_images_are_named(tmp_path):
    root, img_dir = _fake_coop(tmp_path)
    manifest = datasets.coop_manifest("eurosat", root)
    datasets.check_images(manifest, root)
    (img_dir / "1.png").unlink()
    (img_dir / "3.png").write_bytes(b"not an image")
    with pytest.raises(datasets.DatasetError) as err:
        datasets.check_images(manifest, root)
    text = str(err.value)
    assert "2 of 6" in text and "1.png: missing" in text and "3.png: corrupt" in text


def test_class_without_train_images_is_refused(tmp_path):
    root, _ = _fake_coop(tmp_path)
    split = json.loads((root / "split_zhou_EuroSAT.json").read_text())
    split["test"].append(["Forest/5.png", 2, "Lake"])
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    with pytest.raises(datasets.DatasetError, match=r"classes \[2\] have no train images"):
        datasets.coop_manifest("eurosat", root)


def test_unknown_dataset_and_missing_split_file(tmp_path):
    with pytest.raises(datasets.DatasetError, match="unknown CoOp dataset 'imagenet9'"):
        datasets.coop_manifest("imagenet9", tmp_path)
    with pytest.raises(datasets.DatasetError, match="split_zhou_EuroSAT.json not found"):
        datasets.coop_manifest("eurosat", tmp_path)


def _valid_split_text(tmp_path):
    root, _ = _fake_coop(tmp_path)
    return (root / "split_zhou_EuroSAT.json").read_text()


def _with_train_entry(entry):
    def edit(text):
        split = json.loads(text)
        split["train"][1] = entry
        return json.dumps(split)
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda text: "not json at all", r"not valid JSON \(line 1, column 1: .*\); expected CoOp's split_zhou_\*\.json"),
    (lambda text: text[:len(text) // 2], r"not valid JSON \(line 1, column \d+: "),
    (lambda text: json.dumps([json.loads(text)]), r"top level should be an object, not list"),
    (lambda text: json.dumps({**json.loads(text), "val": {"a": 1}}), r"'val' should be a list of .*, not dict"),
    (_with_train_entry(["Forest/1.png", 1]),
     r"train\[1\] = \['Forest/1.png', 1\] should be \[relative path, integer label, class name\]"),
    (_with_train_entry("Forest/1.png"), r"train\[1\] = 'Forest/1.png' should be \[relative path"),
    (_with_train_entry(["Forest/1.png", "zero", "River"]), r"train\[1\] = .*: label 'zero' should be a non-negative"),
    (_with_train_entry(["Forest/1.png", 1.5, "River"]), r"train\[1\] = .*: label 1.5 should be a non-negative"),
    (_with_train_entry(["Forest/1.png", True, "River"]), r"train\[1\] = .*: label True should be a non-negative"),
    (_with_train_entry(["Forest/1.png", "1", "River"]), r"train\[1\] = .*: label '1' should be a non-negative"),
    (_with_train_entry(["Forest/1.png", -1, "River"]), r"train\[1\] = .*: label -1 should be a non-negative"),
    (_with_train_entry(["Forest/1.png", 1, ""]), r"train\[1\] = .*: path and class name should be non-empty"),
    (_with_train_entry(["", 1, "River"]), r"train\[1\] = .*: path and class name should be non-empty"),
], ids=["not-json", "truncated", "top-list", "split-dict", "two-fields", "not-a-list", "label-str", "label-float",
        "label-bool", "label-digit-str", "label-negative", "empty-classname", "empty-path"])
def test_malformed_split_file_is_named(tmp_path, edit, message):
    split_path = tmp_path / "split_zhou_EuroSAT.json"
    split_path.write_text(edit(_valid_split_text(tmp_path)))
    with pytest.raises(datasets.DatasetError, match=re.escape(f"{split_path}: ") + message):
        datasets.coop_manifest("eurosat", tmp_path)


def test_non_utf8_split_file_is_named(tmp_path):
    split_path = tmp_path / "split_zhou_EuroSAT.json"
    split_path.write_bytes(b"\xc3\x28")
    with pytest.raises(datasets.DatasetError, match=re.escape(f"{split_path}: not valid JSON (not UTF-8")):
        datasets.coop_manifest("eurosat", tmp_path)


def test_valid_split_file_loads(tmp_path):
    root, _ = _fake_coop(tmp_path)
    manifest = datasets.coop_manifest("eurosat", root)
    assert manifest["label"].tolist() == [0, 1, 0, 1, 0, 1]
    assert manifest["split"].tolist() == ["train"] * 4 + ["val", "test"]
    assert manifest["path"].iloc[1] == "2750/Forest/1.png" and manifest["classname"].iloc[1] == "River"


@pytest.mark.parametrize("world", ["shapes", "scenes"])
@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_demo_files_are_the_demo_trainers_scenes_through_the_camera(tmp_path, blur, world):
    from PIL import Image, ImageFilter
    manifest = datasets.write_demo(tmp_path, world, seed=3, per_class={"train": 2, "val": 1, "test": 1}, blur=blur)
    assert manifest["label"].nunique() == 36 and len(manifest) == 36 * 4
    images, labels, scenes = demo.render_split(3, "train", 72, world)
    if world == "scenes":
        assert [(s.tint, s.small) for s in scenes] == list(zip(manifest.tint[:72], manifest.small[:72]))
    train = manifest[manifest.split == "train"]
    for i in (0, 41, 71):
        sharp = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        expected = sharp.filter(ImageFilter.GaussianBlur(blur)) if blur else sharp
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / train.path.iloc[i])), np.asarray(expected))
    assert train["label"].tolist() == labels.tolist()


@pytest.mark.parametrize("section, message", [
    ({"data": {"x": {"kind": "coop", "name": "eurosat", "root": 3}}}, "'data.x.root' = 3 should be str"),
    ({"data": {"x": {"kind": "tiff"}}}, "'data.x.kind' = 'tiff' should be one of"),
    ({"data": {"x": {"kind": "shapes", "seed": 0, "blur": 0, "per_class": {"train": 0, "val": 1, "test": 1}}}},
     "'data.x.per_class.train' = 0 should be >= 1"),
    ({"data": {"x": {"kind": "shapes", "seed": 0, "blur": "soft", "per_class": {"train": 1, "val": 1, "test": 1}}}},
     "'data.x.blur' = 'soft' should be int or float"),
    ({"data": {"y": {}}}, "no entry 'x' under 'data'"),
])
def test_bad_dataset_params(section, message):
    with pytest.raises(config.ParamsError, match=message):
        config.dataset(section, "x", datasets.COOP)


@pytest.mark.parametrize("entry, message", [
    ({"arch": "demo-clip", "source": "demo", "data": {"seed": 0, "per_class": 5}, "train": {"steps": "many"}},
     "'model_zoo.m.train.steps' = 'many' should be int"),
    ({"arch": "demo-clip", "source": "demo", "data": {"seed": 0, "per_class": 5}, "train": {"lr": -1.0}},
     "should be >= 0"),
    ({"arch": "demo-clip", "source": "demo", "data": {"seed": 0, "per_class": 5}, "train": {"lrr": 1.0}},
     "unknown key 'model_zoo.m.train.lrr'"),
    ({"arch": "ViT-B-32", "source": "pretrained"}, "missing key 'model_zoo.m.tag'"),
    ({"arch": "ViT-B-32", "source": "random", "seed": True}, "'model_zoo.m.seed' = True should be int"),
])
def test_bad_model_params(entry, message):
    with pytest.raises(config.ParamsError, match=message):
        config.model({"model_zoo": {"m": entry}}, "m", demo.DemoRecipe)
