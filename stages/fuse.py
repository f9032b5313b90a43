"""fuse: combine each (model, dataset)'s component logits, score on test -> reports/metrics.json.

usage: python stages/fuse.py
"""

import torch
from common import ROOT, stage_params
from pipeline import metrics
from pipeline.io import atomic_write_json
from pipeline.store import open_store

p = stage_params("fuse")
report = {}
for dataset in p["datasets"]:
    for model in p["models"]:
        logits = open_store(ROOT / "logits" / model / dataset / "logits.zarr")
        labels = torch.from_numpy(logits["label/test"][...]).long()
        test = torch.from_numpy(logits["zeroshot/test"][...])
        report.setdefault(dataset, {})[model] = {
            "zeroshot": {"test_acc": round(metrics.accuracy(test, labels), 4)},
            "modality_gap": round(logits.attrs["modality_gap"], 4),
        }
atomic_write_json(ROOT / "reports" / "metrics.json", report)
