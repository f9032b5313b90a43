"""czsl@{model}-{dataset}: compositional zero-shot (SAM-CZSL's modules) on cached patch tokens ->
reports/czsl/<model>-<dataset>.json (metrics: test seen / unseen / HM / AUC per module and world) and
.details.json (val results, chosen weights, gaps, training records).

usage: python stages/czsl.py <model> <dataset>
The dataset's classes are (attribute, object) pairs; `czsl.splits.<dataset>` draws the unseen pairs;
the rest of `czsl` sets the heads, VAC, the memory bank and the fusion search (pipeline/czsl_sam.py).
"""

import json
import time

import pandas as pd
from common import args, stage_params
from pipeline import czsl_inputs, czsl_sam, layout, runtime
from pipeline.io import atomic_write_json

model_name, dataset_name = args(__doc__, "model", "dataset")
p = stage_params(f"czsl@{model_name}-{dataset_name}")
cfg = czsl_sam.config(p)
unseen, seed = czsl_inputs.split_settings(p, dataset_name)
card = json.loads((layout.model_dir(model_name) / "card.json").read_text())
dataset = json.loads((layout.data_dir(dataset_name) / "dataset.json").read_text())
manifest = pd.read_parquet(layout.data_dir(dataset_name) / "manifest.parquet")
inputs, data = czsl_inputs.load(layout.feature_dir(model_name, dataset_name), card, dataset, manifest, unseen, seed)
start = time.perf_counter()
result = czsl_sam.run(inputs, cfg, runtime.device())
split = {"unseen_val": sorted(set(data.split_pairs["val"]) - set(data.seen)),
         "unseen_test": sorted(set(data.split_pairs["test"]) - set(data.seen)), "n_seen": len(data.seen)}
out = layout.reports_dir() / "czsl" / f"{model_name}-{dataset_name}"
atomic_write_json(out.with_name(out.name + ".details.json"),
                  {"split": split, "seconds": round(time.perf_counter() - start, 1), **result})
metrics = czsl_sam.metrics(result)
atomic_write_json(out.with_name(out.name + ".json"), metrics)
print(json.dumps(metrics, indent=1))
