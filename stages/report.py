"""report: reports/metrics.json + fusion.json -> reports/summary.md and, in reports/plots/, per dataset and model
`<dataset>-<model>.csv` (accuracy vs shots, one curve per method; `dvc plots show` renders it with
.dvc/plots/shots_log2.json), the same as an image `.svg`, and `.spectrum.svg` (W_txt / Psi singular values,
bridge atol, modality gap; read from logits/<model>/<dataset>/logits.zarr).

usage: python stages/report.py
"""

import json
import shutil

from common import args
from pipeline import layout, plots, report
from pipeline.io import atomic_write_text, replace_dir
from pipeline.store import open_store, read

args(__doc__)
out = layout.reports_dir()
metrics = json.loads((out / "metrics.json").read_text())
choices = json.loads((out / "fusion.json").read_text())
tmp = out / "plots.tmp"
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
for dataset, by_model in metrics.items():
    for model, m in by_model.items():
        rows, name = report.plot_rows(m), f"{dataset}-{model}"
        (tmp / f"{name}.csv").write_text(report.to_csv(rows))
        (tmp / f"{name}.svg").write_text(plots.accuracy_vs_shots(rows, f"{dataset} / {model}"))
        logits = open_store(layout.logits_store(model, dataset))
        (tmp / f"{name}.spectrum.svg").write_text(plots.spectrum(
            read(logits, "spectrum/W_txt"), read(logits, "spectrum/psi"), logits.attrs.get("bridge", {}).get("atol"),
            logits.attrs["modality_gap"], f"{dataset} / {model}"))
replace_dir(tmp, out / "plots")
atomic_write_text(out / "summary.md", report.summary(metrics, choices))
