"""text@{model}-{dataset}: per class, per prompt EOS features -> features/<model>/<dataset>/text.zarr.

usage: python stages/text.py <model> <dataset>
"""

import json
import sys

from common import data_dir, feature_dir, model_dir, stage_params, staging_dir
from pipeline import extract, features, models, params, runtime

model_name, dataset_name = sys.argv[1:3]
p = stage_params(f"text@{model_name}-{dataset_name}")
text, precision = params.text_section(p), params.precision(p)
dataset = json.loads((data_dir(dataset_name) / "dataset.json").read_text())
templates = extract.expand_templates(text["templates"], dataset["template"])
device = runtime.device()
m = models.load(model_dir(model_name), device)
extract.extract_text(
    m, dataset["classnames"], templates, feature_dir(model_name, dataset_name) / "text.zarr",
    staging_dir(model_name, dataset_name) / "text.zarr",
    features.provenance(m.card, dataset, precision, templates=templates), device=device, precision=precision)
