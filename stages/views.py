"""views@{model}-{dataset}: seeded augmented views of every drawn train image -> features/<model>/<dataset>/views.zarr
(teacher_views@{dataset}: the same views through `distill.teacher`, for KDPL);
gcd_views@{dataset}: of every train image, for category discovery -> .../gcd_views.zarr.

usage: python stages/views.py <fewshot|gcd> <model> <dataset>
fewshot: only images that some few-shot draw uses, `views.n_views` random-resized-crop (+ flip) views each;
gcd: every train image, `gcd.views`. Both add the flipped test-time view (see pipeline/views.py). Batch
size / workers as for `extract`.
"""

import json

import numpy as np
import pandas as pd
from common import ROOT, args, stage_params
from pipeline import config, draws, features, layout, models, runtime, views

kind, model_name, dataset_name = args(__doc__, "kind", "model", "dataset")
dataset = json.loads((layout.data_dir(dataset_name) / "dataset.json").read_text())
manifest = pd.read_parquet(layout.data_dir(dataset_name) / "manifest.parquet")
if kind == "gcd":
    p = stage_params(f"gcd_views@{dataset_name}")
    recipe, store = config.views(p, "gcd.views", min_views=2), "gcd_views.zarr"
    items = np.sort(manifest.loc[manifest["split"] == "train", "item"].to_numpy())
else:
    p = stage_params(f"views@{model_name}-{dataset_name}", f"teacher_views@{dataset_name}")
    recipe, store = config.views(p), "views.zarr"
    items = draws.train_items(draws.load(layout.fewshot_file(dataset_name), dataset["manifest_sha256"]))
precision = config.precision(p)
device, knobs = runtime.device(), runtime.settings(ROOT)
m = models.load(layout.model_dir(model_name), device)
views.extract_views(
    m, manifest, items, ROOT / dataset["root"], layout.feature_dir(model_name, dataset_name) / store,
    layout.staging_dir(model_name, dataset_name) / store,
    features.provenance(m.card, dataset, precision), recipe,
    batch_size=knobs["batch_size"], workers=knobs["workers"], device=device, precision=precision)
