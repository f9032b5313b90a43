"""adapt@{model}-{dataset}: every method's component logits on val and test -> logits/<model>/<dataset>/logits.zarr.

usage: python stages/adapt.py <model> <dataset>
"""

import json
import sys

import numpy as np
import torch
from common import ROOT, data_dir, feature_dir, model_dir
from pipeline import features, metrics
from pipeline.methods import zeroshot
from pipeline.store import write_store

model_name, dataset_name = sys.argv[1:3]
card = json.loads((model_dir(model_name) / "card.json").read_text())
dataset = json.loads((data_dir(dataset_name) / "dataset.json").read_text())
feats = features.load(feature_dir(model_name, dataset_name), card, dataset)

protos = zeroshot.class_prototypes(torch.from_numpy(feats.text_emb))
arrays, attrs = {}, {"modality_gap": metrics.modality_gap(feats.emb, feats.text_emb)}
for code, split in ((1, "val"), (2, "test")):
    rows = feats.split == code
    arrays[f"label/{split}"] = feats.label[rows]
    arrays[f"zeroshot/{split}"] = zeroshot.zeroshot_logits(torch.from_numpy(feats.emb[rows]), protos).numpy()

out = ROOT / "logits" / model_name / dataset_name
write_store(out / "logits.zarr", ROOT / "logits" / ".staging" / model_name / dataset_name,
            feats.provenance, arrays, attrs)
