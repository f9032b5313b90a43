"""The published protocols as params: SeMoBridge's extra shots per shot count, IsoCLIP-NCM's prototypes
from the whole train split."""

import dvc.api
import numpy as np
import pytest
import torch

from conftest import ROOT
from pipeline import adapt, config
from pipeline.config import ParamsError
from pipeline.layout import draw_key
from pipeline.methods import REGISTRY
from test_adapt import METHODS, settings, toy_features, toy_fewshot, toy_views


def semo(**changes) -> dict:
    return {**METHODS["semobridge"], **changes}


def test_extra_shots_table_picks_the_copies_per_shot_count():
    feats, fewshot = toy_features(), toy_fewshot()
    views = toy_views(feats, fewshot)   # 3 views per shot
    cfg = settings(enabled=["semobridge"], semobridge=semo(extra_shots={"shot_1": "none", "shot_4": 2}))
    _, attrs = adapt.run(feats, fewshot, views, cfg)
    for seed in (1, 2):
        assert attrs["choices"]["semobridge"][draw_key(1, seed)]["shots_per_class"] == 1
        assert attrs["choices"]["semobridge"][draw_key(1, seed)]["extra_shots"] == "none"
        assert attrs["choices"]["semobridge"][draw_key(4, seed)]["shots_per_class"] == 4 * (1 + 2)
    inputs = adapt.Inputs(feats, views)
    draw = adapt.Draw(inputs, draw_key(4, 1), fewshot["draws"][draw_key(4, 1)])
    shots = REGISTRY["semobridge"].shots(inputs, draw, cfg.settings["semobridge"])
    expected = np.concatenate([feats.emb[draw.idx][:, :, None], views.emb[draw.view_rows][:, :, :2]], axis=2)
    torch.testing.assert_close(shots, torch.from_numpy(expected).flatten(1, 2))


def test_a_shot_count_missing_from_the_table_is_named():
    feats, fewshot = toy_features(), toy_fewshot()
    cfg = settings(enabled=["semobridge_t"], semobridge_t={**METHODS["semobridge_t"], "extra_shots": {"shot_1": "hflip"}})
    with pytest.raises(ParamsError, match=r"'methods\.semobridge_t\.extra_shots' has no entry shot_4"):
        adapt.run(feats, fewshot, toy_views(feats, fewshot), cfg)


def test_more_views_than_cached_is_named():
    feats, fewshot = toy_features(), toy_fewshot()
    cfg = settings(enabled=["semobridge"], semobridge=semo(extra_shots=5))
    with pytest.raises(ParamsError, match=r"asks for 5 views at 1 shots but views.zarr holds 3"):
        adapt.run(feats, fewshot, toy_views(feats, fewshot), cfg)


@pytest.mark.parametrize("value", ["jitter", 0, True, {1: "hflip"}, {"shot_0": "hflip"}, {"shots_1": "hflip"},
                                   {"shot_1": "crop"}, {"shot_2": -1}, 2.5])
def test_bad_extra_shots_name_the_key(value):
    with pytest.raises(ParamsError, match=r"methods\.semobridge\.extra_shots"):
        settings(semobridge=semo(extra_shots=value))


def test_isoncm_train_prototypes_use_every_train_image():
    feats, fewshot = toy_features(), toy_fewshot()
    cfg = settings(enabled=["isoncm"], isoclip={**METHODS["isoclip"], "prototypes": "train"})
    arrays, _ = adapt.run(feats, fewshot, None, cfg)
    inputs = adapt.Inputs(feats, None)
    W_iso = REGISTRY["isoncm"].setup(inputs, cfg.settings["isoncm"])[0].numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    train, test = feats.split == 0, feats.split == 2
    centres = np.stack([feats.pre[train & (feats.label == c)].mean(axis=0) for c in range(feats.text_emb.shape[0])])
    expected = unit(feats.pre[test] @ W_iso) @ unit(centres @ W_iso).T
    for key in fewshot["draws"]:
        np.testing.assert_allclose(arrays[f"isoncm/{key}/logits/test"], expected, atol=1e-5)


def test_bad_isoncm_prototypes_are_named():
    with pytest.raises(ParamsError, match=r"methods\.isoclip\.prototypes"):
        settings(isoclip={**METHODS["isoclip"], "prototypes": "all"})


def test_the_projects_methods_params_read_through_dvc_for_every_dataset():
    # DVC's params reader rejects some shapes plain YAML accepts (int keys), so read them as the stage does
    params = dvc.api.params_show(stages=["adapt@demo-shapes"], repo=str(ROOT))
    for dataset in {"shapes", *params["methods"]["overrides"]}:
        cfg = config.methods(params, "demo-clip", dataset, REGISTRY)
        assert "semobridge_t" in cfg.settings
    dtd = config.methods(params, "demo-clip", "dtd", REGISTRY).settings["semobridge"].extra_shots
    assert dtd == {1: 10, 2: 10, 4: 10, 8: "none", 16: 5}
