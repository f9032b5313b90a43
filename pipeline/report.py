"""reports/summary.md and reports/plots/*.csv from reports/metrics.json and reports/fusion.json.

Method names, labels, fusion weights and the knobs shown come from the registry (`pipeline.methods`).
"""

import csv
import io

from pipeline.methods import REGISTRY


def _shots(m: dict) -> list[int]:
    """Shot counts present in one (dataset, model) metrics entry."""
    return sorted({int(k.split("_")[1]) for cell in m.values() if isinstance(cell, dict)
                   for k in cell if k.startswith("shots_")})


def _methods(m: dict) -> list[str]:
    return [k for k in REGISTRY if k in m]


def plot_rows(m: dict) -> list[dict]:
    """Long-format rows (shots, method, acc, std) of one (dataset, model); zero-shot repeated per shot."""
    shots = _shots(m)
    rows = []
    for method in _methods(m):
        for k in shots:
            label = REGISTRY[method].label
            if not REGISTRY[method].per_draw:
                rows.append({"shots": k, "method": label, "acc": m[method]["test_acc"], "std": 0.0})
            elif f"shots_{k}" in m[method]:
                cell = m[method][f"shots_{k}"]
                rows.append({"shots": k, "method": label, "acc": cell["mean"], "std": cell["std"]})
    return rows


PLOT_FIELDS = ("shots", "method", "acc", "std")
PER_SEED_FIELDS = ("dataset", "model", "method", "shots", "seed", "val_acc", "test_acc")


def to_csv(rows: list[dict], fields=PLOT_FIELDS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def summary(metrics: dict, choices: dict) -> str:
    """Markdown: per dataset and model, test top-1 (mean ± std over seeds) per method and shot count,
    the spectrum/gap line, and the weights chosen at the largest shot count."""
    lines = ["# Results", "", f"Fusion mode: `{choices.get('mode', '?')}`. Top-1 test accuracy (%), mean ± std "
             "over seeds; weights chosen on val only.", ""]
    for dataset, by_model in metrics.items():
        for model, m in by_model.items():
            shots = _shots(m)
            lines += [f"## {dataset} / {model}", "",
                      "| method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
                      "|---|" + "---|" * len(shots)]
            for method in _methods(m):
                if not REGISTRY[method].per_draw:
                    cells = [f"{m[method]['test_acc']:.2f}"] * len(shots)
                else:
                    cells = [f"{m[method][f'shots_{k}']['mean']:.2f} ± {m[method][f'shots_{k}']['std']:.2f}"
                             if f"shots_{k}" in m[method] else "–" for k in shots]
                lines.append(f"| {REGISTRY[method].label} | " + " | ".join(cells) + " |")
            sp = m["spectrum"]
            cut = f", {sp['w_txt_n_le_atol']} σ <= atol {sp['bridge_atol']}" if "bridge_atol" in sp else ""
            lines += ["", f"Modality gap {m['modality_gap']:.3f}; W_txt σ in [{sp['w_txt_sigma_min']:.3g}, "
                      f"{sp['w_txt_sigma_max']:.3g}]{cut}; "
                      f"Ψ = W_img W_txtᵀ has σ_max {sp['psi_sigma_max']:.3g}, rank {sp['psi_rank']}.", ""]
            lines += _weights_table(choices.get(dataset, {}).get(model, {}), max(shots) if shots else None)
    return "\n".join(lines) + "\n"


def _weights_table(by_method: dict, shots: int | None) -> list[str]:
    rows = []
    for name in (m for m in REGISTRY if m in by_method):
        method = REGISTRY[name]
        for key, pick in sorted(by_method[name].items()):
            if not key.startswith(f"shot_{shots}-") or not method.weights:
                continue
            weights = ", ".join(f"{w}={_fmt(pick['weights'][w])}" for w in method.weights)
            knobs = ", ".join(f"{k}={_fmt(pick['adapt'][k])}" for k in method.knobs if k in pick.get("adapt", {}))
            rows.append(f"| {method.label} | {key} | {weights} | {knobs} | {pick['val_acc']:.2f} | "
                        f"{pick['test_acc']:.2f} |")
    if not rows:
        return []
    return [f"Chosen at {shots} shots (weights from `fuse`, sharpness from `adapt`):", "",
            "| method | draw | fusion weights | adapt knobs | val | test |", "|---|---|---|---|---|---|",
            *rows, ""]
