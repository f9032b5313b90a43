"""SAM-CZSL's modules (pipeline/czsl_{methods,train,memory,sam}.py) against hand computations, loops and
properties of a synthetic CZSL problem built so that one patch carries the (attr, obj) signal."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline import czsl_eval
from pipeline.config import ParamsError
from pipeline.czsl_memory import init_bank, pseudo_labels, stream, stream_order
from pipeline.czsl_methods import (CZSLInputs, aligned_patches, centroid_gap, compose, fuse, relative_gap,
                                   sparse_alignment, zero_shot)
from pipeline.czsl_sam import config, metrics, run
from pipeline.czsl_train import head, train_head, train_vac, vac_logits

SCALE = 50.0


def synthetic(seed=0, attrs=4, objs=5, width=32, patches=8, per_pair=8, blur=0.0) -> CZSLInputs:
    """Every pair's text is u_a + v_o (orthonormal attr and obj directions). An image of pair c has one
    signal patch t_c + noise; its other patches carry a distractor pair c' weakly (0.3 t_c' + noise), and
    its CLS mixes both, t_c + lam t_c' with lam ~ U(0, 1.5), so the CLS prefers c' on about a third of the
    images while the signal patch stays the best match of t_c (cos ~0.98 against <= ~0.5 for any other
    text). Every token carries a constant offset orthogonal to the texts: a modality gap."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(width, width)))[0].T
    u, v, gap, noise_dirs = basis[:attrs], basis[attrs:attrs + objs], basis[attrs + objs], basis[attrs + objs + 1:]
    pair_ids = np.array([(a, o) for a in range(attrs) for o in range(objs)])
    text = u[pair_ids[:, 0]] + v[pair_ids[:, 1]]
    order = rng.permutation(len(pair_ids))
    seen_pairs, val_pairs, test_pairs = np.split(order, [len(order) // 2, 3 * len(order) // 4])
    seen = np.isin(np.arange(len(pair_ids)), seen_pairs)

    def noise(*shape, scale=1.0):
        return scale * rng.normal(size=(*shape, len(noise_dirs))) @ noise_dirs / math.sqrt(len(noise_dirs))

    split_pairs = ((0, seen_pairs), (1, np.concatenate([seen_pairs, val_pairs])),
                   (2, np.concatenate([seen_pairs, test_pairs])))
    labels = np.concatenate([np.repeat(p, per_pair) for _, p in split_pairs])
    split = np.concatenate([np.full(len(p) * per_pair, code) for code, p in split_pairs])
    distractor = rng.integers(len(pair_ids), size=len(labels))
    tokens = 0.3 * text[distractor][:, None] + noise(len(labels), patches + 1)
    signal = rng.integers(1, patches + 1, size=len(labels))
    tokens[np.arange(len(labels)), signal] = text[labels] + noise(len(labels), scale=0.3)
    lam = rng.uniform(0, 1.5, size=len(labels))
    tokens[:, 0] = text[labels] + lam[:, None] * text[distractor] + noise(len(labels), scale=0.3)
    tokens = tokens + 2.0 * gap + blur * rng.normal(size=tokens.shape) / math.sqrt(width)
    closed = {"val": seen | np.isin(np.arange(len(pair_ids)), val_pairs),
              "test": seen | np.isin(np.arange(len(pair_ids)), test_pairs)}
    return CZSLInputs(tokens, text, u, v, pair_ids, labels, split, seen, SCALE, closed)


def params(**changes) -> dict:
    recipe = {"lr": 1e-3, "warmup": 0, "warmup_min_lr": 0.0, "weight_decay": 0.0, "seed": 0}
    block = {"head": {"steps": 5, **recipe, "batch": 32},
             "vac": {"steps": 20, **recipe, "batch": 32, "blocks": 1, "heads": 2, "alpha": 0.5},
             "memory": {"size": 4, "entropy": 0.5, "order": "manifest", "seed": 0},
             "fusion": {"trials": 64, "seed": 0}}
    for path, value in changes.items():
        section, key = path.split("__")
        block[section][key] = value
    return {"czsl": block}


def cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_baseline_is_the_scaled_cosine_of_cls_and_composition_text():
    x = synthetic()
    rows = x.rows("test")[:5]
    got = zero_shot(x, rows).numpy()
    tokens, text = x.tokens.numpy(), x.comp_text.numpy()
    want = [[SCALE * cos(tokens[r, 0], t) for t in text] for r in rows]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_sa_takes_the_max_over_patches_and_the_text_direction_patch_wins():
    rng = np.random.default_rng(1)
    text = rng.normal(size=(3, 6))
    tokens = rng.normal(size=(2, 5, 6))
    tokens[0, 3] = 4.0 * text[1]            # image 0, patch 3 points exactly along text 1
    tokens[0, 0] = 10.0 * text[1]           # the CLS is excluded from SA, however aligned
    got = sparse_alignment(torch.tensor(tokens, dtype=torch.float32), torch.tensor(text, dtype=torch.float32), 2.0)
    want = [[2.0 * max(cos(tokens[i, l], t) for l in range(1, 5)) for t in text] for i in range(2)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert got[0, 1] == pytest.approx(2.0)
    patch = aligned_patches(torch.tensor(tokens, dtype=torch.float32), torch.tensor(text[[1, 1]], dtype=torch.float32))
    np.testing.assert_allclose(patch[0].numpy(), tokens[0, 3], rtol=1e-6)


def test_compose_adds_the_primitive_product_to_the_pair_softmax():
    pair_ids = np.array([[0, 0], [0, 1], [1, 1]])
    pair, attr, obj = np.array([[1.0, 2.0, 0.5]]), np.array([[0.3, -0.2]]), np.array([[1.0, 0.0]])
    soft = lambda z: np.exp(z) / np.exp(z).sum()
    pa, po = soft(attr[0]), soft(obj[0])
    want = soft(pair[0]) + [pa[0] * po[0], pa[0] * po[1], pa[1] * po[1]]
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    np.testing.assert_allclose(compose(t(pair), t(attr), t(obj), pair_ids)[0].numpy(), want, rtol=1e-6)
    # closed world: the softmax runs over the scored pairs; an unscored pair scores 0
    closed = compose(t(pair), t(attr), t(obj), pair_ids, np.array([True, False, True]))[0].numpy()
    np.testing.assert_allclose(closed, [soft(pair[0, [0, 2]])[0] + want[0] - soft(pair[0])[0], 0,
                                        soft(pair[0, [0, 2]])[1] + want[2] - soft(pair[0])[2]], rtol=1e-6)


def test_fuse_weights_each_module_and_its_primitives():
    g = torch.Generator().manual_seed(0)
    z = lambda *shape: torch.randn(*shape, generator=g)
    pair_ids = np.array([[0, 0], [0, 1], [1, 0]])
    a, b, mem = (z(4, 3), z(4, 2), z(4, 2)), (z(4, 3), z(4, 2), z(4, 2)), z(4, 3)
    got = fuse({"a": a, "b": b, "mem": (mem,)}, {"a": 0.5, "b": 0.25, "mem": 2.0}, pair_ids, None)
    want = compose(0.5 * a[0] + 0.25 * b[0] + 2.0 * mem, 0.5 * a[1] + 0.25 * b[1], 0.5 * a[2] + 0.25 * b[2], pair_ids)
    torch.testing.assert_close(got, want)


def test_sa_beats_the_cls_baseline_on_the_synthetic_problem():
    # follows from the construction: SA sees the signal patch, the CLS is pulled towards the distractor
    x = synthetic()
    rows = x.rows("test")
    hm = {name: czsl_eval.evaluate(s.numpy(), x.labels[rows], x.pair_ids, x.seen).best_hm
          for name, s in (("cls", zero_shot(x, rows)), ("sa", sparse_alignment(x.tokens[rows], x.comp_text, SCALE)))}
    assert hm["sa"] > 0.95 > hm["cls"] + 0.2, hm


def test_head_with_zero_steps_is_training_free_sa():
    x = synthetic()
    recipe = config(params(head__steps=0)).head.recipe
    W, fit = train_head(x, recipe, 32, lambda W: 0.0)
    assert fit.best_step == 0 and not W.any()
    rows = x.rows("val")
    torch.testing.assert_close(sparse_alignment(x.tokens[rows], head(W, x.comp_text)[0], SCALE),
                               sparse_alignment(x.tokens[rows], x.comp_text, SCALE), rtol=0, atol=0)


def test_vac_loss_decreases():
    x = synthetic()
    cfg = config(params(vac__steps=40, vac__lr=3e-3)).vac
    texts = (x.comp_text, x.attr_text, x.obj_text)
    teacher = sparse_alignment(x.tokens[x.rows("train")], x.comp_text[torch.as_tensor(np.flatnonzero(x.seen))], SCALE)
    model, fit = train_vac(x, texts, teacher, cfg.recipe, cfg.batch, 2, 2, cfg.alpha, lambda m: 0.0)
    assert np.mean(fit.losses[-5:]) < 0.7 * np.mean(fit.losses[:5]), fit.losses
    assert vac_logits(model.features(x.tokens[:3]), texts, SCALE)[0].shape == (3, len(x.comp_text))


def test_memory_bank_init_and_updates_on_a_hand_written_stream():
    e = torch.eye(4)
    # pair 0 seen with three train images (keys 0.3, 0.1, 0.2); pair 1 unseen, text e3
    bank = init_bank(e[:3], [0, 0, 0], [0.3, 0.1, 0.2], torch.stack([e[0], e[3]]), size=2)
    # size 2 keeps the two lowest keys in key order: e1 (0.1) in slot 0, e2 (0.2) in slot 1
    torch.testing.assert_close(bank.feats[0], e[[1, 2]])
    np.testing.assert_array_equal(bank.keys, [[0.1, 0.2], [np.inf, np.inf]])
    torch.testing.assert_close(bank.feats[1, 0], e[3])                      # the text placeholder
    assert bank.filled.tolist() == [[True, True], [True, False]]

    q = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]])
    pseudo, entropy = [1, 0, 1, 0, 1], [0.4, 0.15, 0.9, 0.25, 0.3]
    scores, final, inserted = stream(bank, q, pseudo, entropy, threshold=0.5, scale=1.0, order=np.arange(5))
    # q0 -> pair 1 slot 0 (replaces the text: the first of two +inf keys); q1 (0.15) -> pair 0 slot 1 (its
    # largest key, 0.2); q2 entropy 0.9 >= 0.5: not inserted; q3 (0.25) > pair 0's largest key 0.15: not
    # inserted; q4 -> pair 1's empty slot 1
    assert inserted == 3
    n = lambda t: t / t.norm()
    torch.testing.assert_close(final.feats[0], torch.stack([e[1], n(q[1])]))
    torch.testing.assert_close(final.feats[1], torch.stack([n(q[0]), n(q[4])]))
    np.testing.assert_array_equal(final.keys, [[0.1, 0.15], [0.4, 0.3]])
    # each query meets the bank as it was before it: q0 sees the text of pair 1, q2 sees q0 there,
    # q3 sees pair 0 as e1 + q1
    c = lambda a, b: cos(a.numpy(), b.numpy())
    assert scores[0, 1] == pytest.approx(c(q[0], e[3]))
    assert scores[0, 0] == pytest.approx(c(q[0], e[1] + e[2]))
    assert scores[2, 1] == pytest.approx(c(q[2], q[0]))
    assert scores[3, 0] == pytest.approx(c(q[3], e[1] + n(q[1])))
    assert scores[4, 1] == pytest.approx(c(q[4], q[0]))
    assert bank.keys[1, 0] == np.inf and bank.filled[1, 1].item() is False   # the input bank is untouched


def test_stream_order_changes_scores_not_the_final_bank():
    x = synthetic()
    rows, train = x.rows("test"), x.rows("train")
    logits = zero_shot(x, rows)
    _, keys = pseudo_labels(zero_shot(x, train))
    bank = init_bank(x.tokens[train, 0], x.labels[train], keys, x.comp_text, size=3)
    pseudo, entropy = pseudo_labels(logits)
    threshold = float(np.quantile(entropy, 0.7))
    runs = [stream(bank, x.tokens[rows, 0], pseudo, entropy, threshold, SCALE, stream_order(len(rows), how, 3))
            for how in ("manifest", "shuffle")]
    (s_a, bank_a, n_a), (s_b, bank_b, n_b) = runs
    assert n_a > 0 and n_b > 0          # the counts differ: a query may enter and later be evicted
    # the same slots up to their order within a pair: each pair's sorted keys and feature sums
    np.testing.assert_array_equal(np.sort(bank_a.keys, 1), np.sort(bank_b.keys, 1))
    torch.testing.assert_close(bank_a.feats.sum(1), bank_b.feats.sum(1))
    assert (s_a - s_b).abs().amax() > 1e-3


def test_relative_and_centroid_gaps_on_hand_made_embeddings():
    e = torch.eye(8)
    x, y = e[:4], e[4:]
    # orthonormal: every matched and every intra-modal pair is at d = 1 - 0 = 1, so RMG = 1 / (1 + 1)
    assert relative_gap(x, y) == pytest.approx(0.5)
    assert centroid_gap(x, y) == pytest.approx(math.sqrt(2 / 4))              # ||(1,1,1,1,-1,-1,-1,-1)/4||
    # one point per modality: no intra-modal spread, all gap
    assert relative_gap(e[[0, 0, 0]], 3 * e[[1, 1, 1]]) == pytest.approx(1.0)
    assert centroid_gap(e[[0, 0, 0]], 3 * e[[1, 1, 1]]) == pytest.approx(math.sqrt(2))
    # identical modalities: no gap
    assert relative_gap(x, 2 * x) == pytest.approx(0.0, abs=1e-12)
    assert centroid_gap(x, 2 * x) == pytest.approx(0.0, abs=1e-12)
    # a brute-force loop over pairs
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    d = lambda u, v: 1 - cos(u, v)
    match = np.mean([d(a[i], b[i]) for i in range(6)])
    intra = np.mean([d(m[i], m[j]) for m in (a, b) for i in range(6) for j in range(6) if i != j])
    assert relative_gap(torch.tensor(a), torch.tensor(b)) == pytest.approx(match / (match + intra))


@pytest.fixture(scope="module")
def result():
    return run(synthetic(), config(params()), "cpu")


def test_run_reports_every_module_world_and_split_as_json(result):
    json.dumps(result)
    assert set(result["modules"]) == {"zero_shot", "sa", "sa_head", "vac", "memory", "fused"}
    for per_world in result["modules"].values():
        assert set(per_world) == {"open", "closed"}
        assert all(set(m) == {"val", "test"} for m in per_world.values())
    assert set(result["fusion"]["closed"]["weights"]) == {"sa_head", "vac", "memory"}
    assert set(result["gaps"]) == {"zero_shot", "sa", "sa_head", "vac", "memory"}
    assert result["train"]["vac"]["seconds"] > 0
    assert metrics(result)["fused"]["closed"] == {k: result["modules"]["fused"]["closed"]["test"][k]
                                                  for k in ("seen", "unseen", "hm", "auc")}


def test_choices_ignore_test(result):
    x = synthetic()
    test = x.rows("test")
    noisy = x.tokens.clone()
    noisy[test] = torch.randn(noisy[test].shape, generator=torch.Generator().manual_seed(5))
    other = run(replace(x, tokens=noisy), config(params()), "cpu")
    assert other["fusion"] == result["fusion"]
    assert other["train"]["vac"]["best_step"] == result["train"]["vac"]["best_step"]
    for name, per_world in result["modules"].items():
        for world, per_split in per_world.items():
            assert other["modules"][name][world]["val"] == per_split["val"], (name, world)


def test_run_with_zero_head_steps_reports_sa_for_sa_head():
    out = run(synthetic(), config(params(head__steps=0, vac__steps=0)), "cpu")
    assert out["modules"]["sa_head"] == out["modules"]["sa"]
    assert out["gaps"]["sa_head"] == out["gaps"]["sa"]


def test_config_parses_a_block():
    cfg = config(params(memory__order="shuffle", vac__blocks=3))
    assert (cfg.vac.blocks, cfg.vac.heads, cfg.vac.alpha, cfg.head.recipe.steps) == (3, 2, 0.5, 5)
    assert (cfg.memory.size, cfg.memory.entropy, cfg.memory.order) == (4, 0.5, "shuffle")
    assert cfg.fusion.trials == 64


@pytest.mark.parametrize("path, value, expected", [
    ("vac__blocks", 0, "'czsl.vac.blocks' = 0 should be >= 1"),
    ("vac__alpha", 1.5, "'czsl.vac.alpha' = 1.5 should be <= 1"),
    ("memory__order", "random", "'czsl.memory.order' = 'random' should be one of ['manifest', 'shuffle']"),
    ("memory__entropy", -0.1, "'czsl.memory.entropy' = -0.1 should be >= 0"),
    ("memory__size", True, "'czsl.memory.size' = True should be int"),
    ("head__steps", 2.5, "'czsl.head.steps' = 2.5 should be int"),
    ("head__lr", 0, "'czsl.head.lr' = 0 should be > 0"),
    ("head__batch", -1, "'czsl.head.batch' = -1 should be >= 0"),
    ("fusion__trials", 0, "'czsl.fusion' needs trials > 0"),
    ("head__step", 3, "unknown keys ['step'] under 'czsl.head'"),
])
def test_bad_params_are_named(path, value, expected):
    with pytest.raises(ParamsError, match=None) as info:
        config(params(**{path: value}))
    assert expected in str(info.value)


def test_missing_block_unknown_block_and_heads_not_dividing_the_width_are_named():
    block = params()
    block["czsl"]["splits"] = {"scenes": {"unseen": 4, "seed": 0}}       # czsl_inputs' key is known
    config(block)
    block["czsl"]["memroy"] = {}
    with pytest.raises(ParamsError, match=r"unknown keys \['memroy'\] under 'czsl'"):
        config(block)
    del block["czsl"]["memory"]
    with pytest.raises(ParamsError, match="missing key 'czsl.memory'"):
        config(block)
    with pytest.raises(ParamsError, match="'czsl.vac.heads' = 3 should divide the embedding width 32"):
        run(synthetic(), config(params(vac__heads=3)), "cpu")
