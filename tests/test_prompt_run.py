"""prompt@ wiring (pipeline/prompt_run.py, pipeline/methods/prompts.py): the base-to-novel split and scores against
brute force, params validation, a run on synthetic cached views with a random demo-clip (every store array, KDPL
blind to labels, a resumed run, the seconds the checkpoints save), the transfer scores, and the adapt method's
logits against a hand computation."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline import models, prompt_run
from pipeline.config import ParamsError
from pipeline.methods.prompts import COOP, PromptStore
from pipeline.prompt_learner import PromptError, PromptLearner, class_features
from pipeline.store import StoreError, write_store
from pipeline.views import Views

NAMES = ["red circle", "blue star", "green square", "yellow triangle", "purple ring"]   # 5: base = 3
PARAMS = {"prompt": {"methods": ["coop", "kdpl", "kdpl_ca"], "n_ctx": 4, "ctx_init": "a photo of a",
                     "train": {"epochs": 2, "batch": 4, "lr": 0.002, "momentum": 0.9, "weight_decay": 5.0e-4,
                               "warmup_epochs": 1, "warmup_lr": 1.0e-5},
                     "kdpl_ca": {"names": "demo_concepts", "top_k": 3}, "base_to_novel": {"shots": [2]},
                     "transfer": [], "overrides": {"tiny": {"train": {"epochs": 1}}}}}


@pytest.fixture(scope="module")
def learner(random_demo_dir):
    return PromptLearner(models.load(random_demo_dir))


def synthetic_inputs(learner, shots=(1, 2), seeds=(1, 2), views=2, per_class_test=4, seed=0) -> prompt_run.PromptInputs:
    """Train rows (4 per class) with cached views, test rows, two draws per shot count; the teacher is 8-d."""
    g = np.random.default_rng(seed)
    C, D = len(NAMES), learner.dim
    text = class_features(learner, learner.init_ctx, NAMES)
    label = np.concatenate([np.repeat(np.arange(C), 4), np.repeat(np.arange(C), per_class_test)])
    split = np.concatenate([np.zeros(4 * C, np.int8), np.full(per_class_test * C, 2, np.int8)])
    emb = (text[label] + 0.5 * np.linalg.norm(text, axis=1).mean() * g.standard_normal((len(label), D))).astype(np.float32)
    item = np.arange(100, 100 + len(label))
    train = item[split == 0]
    teacher_text = g.standard_normal((C, 8)).astype(np.float32)
    lab = label[split == 0]
    sv = Views(train, (emb[split == 0][:, None] + 0.1 * g.standard_normal((len(train), views, D))).astype(np.float32),
               emb[split == 0], {"n_views": views})
    tv = Views(train, (teacher_text[lab][:, None] + g.standard_normal((len(train), views, 8))).astype(np.float32),
               teacher_text[lab], {"n_views": views})
    draws = {}
    for k in shots:
        for s in seeds:
            pick = np.random.default_rng(s).permutation(4)[:k]
            draws[f"shot_{k}-seed_{s}"] = {"train": [int(train[c * 4 + j]) for c in range(C) for j in pick]}
    candidates = ["cat", "dog", "red", "blue", "tree", "car"]
    return prompt_run.PromptInputs(NAMES, item, label, split, emb, sv, tv, teacher_text, candidates,
                                   g.standard_normal((len(candidates), 8)).astype(np.float32),
                                   {"draws": draws, "manifest_sha256": "x"})


def brute_accuracy(image, text, labels):
    hits = 0
    for x, y in zip(image, labels):
        cos = [float(x @ t / (np.linalg.norm(x) * np.linalg.norm(t))) for t in text]
        hits += int(np.argmax(cos) == y)
    return 100.0 * hits / len(labels)


def test_base_is_the_first_ceil_half_of_the_labels():
    assert [prompt_run.n_base(c) for c in (1, 2, 5, 36, 37)] == [1, 1, 3, 18, 19]


def test_base_and_novel_scores_match_a_brute_force_over_each_half(learner):
    inputs = synthetic_inputs(learner)
    got = prompt_run.base_novel_scores(learner, learner.init_ctx, inputs)
    text = class_features(learner, learner.init_ctx, NAMES)
    test = inputs.split == 2
    base, novel = test & (inputs.label < 3), test & (inputs.label >= 3)
    want_b = brute_accuracy(inputs.emb[base], text[:3], inputs.label[base])
    want_n = brute_accuracy(inputs.emb[novel], text[3:], inputs.label[novel] - 3)
    assert got["base"] == pytest.approx(want_b, abs=1e-3) and got["novel"] == pytest.approx(want_n, abs=1e-3)
    assert got["hm"] == pytest.approx(2 * want_b * want_n / (want_b + want_n), abs=1e-3)


def test_params_merge_the_dataset_override_and_name_bad_keys():
    assert prompt_run.config(PARAMS, "tiny").train["epochs"] == 1
    assert prompt_run.config(PARAMS, "other").train["epochs"] == 2
    bad = {"prompt": {**PARAMS["prompt"], "train": {**PARAMS["prompt"]["train"], "epoch": 3}}}
    with pytest.raises(ParamsError, match=r"prompt.train.*unknown keys \['epoch'\]"):
        prompt_run.config(bad, "x")
    bad = {"prompt": {**PARAMS["prompt"], "train": {**PARAMS["prompt"]["train"], "lr": "fast"}}}
    with pytest.raises(ParamsError, match="lr = 'fast'"):
        prompt_run.config(bad, "x")
    bad = {"prompt": {**PARAMS["prompt"], "methods": ["coop", "cocoop"]}}
    with pytest.raises(ParamsError, match="prompt.methods"):
        prompt_run.config(bad, "x")


def test_teacher_views_of_other_items_or_another_class_count_are_refused(learner):
    inputs = synthetic_inputs(learner)
    with pytest.raises(PromptError, match="different items"):
        replace(inputs, teacher_views=Views(inputs.teacher_views.item + 1, inputs.teacher_views.emb,
                                            inputs.teacher_views.flip, inputs.teacher_views.recipe))
    with pytest.raises(PromptError, match="share the class list"):
        replace(inputs, teacher_text=inputs.teacher_text[:4])


@pytest.fixture(scope="module")
def one_run(learner, tmp_path_factory):
    inputs = synthetic_inputs(learner)
    cfg = prompt_run.config(PARAMS, "x")
    runs = tmp_path_factory.mktemp("runs")
    return inputs, cfg, runs, prompt_run.run(learner, inputs, cfg, runs, progress=False)


def test_a_run_stores_every_context_and_the_all_class_text_features(learner, one_run):
    inputs, cfg, _, (arrays, attrs, rows) = one_run
    keys = list(inputs.fewshot["draws"])
    want = {f"all/{m}/{k}/{a}" for m in cfg.methods for k in keys for a in ("ctx", "text")}
    want |= {f"base_to_novel/{m}/{k}/ctx" for m in cfg.methods for k in keys if k.startswith("shot_2-")}
    assert set(arrays) == want
    for m in cfg.methods:
        ctx = arrays[f"all/{m}/shot_1-seed_1/ctx"]
        assert ctx.shape == (4, learner.width) and not np.array_equal(ctx, learner.init_ctx.numpy())
        np.testing.assert_array_equal(arrays[f"all/{m}/shot_1-seed_1/text"], class_features(learner, ctx, NAMES))
    assert [r["method"] for r in rows] == ["zeroshot"] + [m for _ in range(2) for m in cfg.methods]
    assert rows[0] == {"method": "zeroshot", "shots": 0, "seed": 0,
                       **prompt_run.base_novel_scores(learner, learner.init_ctx, inputs)}


def test_kdpl_contexts_do_not_move_when_the_labels_are_shuffled_and_coop_ones_do(learner, one_run, tmp_path):
    inputs, cfg, _, (arrays, _, _) = one_run
    train = inputs.split == 0
    shuffled = inputs.label.copy()
    shuffled[train] = np.random.default_rng(5).permutation(shuffled[train])
    cfg_all = replace(cfg, b2n_shots=())                    # base-to-novel picks its rows by label
    again, _, _ = prompt_run.run(learner, replace(inputs, label=shuffled), cfg_all, tmp_path, progress=False)
    for k in inputs.fewshot["draws"]:
        for m in ("kdpl", "kdpl_ca"):
            np.testing.assert_array_equal(again[f"all/{m}/{k}/ctx"], arrays[f"all/{m}/{k}/ctx"])
    assert not np.array_equal(again["all/coop/shot_2-seed_1/ctx"], arrays["all/coop/shot_2-seed_1/ctx"])


def test_a_rerun_over_finished_checkpoints_returns_the_same_contexts(learner, one_run, monkeypatch):
    inputs, cfg, runs, (arrays, _, _) = one_run
    assert len(list(runs.glob("*.pt"))) == len([k for k in arrays if k.endswith("/ctx")])
    monkeypatch.setattr(torch.optim.SGD, "step", lambda *a, **k: pytest.fail("a finished run trained again"))
    again, _, _ = prompt_run.run(learner, inputs, cfg, runs, progress=False)
    for name, value in arrays.items():
        np.testing.assert_array_equal(again[name], value)


def test_summarise_gives_mean_and_population_std_over_seeds():
    rows = [{"method": "zeroshot", "shots": 0, "seed": 0, "base": 50.0, "novel": 40.0, "hm": 44.4444},
            {"method": "coop", "shots": 2, "seed": 1, "base": 60.0, "novel": 30.0, "hm": 40.0},
            {"method": "coop", "shots": 2, "seed": 2, "base": 70.0, "novel": 50.0, "hm": 58.3333}]
    got = prompt_run.summarise(rows)
    assert got["zeroshot"] == {"base": 50.0, "novel": 40.0, "hm": 44.4444}
    assert got["coop"]["shots_2"]["base"] == {"mean": 65.0, "std": 5.0}
    assert got["coop"]["shots_2"]["hm"]["mean"] == pytest.approx((40.0 + 58.3333) / 2, abs=1e-4)


def test_transfer_scores_each_context_on_the_target_names_by_brute_force(learner):
    inputs = synthetic_inputs(learner, seed=3)
    g = np.random.default_rng(1)
    ctx = {("coop", "shot_1-seed_1"): g.standard_normal((4, learner.width)).astype(np.float32),
           ("coop", "shot_1-seed_2"): learner.init_ctx.numpy()}
    test = inputs.split == 2
    got = prompt_run.transfer(learner, ctx, inputs.emb[test], inputs.label[test], NAMES)
    zero = brute_accuracy(inputs.emb[test], class_features(learner, learner.init_ctx, NAMES), inputs.label[test])
    other = brute_accuracy(inputs.emb[test], class_features(learner, ctx[("coop", "shot_1-seed_1")], NAMES),
                           inputs.label[test])
    assert got["zeroshot"] == pytest.approx(zero, abs=1e-3)
    assert got["coop"]["shots_1"]["mean"] == pytest.approx((zero + other) / 2, abs=1e-3)
    assert got["coop"]["shots_1"]["std"] == pytest.approx(abs(zero - other) / 2, abs=1e-3)


def test_the_adapt_method_scores_100_cosines_to_the_stored_class_features(tmp_path):
    g = np.random.default_rng(0)
    text = g.standard_normal((3, 8)).astype(np.float32)
    write_store(tmp_path / "p.zarr", tmp_path / "staging", {"arch": "a"}, {"all/coop/shot_1-seed_1/text": text})
    store = PromptStore(tmp_path / "p.zarr", {"arch": "a"})

    class Inputs:
        prompts, query = store, {"test": torch.from_numpy(g.standard_normal((4, 8)).astype(np.float32))}
        tensor = staticmethod(lambda a: torch.from_numpy(np.asarray(a)))

    class Draw:
        key = "shot_1-seed_1"

    got = COOP.fit(Inputs, Draw, None, None).components("test")["logits"].numpy()
    q = Inputs.query["test"].numpy()
    want = 100 * (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T
    np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(StoreError, match=r"p.zarr has no 'all/kdpl/shot_1-seed_1/text'.*prompt.methods"):
        store.text("kdpl", "shot_1-seed_1")
    assert math.isclose(float(np.abs(got).max()), float(np.abs(want).max()), rel_tol=1e-5)
