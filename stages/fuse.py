"""fuse: per method, fusion weights chosen on val (or fixed) and applied once to test, for every
(model, dataset) -> reports/metrics.json (dataset / model / method / shots_K -> mean, std, seed_S)
and reports/fusion.json (the chosen weights and adapt's knobs per draw). Modes: pipeline/evaluate.py.

usage: python stages/fuse.py
"""

from common import ROOT, stage_params
from pipeline import evaluate
from pipeline.io import atomic_write_json
from pipeline.store import open_store

p = stage_params("fuse")
cfg = evaluate.fusion_section(p)
metrics, choices = {}, {"mode": cfg["mode"]}
for dataset in p["datasets"]:
    for model in p["models"]:
        path = ROOT / "logits" / model / dataset / "logits.zarr"
        result, picks = evaluate.evaluate_store(open_store(path), str(path.relative_to(ROOT)), cfg)
        metrics.setdefault(dataset, {})[model] = result
        choices.setdefault(dataset, {})[model] = picks
atomic_write_json(ROOT / "reports" / "fusion.json", choices)
atomic_write_json(ROOT / "reports" / "metrics.json", metrics)
