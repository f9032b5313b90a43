"""RE-tune (pipeline.retune, retune_train, retune_eval, retune_plots): metrics against hand counts, the
scenarios' task plans, the masked loss, and training on a separable synthetic multi-label problem."""

import itertools
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.config import ParamsError
from pipeline.retune import (RetuneConfig, RetuneModel, TrainConfig, batch_loss, chunks, label_columns,
                             parse_config, plan)
from pipeline.retune_eval import auroc, evaluate, forgetting, label_auroc, score_of
from pipeline.retune_plots import auroc_heatmap
from pipeline.retune_train import RetuneData, cosines, run

LABELS = ("a", "b", "c")


def pairwise_auroc(y, s):
    """Fraction of (positive, negative) pairs ranked correctly, ties counting 1/2."""
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


# ----------------------------------------------------------------------------- metrics

def test_macro_and_weighted_auroc_against_pairwise_counts():
    Y = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=float)
    S = np.array([[.9, .2, .5], [.4, .3, .5], [.4, .8, .1], [.1, .6, .7], [.7, .6, .2], [.3, .1, .5]])
    res = auroc(Y, S, LABELS)
    per = [pairwise_auroc(Y[:, c], S[:, c]) for c in range(3)]
    assert per[0] == 8.5 / 9   # one tie (0.4, 0.4) of 9 pairs
    assert res["per_label"] == pytest.approx(dict(zip(LABELS, per)))
    assert res["macro"] == pytest.approx(np.mean(per)) and res["undefined"] == {}
    support = Y.sum(axis=0)
    assert res["weighted"] == pytest.approx((np.array(per) * support).sum() / support.sum())
    assert res["weighted"] == pytest.approx(roc_auc_score(Y, S, average="weighted"))


def test_subset_accuracy_and_f1_by_hand():
    Y = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=float)
    cos_neg = np.zeros_like(Y)
    cos_pos = np.array([[1, -1, 1], [1, -1, 1], [1, 1, -1], [-1, -1, 1]], dtype=float)   # P = cos_pos > 0
    res = evaluate(Y, cos_pos, cos_neg, LABELS)
    assert res["subset_accuracy"] == pytest.approx(2 / 4)   # rows 0 and 2 match exactly
    # label a: tp 2, fp 1, fn 0 -> 4/5; b: tp 1, fn 1 -> 2/3; c: tp 3 -> 1
    assert res["f1_per_label"] == pytest.approx({"a": 0.8, "b": 2 / 3, "c": 1.0})
    assert res["f1_macro"] == pytest.approx((0.8 + 2 / 3 + 1) / 3)
    Y[1, 0] = np.nan   # the one wrong cell of row 1 ignored: row 1 now matches; label a: tp 2 -> 1
    res = evaluate(Y, cos_pos, cos_neg, LABELS)
    assert res["subset_accuracy"] == pytest.approx(3 / 4) and res["f1_per_label"]["a"] == pytest.approx(1.0)
    unknown_row = evaluate(np.vstack([Y, np.full((1, 3), np.nan)]), np.vstack([cos_pos, -np.ones((1, 3))]),
                           np.zeros((5, 3)), LABELS)
    assert unknown_row["subset_accuracy"] == pytest.approx(3 / 4)   # a row without a known cell is left out


def test_score_rules():
    cp, cn = np.array([[0.6, -0.2]]), np.array([[0.2, 0.4]])
    np.testing.assert_allclose(score_of("positive", cp, cn), [[0.8, 0.4]])
    np.testing.assert_allclose(score_of("difference", cp, cn), [[0.6, 0.35]])
    res = evaluate(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.3], [0.1, 0.0]]),
                   np.array([[0.2, 0.4], [0.0, -0.9]]), ["x", "y"])
    assert set(res["auroc"]) == {"positive", "difference"}
    assert res["auroc"]["positive"]["per_label"]["y"] == 0.0 and res["auroc"]["difference"]["per_label"]["y"] == 1.0


def test_a_label_without_positives_is_none_with_a_reason_and_left_out_of_the_macro():
    Y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, np.nan], [0, 0, np.nan]], dtype=float)
    S = np.array([[.9, .1, .3], [.2, .2, .4], [.8, .3, .9], [.1, .4, .9]])
    with pytest.warns(UserWarning, match="AUROC of label 'b' is undefined: no positive among the 4 known"):
        res = auroc(Y, S, LABELS)
    assert res["per_label"]["b"] is None and "no positive" in res["undefined"]["b"]
    assert res["per_label"]["c"] == 1.0   # the NaN rows are masked: one positive (.4) over one negative (.3)
    assert res["macro"] == pytest.approx((1.0 + 1.0) / 2) and set(res["undefined"]) == {"b"}
    assert label_auroc(np.array([1.0, 1.0]), np.array([.1, .2])) == (None, "no negative among the 2 known test "
                                                                          "rows (2 positive, 0 negative)")
    assert label_auroc(np.array([np.nan]), np.array([.1]))[1].startswith("no known target")
    with pytest.warns(UserWarning):
        assert auroc(np.zeros((3, 1)), np.ones((3, 1)), ["z"])["macro"] is None


def test_forgetting_by_hand():
    matrix = [[0.7, None, 0.6], [0.9, 0.8, None], [0.75, 0.85, None]]
    f = forgetting(matrix, LABELS)
    assert f["a"] == pytest.approx(0.15) and f["b"] == pytest.approx(-0.05) and f["c"] is None
    assert forgetting(matrix[:1], LABELS) == {"a": None, "b": None, "c": None}


# ----------------------------------------------------------------------------- scenarios

@pytest.mark.parametrize("n,parts", [(10, 3), (10, 10), (7, 1), (200_001, 20), (5, 4)])
def test_chunks_are_contiguous_disjoint_exhaustive_and_near_equal(n, parts):
    got = chunks(n, parts)
    assert len(got) == parts and got[0][0] == 0 and got[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))          # contiguous, so disjoint and in order
    sizes = [b - a for a, b in got]
    assert sum(sizes) == n and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_chunks_refuse_empty_parts():
    with pytest.raises(ValueError, match="cannot cut 3 train rows into 4"):
        chunks(3, 4)


def test_task_plans():
    labels = ("a", "b", "c", "d")
    assert plan(RetuneConfig("zeroshot"), 100, labels) == []
    (joint,) = plan(RetuneConfig("joint"), 100, labels)
    assert (joint.start, joint.stop, joint.labels) == (0, 100, (0, 1, 2, 3))
    data = plan(RetuneConfig("data_incremental", parts=10), 105, labels)
    assert [(t.start, t.stop) for t in data] == chunks(105, 10) and all(t.labels == (0, 1, 2, 3) for t in data)
    order = ("c", "a", "d", "b")
    cls = plan(RetuneConfig("class_incremental", order=order), 100, labels)
    assert [t.labels for t in cls] == [(2,), (0,), (3,), (1,)] and [t.name for t in cls] == list(order)
    assert [(t.start, t.stop) for t in cls] == chunks(100, 4)
    lab = plan(RetuneConfig("label_incremental", order=order), 100, labels)
    assert [t.labels for t in lab] == [(2,), (2, 0), (2, 0, 3), (2, 0, 3, 1)]
    assert [(t.start, t.stop) for t in lab] == chunks(100, 4)
    assert [t.labels for t in plan(RetuneConfig("class_incremental"), 100, labels)] == [(0,), (1,), (2,), (3,)]


def test_config_from_params_and_its_errors():
    cfg = parse_config({"scenario": "class_incremental", "order": ["b", "a", "c"], "epochs": 2, "lr": 0.001},
                       "retune", LABELS)
    assert cfg.order == ("b", "a", "c") and cfg.train == TrainConfig(epochs=2, lr=0.001)
    assert parse_config({}, "retune", LABELS) == RetuneConfig()
    with pytest.raises(ParamsError, match=r"'retune.order' names unknown label 'Edema' \(labels: \['a', 'b', 'c'\]\)"):
        parse_config({"order": ["a", "Edema"]}, "retune", LABELS)
    with pytest.raises(ParamsError, match=r"'retune.order' = \['a', 'a'\] names a label twice"):
        parse_config({"order": ["a", "a"]}, "retune", LABELS)
    with pytest.raises(ParamsError, match=r"'retune.scenario' = 'class' should be one of"):
        parse_config({"scenario": "class"}, "retune", LABELS)
    with pytest.raises(ParamsError, match=r"unknown key 'retune.epoch'"):
        parse_config({"epoch": 3}, "retune", LABELS)
    with pytest.raises(ParamsError, match=r"'retune.batch' = True should be int"):
        parse_config({"batch": True}, "retune", LABELS)
    with pytest.raises(ParamsError, match=r"'retune.lr' = 0 should be > 0"):
        parse_config({"lr": 0}, "retune", LABELS)
    with pytest.raises(ParamsError, match="names unknown label 'x'"):
        label_columns(["x"], LABELS)
    with pytest.raises(ValueError, match="adapter"):
        RetuneConfig(adapter="dense")


# ----------------------------------------------------------------------------- model and loss

def test_adapters_are_seeded_shared_and_shaped():
    a, b, c = RetuneModel("mlp", 8, seed=1), RetuneModel("mlp", 8, seed=1), RetuneModel("mlp", 8, seed=2)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q) and not torch.equal(p, r), name
    assert [tuple(p.shape) for p in a.image.parameters()] == [(16, 8), (16,), (8, 16), (8,)]
    assert a.image is not a.text
    shared = RetuneModel("shared", 8)
    assert shared.image is shared.text and len(list(shared.parameters())) == 4
    assert [tuple(p.shape) for p in RetuneModel("linear", 8).parameters()] == [(8, 8), (8,), (8, 8), (8,)]
    assert list(RetuneModel("identity", 8).parameters()) == []


def test_loss_matches_a_hand_computed_masked_bce():
    g = torch.Generator().manual_seed(0)
    x, pos, neg = torch.randn(5, 4, generator=g), torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    y = torch.tensor([[1, 0, 1], [0, float("nan"), 1], [1, 1, 0], [0, 0, 0], [1, float("nan"), 1]])
    loss = batch_loss(RetuneModel("identity", 4), x, y, pos, neg, torch.tensor([True, True, False]))
    X, P, N, Yn = (t.double().numpy() for t in (x, pos, neg, y))
    unit = lambda m: m / np.linalg.norm(m, axis=-1, keepdims=True)
    l = unit(X) @ unit(P.mean(1)).T - unit(X) @ unit(N.mean(1)).T
    cells = [(i, c) for i in range(5) for c in (0, 1) if not np.isnan(Yn[i, c])]
    bce = [np.log1p(np.exp(-l[i, c])) if Yn[i, c] == 1 else np.log1p(np.exp(l[i, c])) for i, c in cells]
    assert float(loss) == pytest.approx(np.mean(bce), rel=1e-5) and len(cells) == 8
    assert batch_loss(RetuneModel("identity", 4), x, torch.full((5, 3), float("nan")), pos, neg,
                      torch.ones(3, dtype=torch.bool)) is None


def test_a_class_incremental_task_sees_only_its_own_label_column():
    g = torch.Generator().manual_seed(1)
    x, pos, neg = torch.randn(16, 6, generator=g), torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    y = torch.randint(0, 2, (16, 3), generator=g).float()
    (task,) = [t for t in plan(RetuneConfig("class_incremental"), 48, LABELS) if t.labels == (1,)]
    active = torch.zeros(3, dtype=torch.bool)
    active[list(task.labels)] = True

    def grads(targets):
        model = RetuneModel("mlp", 6, seed=3)
        batch_loss(model, x, targets, pos, neg, active).backward()
        return [p.grad.clone() for p in model.parameters()]

    base = grads(y)
    other = y.clone()
    other[:, 0], other[:, 2] = 1 - other[:, 0], float("nan")
    assert all(torch.equal(a, b) for a, b in zip(base, grads(other)))
    own = y.clone()
    own[:, 1] = 1 - own[:, 1]
    assert not all(torch.allclose(a, b) for a, b in zip(base, grads(own)))


# ----------------------------------------------------------------------------- training

def separable(n_train=800, n_test=400, d=16, seed=0, hint=0.15) -> RetuneData:
    """Each label c shifts the image feature by +-u_c (u_c random directions, noise of the same size); the
    prompt embeddings are random vectors leaning on +-u_c by `hint`, so zero-shot is weak (macro AUROC ~0.5-0.6
    here) and adapters can separate every label."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((3, d)).astype(np.float32)

    def make(n):
        y = rng.integers(0, 2, (n, 3)).astype(np.float32)
        return ((2 * y - 1) @ u + rng.standard_normal((n, d))).astype(np.float32), y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    prompts = lambda sign: (sign * hint * u[:, None, :] + rng.standard_normal((3, 4, d))).astype(np.float32)
    return RetuneData(LABELS, xtr, ytr, xte, yte, prompts(1), prompts(-1))


FAST = TrainConfig(batch=100, epochs=6, lr=1e-2, seed=0, eval_batch=128)


def test_zero_shot_evaluates_the_raw_embeddings():
    data = separable()
    res = run(RetuneConfig("zeroshot", train=FAST), data, device="cpu", progress=False)
    unit = lambda m: m / np.linalg.norm(m, axis=-1, keepdims=True)
    cp, cn = cosines(res.model, data.test_x, data.pos, data.neg)
    np.testing.assert_allclose(cp, unit(data.test_x) @ unit(data.pos.mean(1)).T, atol=1e-5)
    np.testing.assert_allclose(cn, unit(data.test_x) @ unit(data.neg.mean(1)).T, atol=1e-5)
    assert res.tasks == [] and res.task_names == ["zero-shot"] and len(res.evaluations) == 1
    assert res.evaluations[0] == evaluate(data.test_y, cp, cn, LABELS)


def test_joint_training_lowers_the_loss_and_beats_zero_shot():
    data = separable()
    zero = run(RetuneConfig("zeroshot", train=FAST), data, device="cpu", progress=False).report()
    joint = run(RetuneConfig("joint", train=FAST), data, device="cpu", progress=False)
    (losses,) = joint.losses
    assert losses[-1] < 0.8 * losses[0] and all(b <= a + 1e-3 for a, b in zip(losses, losses[1:]))
    rep = joint.report()
    for rule in ("positive", "difference"):
        assert rep["final"]["auroc_macro"][rule] > zero["final"]["auroc_macro"][rule] + 0.2, rule
        assert rep["final"]["auroc_macro"][rule] > 0.95 and zero["final"]["auroc_macro"][rule] < 0.75, rule
    assert rep["final"]["f1_macro"] > zero["final"]["f1_macro"] + 0.2
    again = run(RetuneConfig("joint", train=FAST), data, device="cpu", progress=False)
    assert again.losses == joint.losses   # seeded


def test_class_incremental_report_has_the_matrix_forgetting_and_no_silent_nan(tmp_path):
    data = separable(n_train=300, n_test=60)
    data.test_y[:, 2] = 0   # label c has no positive in test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run(RetuneConfig("class_incremental", order=("b", "a", "c"), train=replace(FAST, epochs=2)),
                  data, device="cpu", progress=False)
    assert any("AUROC of label 'c' is undefined" in str(w.message) for w in caught)
    rep = json.loads(json.dumps(res.report(), allow_nan=False))
    assert rep["task_names"] == ["b", "a", "c"] and [t["labels"] for t in rep["tasks"]] == [["b"], ["a"], ["c"]]
    assert [t["rows"] for t in rep["tasks"]] == [[0, 100], [100, 200], [200, 300]]
    for rule in ("positive", "difference"):
        m = rep["auroc_matrix"][rule]
        assert len(m) == 3 and all(len(row) == 3 and row[2] is None for row in m)
        assert rep["forgetting"][rule]["c"] is None
        assert rep["forgetting"][rule]["a"] == pytest.approx(max(m[0][0], m[1][0]) - m[2][0])
    assert "no positive" in rep["final"]["auroc_undefined"]["c"]
    svg = auroc_heatmap(res.matrix(), res.task_names, LABELS, "class-incremental")
    assert svg == auroc_heatmap(res.matrix(), res.task_names, LABELS, "class-incremental")   # same bytes
    assert 'id="heatmap-auroc"' in svg and svg.count(">n/a<") == 3 and ">Cell" not in svg
    assert f"{rep['auroc_matrix']['positive'][0][0]:.3f}" in svg and "after task" in svg
    (tmp_path / "heatmap.svg").write_text(svg)


def test_heatmap_refuses_a_misshapen_matrix():
    with pytest.raises(ValueError, match="2 tasks x 3 labels"):
        auroc_heatmap([[0.5, 0.6, 0.7]], ["t1", "t2"], LABELS, "x")
