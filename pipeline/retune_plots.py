"""RE-tune's plots as SVG, drawn like `pipeline.plots` (object API, its style, ids and deterministic bytes): the
task x label AUROC heatmap (one row per evaluation after each task, one column per label, the value in each
cell; an undefined AUROC (None) is a grey "n/a" cell, never a colour that reads as a number) and the scenarios'
macro AUROC after each task side by side.
"""

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from pipeline.plots import STYLE, _svg, gid


def auroc_heatmap(matrix: Sequence[Sequence[float | None]], tasks: Sequence[str], labels: Sequence[str],
                  title: str) -> str:
    """SVG of `matrix` (len(tasks) x len(labels) AUROC values or None), e.g. `RetuneResult.matrix()` with
    `RetuneResult.task_names`; colours span 0.5 (chance) to 1, or down to the lowest value below chance."""
    values = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    if values.shape != (len(tasks), len(labels)) or not values.size:
        raise ValueError(f"auroc_heatmap({title!r}): matrix of shape {values.shape} should be "
                         f"{len(tasks)} tasks x {len(labels)} labels, not empty")
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(1.6 + 1.1 * len(labels), 1.2 + 0.45 * len(tasks)))
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
        low = min(0.5, float(np.nanmin(values))) if np.isfinite(values).any() else 0.5
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=1.0, aspect="auto")
        image.set_gid(gid("heatmap", "auroc"))
        for i in range(len(tasks)):
            for j in range(len(labels)):
                v = values[i, j]
                ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=7,
                        color="0.2" if np.isnan(v) or v > low + 0.6 * (1 - low) else "white", gid=gid("cell", f"{i}-{j}"))
        ax.set_xticks(range(len(labels)), list(labels), rotation=30, ha="right")
        ax.set_yticks(range(len(tasks)), list(tasks))
        ax.set(title=title, xlabel="label", ylabel="after task")
        fig.colorbar(image, ax=ax, label="test AUROC")
        return _svg(fig)


def scenario_curves(curves: Mapping[str, Mapping[str, Sequence[float | None]]], rules: Sequence[str],
                    title: str) -> str:
    """SVG of test macro AUROC after each task, one panel per rule: `curves` maps a run to {rule: its values
    after task 1..T}. A run with more than one task is a curve over the share of its tasks done (t / T, so runs
    of different lengths align); a one-evaluation run (zero-shot, joint) is a dashed level. Undefined values
    (None) are gaps."""
    if not curves:
        raise ValueError(f"scenario_curves({title!r}): no run to plot")
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.0 * len(rules) + 1.8, 3.4))
        axes = fig.subplots(1, len(rules), sharey=True, squeeze=False)[0]
        for ax, rule in zip(axes, rules):
            for k, (run, by_rule) in enumerate(curves.items()):
                y = np.array([np.nan if v is None else v for v in by_rule[rule]], dtype=float)
                colour = f"C{k % 10}"
                if len(y) == 1:
                    ax.axhline(y[0], linestyle="--", color=colour, label=run, gid=gid("level", f"{rule}-{run}"))
                else:
                    ax.plot(np.arange(1, len(y) + 1) / len(y), y, marker="o", markersize=3, color=colour, label=run,
                            gid=gid("curve", f"{rule}-{run}"))
            ax.set(title=f"score: {rule}", xlabel="share of tasks done", xlim=(0, 1.02))
        axes[0].set_ylabel("test macro AUROC")
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.suptitle(title)
        return _svg(fig)
