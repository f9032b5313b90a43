"""adapt@{model}-{dataset}: every method's component logits on val and test per (shot, seed)
-> logits/<model>/<dataset>/logits.zarr (layout and what is chosen here: pipeline/adapt.py).

usage: python stages/adapt.py <model> <dataset>
"""

import json
import sys

from common import ROOT, data_dir, feature_dir, model_dir, stage_params
from pipeline import adapt, draws, features, runtime, views
from pipeline.store import write_store

model_name, dataset_name = sys.argv[1:3]
card = json.loads((model_dir(model_name) / "card.json").read_text())
cfg = adapt.methods_section(stage_params(f"adapt@{model_name}-{dataset_name}"), card["arch"], dataset_name)
dataset = json.loads((data_dir(dataset_name) / "dataset.json").read_text())
fdir = feature_dir(model_name, dataset_name)
feats = features.load(fdir, card, dataset)
fewshot = draws.load(ROOT / "fewshot" / dataset_name / "fewshot.json", feats.provenance["manifest_sha256"])
expect = {**{k: card[k] for k in features.MODEL_KEYS}, "manifest_sha256": dataset["manifest_sha256"]}
cached_views = views.load(fdir / "views.zarr", expect)
arrays, attrs = adapt.run(feats, fewshot, cached_views, cfg, runtime.device())
write_store(ROOT / "logits" / model_name / dataset_name / "logits.zarr",
            ROOT / "logits" / ".staging" / model_name / dataset_name,
            {**feats.provenance, "fewshot_manifest_sha256": fewshot["manifest_sha256"]},
            arrays, {**attrs, "views": cached_views.recipe})
