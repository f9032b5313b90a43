"""The retune@ stage's library (pipeline/retune_run.py): the params block expanded into runs, with overrides and
errors naming the key; the inputs read from a small cache against a direct computation; the metrics with an
undefined AUROC written as null, never NaN; the comparison plot."""

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline import extract, features, layout, models, multilabel_data, retune_run
from pipeline.config import ParamsError
from pipeline.multilabel_world import LABELS
from pipeline.retune import TrainConfig
from pipeline.retune_plots import scenario_curves
from pipeline.retune_train import RetuneData, run

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_params_block_expands_into_runs_with_the_dataset_overrides():
    cfg = retune_run.settings(PARAMS, "multilabel", LABELS)
    over = PARAMS["retune"]["overrides"]["multilabel"]
    P = over["scenarios"]["parts"]
    assert [name for name, _ in cfg.runs] == ["zeroshot", "joint", *(f"data_incremental_{p}" for p in P),
                                              "class_incremental", "label_incremental"]
    assert [c.parts for name, c in cfg.runs if name.startswith("data_")] == P
    assert all(c.train == TrainConfig(**{**PARAMS["retune"]["train"], **over["train"]}) for _, c in cfg.runs)
    assert cfg.positive == tuple(over["prompts"]["positive"]) and len(cfg.negative) == 4
    chex = retune_run.settings(PARAMS, "chexpert", ["Edema", "Atelectasis"])   # no overrides: the reference's
    assert [c.parts for n, c in chex.runs if n.startswith("data_")] == [5, 10, 20]
    assert chex.runs[0][1].train == TrainConfig()
    # the reference's prompts (DataRetrieval.create_prompts)
    assert chex.positive == ("Findings consistent with {}", "Findings suggesting {}", "This opacity can represent {}",
                             "Findings are most compatible with {}")
    assert chex.negative == ("There is no {}", "No evidence of {}", "No evidence of acute {}", "No signs of {}")
    assert retune_run.prompts(chex.negative[:2], ["Edema", "Atelectasis"]) == [
        "There is no Edema", "No evidence of Edema", "There is no Atelectasis", "No evidence of Atelectasis"]


def edited(edit):
    params = copy.deepcopy(PARAMS)
    edit(params["retune"])
    return params


@pytest.mark.parametrize("edit,needle", [
    (lambda r: r["overrides"]["multilabel"]["scenarios"].update(order=["circle", "hexagon"]),
     r"'retune.scenarios \(with retune.overrides.multilabel\).order' names unknown label 'hexagon'"),
    (lambda r: r["scenarios"].update(run=["joint", "replay"]),
     r"'retune.scenarios \(with retune.overrides.multilabel\).run' = \['joint', 'replay'\] should be"),
    (lambda r: r["overrides"]["multilabel"]["scenarios"].update(parts=[5, 5]), r"parts' = \[5, 5\] should be a non-empty"),
    (lambda r: r["train"].update(epoch=3), r"unknown key 'retune.train \(with retune.overrides.multilabel\).epoch'"),
    (lambda r: r["overrides"]["multilabel"]["prompts"].update(negative=["no circle."]), r"each with one '\{\}'"),
    (lambda r: r.update(adapter="dense"), r"'retune.adapter' = 'dense' should be one of"),
    (lambda r: r.update(score="max"), r"'retune.score' = 'max' should be one of \['positive', 'difference'\]"),
])
def test_bad_params_name_the_key(edit, needle):
    with pytest.raises(ParamsError, match=needle):
        retune_run.settings(edited(edit), "multilabel", LABELS)


def test_the_task_order_reaches_the_incremental_runs():
    order = ["star", "circle", "cross", "square", "triangle"]
    cfg = retune_run.settings(edited(lambda r: r["scenarios"].update(order=order)), "multilabel", LABELS)
    assert {c.order for n, c in cfg.runs if n.endswith("incremental")} == {tuple(order)}


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, random_demo_dir):
    """data/ml (the demo world, 8 train / 2 val / 6 test), models/m (random demo-clip) and its images.zarr."""
    root = tmp_path_factory.mktemp("retune-repo")
    cfg = multilabel_data.dataset({"data": {"ml": {"kind": "multilabel", "seed": 0, "blur": 1.0, "p_present": 0.5,
                                                   "count": {"train": 8, "val": 2, "test": 6}}}}, "ml")
    frame = multilabel_data.prepare(cfg, layout.data_dir("ml", root), root)
    (layout.model_dir("m", root)).mkdir(parents=True)
    for f in ("model.pt", "card.json"):
        (layout.model_dir("m", root) / f).write_bytes((random_demo_dir / f).read_bytes())
    m = models.load(layout.model_dir("m", root))
    info = json.loads((layout.data_dir("ml", root) / "dataset.json").read_text())
    extract.extract_images(m, frame.iloc[::-1].reset_index(drop=True), layout.data_dir("ml", root),   # rows reversed
                           layout.feature_dir("m", "ml", root) / "images.zarr", root / "staging" / "images.zarr",
                           features.provenance(m.card, info, "fp32"), workers=0, progress=False)
    return root, frame


def test_inputs_join_the_label_matrix_by_item_and_encode_the_prompts(tiny_repo):
    root, frame = tiny_repo
    cfg = retune_run.settings(PARAMS, "multilabel", LABELS)
    data = retune_run.inputs(replace(cfg, model="m"), "ml", "fp32", "cpu", root)
    Y = multilabel_data.label_matrix(frame, LABELS)
    # the store's rows run test, val, train (reversed manifest): train rows come back in reversed item order
    np.testing.assert_array_equal(data.train_y, Y[:8][::-1])
    np.testing.assert_array_equal(data.test_y, Y[10:][::-1])
    m = models.load(layout.model_dir("m", root))
    with torch.no_grad():
        direct = m.trunk.encode_text(m.tokenizer(["no star.", "a photo of no star."])) @ m.W_txt
    np.testing.assert_allclose(data.neg[LABELS.index("star"), :2], direct.numpy(), rtol=1e-5, atol=1e-6)
    assert data.pos.shape == data.neg.shape == (5, 4, 64) and data.train_x.shape == (8, 64)


def small_data(seed=0) -> RetuneData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (60, 2)).astype(np.float32)
    x = ((2 * y - 1) @ rng.standard_normal((2, 8)) + rng.standard_normal((60, 8))).astype(np.float32)
    p = rng.standard_normal((2, 4, 8)).astype(np.float32)
    test_y = y[40:].copy()
    test_y[:, 1] = 0   # label "b": no positive in test
    return RetuneData(("a", "b"), x[:40], y[:40], x[40:], test_y, p, -p)


def test_metrics_mark_an_undefined_auroc_as_null_and_average_forgetting():
    cfgs = retune_run.settings(edited(lambda r: r["overrides"].update(toy={"train": {"batch": 8, "epochs": 2}})),
                               "toy", ["a", "b"])
    with pytest.warns(UserWarning, match="AUROC of label 'b' is undefined"):
        results = {name: run(c, small_data(), "cpu", progress=False) for name, c in cfgs.runs}
    metrics = retune_run.metrics(results)
    text = json.dumps(metrics, allow_nan=False)   # no NaN anywhere
    assert set(metrics) == {"zeroshot", "joint", "data_incremental_5", "data_incremental_10", "data_incremental_20",
                            "class_incremental", "label_incremental"}
    assert "forgetting_mean" not in metrics["joint"] and "forgetting_mean" not in metrics["zeroshot"]
    rep = results["class_incremental"].report()
    joint = results["joint"].report()
    for rule in ("positive", "difference"):
        assert metrics["class_incremental"]["forgetting_mean"][rule] == rep["forgetting"][rule]["a"]   # "b": None
        # the macro over the one defined label is that label's AUROC
        assert metrics["joint"]["auroc_macro"][rule] == joint["auroc_matrix"][rule][0][0]
    csv = retune_run.table_csv(metrics, "difference").splitlines()
    assert csv[0] == "run,auroc_macro,f1_macro,subset_accuracy" and len(csv) == 8
    assert csv[2] == f"joint,{metrics['joint']['auroc_macro']['difference']:.4f},{metrics['joint']['f1_macro']:.4f}," \
                     f"{metrics['joint']['subset_accuracy']:.4f}"
    assert '"b"' not in text   # the undefined label is left out of the averages, not written as a number
    curves = retune_run.curves(results)
    assert len(curves["data_incremental_10"]["positive"]) == 10 and len(curves["zeroshot"]["difference"]) == 1
    svg = scenario_curves(curves, ("positive", "difference"), "toy")
    assert svg == scenario_curves(curves, ("positive", "difference"), "toy")   # same bytes
    assert 'id="curve-positive-class_incremental"' in svg and 'id="level-difference-joint"' in svg
    with pytest.raises(ValueError, match="no run"):
        scenario_curves({}, ("positive",), "x")


def test_a_run_whose_every_label_is_undefined_reports_null():
    data = small_data()
    data.test_y[:] = 0
    (name, cfg), = [r for r in retune_run.settings(PARAMS, "toy", ["a", "b"]).runs if r[0] == "zeroshot"]
    with pytest.warns(UserWarning):
        metrics = retune_run.metrics({name: run(cfg, data, "cpu", progress=False)})
    assert metrics["zeroshot"]["auroc_macro"] == {"positive": None, "difference": None}
    assert retune_run.table_csv(metrics, "positive").splitlines()[1].startswith("zeroshot,,")
