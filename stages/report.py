"""report: reports/metrics.json -> reports/summary.md (a table per dataset).

usage: python stages/report.py
"""

import json

from common import ROOT
from pipeline.io import atomic_write_text

metrics = json.loads((ROOT / "reports" / "metrics.json").read_text())
lines = ["# Results", ""]
for dataset, by_model in metrics.items():
    lines += [f"## {dataset}", "", "| model | zero-shot top-1 (%) | modality gap |", "|---|---|---|"]
    for model, m in by_model.items():
        lines.append(f"| {model} | {m['zeroshot']['test_acc']:.2f} | {m['modality_gap']:.3f} |")
    lines.append("")
atomic_write_text(ROOT / "reports" / "summary.md", "\n".join(lines))
