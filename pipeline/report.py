"""reports/summary.md and reports/plots/*.csv from reports/metrics.json and reports/fusion.json."""

import csv
import io

LABELS = {"zeroshot": "Zero-shot CLIP", "ncm": "NCM", "isoncm": "IsoCLIP-NCM", "tip": "Tip-Adapter",
          "ape": "APE", "semobridge": "SeMoBridge"}
WEIGHT_KEYS = {"tip": ("alpha",), "ape": ("alpha",), "semobridge": ("lambda1", "lambda2", "lambda3")}
ADAPT_KEYS = {"tip": ("beta",), "ape": ("beta", "gamma", "channels"),
              "semobridge": ("smoothness", "alpha", "beta", "gamma", "shots_per_class")}


def _shots(m: dict) -> list[int]:
    """Shot counts present in one (dataset, model) metrics entry."""
    return sorted({int(k.split("_")[1]) for cell in m.values() if isinstance(cell, dict)
                   for k in cell if k.startswith("shots_")})


def _methods(m: dict) -> list[str]:
    return [k for k in LABELS if k in m]


def plot_rows(m: dict) -> list[dict]:
    """Long-format rows (shots, method, acc, std) of one (dataset, model); zero-shot repeated per shot."""
    shots = _shots(m)
    rows = []
    for method in _methods(m):
        for k in shots:
            if method == "zeroshot":
                rows.append({"shots": k, "method": LABELS[method], "acc": m[method]["test_acc"], "std": 0.0})
            elif f"shots_{k}" in m[method]:
                cell = m[method][f"shots_{k}"]
                rows.append({"shots": k, "method": LABELS[method], "acc": cell["mean"], "std": cell["std"]})
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["shots", "method", "acc", "std"], lineterminator="\n")
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
                if method == "zeroshot":
                    cells = [f"{m[method]['test_acc']:.2f}"] * len(shots)
                else:
                    cells = [f"{m[method][f'shots_{k}']['mean']:.2f} ± {m[method][f'shots_{k}']['std']:.2f}"
                             if f"shots_{k}" in m[method] else "–" for k in shots]
                lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
            sp = m["spectrum"]
            lines += ["", f"Modality gap {m['modality_gap']:.3f}; W_txt σ in [{sp['w_txt_sigma_min']:.3g}, "
                      f"{sp['w_txt_sigma_max']:.3g}], {sp['w_txt_n_le_atol']} σ <= atol {sp['bridge_atol']}; "
                      f"Ψ = W_img W_txtᵀ has σ_max {sp['psi_sigma_max']:.3g}, rank {sp['psi_rank']}.", ""]
            lines += _weights_table(choices.get(dataset, {}).get(model, {}), max(shots) if shots else None)
    return "\n".join(lines) + "\n"


def _weights_table(by_method: dict, shots: int | None) -> list[str]:
    rows = []
    for method in (m for m in LABELS if m in by_method):
        for key, pick in sorted(by_method[method].items()):
            if not key.startswith(f"shot_{shots}-") or method not in WEIGHT_KEYS:
                continue
            weights = ", ".join(f"{w}={_fmt(pick['weights'][w])}" for w in WEIGHT_KEYS[method])
            knobs = ", ".join(f"{k}={_fmt(pick['adapt'][k])}" for k in ADAPT_KEYS[method] if k in pick.get("adapt", {}))
            rows.append(f"| {LABELS[method]} | {key} | {weights} | {knobs} | {pick['val_acc']:.2f} | "
                        f"{pick['test_acc']:.2f} |")
    if not rows:
        return []
    return [f"Chosen at {shots} shots (weights from `fuse`, sharpness from `adapt`):", "",
            "| method | draw | fusion weights | adapt knobs | val | test |", "|---|---|---|---|---|---|",
            *rows, ""]
