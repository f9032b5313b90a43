"""views@{model}-{dataset}: seeded augmented views of every drawn train image -> features/<model>/<dataset>/views.zarr.

usage: python stages/views.py <model> <dataset>
Only images that some few-shot draw uses are embedded: `views.n_views` random-resized-crop (+ flip) views
each, plus the flipped test-time view (see pipeline/views.py). Batch size / workers as for `extract`.
"""

import json

import pandas as pd
from common import ROOT, args, stage_params
from pipeline import config, draws, features, layout, models, runtime, views

model_name, dataset_name = args(__doc__, "model", "dataset")
p = stage_params(f"views@{model_name}-{dataset_name}")
recipe, precision = config.views(p), config.precision(p)
dataset = json.loads((layout.data_dir(dataset_name) / "dataset.json").read_text())
manifest = pd.read_parquet(layout.data_dir(dataset_name) / "manifest.parquet")
fewshot = draws.load(layout.fewshot_file(dataset_name), dataset["manifest_sha256"])
device, knobs = runtime.device(), runtime.settings(ROOT)
m = models.load(layout.model_dir(model_name), device)
views.extract_views(
    m, manifest, draws.train_items(fewshot), ROOT / dataset["root"],
    layout.feature_dir(model_name, dataset_name) / "views.zarr",
    layout.staging_dir(model_name, dataset_name) / "views.zarr",
    features.provenance(m.card, dataset, precision), recipe,
    batch_size=knobs["batch_size"], workers=knobs["workers"], device=device, precision=precision)
