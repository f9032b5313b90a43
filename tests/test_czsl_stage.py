"""The czsl stage on the demo `scenes` (slow: the whole demo DAG) and its input checks."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import czsl_data, czsl_eval, czsl_inputs, config
from pipeline.store import StoreError


@pytest.mark.slow
def test_demo_czsl_report_and_zero_shot_from_the_stores(demo_repo):
    from pipeline import features
    report = json.loads((demo_repo / "reports/czsl/demo-scenes.json").read_text())
    details = json.loads((demo_repo / "reports/czsl/demo-scenes.details.json").read_text())
    assert len(details["split"]["unseen_val"]) == len(details["split"]["unseen_test"]) == 6
    assert details["split"]["n_seen"] == 24
    card = json.loads((demo_repo / "models/demo/card.json").read_text())
    dataset = json.loads((demo_repo / "data/scenes/dataset.json").read_text())
    manifest = pd.read_parquet(demo_repo / "data/scenes/manifest.parquet")
    f = features.load(demo_repo / "features/demo/scenes", card, dataset)
    data = czsl_data.from_classes(dataset["primitives"], manifest, 12, 0)
    test = data.protocol("test", open_world=True)
    rows = data.manifest["item"].to_numpy()[test.rows]          # demo items are feature rows
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    protos = unit(unit(f.text_emb).mean(1))
    order = [dataset["classnames"].index(" ".join(p)) for p in test.pairs]
    scores = f.logit_scale * unit(f.emb[rows]) @ protos[order].T
    want = czsl_eval.evaluate(scores, test.labels, test.pair_ids, test.seen)
    got = report["zero_shot"]["open"]
    assert got["hm"] == pytest.approx(want.best_hm, abs=1e-3) and got["auc"] == pytest.approx(want.auc, abs=1e-3)
    for module, worlds in report.items():
        for world, m in worlds.items():
            assert all(0 <= m[k] <= 1 for k in ("seen", "unseen", "hm", "auc")), (module, world, m)


def test_split_settings_are_named():
    with pytest.raises(config.ParamsError, match=r"'czsl.splits.toys' should be a mapping"):
        czsl_inputs.split_settings({"czsl": {"splits": {"scenes": {"unseen": 2, "seed": 0}}}}, "toys")
    with pytest.raises(config.ParamsError, match=r"'czsl.splits.scenes.unseen' = 0 should be >= 1"):
        czsl_inputs.split_settings({"czsl": {"splits": {"scenes": {"unseen": 0, "seed": 0}}}}, "scenes")


def test_a_dataset_without_pairs_or_tokens_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no \\(attribute, object\\) classes"):
        czsl_inputs.load(tmp_path, {}, {"name": "shapes"}, pd.DataFrame(), 2, 0)
    with pytest.raises(StoreError, match="does not exist"):
        czsl_inputs.load(tmp_path, {k: "x" for k in ("arch", "source", "tag", "checkpoint_sha256",
                                                       "open_clip_version", "quick_gelu", "preprocess")},
                         {"name": "scenes", "primitives": {}, "manifest_sha256": "y"}, pd.DataFrame(), 2, 0)
