"""fuse: per method, fusion weights chosen on val (or fixed) and applied once to test, for every
(model, few-shot dataset) -> reports/metrics.json (DVC metrics: dataset / model / method / shots_K -> mean, std
over seeds), reports/per_seed.csv (every draw's val and test accuracy) and reports/fusion.json (the
chosen weights and adapt's knobs per draw). Modes: pipeline/evaluate.py.

usage: python stages/fuse.py
"""

from common import args, stage_params
from pipeline import config, evaluate, layout, report
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.methods import REGISTRY
from pipeline.store import open_store

args(__doc__)
p = stage_params("fuse")
cfg = config.fusion(p, REGISTRY)
metrics, choices, per_seed = {}, {"mode": cfg.mode}, []
for dataset in p["fewshot_datasets"]:
    for model in p["models"]:
        path = layout.logits_store(model, dataset)
        result, picks, rows = evaluate.evaluate_store(open_store(path), str(path.relative_to(layout.ROOT)), cfg)
        metrics.setdefault(dataset, {})[model] = result
        choices.setdefault(dataset, {})[model] = picks
        per_seed += [{"dataset": dataset, "model": model, **row} for row in rows]
out = layout.reports_dir()
atomic_write_json(out / "fusion.json", choices)
atomic_write_text(out / "per_seed.csv", report.to_csv(per_seed, report.PER_SEED_FIELDS))
atomic_write_json(out / "metrics.json", metrics)
