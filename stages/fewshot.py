"""fewshot@{dataset}: CoOp few-shot draws (shots x seeds) of a manifest -> fewshot/<dataset>/fewshot.json.

usage: python stages/fewshot.py <dataset>
The file records the manifest's sha256; `views` and `adapt` refuse draws made on another manifest.
"""

import json

import pandas as pd
from common import args, stage_params
from pipeline import config, draws, layout
from pipeline.io import atomic_write_json

(name,) = args(__doc__, "dataset")
cfg = config.fewshot(stage_params(f"fewshot@{name}"))
dataset = json.loads((layout.data_dir(name) / "dataset.json").read_text())
manifest = pd.read_parquet(layout.data_dir(name) / "manifest.parquet")
atomic_write_json(layout.fewshot_file(name), draws.make(manifest, dataset, cfg))
