"""gcd@{dataset}: generalized category discovery on cached concept similarities (SpectralGCD and its baselines,
pipeline/gcd_run.py) -> reports/gcd/<dataset>.json (metrics: All / Old / New per method, transductive and
inductive, mean and std over seeds), .details.json (per seed, v2b, the kept concepts, loss curves), .csv and
.svg (the plot).

usage: python stages/gcd.py <dataset>
Student and teacher from `distill`; the protocol, dictionary, filter and training from `gcd`.
"""

import json
import time

from common import args, stage_params
from pipeline import config, gcd_config, gcd_inputs, gcd_run, layout, plots, runtime
from pipeline.io import atomic_write_json, atomic_write_text

(dataset_name,) = args(__doc__, "dataset")
p = stage_params(f"gcd@{dataset_name}")
cfg = gcd_config.config(p, dataset_name)
student, teacher = config.distill(p)
inputs = gcd_inputs.load(student, teacher, dataset_name, cfg)
start = time.perf_counter()
result = gcd_run.run(inputs, cfg, runtime.device())
out = layout.gcd_report(dataset_name)
out.parent.mkdir(parents=True, exist_ok=True)
atomic_write_json(out.with_name(out.name + ".details.json"),
                  {"student": student, "teacher": teacher, "seconds": round(time.perf_counter() - start, 1), **result})
metrics = gcd_run.metrics(result)
atomic_write_json(out.with_name(out.name + ".json"), metrics)
table = {m: metrics[m]["transductive"] for m in gcd_run.METHODS}
atomic_write_text(out.with_name(out.name + ".csv"), "method,all,old,new\n" + "".join(
    f"{m},{t.get('all', '')},{t.get('old', '')},{t.get('new', '')}\n" for m, t in table.items()))
atomic_write_text(out.with_name(out.name + ".svg"), plots.gcd_accuracy(
    table, f"Category discovery on {dataset_name}, transductive ({student}, teacher {teacher})"))
print(json.dumps(metrics, indent=1))
