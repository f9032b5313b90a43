"""fewshot@{dataset}: CoOp few-shot draws (shots x seeds) of a manifest -> fewshot/<dataset>/fewshot.json.

usage: python stages/fewshot.py <dataset>
The file records the manifest's sha256; `views` and `adapt` refuse draws made on another manifest.
"""

import json
import sys

import pandas as pd
from common import ROOT, data_dir, stage_params
from pipeline import draws

name = sys.argv[1]
cfg = draws.fewshot_section(stage_params(f"fewshot@{name}"))
dataset = json.loads((data_dir(name) / "dataset.json").read_text())
manifest = pd.read_parquet(data_dir(name) / "manifest.parquet")
draws.write(ROOT / "fewshot" / name / "fewshot.json", draws.make(manifest, dataset, cfg))
