"""Static plot images (SVG) that `dvc plots show` / `diff` put side by side and any viewer opens offline:
accuracy vs shots per method, retrieval mAP per variant, and the W_txt / Psi singular spectra.

Drawn with matplotlib's object API (no pyplot, no GUI backend). The same data gives the same bytes: a fixed
SVG id salt, no date in the metadata, and matplotlib's own bundled fonts for the layout, so DVC sees a
change only when a number moved. Labels stay SVG text (`svg.fonttype: none`), so the files can be searched.
"""

import io
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

FLOOR = 1e-4   # spectrum plot: the y axis stops this far below the largest singular value
STYLE = {"svg.hashsalt": "clipcache", "svg.fonttype": "none", "font.size": 9, "axes.grid": True,
         "grid.alpha": 0.3, "legend.fontsize": 8}


def gid(kind: str, name: str) -> str:
    """The SVG id of one drawn series, e.g. gid("bar", "i2i") -> "bar-i2i" (spaces and non-ASCII -> "_")."""
    return f"{kind}-" + "".join(c if (c.isascii() and c.isalnum()) or c in "_-." else "_" for c in name)


def _svg(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buf.getvalue().decode("utf-8")


def accuracy_vs_shots(rows: Sequence[Mapping], title: str) -> str:
    """One error-bar curve per method (mean test accuracy, std over seeds) against shots on a log2 axis;
    `rows` are `pipeline.report.plot_rows`'s (shots, method, acc, std)."""
    if not rows:
        raise ValueError(f"accuracy_vs_shots({title!r}): no rows to plot")
    shots = sorted({r["shots"] for r in rows})
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        for method in dict.fromkeys(r["method"] for r in rows):
            k, acc, std = zip(*sorted((r["shots"], r["acc"], r["std"]) for r in rows if r["method"] == method))
            bars = ax.errorbar(k, acc, yerr=std, marker="o", markersize=3, capsize=3, label=method)
            bars.lines[0].set_gid(gid("curve", method))
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(title=title, xlabel="shots per class (log2)", ylabel="top-1 test accuracy (%)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        return _svg(fig)


def retrieval_map(variants: Mapping[str, Mapping], title: str) -> str:
    """Horizontal bars of mAP (%) per retrieval variant, in the given order; `variants` maps a variant to its
    metrics (retrieve's per-variant entries). Variants without a full-ranking mAP (FAISS's top-k route) are
    named under the axis instead of drawn."""
    shown = {v: m["mAP"] for v, m in variants.items() if "mAP" in m}
    if not shown:
        raise ValueError(f"retrieval_map({title!r}): no variant has an mAP to plot")
    missing = [v for v in variants if v not in shown]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.4, 0.8 + 0.3 * len(shown)))
        ax = fig.add_subplot()
        bars = ax.barh(list(shown), list(shown.values()))
        for bar, variant in zip(bars, shown):
            bar.set_gid(gid("bar", variant))
        ax.bar_label(bars, fmt="%.1f", padding=2)
        ax.invert_yaxis()
        ax.set(title=title, xlim=(0, 100), xlabel="mAP (%)" + (
            f"; no full-ranking mAP (top-k route): {', '.join(missing)}" if missing else ""))
        return _svg(fig)


def grouped_bars(table: Mapping[str, Mapping], parts: Sequence[str], xlabel: str, title: str) -> str:
    """Grouped horizontal bars of accuracy (%) per method and part with std error bars; `table` maps a method
    to {part: .., part + "_std": ..} (a part a method lacks is drawn at 0)."""
    if not table:
        raise ValueError(f"grouped_bars({title!r}): no method to plot")
    height = 0.81 / len(parts)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.4, 1.0 + 0.6 * len(table)))
        ax = fig.add_subplot()
        for j, part in enumerate(parts):
            y = [i + (j - (len(parts) - 1) / 2) * height for i in range(len(table))]
            vals = [m.get(part, 0.0) for m in table.values()]
            bars = ax.barh(y, vals, height, xerr=[m.get(f"{part}_std", 0.0) for m in table.values()], capsize=2,
                           label=part)
            for bar, method in zip(bars, table):
                bar.set_gid(gid("bar", f"{method}-{part}"))
        ax.set_yticks(range(len(table)), list(table))
        ax.invert_yaxis()
        ax.set(title=title, xlim=(0, 100), xlabel=xlabel)
        ax.legend(loc="lower right")
        return _svg(fig)


def gcd_accuracy(table: Mapping[str, Mapping], title: str) -> str:
    """All / Old / New clustering accuracy per method (`grouped_bars`)."""
    return grouped_bars(table, ("all", "old", "new"), "clustering accuracy (%), Hungarian over all rows (v2)", title)


def base_to_novel(metrics: Mapping[str, Mapping], title: str) -> str:
    """Base / novel / HM test accuracy per method at the largest shot count `pipeline.prompt_run.summarise`
    reports (zero-shot has no shots)."""
    table = {}
    for method, result in metrics.items():
        if method == "zeroshot":
            table["zero-shot"] = dict(result)
            continue
        shots = max(result, key=lambda k: int(k.split("_")[1]))
        table[f"{method} ({shots.replace('_', ' ')})"] = {
            **{part: v["mean"] for part, v in result[shots].items()},
            **{f"{part}_std": v["std"] for part, v in result[shots].items()}}
    return grouped_bars(table, ("base", "novel", "hm"), "test accuracy (%); HM = 2BN / (B + N)", title)


def spectrum(s_txt: np.ndarray, s_psi: np.ndarray, atol: float | None, gap: float, title: str) -> str:
    """Singular values (descending, log axis) of W_txt and of Psi = W_img W_txt^T, the bridge's pinv cut-off
    `atol` as a dashed line (when the bridge runs), and the modality gap in the title. Values below FLOOR x the
largest (Psi's numerical zeros past its rank) fall off the bottom of the axis."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        for key, label, s in (("W_txt", "W_txt", s_txt), ("psi", "Ψ = W_img W_txtᵀ", s_psi)):
            s = np.sort(np.asarray(s, dtype=np.float64))[::-1]
            ax.plot(np.arange(1, len(s) + 1), s, marker=".", markersize=3, label=label, gid=gid("sigma", key))
        if atol is not None:
            ax.axhline(atol, linestyle="--", color="0.4", label=f"bridge atol {atol:g}", gid="atol")
        ax.set_yscale("log", nonpositive="mask")
        top = max(float(np.max(s_txt)), float(np.max(s_psi)))
        ax.set_ylim(min(FLOOR * top, atol / 10 if atol else FLOOR * top), 2 * top)  # numerical zeros: off the axis
        ax.set(title=f"{title}: modality gap {gap:.3f}", xlabel="index i (descending)",
               ylabel="singular value σ_i")
        ax.legend()
        return _svg(fig)
