"""fewshot.json and augmented views: params, manifest binding, seeding, and the stages on the demo repo."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from PIL import Image
from torchvision import transforms

from pipeline import config, draws, views
from pipeline.config import ParamsError
from pipeline.fewshot import draw_fewshot
from pipeline.io import atomic_write_json
from test_adapt import toy_manifest

FEWSHOT = {"shots": [1, 2, 4, 8, 16], "seeds": [1, 2, 3], "val": "full", "repeat": False}
VIEWS = {"n_views": 10, "scale": [0.5, 1.0], "flip": True, "seed": 0}


@pytest.mark.parametrize("change, key", [
    ({"shots": "16"}, "fewshot.shots"),
    ({"shots": [1, 2.0]}, "fewshot.shots"),
    ({"shots": [True]}, "fewshot.shots"),
    ({"shots": [4, 4]}, "fewshot.shots"),
    ({"seeds": []}, "fewshot.seeds"),
    ({"seeds": [0]}, "fewshot.seeds"),
    ({"seeds": 1}, "fewshot.seeds"),
    ({"val": "half"}, "fewshot.val"),
    ({"repeat": "yes"}, "fewshot.repeat"),
])
def test_bad_fewshot_params_name_the_key(change, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        config.fewshot({"fewshot": {**FEWSHOT, **change}})


def fewshot_cfg(**change) -> config.Fewshot:
    return config.fewshot({"fewshot": {**FEWSHOT, **change}})


def test_shots_beyond_a_class_are_a_clear_error_unless_repeat():
    man = toy_manifest()  # 6 train images per class
    cfg = fewshot_cfg(shots=[8])
    with pytest.raises(draws.DrawsError, match=r"has 6 train images, fewer than shots=8.*fewshot\.repeat"):
        draws.make(man, {"name": "toy", "manifest_sha256": "x"}, cfg)
    fewshot = draws.make(man, {"name": "toy", "manifest_sha256": "x"}, fewshot_cfg(shots=[8], repeat=True))
    assert len(fewshot["draws"]["shot_8-seed_1"]["train"]) == 8 * 4


def test_fewshot_json_is_bound_to_its_manifest(tmp_path):
    man = toy_manifest()
    fewshot = draws.make(man, {"name": "toy", "manifest_sha256": "abc"}, fewshot_cfg(shots=[1, 4]))
    assert fewshot["draws"] == draw_fewshot(man, [1, 4], [1, 2, 3])
    path = tmp_path / "fewshot.json"
    atomic_write_json(path, fewshot)
    assert draws.load(path, "abc")["draws"] == fewshot["draws"]
    with pytest.raises(draws.DrawsError, match="drawn on manifest 'abc'.*'def'"):
        draws.load(path, "def")
    with pytest.raises(draws.DrawsError, match="do not exist"):
        draws.load(tmp_path / "missing.json", "abc")


def test_draw_rows_are_class_major():
    man = toy_manifest()
    fewshot = draws.make(man, {"name": "toy", "manifest_sha256": "x"}, fewshot_cfg(shots=[4]))
    items, labels = man["item"].to_numpy(), man["label"].to_numpy()
    rows = draws.rows_of(items, fewshot["draws"]["shot_4-seed_2"]["train"])
    idx = draws.class_major(rows, labels[rows], 4, 4)
    assert (labels[idx] == np.arange(4)[:, None]).all()
    assert sorted(items[idx].ravel()) == sorted(fewshot["draws"]["shot_4-seed_2"]["train"])
    with pytest.raises(draws.DrawsError, match="not in the store"):
        draws.rows_of(items, [10_000])


@pytest.mark.parametrize("change, key", [
    ({"n_views": 0}, "views.n_views"),
    ({"scale": [0.5]}, "views.scale"),
    ({"scale": [0.9, 0.5]}, "views.scale"),
    ({"flip": 1}, "views.flip"),
    ({"seed": -1}, "views.seed"),
])
def test_bad_views_params_name_the_key(change, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        config.views({"views": {**VIEWS, **change}})


def test_crop_box_within_image_and_scale():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        top, left, h, w = views.crop_box(rng, 80, 60, (0.5, 1.0))
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.5 * 4800 * 0.9 <= h * w <= 4800  # area within the scale range (up to rounding)


def test_views_are_seeded_per_item_and_view(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    card = {"preprocess": {"size": [32, 32], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.25] * 3}}
    pre = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    recipe = config.views({"views": {**VIEWS, "n_views": 4}})
    a = views.ViewImages(tmp_path, ["0.png", "1.png", "2.png"], np.array([7, 8, 9]), recipe, card, pre)
    b = views.ViewImages(tmp_path, ["2.png", "0.png"], np.array([9, 7]), recipe, card, pre)
    assert a[0].shape == (5, 3, 32, 32)
    assert np.array_equal(a[2].numpy(), b[0].numpy()) and np.array_equal(a[0].numpy(), b[1].numpy())
    assert not np.array_equal(a[0][0].numpy(), a[0][1].numpy())  # views differ
    other = views.ViewImages(tmp_path, ["0.png"], np.array([7]), views.ViewRecipe(4, (0.5, 1.0), True, 1), card, pre)
    assert not np.array_equal(a[0][:4].numpy(), other[0][:4].numpy())  # the seed matters


# ----------------------------------------------------------------------------- on the demo repo


@pytest.mark.slow
def test_demo_fewshot_and_views_stores(demo_repo):
    dataset = json.loads((demo_repo / "data" / "shapes" / "dataset.json").read_text())
    manifest = pd.read_parquet(demo_repo / "data" / "shapes" / "manifest.parquet")
    fewshot = draws.load(demo_repo / "fewshot" / "shapes" / "fewshot.json", dataset["manifest_sha256"])
    assert fewshot["draws"] == draw_fewshot(manifest, FEWSHOT["shots"], FEWSHOT["seeds"])
    group = zarr.open_group(demo_repo / "features" / "demo" / "shapes" / "views.zarr", mode="r")
    assert np.array_equal(group["view/item"][...], draws.train_items(fewshot))
    assert group["view/emb"].shape[1:] == (10, 64) and group["flip/emb"].shape[1:] == (64,)
    assert dict(group.attrs)["provenance"]["views"] == {**VIEWS, "scale": [0.5, 1.0]}


@pytest.mark.slow
def test_demo_bad_shots_fail_clearly_and_write_nothing(demo_repo):
    params_file = demo_repo / "params.yaml"
    out = demo_repo / "fewshot" / "shapes" / "fewshot.json"
    original, before = params_file.read_text(), out.read_bytes()
    params = yaml.safe_load(original)
    try:
        for shots, message in (([1, 500], "has 100 train images, fewer than shots=500"),
                               (["1"], "'fewshot.shots' = \\['1'\\]")):
            params["fewshot"]["shots"] = shots
            params_file.write_text(yaml.safe_dump(params, sort_keys=False))
            proc = subprocess.run([sys.executable, "stages/fewshot.py", "shapes"], cwd=demo_repo,
                                  capture_output=True, text=True)
            assert proc.returncode != 0
            assert re.search(message, proc.stderr), proc.stderr[-2000:]
            assert out.read_bytes() == before
    finally:
        params_file.write_text(original)
