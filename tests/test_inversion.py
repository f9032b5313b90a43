"""OTI / OVI (pipeline/inversion.py): the towers with pseudo-tokens against open_clip's own encoders,
batch independence, seeding, a killed run that resumes, the retrieval variants, and bad input."""

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from pipeline import config, features, inversion, inversion_store, models, retrieval_variants as rv
from pipeline.features import Features
from pipeline.store import StoreError, open_store

OTI = inversion.Settings(tokens=1, steps=20, lr=0.02, weight_decay=0.01, batch=2, seed=42, template="a photo of {}",
                         splits=("test",))
OVI = inversion.Settings(tokens=1, steps=20, lr=0.02, weight_decay=0.01, batch=2, seed=42)
CARD_KEYS = ("arch", "source", "tag", "checkpoint_sha256", "open_clip_version", "quick_gelu", "preprocess")


@pytest.fixture(scope="module")
def model_dir(random_demo_dir):
    return random_demo_dir


@pytest.fixture(scope="module")
def m(model_dir):
    return models.load(model_dir)


def features_of(m, n_per_split=(3, 2, 5), n_cls=3, n_prompts=2) -> Features:
    """Cached-feature stand-ins from the model itself: random images' features, and class prompts."""
    gen = torch.Generator().manual_seed(1)
    n = sum(n_per_split)
    with torch.no_grad():
        pre = m.trunk.encode_image(torch.randn(n, 3, 64, 64, generator=gen))
        names = [f"{c} {p}" for c in ("red", "blue", "green")[:n_cls] for p in ("circle", "star")[:n_prompts]]
        text_pre = m.trunk.encode_text(m.tokenizer(names))
    split = np.repeat([0, 1, 2], n_per_split).astype(np.int8)
    prov = {**{k: m.card[k] for k in CARD_KEYS}, "precision": "fp32", "dataset": "toy", "manifest_sha256": "abc"}
    return Features(pre=pre.numpy(), emb=(pre @ m.W_img).numpy(), label=np.arange(n) % n_cls, split=split,
                    item=np.arange(n), text_pre=text_pre.numpy().reshape(n_cls, n_prompts, -1),
                    text_emb=(text_pre @ m.W_txt).numpy().reshape(n_cls, n_prompts, -1), W_img=m.W_img.numpy(),
                    b_img=None, W_txt=m.W_txt.numpy(), logit_scale=m.logit_scale, provenance=prov)


# ----------------------------------------------------------------------------- towers


def test_text_tower_with_a_real_word_as_pseudo_token_equals_encode_text(m):
    encode = inversion.TextWithTokens(m, "a photo of {}", 1, "cpu")
    word = m.tokenizer.encode("star")[0]
    with torch.no_grad():
        got = encode(m.trunk.token_embedding.weight[word][None, None])
        want = m.trunk.encode_text(m.tokenizer(["a photo of star"])) @ m.W_txt
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_two_pseudo_words_fill_both_placeholders_in_order(m):
    encode = inversion.TextWithTokens(m, "a {} photo", 2, "cpu")
    words = [m.tokenizer.encode(w)[0] for w in ("red", "star")]
    with torch.no_grad():
        got = encode(m.trunk.token_embedding.weight[words][None])
        want = m.trunk.encode_text(m.tokenizer(["a red star photo"])) @ m.W_txt
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_vision_tower_with_the_patch_embedding_of_a_flat_image_equals_encode_image(m):
    # a constant image has the same patch embedding everywhere: one pseudo-token repeated is that image
    image = torch.full((1, 3, 64, 64), 0.3)
    encode = inversion.ImageWithTokens(m, "cpu")
    with torch.no_grad():
        patch = m.trunk.visual.conv1(image).flatten(2)[0, :, 0]
        got = encode(patch[None, None])
        want = m.trunk.encode_image(image) @ m.W_img
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_two_visual_tokens_cover_the_patch_grid_as_nearest_interpolation(m):
    # R = 2 tokens onto 64 patches: F.interpolate(mode="nearest") gives the first half token 0, the rest token 1
    halves = torch.cat([torch.full((1, 3, 32, 64), -0.5), torch.full((1, 3, 32, 64), 0.7)], dim=2)
    encode = inversion.ImageWithTokens(m, "cpu")
    with torch.no_grad():
        grid = m.trunk.visual.conv1(halves).flatten(2)[0].T        # (64 patches, width), row-major
        tokens = torch.stack([grid[0], grid[-1]])[None]
        assert torch.equal(F.interpolate(tokens[:, None], size=(64, grid.shape[1]), mode="nearest")[0, 0], grid)
        torch.testing.assert_close(encode(tokens), m.trunk.encode_image(halves) @ m.W_img, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- optimisation


def test_oti_raises_the_cosine_to_its_image_well_above_its_start(m):
    feats = features_of(m)
    encode = inversion.TextWithTokens(m, OTI.template, 1, "cpu")
    out = inversion.invert(encode, torch.as_tensor(feats.emb[:4]), np.arange(4), dataclasses.replace(OTI, steps=60),
                           encode.width)
    start, end = out["cos"].T
    assert (end > start + 0.1).all(), out["cos"]
    # the stored feature is the text feature of the stored tokens
    with torch.no_grad():
        again = encode(torch.as_tensor(out["tokens"]))
    np.testing.assert_allclose(out["emb"], again.numpy(), atol=1e-5)
    np.testing.assert_allclose(end, F.cosine_similarity(again, torch.as_tensor(feats.emb[:4])).numpy(), atol=1e-5)


def test_ovi_raises_the_cosine_to_its_prompt(m):
    feats = features_of(m)
    encode = inversion.ImageWithTokens(m, "cpu")
    target = feats.text_emb.reshape(-1, feats.text_emb.shape[-1])[:3]
    out = inversion.invert(encode, torch.as_tensor(target), np.arange(3), dataclasses.replace(OVI, steps=40),
                           encode.width)
    assert (out["cos"][:, 1] > out["cos"][:, 0] + 0.1).all(), out["cos"]


def test_rows_optimised_together_get_the_tokens_each_gets_alone(m):
    feats = features_of(m)
    encode = inversion.TextWithTokens(m, OTI.template, 1, "cpu")
    rows = np.array([5, 9])
    together = inversion.invert(encode, torch.as_tensor(feats.emb[rows]), rows, OTI, encode.width)
    for i, r in enumerate(rows):
        alone = inversion.invert(encode, torch.as_tensor(feats.emb[[r]]), rows[[i]], OTI, encode.width)
        np.testing.assert_allclose(together["tokens"][i], alone["tokens"][0], atol=1e-5)


def test_initial_tokens_depend_on_seed_and_row_only():
    a = inversion.initial_tokens(np.array([3, 7]), 1, 16, seed=1)
    b = inversion.initial_tokens(np.array([7]), 1, 16, seed=1)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    assert not torch.equal(b, inversion.initial_tokens(np.array([7]), 1, 16, seed=2))
    assert abs(float(inversion.initial_tokens(np.arange(200), 1, 64, 0).std()) - inversion.INIT_STD) < 0.002


# ----------------------------------------------------------------------------- store


class Killed(Exception):
    """Stands for the process dying: nothing after it runs."""


def _write(m, feats, tmp_path, name, cfg=OTI):
    prov = inversion_store.store_provenance("oti", m.card, {"name": "toy", "manifest_sha256": "abc"}, feats,
                                            dataclasses.asdict(cfg))
    inversion.write("oti", m, feats, cfg, tmp_path / name, tmp_path / f"{name}.staging", prov, progress=False)
    return open_store(tmp_path / name)


def test_killed_run_resumes_to_the_uninterrupted_result(m, tmp_path, monkeypatch):
    feats = features_of(m, n_per_split=(2, 2, 20))     # 20 test rows: shards of 8 rows (4 batches of 2)
    full = _write(m, feats, tmp_path, "full.zarr")
    real, calls = inversion.invert, []

    def dies_in_the_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 6:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(inversion, "invert", dies_in_the_second_shard)
    with pytest.raises(Killed):
        _write(m, feats, tmp_path, "resumed.zarr")
    assert not (tmp_path / "resumed.zarr").exists()
    calls.clear()
    monkeypatch.setattr(inversion, "invert", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = _write(m, feats, tmp_path, "resumed.zarr")
    assert len(calls) == 6, "the finished shard was recomputed"          # 10 batches, 4 of them done before
    for name in ("tokens", "emb", "cos", "row", "label"):
        np.testing.assert_array_equal(full[f"oti/{name}"][...], resumed[f"oti/{name}"][...])
    np.testing.assert_array_equal(full["oti/row"][...], np.flatnonzero(feats.split == 2))


def test_store_from_another_checkpoint_is_refused_by_the_reader(m, tmp_path):
    feats = features_of(m)
    _write(m, feats, tmp_path, "oti.zarr")
    card = {**m.card, "checkpoint_sha256": "0" * 64}
    with pytest.raises(StoreError, match="checkpoint_sha256"):
        inversion_store.load(tmp_path / "oti.zarr", "oti", card, {"name": "toy", "manifest_sha256": "abc"})


# ----------------------------------------------------------------------------- retrieval variants


def _inverted(feats, rows, emb, method="oti"):
    return inversion_store.Inverted(rows, feats.label[rows] if method == "oti" else rows // 2, emb,
                                    np.zeros((len(rows), 2), np.float32), dict(feats.provenance))


def _retrieval_cfg():
    return config.retrieval({"retrieval": {"query": ["test"], "gallery": ["train"], "leave_one_out": False,
                                           "ks": [1], "variants": ["oti", "ovi"],
                                           "faiss_above": 10**6}}, "demo-clip", rv.VARIANTS)


def test_oti_variant_uses_each_query_rows_own_inverted_feature(m):
    feats = features_of(m)
    q, g = np.flatnonzero(feats.split == 2), np.flatnonzero(feats.split == 0)
    rows = q[::-1].copy()                     # the store lists rows in another order than the queries
    emb = np.random.default_rng(0).standard_normal((len(rows), feats.emb.shape[1])).astype(np.float32)
    task = rv.build("oti", feats, q, feats, g, _retrieval_cfg(), inverted=_inverted(feats, rows, emb))
    np.testing.assert_array_equal(task.query, emb[::-1])
    np.testing.assert_array_equal(task.gallery, feats.emb[g])
    with pytest.raises(ValueError, match="not inverted by OTI"):
        rv.build("oti", feats, q, feats, g, _retrieval_cfg(), inverted=_inverted(feats, rows[:2], emb[:2]))


def test_ovi_variant_ranks_queries_against_class_means_of_inverted_prompts(m):
    feats = features_of(m)                    # 3 classes x 2 prompts
    q, g = np.flatnonzero(feats.split == 2), np.flatnonzero(feats.split == 0)
    emb = np.random.default_rng(0).standard_normal((6, feats.emb.shape[1])).astype(np.float32)
    task = rv.build("ovi", feats, q, feats, g, _retrieval_cfg(), inverted=_inverted(feats, np.arange(6), emb, "ovi"))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    means = unit.reshape(3, 2, -1).mean(1)
    np.testing.assert_allclose(task.gallery, means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(task.gallery_labels, np.arange(3))


def test_variants_refuse_a_missing_or_foreign_store(m):
    feats = features_of(m)
    q, g = np.flatnonzero(feats.split == 2), np.flatnonzero(feats.split == 0)
    with pytest.raises(ValueError, match="needs the oti store"):
        rv.build("oti", feats, q, feats, g, _retrieval_cfg())
    foreign = _inverted(feats, q, feats.emb[q])
    foreign.provenance["checkpoint_sha256"] = "f" * 64
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        rv.build("oti", feats, q, feats, g, _retrieval_cfg(), inverted=foreign)


# ----------------------------------------------------------------------------- bad input


BASE = {"oti": {"splits": ["test"], "template": "a photo of {}", "tokens": 1, "steps": 150, "lr": 0.02,
                "weight_decay": 0.01, "batch": 64, "seed": 42},
        "ovi": {"tokens": 1, "steps": 1000, "lr": 0.02, "weight_decay": 0.01, "batch": 64, "seed": 42},
        "overrides": {"toy": {"ovi": {"steps": 10}}}}


def test_settings_merge_the_dataset_override():
    assert inversion.settings({"inversion": BASE}, "ovi", "toy", ("train", "val", "test")).steps == 10
    assert inversion.settings({"inversion": BASE}, "ovi", "other", ("train", "val", "test")).steps == 1000


@pytest.mark.parametrize("method, change, match", [
    ("oti", {"lr": "fast"}, r"'inversion.oti.lr' = 'fast' should be int or float"),
    ("oti", {"lr": 0}, r"'inversion.oti.lr' = 0 should be > 0"),
    ("oti", {"steps": -1}, r"'inversion.oti.steps' = -1 should be >= 0"),
    ("oti", {"tokens": True}, r"'inversion.oti.tokens' = True should be int"),
    ("oti", {"template": "a photo"}, r"should contain '\{\}' exactly once"),
    ("oti", {"splits": ["holdout"]}, r"'inversion.oti.splits' = \['holdout'\] should be a non-empty list"),
    ("ovi", {"batch": 0}, r"'inversion.ovi \(with inversion.overrides.toy\).batch' = 0 should be >= 1"),
])
def test_settings_reject(method, change, match):
    params = {"inversion": {**BASE, method: {**BASE[method], **change}}}
    with pytest.raises(config.ParamsError, match=match):
        inversion.settings(params, method, "toy", ("train", "val", "test"))


def test_bad_override_is_named():
    params = {"inversion": {**BASE, "overrides": {"toy": {"oit": {"steps": 1}}}}}
    with pytest.raises(config.ParamsError, match=r"'inversion.overrides.toy'"):
        inversion.settings(params, "oti", "toy", ("train", "val", "test"))


def test_template_too_long_for_the_context_is_refused(m):
    with pytest.raises(inversion.InversionError, match="does not fit 1 placeholder"):
        inversion.TextWithTokens(m, " ".join(["word"] * 20) + " {}", 1, "cpu")


def test_ovi_refuses_a_resnet_tower(tmp_path):
    torch.manual_seed(0)
    models.save(open_clip.create_model("RN50", pretrained=None), config.Model("RN50", "random"), tmp_path)
    with pytest.raises(inversion.InversionError, match="needs a ViT vision tower; this model has ModifiedResNet"):
        inversion.ImageWithTokens(models.load(tmp_path), "cpu")


def test_missing_or_replaced_checkpoint_is_refused(model_dir, tmp_path):
    with pytest.raises(models.ModelError, match=r"card.json is missing: run `dvc repro model@"):
        models.load(tmp_path)
    for name in ("card.json", "model.pt"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    state["logit_scale"] += 1
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(models.ModelError, match="not the checkpoint its card.json describes"):
        models.load(tmp_path)


@pytest.mark.slow
def test_demo_inversions_move_each_feature_to_its_target(demo_repo):
    card = json.loads((demo_repo / "models/demo/card.json").read_text())
    dataset = json.loads((demo_repo / "data/shapes/dataset.json").read_text())
    oti = inversion_store.load(demo_repo / "features/demo/shapes/oti.zarr", "oti", card, dataset)
    ovi = inversion_store.load(demo_repo / "features/demo/shapes/ovi.zarr", "ovi", card, dataset)
    f = features.load(demo_repo / "features/demo/shapes", card, dataset)
    np.testing.assert_array_equal(oti.row, np.flatnonzero(f.split == 2))
    assert len(ovi.row) == f.text_emb.shape[0] * f.text_emb.shape[1]
    for inv in (oti, ovi):
        start, end = inv.cos.mean(0)
        assert end > start + 0.2, (start, end)
    details = json.loads((demo_repo / "reports/retrieval/demo-shapes.details.json").read_text())
    assert details["variant_info"]["oti"]["cos_to_image"]["final"] == pytest.approx(float(oti.cos[:, 1].mean()), abs=1e-4)
