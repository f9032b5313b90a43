"""oti@{model}-{dataset} / ovi@{model}-{dataset}: Cross-the-Gap's modality inversion -> features/<m>/<ds>/<method>.zarr

usage: python stages/invert.py <oti|ovi> <model> <dataset>
OTI inverts the cached image features of `inversion.oti.splits` into pseudo-words (a text feature per image);
OVI inverts every cached class prompt into a pseudo visual token (an image feature per prompt). Settings:
`inversion.<method>` (+ `inversion.overrides.<dataset>`). A killed run resumes from its finished shards.
"""

import json
import time
from dataclasses import asdict

from common import args, stage_params
from pipeline import features, inversion, inversion_store, layout, models, runtime

method, model_name, dataset_name = args(__doc__, "method", "model", "dataset")
if method not in inversion.METHODS:
    raise SystemExit(f"method {method!r} is not one of {list(inversion.METHODS)}")
cfg = inversion.settings(stage_params(f"{method}@{model_name}-{dataset_name}"), method, dataset_name, layout.SPLITS)
card = json.loads((layout.model_dir(model_name) / "card.json").read_text())
dataset = json.loads((layout.data_dir(dataset_name) / "dataset.json").read_text())
feats = features.load(layout.feature_dir(model_name, dataset_name), card, dataset)
device = runtime.device()
m = models.load(layout.model_dir(model_name), device)
start = time.perf_counter()
inversion.write(method, m, feats, cfg, layout.feature_dir(model_name, dataset_name) / f"{method}.zarr",
                layout.staging_dir(model_name, dataset_name) / f"{method}.zarr",
                inversion_store.store_provenance(method, card, dataset, feats, asdict(cfg)), device)
print(f"{method}@{model_name}-{dataset_name}: {time.perf_counter() - start:.1f} s")
