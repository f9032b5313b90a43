"""views@{model}-{dataset}: seeded augmented views of every drawn train image -> features/<model>/<dataset>/views.zarr.

usage: python stages/views.py <model> <dataset>
Only images that some few-shot draw uses are embedded: `views.n_views` random-resized-crop (+ flip) views
each, plus the flipped test-time view (see pipeline/views.py). Batch size / workers as for `extract`.
"""

import json
import sys

import pandas as pd
from common import ROOT, data_dir, feature_dir, model_dir, stage_params, staging_dir
from pipeline import draws, features, models, params, runtime, views

model_name, dataset_name = sys.argv[1:3]
p = stage_params(f"views@{model_name}-{dataset_name}")
recipe, precision = views.views_section(p), params.precision(p)
dataset = json.loads((data_dir(dataset_name) / "dataset.json").read_text())
manifest = pd.read_parquet(data_dir(dataset_name) / "manifest.parquet")
fewshot = draws.load(ROOT / "fewshot" / dataset_name / "fewshot.json", dataset["manifest_sha256"])
device, knobs = runtime.device(), runtime.settings(ROOT)
m = models.load(model_dir(model_name), device)
views.extract_views(
    m, manifest, draws.train_items(fewshot), ROOT / dataset["root"],
    feature_dir(model_name, dataset_name) / "views.zarr", staging_dir(model_name, dataset_name) / "views.zarr",
    features.provenance(m.card, dataset, precision), recipe,
    batch_size=knobs["batch_size"], workers=knobs["workers"], device=device, precision=precision)
