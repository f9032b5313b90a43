"""The multi-label demo CLIP (pipeline/multilabel_demo.py): its zoo entry and errors, the contrastive loss with
duplicate captions against a hand computation, and a few seeded fine-tuning steps from a checkpoint."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline import models
from pipeline import multilabel_demo as md
from pipeline.config import ParamsError

ROOT = Path(__file__).resolve().parents[1]
ENTRY = {"arch": "demo-clip", "source": "demo", "init": "demo",
         "data": {"world": "multilabel", "seed": 1, "count": 6, "p_present": 0.4, "mention": 0.5, "blur": 0.0},
         "train": {"steps": 3, "lr": 0.001, "warmup": 1, "batch": 4, "seed": 0}}


def test_the_params_entry_parses():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    name = params["retune"]["model"]
    assert md.is_entry(params, name) and not md.is_entry(params, "demo_teacher")
    cfg = md.entry(params, name)
    assert cfg.model.init == "demo" and cfg.model.source == "demo" and cfg.model.data_world == "multilabel"
    assert cfg.recipe.steps == params["model_zoo"][name]["train"]["steps"]


@pytest.mark.parametrize("change,needle", [
    ({"data": {**ENTRY["data"], "world": "scenes"}}, r"'model_zoo.m.data.world' = 'scenes' should be one of \['multilabel'\]"),
    ({"train": {**ENTRY["train"], "classes_per_batch": 36}}, r"unknown key 'model_zoo.m.train.classes_per_batch'"),
    ({"train": {**ENTRY["train"], "batch": 1}}, r"'model_zoo.m.train' needs batch >= 2"),
    ({"data": {**ENTRY["data"], "mention": 1.5}}, r"'model_zoo.m.data.mention' = 1.5 should be <= 1"),
    ({"source": "random"}, r"'model_zoo.m.source' = 'random' should be one of \['demo'\]"),
])
def test_bad_entries_name_the_key(change, needle):
    with pytest.raises(ParamsError, match=needle):
        md.entry({"model_zoo": {"m": {**ENTRY, **change}}}, "m")
    entry = {k: v for k, v in ENTRY.items() if k != "init"}
    with pytest.raises(ParamsError, match="missing key 'model_zoo.m.init'"):
        md.entry({"model_zoo": {"m": entry}}, "m")


def test_duplicate_captions_are_positives_of_each_other():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    tokens = torch.tensor([[1, 7, 2], [1, 7, 2], [1, 8, 2]])   # captions 0 and 1 are the same text
    loss = md.clip_loss(img, txt, tokens, 10.0)
    unit = lambda a: a / a.norm(dim=-1, keepdim=True)
    logits = (10.0 * unit(img) @ unit(txt).T).double()
    target = torch.tensor([[.5, .5, 0], [.5, .5, 0], [0, 0, 1]], dtype=torch.double)
    ce = lambda L: -(target * L.log_softmax(1)).sum(1).mean()
    assert float(loss) == pytest.approx(float((ce(logits) + ce(logits.T)) / 2), rel=1e-5)


def test_fine_tuning_is_seeded_and_moves_the_weights(random_demo_dir):
    cfg = md.entry({"model_zoo": {"m": ENTRY}}, "m")
    pixels, scenes = md.render(cfg)
    assert pixels.shape == (6, 3, 64, 64) and pixels.dtype == torch.uint8 and len(scenes) == 6
    _, init = models.checkpoint(random_demo_dir)
    a, losses_a = md.finetune(cfg, pixels, scenes, init, progress=False)
    b, losses_b = md.finetune(cfg, pixels, scenes, init, progress=False)
    assert losses_a == losses_b and len(losses_a) == 3 and np.isfinite(losses_a).all()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    moved = a.state_dict()["text_projection"]
    assert not torch.equal(moved, init["text_projection"])
    assert float(a.logit_scale.exp()) == pytest.approx(cfg.recipe.logit_scale)   # fixed, not learned
    c, losses_c = md.finetune(replace(cfg, recipe=replace(cfg.recipe, seed=1)), pixels, scenes, init, progress=False)
    assert losses_c != losses_a
