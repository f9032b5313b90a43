"""SpectralGCD's training loop and the run on synthetic cached inputs (pipeline/gcd_train.py, gcd_run.py), and
the `gcd` params (pipeline/gcd_config.py)."""

import copy

import numpy as np
import pytest
import torch
import yaml

from pipeline import gcd_config, gcd_run, gcd_train
from pipeline.config import ParamsError
from pipeline.gcd_inputs import GCDInputs
from conftest import ROOT


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def small_cfg(**train):
    p = params()
    p["gcd"]["overrides"]["toy"] = {"head": {"width": 16, "hidden": 32, "bottleneck": 8},
                                    "train": {"epochs": 3, "batch": 8, **train}, "loss": {"teacher_temp_epochs": 1}}
    p["gcd"]["protocol"]["toy"] = {"old": 2, "labelled": 0.5, "seed": 0}
    p["gcd"]["seeds"] = [0]
    return gcd_config.config(p, "toy")


def toy_inputs(n_per_class=12, n_classes=4, dim=8, views=3, k0=6, seed=0) -> GCDInputs:
    """Well-separated class blobs; classes 0, 1 old; half of the old train rows labelled."""
    rng = np.random.default_rng(seed)
    centres = 4 * np.eye(n_classes, dim)    # orthogonal directions: blobs stay apart once L2-normalised
    label = np.repeat(np.arange(n_classes), n_per_class)
    split = np.tile(np.array([0, 0, 2], np.int8), len(label) // 3 + 1)[: len(label)]
    emb = (centres[label] + rng.normal(size=(len(label), dim)) * 0.3).astype(np.float32)
    train = np.flatnonzero(split == 0)
    labelled = (label[train] < 2) & (np.arange(len(train)) % 2 == 0)
    view_emb = (emb[train][:, None] + rng.normal(size=(len(train), views, dim)) * 0.2).astype(np.float32)
    concepts = rng.normal(size=(k0, dim)).astype(np.float32)
    teacher = (rng.normal(size=(len(train), k0)) * 10).astype(np.float32)
    return GCDInputs(classnames=[f"c{i}" for i in range(n_classes)], old=np.array([0, 1]), target=label, split=split,
                     train=train, labelled=labelled, student_emb=emb, student_views=view_emb,
                     concepts=[f"k{i}" for i in range(k0)], student_concepts=concepts, teacher_logits=teacher,
                     distractors=set())


@pytest.mark.parametrize("method", ["spectralgcd", "simgcd"])
def test_labels_of_unlabelled_rows_never_reach_training(method):
    inputs, cfg = toy_inputs(), small_cfg()
    shuffled = copy.deepcopy(inputs)
    rows = inputs.train[~inputs.labelled]
    shuffled.target = inputs.target.copy()
    shuffled.target[rows] = np.random.default_rng(1).permutation(inputs.target[rows])[::-1]
    keep = np.arange(6)
    a = gcd_train.train(method, inputs, keep, cfg, 0, progress=False).net.state_dict()
    b = gcd_train.train(method, shuffled, keep, cfg, 0, progress=False).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ...while a labelled row's label does change what is learnt
    relabelled = copy.deepcopy(inputs)
    relabelled.target = inputs.target.copy()
    first = inputs.train[inputs.labelled][0]
    relabelled.target[first] = 1 - relabelled.target[first]
    c = gcd_train.train(method, relabelled, keep, cfg, 0, progress=False).net.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_kd_terms_train_the_adapter():
    inputs, cfg = toy_inputs(), small_cfg()
    trained = gcd_train.train("spectralgcd", inputs, np.arange(6), cfg, 0, progress=False)
    assert trained.net.adapter.linear.weight.abs().max() > 0
    assert {"kd_forward", "kd_reverse", "cls", "cluster", "memax", "con", "supcon", "total"} <= set(trained.history[0])
    assert "kd_forward" not in gcd_train.train("simgcd", inputs, np.arange(6), cfg, 0, progress=False).history[0]


def test_sampler_weights_balance_labelled_and_unlabelled_draws():
    labelled = np.zeros(1000, bool)
    labelled[:100] = True
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([torch.cat(gcd_train._epoch_rows(labelled, 100, gen)) for _ in range(20)])
    assert len(rows) == 20 * 1000
    share = labelled[rows.numpy()].mean()
    assert abs(share - 0.5) < 0.02      # weight 1 vs |L|/|U|: half the draws are labelled rows


def test_two_views_are_always_distinct():
    gen = torch.Generator().manual_seed(0)
    a, b = gcd_train._two_views(torch.arange(5000), 3, gen)
    assert (a != b).all() and set(a.tolist()) == set(b.tolist()) == {0, 1, 2}


def test_run_scores_every_method_and_kmeans_recovers_separated_blobs():
    inputs, cfg = toy_inputs(), small_cfg()
    result = gcd_run.run(inputs, cfg, progress=False)
    assert set(result["scores"]) == set(gcd_run.METHODS)
    km = result["scores"]["kmeans_image"][0]
    assert km["transductive"]["v2"]["all"] == km["inductive"]["v2"]["all"] == 1.0
    assert result["rows"] == {"transductive": int((~inputs.labelled).sum()), "inductive": int((inputs.split == 2).sum())}
    m = gcd_run.metrics(result)
    assert m["kmeans_image"]["transductive"]["all"] == 100.0 and m["kmeans_image"]["transductive"]["all_std"] == 0.0
    assert 1 <= m["filter"]["k_c"] <= 6


@pytest.mark.parametrize("edit, match", [
    (lambda p: p["gcd"]["filter"].update(beta_e=0.0), r"gcd\.filter\.beta_e' = 0\.0 should be > 0"),
    (lambda p: p["gcd"]["filter"].update(beta_c=1.5), r"gcd\.filter\.beta_c' = 1\.5 should be <= 1"),
    (lambda p: p["gcd"]["filter"].update(route="fast"), r"gcd\.filter\.route' = 'fast' should be one of"),
    (lambda p: p["gcd"]["protocol"].pop("scenes"), r"no mapping 'gcd\.protocol\.scenes'"),
    (lambda p: p["gcd"]["overrides"]["scenes"]["loss"].update(teacher_temp_epochs=99), r"exceeds gcd\.train"),
    (lambda p: p["gcd"].update(seeds=[0, 0]), r"gcd\.seeds' = \[0, 0\] should be distinct"),
    (lambda p: p["gcd"]["protocol"]["scenes"].update(labelled="half"), r"gcd\.protocol\.scenes\.labelled' = 'half'"),
])
def test_bad_gcd_params_are_named(edit, match):
    p = params()
    edit(p)
    with pytest.raises(ParamsError, match=match):
        gcd_config.config(p, "scenes")


def test_demo_overrides_merge_over_the_reference_defaults():
    cfg = gcd_config.config(params(), "scenes")
    ref = gcd_config.config(params(), "eurosat")
    assert ref.train.epochs == 200 and ref.loss.warmup_teacher_temp_epochs == 30 and ref.head["width"] == 768
    assert cfg.train.epochs < ref.train.epochs and cfg.train.lr == ref.train.lr == 0.1
    assert (cfg.beta_e, cfg.beta_c, cfg.tau) == (0.95, 0.99, 0.01)
