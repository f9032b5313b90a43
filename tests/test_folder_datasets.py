"""Class-per-folder and webdataset datasets: manifests from tiny fixtures written here, their errors, and the
features `extract_images` computes from tar members (equal to those of the same images as files)."""

import io
import json
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml
from PIL import Image
from torchvision import transforms

from pipeline import cli, config, datasets, demo, extract, models, views
from pipeline.folder_datasets import folder_manifest
from pipeline.store import open_store
from pipeline.webdataset_datasets import webdataset_manifest

SHARDS = {"train": ("train-*.tar",), "val": ("val.tar",), "test": ("test.tar",)}


def png(seed: int) -> bytes:
    """A small random RGB PNG, different per seed."""
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def write_folder(root: Path, counts: dict[str, int]) -> Path:
    """root/<class>/<i>.png; the image of (class, i) is png(crc32(class) + i)."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{i:02d}.png").write_bytes(png(zlib.crc32(name.encode()) + i))
    return root


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample(key: str, image: bytes, label) -> list[tuple[str, bytes]]:
    """A sample's members: the image and an int label as .cls, or anything else inside .json's 'label'."""
    if isinstance(label, int):
        return [(f"{key}.png", image), (f"{key}.cls", str(label).encode())]
    return [(f"{key}.png", image), (f"{key}.json", json.dumps(label).encode())]


def write_webdataset(root: Path, classes=("cat", "golden_retriever")) -> Path:
    """Two train shards, one val and one test shard; sample k of class c holds png(100 * c + k)."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    layout = {"train-000.tar": (0, 3), "train-001.tar": (3, 5), "val.tar": (5, 6), "test.tar": (6, 8)}
    for name, (lo, hi) in layout.items():
        write_tar(root / name, [m for k in range(lo, hi) for c in range(len(classes))
                                for m in sample(f"{c}_{k:03d}", png(100 * c + k), c)])
    return root


# ----------------------------------------------------------------------------- folder: splits


def test_ratio_split_is_deterministic_disjoint_and_per_class(tmp_path):
    root = write_folder(tmp_path / "pets", {"golden_retriever": 10, "cat": 7, "emu": 1})
    (root / "cat" / "README.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    manifest, skipped = folder_manifest(root, "ratio", (0.7, 0.1), seed=3)
    assert skipped == ["cat/README.txt"]   # hidden files are not even reported
    assert datasets.classnames(manifest) == ["cat", "emu", "golden retriever"]   # sorted folders, '_' -> ' '
    listed = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert sorted(manifest["path"]) == listed and manifest["path"].is_unique   # each image in exactly one split
    counts = manifest.groupby(["classname", "split"]).size().to_dict()
    # round half up: 10 -> 7 / 1 / 2, 7 -> 5 (4.9) / 1 (0.7) / 1, 1 -> 1 / 0 / 0
    assert counts == {("golden retriever", "train"): 7, ("golden retriever", "val"): 1,
                      ("golden retriever", "test"): 2, ("cat", "train"): 5, ("cat", "val"): 1, ("cat", "test"): 1,
                      ("emu", "train"): 1}
    assert manifest["split"].tolist() == sorted(manifest["split"], key=datasets.SPLITS.index)
    assert manifest.equals(folder_manifest(root, "ratio", (0.7, 0.1), seed=3)[0])
    other = folder_manifest(root, "ratio", (0.7, 0.1), seed=4)[0]
    assert set(other.path[other.split == "train"]) != set(manifest.path[manifest.split == "train"])
    # a new class moves labels, not the other classes' splits
    write_folder(root, {"bee": 4})
    grown = folder_manifest(root, "ratio", (0.7, 0.1), seed=3)[0]
    assert set(zip(grown.path, grown.split)) - set(zip(manifest.path, manifest.split)) == {
        (p, s) for p, s in zip(grown.path, grown.split) if p.startswith("bee/")}


def test_split_folders_with_classes_txt_order(tmp_path):
    root = tmp_path / "pets"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        write_folder(root / split, {"dog": n, "cat": n})
    (root / "classes.txt").write_text("dog\ncat\n")
    for mode in ("folders", "auto"):   # auto: root holds train/, val/ and test/
        manifest, _ = folder_manifest(root, mode, config.DEFAULT_RATIO, seed=0)
        assert datasets.classnames(manifest) == ["dog", "cat"]
        assert manifest["path"].tolist()[:4] == ["train/dog/00.png", "train/dog/01.png", "train/dog/02.png",
                                                 "train/cat/00.png"]
        assert manifest.groupby("split").size().to_dict() == {"train": 6, "val": 2, "test": 4}
        assert (manifest.path.str.split("/").str[0] == manifest.split).all()


def test_the_entry_add_folder_writes_is_a_working_dataset(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  shapes: {kind: shapes}\n")
    write_folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    cli.add_folder(params, "pets", tmp_path / "pets")
    cfg = config.dataset(yaml.safe_load(params.read_text()), "pets", datasets.COOP)
    assert (cfg.kind, cfg.split, cfg.ratio, cfg.seed) == ("folder", "auto", (0.7, 0.1), 0)
    manifest, _ = folder_manifest(tmp_path / cfg.root, cfg.split, cfg.ratio, cfg.seed)
    assert manifest.groupby("split").size().to_dict() == {"train": 14, "val": 2, "test": 4}


# ----------------------------------------------------------------------------- folder: errors


def _folder_ok(root):
    return write_folder(root, {"cat": 3, "dog": 3})


@pytest.mark.parametrize("break_it, message", [
    (lambda r: (r / "emu").mkdir(), r"emu: class folder holds no image \(0 other files"),
    (lambda r: ((r / "emu").mkdir(), (r / "emu" / "notes.txt").write_text("x")),
     r"emu: class folder holds no image \(1 other files; image suffixes: .jpg"),
    (lambda r: (r / "classes.txt").write_text("cat\ndog\nemu\n"),
     r"classes.txt: names classes \['emu'\] that have no folder"),
    (lambda r: (r / "classes.txt").write_text("cat\n"), r"classes.txt: 1 class names, expected at least 2"),
    (lambda r: (r / "classes.txt").write_text("dog\ncat\ndog\n"), r"classes.txt: class 'dog' is listed twice"),
    (lambda r: (write_folder(r, {"emu": 1}), (r / "classes.txt").write_text("cat\ndog\n")),
     r"class folders \['emu'\] are not in .*classes.txt"),
    (lambda r: write_folder(r, {"train": 2}), r"class folders named \['train'\] look like split folders"),
    (lambda r: [f.unlink() for f in (r / "dog").iterdir()], r"dog: class folder holds no image"),
], ids=["empty", "only-non-images", "classes-missing-folder", "one-class", "classes-twice", "folder-not-listed",
        "split-named-class", "emptied"])
def test_bad_folder_is_named(tmp_path, break_it, message):
    root = _folder_ok(tmp_path / "pets")
    folder_manifest(root, "ratio", (0.7, 0.1), 0)   # fine before the edit
    break_it(root)
    with pytest.raises(datasets.DatasetError, match=message):
        folder_manifest(root, "ratio", (0.7, 0.1), 0)


def test_bad_split_folders_are_named(tmp_path):
    root = tmp_path / "pets"
    write_folder(root / "train", {"cat": 2, "dog": 2})
    write_folder(root / "val", {"cat": 1, "dog": 1})
    with pytest.raises(datasets.DatasetError, match=r"no split folders \['test'\]"):
        folder_manifest(root, "folders", (0.7, 0.1), 0)
    write_folder(root / "test", {"cat": 1, "emu": 1})
    with pytest.raises(datasets.DatasetError, match=re.escape(f"{root / 'test' / 'emu'}: class folder not among "
                                                              "the classes ['cat', 'dog']")):
        folder_manifest(root, "auto", (0.7, 0.1), 0)


def test_an_image_suffix_that_does_not_decode_is_refused(tmp_path):
    root = _folder_ok(tmp_path / "pets")
    (root / "dog" / "99.jpg").write_bytes(b"not a jpeg")
    manifest, skipped = folder_manifest(root, "ratio", (0.7, 0.1), 0)
    assert "dog/99.jpg" in set(manifest.path) and not skipped
    with pytest.raises(datasets.DatasetError, match=r"1 of 7 listed images .*\n  .*dog/99.jpg: corrupt"):
        datasets.check_images(manifest, root)


# ----------------------------------------------------------------------------- webdataset


def test_webdataset_manifest_lists_members_by_shard(tmp_path):
    root = write_webdataset(tmp_path / "wds")
    manifest = webdataset_manifest(root, SHARDS)
    assert datasets.classnames(manifest) == ["cat", "golden retriever"]
    assert manifest["path"].tolist()[:3] == ["train-000.tar::0_000.png", "train-000.tar::1_000.png",
                                             "train-000.tar::0_001.png"]
    assert manifest.groupby("split").size().to_dict() == {"train": 10, "val": 2, "test": 4}
    assert manifest["label"].tolist() == [int(p.split("::")[1][0]) for p in manifest.path]


def test_webdataset_class_names_from_json(tmp_path):
    root = tmp_path / "wds"
    for split in ("train", "val", "test"):
        write_tar(root / f"{split}.tar", sample("a", png(1), {"class": "zebra", "caption": "x"})
                  + sample("b", png(2), {"label": "ant"}) + [("b.txt", b"a caption")])
    manifest = webdataset_manifest(root, {s: (f"{s}.tar",) for s in datasets.SPLITS})
    assert datasets.classnames(manifest) == ["ant", "zebra"] and manifest["label"].tolist() == [1, 0] * 3


def _members():
    return sample("a", png(1), 0) + sample("b", png(2), 1)


def _webdataset_with(root: Path, train: list[tuple[str, bytes]], classes: str | None = "cat\ndog\n") -> Path:
    write_tar(root / "train-000.tar", train)
    write_tar(root / "val.tar", _members())
    write_tar(root / "test.tar", _members())
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root / "train-000.tar"


@pytest.mark.parametrize("train, classes, message", [
    (_members() + [("c.png", png(3))], "cat\ndog\n", r"train-000.tar::c.png: no label \(expected <key>.cls"),
    (_members() + sample("c", png(3), 2), "cat\ndog\n",
     r"train-000.tar::c.png: unknown class 2 \(.*classes.txt lists 2 classes, 0..1\)"),
    (_members() + sample("c", png(3), {"class": "emu"}), "cat\ndog\n",
     r"train-000.tar::c.png: unknown class 'emu' \(not in .*classes.txt\)"),
    (_members(), None, r"train-000.tar::a.png: integer label 0 but no .*classes.txt"),
    (_members() + [("c.png", png(3)), ("c.cls", b"two")], "cat\ndog\n",
     r"train-000.tar::c.cls = 'two': should be an integer"),
    (_members() + [("c.png", png(3)), ("c.json", b"{not json")], "cat\ndog\n",
     r"train-000.tar::c.json: not valid JSON"),
    (_members() + sample("c", png(3), {"caption": "x"}), "cat\ndog\n", r"train-000.tar::c.png: no label in c.json"),
    (_members() + [("c.png", png(3)), ("c.jpg", png(3)), ("c.cls", b"0")], "cat\ndog\n",
     r"train-000.tar::c: 2 image members \['c.png', 'c.jpg'\], expected one"),
    (_members() + sample("c", b"\x89PNG broken", 0), "cat\ndog\n", r"train-000.tar::c.png: corrupt"),
], ids=["no-label", "unknown-int", "unknown-name", "int-without-classes", "cls-not-int", "json-broken",
        "json-without-label", "two-images", "image-not-decoding"])
def test_bad_webdataset_sample_is_named(tmp_path, train, classes, message):
    _webdataset_with(tmp_path, train, classes)
    with pytest.raises(datasets.DatasetError, match=message):
        webdataset_manifest(tmp_path, {"train": ("train-*.tar",), "val": ("val.tar",), "test": ("test.tar",)})


def _cut_inside(data: bytes, member: str) -> int:
    """A byte offset in the middle of `member`'s data (found by tarfile, independently of the code)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        info = tar.getmember(member)
    return info.offset_data + info.size // 2


def test_truncated_shards_are_named_with_the_member(tmp_path):
    shard = _webdataset_with(tmp_path, _members())
    whole = shard.read_bytes()
    shards = {"train": ("train-*.tar",), "val": ("val.tar",), "test": ("test.tar",)}
    shard.write_bytes(whole[:_cut_inside(whole, "b.png")])
    with pytest.raises(datasets.DatasetError, match=re.escape(f"{shard}: truncated or not a tar, in member 'b.png'")):
        webdataset_manifest(tmp_path, shards)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        after_a = tar.getmember("b.png").offset   # the header of b.png starts where a's sample ends
    shard.write_bytes(whole[:after_a + 100])      # cut inside b.png's header: tarfile alone stops quietly
    with pytest.raises(datasets.DatasetError, match=re.escape(f"{shard}: truncated after member 'a.cls'")):
        webdataset_manifest(tmp_path, shards)
    shard.write_bytes(b"")
    with pytest.raises(datasets.DatasetError, match="truncated or not a tar, before its first member"):
        webdataset_manifest(tmp_path, shards)


def test_bad_shard_lists_are_named(tmp_path):
    with pytest.raises(datasets.DatasetError, match=r"data root .*: no such folder \(expected the webdataset"):
        webdataset_manifest(tmp_path / "nowhere", SHARDS)
    _webdataset_with(tmp_path, _members())
    with pytest.raises(datasets.DatasetError, match=r"shards 'tset.tar' of split 'test' match no file"):
        webdataset_manifest(tmp_path, {"train": ("train-*.tar",), "val": ("val.tar",), "test": ("tset.tar",)})
    with pytest.raises(datasets.DatasetError, match=r"train-000.tar: listed for both 'train' and 'test'"):
        webdataset_manifest(tmp_path, {"train": ("train-*.tar",), "val": ("val.tar",), "test": ("*.tar",)})
    for name in ("train-000.tar", "val.tar", "test.tar"):
        write_tar(tmp_path / name, [("notes.txt", b"no samples")])
    with pytest.raises(datasets.DatasetError, match=r"the shards \['train-000.tar', 'val.tar', 'test.tar'\] hold no"):
        webdataset_manifest(tmp_path, {"train": ("train-*.tar",), "val": ("val.tar",), "test": ("test.tar",)})


# ----------------------------------------------------------------------------- extraction from tar members


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    demo.register_configs()
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("clip")
    models.save(open_clip.create_model("demo-clip", pretrained=None).eval(), config.Model("demo-clip", "random"), out)
    return models.load(out)


def _features(m, manifest, root, out: Path, workers: int) -> np.ndarray:
    extract.extract_images(m, manifest, root, out / "images.zarr", out / "staging", {"run": 1}, batch_size=3,
                           workers=workers, shard_rows=5, progress=False)
    return open_store(out / "images.zarr")["image/emb"][...]


def test_webdataset_features_equal_those_of_the_same_images_as_files(clip, tmp_path):
    root = write_webdataset(tmp_path / "wds")
    wds = webdataset_manifest(root, SHARDS)
    files = tmp_path / "files"   # every member as a file, root/<split>/<label>/<key>.png, unpacked by tarfile
    for split, shard in [(s, p) for s in datasets.SPLITS for p in sorted(root.glob(f"{s}*.tar"))]:
        with tarfile.open(shard) as tar:
            for info in tar:
                key, ext = info.name.split(".")
                if ext == "png":
                    label = tar.extractfile(f"{key}.cls").read().decode()
                    (files / split / label).mkdir(parents=True, exist_ok=True)
                    (files / split / label / info.name).write_bytes(tar.extractfile(info).read())
    folder, _ = folder_manifest(files, "folders", config.DEFAULT_RATIO, 0)
    from_files = _features(clip, folder, files, tmp_path / "f", 0)
    from_tars = _features(clip, wds, root, tmp_path / "t", 2)   # two loader workers, one open shard each
    key = lambda split, path: f"{split}/{path.replace('::', '/').rsplit('/', 1)[1]}"
    by_file = dict(zip(map(key, folder.split, folder.path), from_files))
    by_tar = dict(zip(map(key, wds.split, wds.path), from_tars))
    assert sorted(by_tar) == sorted(by_file) and len(by_tar) == 16
    for k in by_tar:
        np.testing.assert_allclose(by_tar[k], by_file[k], atol=1e-6)
    assert (wds.set_index(wds.split + "/" + wds.path.str.split("::").str[1]).label.to_dict()
            == folder.set_index(folder.split + "/" + folder.path.str.rsplit("/", n=1).str[1]).label.to_dict())
    # and the pixels are the PNG's: the first row's feature is the model's on png(0), preprocessed here
    with torch.no_grad():
        first = clip.trunk.encode_image(clip.preprocess(Image.open(io.BytesIO(png(0))).convert("RGB"))[None])
    np.testing.assert_allclose(from_tars[0], extract.project(first, clip.W_img, clip.b_img)[0].numpy(), atol=1e-5)


def test_views_read_tar_members_like_files(tmp_path):
    root = write_webdataset(tmp_path / "wds")
    (tmp_path / "a.png").write_bytes(png(101))   # sample 1 of class 1: 1_001.png in train-000.tar
    card = {"preprocess": {"size": [16, 16], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.25] * 3}}
    pre = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.ToTensor()])
    recipe = views.ViewRecipe(3, (0.5, 1.0), True, 0)
    a = views.ViewImages(root, ["train-000.tar::1_001.png"], np.array([4]), recipe, card, pre)[0]
    b = views.ViewImages(tmp_path, ["a.png"], np.array([4]), recipe, card, pre)[0]
    assert torch.equal(a, b)


def test_a_shard_cut_after_prepare_is_named_at_extraction(tmp_path):
    root = write_webdataset(tmp_path / "wds")
    manifest = webdataset_manifest(root, SHARDS)
    shard = root / "test.tar"
    whole = shard.read_bytes()
    shard.write_bytes(whole[:_cut_inside(whole, "1_007.png")])
    source = extract.ImageSource(root)
    source.open("test.tar::0_006.png")
    with pytest.raises(RuntimeError, match=re.escape(f"cannot decode image {root}/test.tar::1_007.png: {shard} is "
                                                     "truncated: member '1_007.png' has")):
        source.open(manifest.path.iloc[-1])


# ----------------------------------------------------------------------------- params


def test_folder_and_webdataset_params():
    data = {"a": {"kind": "folder", "root": "/d/a", "split": {"train": 0.6, "val": 0.2, "seed": 5}},
            "b": {"kind": "folder", "root": "b", "split": "folders", "template": "a {}."},
            "c": {"kind": "webdataset", "root": "c", "shards": {"train": "tr-*.tar", "val": ["v0.tar", "v1.tar"],
                                                                "test": "te.tar"}}}
    a, b, c = (config.dataset({"data": data}, n, datasets.COOP) for n in "abc")
    assert (a.split, a.ratio, a.seed) == ("ratio", (0.6, 0.2), 5)
    assert (b.split, b.template) == ("folders", "a {}.")
    assert c.shards == {"train": ("tr-*.tar",), "val": ("v0.tar", "v1.tar"), "test": ("te.tar",)}


@pytest.mark.parametrize("entry, message", [
    ({"kind": "folder", "root": "x", "splits": "folders"}, r"unknown key 'data.x.splits' \(known: \['kind'"),
    ({"kind": "folder", "root": "x", "split": "random"}, r"'data.x.split' = 'random' should be 'folders' \(root/train"),
    ({"kind": "folder", "root": "x", "split": 0.7},
     r"'data.x.split' = 0.7 should be 'folders' .* or a mapping \{train"),
    ({"kind": "folder", "root": "x", "split": {"train": 0, "val": 0.1, "seed": 0}}, r"train should be > 0"),
    ({"kind": "folder", "root": "x", "split": {"train": 0.9, "val": 0.2, "seed": 0}}, r"train \+ val <= 1"),
    ({"kind": "folder", "root": "x", "split": {"train": 0.7, "val": 0.1}}, r"missing key 'data.x.split.seed'"),
    ({"kind": "folder", "root": "x", "split": {"train": 0.7, "val": 0.1, "seed": 0, "test": 0.2}},
     r"unknown key 'data.x.split.test'"),
    ({"kind": "folder"}, r"missing key 'data.x.root'"),
    ({"kind": "webdataset", "root": "x", "shards": {"train": "a.tar", "val": "b.tar"}},
     r"missing key 'data.x.shards.test'"),
    ({"kind": "webdataset", "root": "x", "shards": {"train": "a.tar.gz", "val": "b.tar", "test": "c.tar"}},
     r"'data.x.shards.train' = 'a.tar.gz' should be a relative name or glob of uncompressed .tar shards"),
    ({"kind": "webdataset", "root": "x", "shards": {"train": [], "val": "b.tar", "test": "c.tar"}},
     r"'data.x.shards.train' = \[\] should be"),
    ({"kind": "webdataset", "root": "x", "shards": {"train": "/abs/a.tar", "val": "b.tar", "test": "c.tar"}},
     r"'data.x.shards.train' = '/abs/a.tar' should be a relative name"),
    ({"kind": "webdataset", "root": "x", "shards": {"train": "a.tar", "val": "b.tar", "test": "c.tar"}, "split": 1},
     r"unknown key 'data.x.split'"),
])
def test_bad_folder_and_webdataset_params_name_the_key(entry, message):
    with pytest.raises(config.ParamsError, match=message):
        config.dataset({"data": {"x": entry}}, "x", datasets.COOP)
