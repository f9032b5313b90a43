"""SeMoBridge-T and the training loop: independent checks (hand computations, the closed form at zero
steps, the schedule's formula), and its params errors."""

import copy
import math

import numpy as np
import pytest
import torch
import zarr

from pipeline import adapt, config, train
from pipeline.config import ParamsError
from pipeline.methods import REGISTRY
from pipeline.methods.semobridge import PARAM_NAMES, bridge_matrix, semobridge_cosines
from pipeline.methods.semobridge_t import LossWeights, loss_terms, total_loss
from pipeline.store import open_store, read, write_store
from test_adapt import METHODS, settings, toy_features, toy_fewshot, toy_views

F64 = torch.float64
SEMO_T = METHODS["semobridge_t"]


def recipe(**changes) -> config.TrainRecipe:
    base = {"steps": 10, "lr": 0.1, "warmup": 0, "warmup_min_lr": 0.0, "weight_decay": 0.0, "seed": 0}
    return config.TrainRecipe(**{**base, **changes})


def run(enabled, **semo_t):
    feats, fewshot = toy_features(), toy_fewshot()
    cfg = settings(enabled=enabled, semobridge_t={**SEMO_T, **semo_t})
    return adapt.run(feats, fewshot, toy_views(feats, fewshot), cfg)


def test_zero_steps_reproduce_the_training_free_logits_exactly():
    arrays, attrs = run(["semobridge", "semobridge_t"], steps=0)
    mine = [a for a in arrays if a.startswith("semobridge_t/") and "/checkpoint/" not in a]
    assert len(mine) == 4 * 3 * 2   # draws x components x splits
    u, sigma, vt = np.linalg.svd(toy_features().W_txt.astype(np.float64), full_matrices=False)
    keep = sigma > SEMO_T["atol"]
    closed_form = (vt[keep].T / sigma[keep]) @ u[:, keep].T   # pinv with the atol cut: the untrained bridge
    for key in attrs["draws"]:
        np.testing.assert_allclose(arrays[f"semobridge_t/{key}/checkpoint/P"], closed_form, rtol=1e-4, atol=1e-5)
        assert not arrays[f"semobridge_t/{key}/checkpoint/bias"].any()
    for name in mine:
        np.testing.assert_array_equal(arrays[name], arrays[name.replace("semobridge_t/", "semobridge/", 1)], err_msg=name)
    for key, choice in attrs["choices"]["semobridge_t"].items():
        free = attrs["choices"]["semobridge"][key]
        assert {k: choice[k] for k in PARAM_NAMES} == {k: free[k] for k in PARAM_NAMES}
        assert choice["best_step"] == 0 and choice["val_acc"] == free["val_acc"]


def softmax_ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(z) for z in logits))


def test_each_loss_term_matches_a_hand_computation():
    g = torch.Generator().manual_seed(3)
    C, K, D, d_t = 2, 2, 3, 4
    shots = torch.randn(C, K, D, generator=g, dtype=F64)
    W = torch.randn(d_t, D, generator=g, dtype=F64)
    P = torch.randn(D, d_t, generator=g, dtype=F64)
    bias = torch.randn(C, d_t, generator=g, dtype=F64)
    text = torch.nn.functional.normalize(torch.randn(C, D, generator=g, dtype=F64), dim=-1)
    eos_text = torch.nn.functional.normalize(torch.randn(C, d_t, generator=g, dtype=F64), dim=-1)
    s, scale = 2.5, 7.0
    got = loss_terms(shots, P, bias, W, s, text, eos_text, scale)

    unit = lambda v: v / np.linalg.norm(v)
    f, Wn, Pn, b = shots.numpy(), W.numpy(), P.numpy(), bias.numpy()
    e = [[s * unit(f[c, k] @ Pn + b[c]) for k in range(K)] for c in range(C)]    # pseudo EOS per shot
    fh = [[e[c][k] @ Wn for k in range(K)] for c in range(C)]                    # bridged shot
    G = [unit(sum(fh[c]) / K) for c in range(C)]
    H = [unit(sum(e[c]) / K) for c in range(C)]
    rows = [(c, k) for c in range(C) for k in range(K)]
    expect = {
        "img": np.mean([softmax_ce([scale * unit(f[c, k]) @ G[j] for j in range(C)], c) for c, k in rows]),
        "txtp": np.mean([softmax_ce([G[c] @ text[j].numpy() for j in range(C)], c) for c in range(C)]),
        "txte": np.mean([softmax_ce([H[c] @ eos_text[j].numpy() for j in range(C)], c) for c in range(C)]),
        "cons": np.mean([softmax_ce([unit(fh[c][k]) @ G[j] for j in range(C)], c) for c, k in rows]),
        "bias": np.var([np.linalg.norm(b[c]) for c in range(C)]),
    }
    for name, value in expect.items():
        assert got[name].item() == pytest.approx(value, rel=1e-10), name
    w = LossWeights(image_text=0.3, consistency=0.2, bias_norm=0.7)
    total = 0.3 * expect["img"] + 0.7 * (expect["txtp"] + expect["txte"]) / 2 + 0.2 * expect["cons"] + 0.7 * expect["bias"]
    assert total_loss(got, w).item() == pytest.approx(total, rel=1e-10)


def test_the_bias_never_touches_queries():
    g = torch.Generator().manual_seed(4)
    C, K, D, d_t = 3, 2, 5, 6
    shots, query = torch.randn(C, K, D, generator=g), torch.randn(7, D, generator=g)
    W = torch.randn(d_t, D, generator=g)
    text = torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=-1)
    bias = 5 * torch.randn(C, d_t, generator=g)
    P = bridge_matrix(W)
    plain = semobridge_cosines(query, shots, text, P, W, 2.0)
    biased = semobridge_cosines(query, shots, text, P, W, 2.0, bias)
    for name in ("c1", "c3", "divergence"):   # the query side and the raw prototypes
        torch.testing.assert_close(biased[name], plain[name], rtol=0, atol=0)
    assert not torch.allclose(biased["c2"], plain["c2"])   # the bridged prototypes do move


@pytest.mark.parametrize("step, lr", [(0, 1e-5), (1, 1.5e-4 / 500), (250, 1.5e-4 / 2), (499, 1.5e-4 * 499 / 500),
                                      (500, 1.5e-4), (4999, 1.5e-4)])
def test_warmup_schedule_matches_its_formula(step, lr):
    assert train.warmup_lr(step, recipe(lr=1.5e-4, warmup=500, warmup_min_lr=1e-5)) == pytest.approx(lr, rel=1e-12)


def test_fit_applies_the_schedule_step_by_step():
    # loss = x has gradient 1 at every step, so each AdamW update moves x by the step's lr (m̂ = v̂ = 1)
    x = torch.tensor([1.0], dtype=F64)
    r = recipe(steps=5, lr=0.1, warmup=3, warmup_min_lr=0.01)
    done = train.fit([x], lambda gen: x.sum(), r)
    moved = sum(train.warmup_lr(t, r) for t in range(5))
    assert moved == pytest.approx(0.01 + 0.1 / 3 + 0.2 / 3 + 0.1 + 0.1)
    assert 1 - x.item() == pytest.approx(moved, rel=1e-6)
    assert done.best_step == 5 and len(done.losses) == 5 and not x.requires_grad


def test_fit_keeps_the_first_best_scored_step():
    x = torch.tensor([0.0])
    seen, scores = [], iter([0, 1, 3, 2, 3, 1])   # before training, then after steps 1..5

    def score():
        seen.append(x.clone())
        return next(scores)

    done = train.fit([x], lambda gen: -x.sum(), recipe(steps=5), score)
    assert done.best_step == 2 and done.best_score == 3
    torch.testing.assert_close(x, seen[2])


def test_fit_with_zero_steps_leaves_the_parameters_untouched():
    x = torch.tensor([0.25, -1.0])
    done = train.fit([x], lambda gen: (x ** 2).sum(), recipe(steps=0), lambda: 1.0)
    assert done.best_step == 0 and done.losses == [] and x.tolist() == [0.25, -1.0]


def test_training_lowers_the_loss_and_records_its_step():
    arrays, attrs = run(["semobridge_t"], steps=60)
    feats = toy_features()
    inputs = adapt.Inputs(feats, None)
    method = REGISTRY["semobridge_t"]
    cfg = settings(semobridge_t={**SEMO_T, "extra_shots": "none", "steps": 60}).settings["semobridge_t"]
    (P0, W, s), eos = method.setup(inputs, cfg)
    draw = adapt.Draw(inputs, "shot_4-seed_1", toy_fewshot()["draws"]["shot_4-seed_1"])
    shots = method.shots(inputs, draw, cfg)
    P, bias = P0.clone(), torch.zeros(shots.shape[0], P0.shape[1])
    loss = lambda gen: total_loss(loss_terms(shots, P, bias, W, s, inputs.protos, eos, feats.logit_scale), cfg.losses)
    done = train.fit([P, bias], loss, cfg.recipe)
    assert done.losses[-1] < 0.9 * done.losses[0]
    assert bias.abs().max() > 0   # the bias learns from the shots' losses
    for choice in attrs["choices"]["semobridge_t"].values():
        assert 0 <= choice["best_step"] <= 60 and choice["steps"] == 60 and choice["train_seconds"] >= 0
        assert 0 <= choice["select_val_acc"] <= 100


@pytest.mark.parametrize("change, key", [
    ({"steps": -1}, "methods.semobridge_t.steps"),
    ({"steps": 2.5}, "methods.semobridge_t.steps"),
    ({"warmup": True}, "methods.semobridge_t.warmup"),
    ({"lr": 0}, "methods.semobridge_t.lr"),
    ({"lr": "fast"}, "methods.semobridge_t.lr"),
    ({"weight_decay": -0.1}, "methods.semobridge_t.weight_decay"),
    ({"losses": {"image_text": 1.5, "consistency": 0.1, "bias_norm": 0.1}}, "methods.semobridge_t.losses.image_text"),
    ({"losses": {"image_text": 0.5, "consistency": 0.1}}, "methods.semobridge_t.losses.bias_norm"),
    ({"select": {k: 1.0 for k in PARAM_NAMES if k != "gamma"}}, "methods.semobridge_t.select.gamma"),
    ({"select": {**{k: 1.0 for k in PARAM_NAMES}, "alpha": -1}}, "methods.semobridge_t.select.alpha"),
    ({"extra_shots": "jitter"}, "methods.semobridge_t.extra_shots"),
])
def test_bad_training_params_name_the_key(change, key):
    block = {**copy.deepcopy(SEMO_T), **change}
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        settings(enabled=["semobridge_t"], semobridge_t=block)


def test_demo_16_shots_val_at_least_the_training_free_bridge(demo_repo, record_property):
    group = zarr.open_group(demo_repo / "logits" / "demo" / "shapes" / "logits.zarr", mode="r")
    choices = dict(group.attrs)["choices"]
    val = {m: np.mean([c["val_acc"] for k, c in choices[m].items() if k.startswith("shot_16-")])
           for m in ("semobridge", "semobridge_t")}
    record_property("semobridge_t_minus_semobridge_val", round(val["semobridge_t"] - val["semobridge"], 4))
    assert val["semobridge_t"] >= val["semobridge"], val


def test_training_works_under_a_callers_no_grad():
    w = torch.zeros(3)
    recipe = config.TrainRecipe(steps=5, lr=0.1, warmup=1, warmup_min_lr=0.1, weight_decay=0.0, seed=0)
    with torch.no_grad():
        done = train.fit([w], lambda gen: ((w - 1.0) ** 2).sum(), recipe)
    assert done.losses[-1] < done.losses[0] and not w.requires_grad


def test_the_checkpoint_reproduces_the_test_logits_and_records_its_params(tmp_path):
    feats, fewshot = toy_features(), toy_fewshot()
    views = toy_views(feats, fewshot)
    arrays, attrs = adapt.run(feats, fewshot, views, settings(enabled=["semobridge_t"]))
    write_store(tmp_path / "logits.zarr", tmp_path / "staging", {"toy": True}, arrays, attrs)
    group = open_store(tmp_path / "logits.zarr")
    record = dict(group.attrs)["checkpoints"]["semobridge_t"]
    assert record["arrays"] == ["P", "bias", "items"]
    params = record["params"]
    assert params["recipe"] == {k: SEMO_T[k] for k in ("steps", "lr", "warmup", "warmup_min_lr", "weight_decay", "seed")}
    assert params["losses"] == SEMO_T["losses"] and params["atol"] == SEMO_T["atol"]
    assert params["select"] == [SEMO_T["select"][k] for k in PARAM_NAMES]
    assert params["extra_shots"] == {"null": SEMO_T["extra_shots"]}

    # the bridge formula (METHODS.md §3.4, §4.2) in float64 numpy, from the checkpoint and the cached features
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    W, s = feats.W_txt.astype(np.float64), np.linalg.norm(feats.text_pre.mean(axis=1), axis=-1).mean()
    text = unit(unit(feats.text_emb.astype(np.float64)).mean(axis=1))                 # (C, D) prompt prototypes
    q = feats.emb[feats.split == 2].astype(np.float64)
    row_of = {int(i): r for r, i in enumerate(feats.item)}
    view_of = {int(i): r for r, i in enumerate(views.item)}
    trained = 0
    for key in attrs["draws"]:
        P, bias, items = (read(group, f"semobridge_t/{key}/checkpoint/{n}") for n in ("P", "bias", "items"))
        P, bias = P.astype(np.float64), bias.astype(np.float64)
        assert sorted(items.ravel().tolist()) == sorted(fewshot["draws"][key]["train"]), key
        rows = np.vectorize(row_of.get)(items)                                             # (C, K) feature rows
        assert (feats.label[rows] == np.arange(len(items))[:, None]).all(), key           # class c in row c
        shots = np.concatenate([feats.emb[rows], views.flip[np.vectorize(view_of.get)(items)]], axis=1)  # + hflip
        bridged = lambda f, b: s * unit(f @ P + b) @ W
        raw_protos, bridged_protos = unit(shots.mean(axis=1)), unit(bridged(shots, bias[:, None]).mean(axis=1))
        p = np.exp(raw_protos @ text.T)
        own = np.diag(p / p.sum(axis=1, keepdims=True))
        knob = attrs["choices"]["semobridge_t"][key]
        weight = np.exp(knob["smoothness"] * np.log2((1 + 1e-6) / (own + 1e-6)))
        qn = unit(q)
        expect = {"lambda1": np.exp(-knob["alpha"] * (1 - qn @ text.T)),
                  "lambda2": np.exp(-knob["beta"] * (1 - qn @ bridged_protos.T)) * weight,
                  "lambda3": np.exp(-knob["gamma"] * (1 - unit(bridged(q, 0.0)) @ raw_protos.T)) * weight}
        for name, value in expect.items():
            np.testing.assert_allclose(read(group, f"semobridge_t/{key}/{name}/test"), value, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{key} {name}")
        trained += knob["best_step"] > 0 and np.abs(bias).max() > 0
    assert trained, "no draw kept a trained step: the check above would not exercise the class bias"
