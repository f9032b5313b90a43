"""report: reports/metrics.json + fusion.json -> reports/summary.md and reports/plots/<dataset>-<model>.csv
(accuracy vs shots, one curve per method; rendered by `dvc plots show` with .dvc/plots/shots_log2.json).

usage: python stages/report.py
"""

import json
import shutil

from common import args
from pipeline import layout, report
from pipeline.io import atomic_write_text, replace_dir

args(__doc__)
out = layout.reports_dir()
metrics = json.loads((out / "metrics.json").read_text())
choices = json.loads((out / "fusion.json").read_text())
tmp = out / "plots.tmp"
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
for dataset, by_model in metrics.items():
    for model, m in by_model.items():
        (tmp / f"{dataset}-{model}.csv").write_text(report.to_csv(report.plot_rows(m)))
replace_dir(tmp, out / "plots")
atomic_write_text(out / "summary.md", report.summary(metrics, choices))
