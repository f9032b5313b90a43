"""retune@{dataset}: RE-tune on cached features (METHODS.md §15.3, pipeline/retune_run.py): every run of
`retune.scenarios` on the retune model's images.zarr of <dataset>, with the positive / negative prompts of
`retune.prompts` encoded by that model -> reports/retune/<dataset>.json (metrics), .details.json (every task's
evaluation, losses, forgetting), .csv and .svg (the runs side by side), <dataset>/<run>.svg (task x label AUROC
heatmaps under the headline rule `retune.score`).

usage: python stages/retune.py <dataset>
"""

import json
import shutil
import time

from common import args, stage_params
from pipeline import config, layout, retune_plots, retune_run, retune_train, runtime
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.retune_eval import RULES

(name,) = args(__doc__, "dataset")
p = stage_params(f"retune@{name}")
labels = json.loads((layout.data_dir(name) / "dataset.json").read_text())["labels"]
cfg, device, start = retune_run.settings(p, name, labels), runtime.device(), time.perf_counter()
data = retune_run.inputs(cfg, name, config.precision(p), device)
results = {run: retune_train.run(c, data, device) for run, c in cfg.runs}
rule, stem = cfg.score, retune_run.report_stem(name)
shutil.rmtree(stem, ignore_errors=True)
stem.mkdir(parents=True)
for run, res in results.items():
    atomic_write_text(stem / f"{run}.svg", retune_plots.auroc_heatmap(
        res.matrix(), res.task_names, labels, f"{name}, {run}: test AUROC ({rule} score)"))
atomic_write_json(stem.with_name(name + ".details.json"), {
    "model": cfg.model, "dataset": name, "labels": labels, "rows": {"train": len(data.train_x), "test": len(data.test_x)},
    "prompts": {"positive": cfg.positive, "negative": cfg.negative}, "seconds": round(time.perf_counter() - start, 1),
    "runs": {run: res.report() for run, res in results.items()}})
metrics = retune_run.metrics(results)
atomic_write_json(stem.with_name(name + ".json"), metrics)
atomic_write_text(stem.with_name(name + ".csv"), retune_run.table_csv(metrics, rule))
atomic_write_text(stem.with_name(name + ".svg"), retune_plots.scenario_curves(
    retune_run.curves(results), RULES, f"RE-tune on {name} ({cfg.model})"))
print(json.dumps(metrics, indent=1))
