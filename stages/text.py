"""text@{model}-{dataset}: per class, per prompt EOS features -> features/<model>/<dataset>/text.zarr.
Datasets whose classes are (attribute, object) pairs (dataset.json `primitives`) also get attr/ and obj/ prompts.

usage: python stages/text.py <model> <dataset>
"""

import json

from common import args, stage_params
from pipeline import config, extract, features, layout, models, runtime

model_name, dataset_name = args(__doc__, "model", "dataset")
p = stage_params(f"text@{model_name}-{dataset_name}", f"teacher_text@{dataset_name}")
precision = config.precision(p)
dataset = json.loads((layout.data_dir(dataset_name) / "dataset.json").read_text())
templates = extract.expand_templates(config.templates(p), dataset["template"])
device = runtime.device()
m = models.load(layout.model_dir(model_name), device)
primitives = dataset.get("primitives")
extra = {"primitive_templates": config.primitive_templates(p)} if primitives else {}
extract.extract_text(
    m, dataset["classnames"], templates, layout.feature_dir(model_name, dataset_name) / "text.zarr",
    layout.staging_dir(model_name, dataset_name) / "text.zarr",
    features.provenance(m.card, dataset, precision, templates=templates, **extra), device=device,
    precision=precision, primitives=primitives, **extra)
