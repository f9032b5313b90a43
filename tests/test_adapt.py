"""adapt: component logits per draw on a small synthetic store, honesty of its choices, bad input."""

import copy
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr

from pipeline import adapt, config, draws, features, views
from pipeline.config import ParamsError
from pipeline.features import Features
from pipeline.layout import SPLIT_CODES, draw_key
from pipeline.methods import REGISTRY
from pipeline.store import StoreError

C, D, D_V, D_T, P = 4, 8, 12, 10, 2
PER_CLASS = {"train": 6, "val": 4, "test": 5}
METHODS = {
    "enabled": ["zeroshot", "ncm", "isoncm", "tip", "ape", "semobridge", "semobridge_t"],
    "tip": {"scales": [7, 3], "steps": [12, 5]},
    "ape": {"channels": 0.5, "w": [0.5, 0.5], "scales": [7, 7, 1], "steps": [12, 5, 4]},
    "semobridge": {"atol": 0.3, "extra_shots": "hflip", "trials": 128, "seed": 0,
                   "refine": {"rounds": 2, "per_round": 32, "top": 4}},
    "semobridge_t": {"atol": 0.3, "extra_shots": "hflip", "steps": 30, "warmup": 5, "warmup_min_lr": 1e-5,
                     "lr": 1e-2, "weight_decay": 0.01, "losses": {"image_text": 0.5, "consistency": 0.1, "bias_norm": 0.1},
                     "select": {"smoothness": 0.01, "alpha": 1.0, "beta": 1.0, "gamma": 1.0,
                                "lambda1": 0.5, "lambda2": 0.5, "lambda3": 0.5},
                     "trials": 128, "seed": 0, "refine": {"rounds": 2, "per_round": 32, "top": 4}},
    "isoclip": {"prototypes": "shots", "toy-arch": {"k_top": 1, "k_bottom": 2}},
    "overrides": {"other": {"tip": {"scales": [12, 10]}}},
}


def decided(choices: dict) -> dict:
    """Choices without the measurements (seconds) of `Method.measured`, which vary run to run."""
    return {name: {key: {k: v for k, v in c.items() if k not in REGISTRY[name].measured} for key, c in by_key.items()}
            for name, by_key in choices.items()}


def toy_manifest() -> pd.DataFrame:
    rows = [(label, f"class {label}", split) for split, n in PER_CLASS.items()
            for _ in range(n) for label in range(C)]
    frame = pd.DataFrame(rows, columns=["label", "classname", "split"])
    frame.insert(0, "item", np.arange(len(frame)) + 100)
    frame.insert(1, "path", [f"img{i}.png" for i in range(len(frame))])
    return frame


def toy_features(seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    man = toy_manifest()
    labels = torch.tensor(man["label"].to_numpy())
    centres = torch.randn(C, D_V, generator=g)
    pre = centres[labels] + 0.8 * torch.randn(len(man), D_V, generator=g)
    W_img, W_txt = torch.randn(D_V, D, generator=g), torch.randn(D_T, D, generator=g)
    text_pre = torch.randn(C, P, D_T, generator=g)
    return Features(pre=pre.numpy(), emb=(pre @ W_img).numpy(), label=man["label"].to_numpy(np.int32),
                    split=man["split"].map(SPLIT_CODES).to_numpy(np.int8), item=man["item"].to_numpy(np.int64),
                    text_pre=text_pre.numpy(), text_emb=(text_pre @ W_txt).numpy(), W_img=W_img.numpy(),
                    b_img=None, W_txt=W_txt.numpy(), logit_scale=100.0,
                    provenance={"manifest_sha256": "toy"})


def toy_fewshot(val: str = "full") -> dict:
    cfg = {"shots": [1, 4], "seeds": [1, 2], "val": val, "repeat": False}
    return draws.make(toy_manifest(), {"name": "toy", "manifest_sha256": "toy"}, config.fewshot({"fewshot": cfg}))


def toy_views(feats: Features, fewshot: dict, n_views: int = 3) -> views.Views:
    items = draws.train_items(fewshot)
    rows = draws.rows_of(feats.item, items)
    g = torch.Generator().manual_seed(5)
    base = torch.from_numpy(feats.emb[rows])
    emb = base[:, None] + 0.3 * torch.randn(len(items), n_views, D, generator=g)
    return views.Views(item=items, emb=emb.numpy(), flip=(base + 0.1).numpy(), recipe={"n_views": n_views})


def settings(**changes) -> dict:
    methods = copy.deepcopy(METHODS)
    methods.update(changes)
    return config.methods({"methods": methods}, "toy-arch", "toy", REGISTRY)


@pytest.fixture(scope="module")
def toy_run():
    feats = toy_features()
    fewshot = toy_fewshot()
    return feats, fewshot, adapt.run(feats, fewshot, toy_views(feats, fewshot), settings())


def test_layout_covers_every_method_and_draw(toy_run):
    feats, fewshot, (arrays, attrs) = toy_run
    n = {"val": PER_CLASS["val"] * C, "test": PER_CLASS["test"] * C}
    for split in ("val", "test"):
        assert arrays[f"zeroshot/all/logits/{split}"].shape == (n[split], C)
        assert arrays[f"label/{split}"].shape == (n[split],)
        for key in fewshot["draws"]:
            for name in ("ncm/{}/logits", "isoncm/{}/logits", "tip/{}/alpha", "ape/{}/alpha",
                         "semobridge/{}/lambda1", "semobridge/{}/lambda2", "semobridge/{}/lambda3",
                         "semobridge_t/{}/lambda1", "semobridge_t/{}/lambda2", "semobridge_t/{}/lambda3"):
                assert arrays[f"{name.format(key)}/{split}"].shape == (n[split], C)
    assert attrs["draws"] == [draw_key(k, s) for k in (1, 4) for s in (1, 2)]
    assert set(attrs["choices"]) == {"tip", "ape", "semobridge", "semobridge_t"}
    semo = attrs["choices"]["semobridge"][draw_key(4, 1)]
    assert semo["shots_per_class"] == 8  # K (1 + one hflip copy)
    assert semo["rows_scored"] == 128 + 2 * 32
    assert attrs["bridge"]["n_sigma"] == D and arrays["spectrum/W_txt"].shape == (D,)


def test_ncm_matches_an_independent_loop(toy_run):
    feats, fewshot, (arrays, _) = toy_run
    key = draw_key(4, 2)
    train = fewshot["draws"][key]["train"]
    test = feats.split == 2
    q = feats.emb[test] / np.linalg.norm(feats.emb[test], axis=1, keepdims=True)
    expected = np.zeros((test.sum(), C))
    for c in range(C):
        mine = [feats.emb[list(feats.item).index(i)] for i in train if feats.label[list(feats.item).index(i)] == c]
        centre = np.mean(mine, axis=0)
        expected[:, c] = q @ (centre / np.linalg.norm(centre))
    np.testing.assert_allclose(arrays[f"ncm/{key}/logits/test"], expected, atol=1e-5)


def test_tip_component_is_the_affinity_at_the_chosen_beta(toy_run):
    feats, fewshot, (arrays, attrs) = toy_run
    key = draw_key(1, 1)
    beta = attrs["choices"]["tip"][key]["beta"]
    view_set = toy_views(feats, fewshot)
    item = fewshot["draws"][key]["train"]  # one shot per class, class order
    keys = view_set.emb[draws.rows_of(view_set.item, item)].mean(axis=1)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    q = feats.emb[feats.split == 2]
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(arrays[f"tip/{key}/alpha/test"], np.exp(-beta * (1 - q @ keys.T)), rtol=1e-5)


def test_choices_never_see_test_rows(toy_run):
    feats, fewshot, (arrays, attrs) = toy_run
    other = copy.deepcopy(feats)
    test = other.split == 2
    rng = np.random.default_rng(1)
    other.emb[test] = rng.normal(size=other.emb[test].shape)
    other.pre[test] = rng.normal(size=other.pre[test].shape)
    arrays2, attrs2 = adapt.run(other, fewshot, toy_views(feats, fewshot), settings())
    assert decided(attrs2["choices"]) == decided(attrs["choices"])
    for name, value in arrays.items():
        if not name.endswith("/test"):
            np.testing.assert_array_equal(arrays2[name], value, err_msg=name)


def test_coop_val_protocol_indexes_the_val_rows():
    feats = toy_features()
    fewshot = toy_fewshot("coop")
    arrays, _ = adapt.run(feats, fewshot, toy_views(feats, fewshot), settings(enabled=["ncm"]))
    val_items = feats.item[feats.split == 1]
    for key, draw in fewshot["draws"].items():
        index = arrays[f"draw/{key}/val_index"]
        assert val_items[index].tolist() == draw["val"]
        assert len(index) == C * min(draw["shots"], 4)


def test_overrides_merge_per_dataset():
    cfg = config.methods({"methods": METHODS}, "toy-arch", "other", REGISTRY)
    assert cfg.settings["tip"].scales == (12.0, 10.0) and cfg.settings["tip"].steps == (12, 5)
    assert settings().settings["tip"].scales == (7.0, 3.0)


@pytest.mark.parametrize("change, key", [
    ({"enabled": ["zeroshot", "cocoop"]}, "methods.enabled"),
    ({"enabled": []}, "methods.enabled"),
    ({"tip": {"scales": [7], "steps": [200, 20]}}, "methods.tip.scales"),
    ({"tip": {"scales": [7, 3], "steps": [200, 2.5]}}, "methods.tip.steps"),
    ({"tip": {"scales": [-7, 3], "steps": [200, 20]}}, "methods.tip.scales"),
    ({"tip": {"scales": [7, 3], "steps": [200, True]}}, "methods.tip.steps"),
    ({"overrides": {"toy": {"tip": {"scales": [7, -1]}}}}, r"methods.tip \(with methods.overrides.toy\).scales"),
    ({"overrides": {"toy": {"cocoop": {"ctx": 4}}}}, "methods.overrides.toy.cocoop"),
    ({"ape": {**METHODS["ape"], "channels": 1.5}}, "methods.ape.channels"),
    ({"ape": {**METHODS["ape"], "channels": 0}}, "methods.ape.channels"),
    ({"ape": {**METHODS["ape"], "channels": -0.5}}, "methods.ape.channels"),
    ({"ape": {**METHODS["ape"], "w": [-0.5, 0.5]}}, "methods.ape.w"),
    ({"semobridge": {**METHODS["semobridge"], "atol": -0.1}}, "methods.semobridge.atol"),
    ({"semobridge": {**METHODS["semobridge"], "refine": {"rounds": "4", "per_round": 8}}},
     "methods.semobridge.refine.rounds"),
    ({"semobridge": {**METHODS["semobridge"], "refine": {"rounds": 4}}}, "methods.semobridge.refine.per_round"),
    ({"semobridge": {**METHODS["semobridge"], "refine": {"rounds": 1, "per_round": 8, "shrink": 2}}},
     "methods.semobridge.refine.shrink"),
    ({"semobridge": {**METHODS["semobridge"], "refine": {"round": 1}}}, "methods.semobridge.refine"),
    ({"semobridge": {**METHODS["semobridge"], "extra_shots": "jitter"}}, "methods.semobridge.extra_shots"),
    ({"semobridge": {**METHODS["semobridge"], "trials": "many"}}, "methods.semobridge.trials"),
    ({"isoclip": {"ViT-B-32-quickgelu": {"k_top": 150, "k_bottom": 50}}}, "methods.isoclip.toy-arch"),
])
def test_bad_method_params_name_the_key(change, key):
    with pytest.raises(ParamsError, match=key if "\\" in key else key.replace(".", r"\.")):
        settings(**change)


def test_too_many_ape_channels_is_a_params_error(toy_run):
    feats, fewshot, _ = toy_run
    with pytest.raises(ParamsError, match="channels"):
        adapt.run(feats, fewshot, toy_views(feats, fewshot),
                  settings(enabled=["ape"], ape={**METHODS["ape"], "channels": 99}))


def test_views_missing_a_drawn_item_is_refused(toy_run):
    feats, fewshot, _ = toy_run
    v = toy_views(feats, fewshot)
    short = views.Views(item=v.item[1:], emb=v.emb[1:], flip=v.flip[1:], recipe=v.recipe)
    with pytest.raises(draws.DrawsError, match="not in the store"):
        adapt.run(feats, fewshot, short, settings(enabled=["tip"]))


# ----------------------------------------------------------------------------- on the demo repo


@pytest.mark.slow
def test_demo_logits_store_and_spectrum(demo_repo):
    group = zarr.open_group(demo_repo / "logits" / "demo" / "shapes" / "logits.zarr", mode="r")
    attrs = dict(group.attrs)
    assert attrs["complete"] is True
    assert attrs["methods"] == yaml.safe_load((demo_repo / "params.yaml").read_text())["methods"]["enabled"]
    assert len(attrs["draws"]) == 15
    assert attrs["bridge"]["atol"] == 0.3 and 0 <= attrs["bridge"]["n_sigma_le_atol"] <= attrs["bridge"]["n_sigma"]
    assert group["spectrum/psi"].shape == (128,)  # d_v = d_t = 128 for demo-clip, rank <= D = 64
    assert attrs["modality_gap"] > 0
    n_test = (zarr.open_group(demo_repo / "features" / "demo" / "shapes" / "images.zarr", mode="r")["image/split"][...] == 2).sum()
    assert group["semobridge/shot_16-seed_1/lambda3/test"].shape == (n_test, 36)


@pytest.mark.slow
def test_nan_features_are_refused(demo_repo, tmp_path):
    src = demo_repo / "features" / "demo" / "shapes"
    shutil.copytree(src / "images.zarr", tmp_path / "images.zarr")
    shutil.copytree(src / "text.zarr", tmp_path / "text.zarr")
    card = json.loads((demo_repo / "models" / "demo" / "card.json").read_text())
    dataset = json.loads((demo_repo / "data" / "shapes" / "dataset.json").read_text())
    emb = zarr.open_group(tmp_path / "images.zarr", mode="r+")["image/emb"]
    row = emb[7]
    row[3] = np.inf
    emb[7] = row
    with pytest.raises(StoreError, match="NaN or inf"):
        features.load(tmp_path, card, dataset)
