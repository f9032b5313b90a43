"""The `retune@<dataset>` stage's library (METHODS.md §15.3): the `retune` params block, the runs it expands to,
the cached inputs (image features joined to the manifest's label matrix by item, and the positive / negative
prompts encoded by the retune model), and the metrics written as DVC metrics.

Runs: each scenario of `retune.scenarios.run` once, data_incremental once per P of `scenarios.parts`
("data_incremental_5"). `retune.overrides.<dataset>.<block>` is merged over the blocks `scenarios`, `train`
and `prompts` (the task order and the templates name a dataset's labels).

The prompts are encoded here, not by a text-set stage: a text set is one template over a name list, encoded by
every model in `models` and by the teacher, while RE-tune needs 4 + 4 templates over a dataset's labels through
the retune model alone; 40 prompts cost milliseconds beside the stage's start-up.
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import extract, features, layout, models
from pipeline.config import ParamsError, merged_block, names, need
from pipeline.multilabel_data import label_matrix
from pipeline.retune import ADAPTERS, SCENARIOS, RetuneConfig, TrainConfig, label_columns, parse_config
from pipeline.retune_eval import RULES
from pipeline.retune_train import RetuneData, RetuneResult
from pipeline.store import open_store, read


@dataclass(frozen=True)
class Settings:
    """`retune` for one dataset."""
    model: str
    score: str                                    # the headline AUROC rule
    runs: tuple[tuple[str, RetuneConfig], ...]   # (run name, its config), in params order
    positive: tuple[str, ...]                     # templates, "{}" = the label name
    negative: tuple[str, ...]


def _templates(section: dict, key: str, where: str) -> tuple[str, ...]:
    value = need(section, key, list, where)
    if not value or not all(isinstance(t, str) and t.count("{}") == 1 for t in value):
        raise ParamsError(f"params.yaml: '{where}.{key}' = {value!r} should be a non-empty list of templates, "
                          "each with one '{}' for the label name")
    return tuple(value)


def _known(section: dict, where: str, known) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key '{where}.{unknown[0]}' (known: {sorted(known)})")


def settings(params: dict, dataset: str, labels) -> Settings:
    """Validated `retune` (with its overrides for `dataset`); `labels` are the dataset's, which the task order
    must name."""
    section = need(params, "retune", dict, "")
    _known(section, "retune", ("model", "datasets", "adapter", "score", "scenarios", "train", "prompts", "overrides"))
    adapter = need(section, "adapter", str, "retune", choices=ADAPTERS)
    score = need(section, "score", str, "retune", choices=RULES)
    sc, swhere = merged_block(section, "retune", "scenarios", dataset)
    _known(sc, swhere, ("run", "parts", "order"))
    scenarios = names(sc, "run", swhere, SCENARIOS)
    parts = need(sc, "parts", list, swhere) if "data_incremental" in scenarios else []
    if "data_incremental" in scenarios and (not parts or not all(isinstance(p, int) and not isinstance(p, bool)
                                                                 and p >= 1 for p in parts) or len(set(parts)) != len(parts)):
        raise ParamsError(f"params.yaml: '{swhere}.parts' = {parts!r} should be a non-empty list of distinct ints >= 1")
    order = sc.get("order")
    if order is not None:
        label_columns(order, labels, f"{swhere}.order")
        order = tuple(order)
    tr, twhere = merged_block(section, "retune", "train", dataset)
    _known(tr, twhere, [f.name for f in fields(TrainConfig)])
    train = parse_config(tr, twhere, labels).train
    runs = []
    for scenario in scenarios:
        for p in parts if scenario == "data_incremental" else [1]:
            name = f"{scenario}_{p}" if scenario == "data_incremental" else scenario
            runs.append((name, RetuneConfig(scenario, adapter, score, p, order, train)))
    pr, pwhere = merged_block(section, "retune", "prompts", dataset)
    _known(pr, pwhere, ("positive", "negative"))
    return Settings(need(section, "model", str, "retune"), score, tuple(runs), _templates(pr, "positive", pwhere),
                    _templates(pr, "negative", pwhere))


def prompts(templates, labels) -> list[str]:
    """Every label's prompts, label-major: (C x J) texts."""
    return [t.format(c) for c in labels for t in templates]


def inputs(cfg: Settings, dataset: str, precision: str, device: str, root: Path = layout.ROOT) -> RetuneData:
    """The retune model's cached image features of `dataset` (train and test rows, manifest order) with their
    label rows, and the projected prompt embeddings (C, J, D), encoded by that model now."""
    info = json.loads((layout.data_dir(dataset, root) / "dataset.json").read_text())
    labels = info["labels"]
    frame = pd.read_parquet(layout.data_dir(dataset, root) / "manifest.parquet")
    m = models.load(layout.model_dir(cfg.model, root), device)
    images = open_store(layout.feature_dir(cfg.model, dataset, root) / "images.zarr", features.expected(m.card, info))
    emb, split, item = (read(images, f"image/{k}") for k in ("emb", "split", "item"))
    Y = label_matrix(frame.set_index("item").loc[item], labels)
    encode = lambda templates: extract.project(extract.encode_prompts(m, prompts(templates, labels), device, precision),
                                               m.W_txt).cpu().numpy().reshape(len(labels), len(templates), -1)
    train, test = (split == layout.SPLIT_CODES[s] for s in ("train", "test"))
    return RetuneData(tuple(labels), emb[train], Y[train], emb[test], Y[test], encode(cfg.positive),
                      encode(cfg.negative))


def metrics(results: dict[str, RetuneResult]) -> dict:
    """Per run, the final test metrics: macro and weighted AUROC under both rules, macro F1, subset accuracy,
    and (incremental runs) the mean forgetting over the labels where it is defined. None marks an undefined
    value (a label without a positive or a negative in test), never a NaN."""
    out = {}
    for name, result in results.items():
        rep = result.report()
        row = {k: rep["final"][k] for k in ("auroc_macro", "auroc_weighted", "f1_macro", "subset_accuracy")}
        if len(rep["tasks"]) > 1:
            row["forgetting_mean"] = {r: _mean(rep["forgetting"][r].values()) for r in RULES}
        out[name] = row
    return out


def _mean(values) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def table_csv(metrics_: dict, rule: str) -> str:
    """The plot table: one row per run, macro AUROC under `rule` (blank where undefined), macro F1 and subset
    accuracy."""
    cell = lambda v: "" if v is None else f"{v:.4f}"
    return "run,auroc_macro,f1_macro,subset_accuracy\n" + "".join(
        f"{name},{cell(m['auroc_macro'][rule])},{cell(m['f1_macro'])},{cell(m['subset_accuracy'])}\n"
        for name, m in metrics_.items())


def report_stem(dataset: str, root: Path = layout.ROOT) -> Path:
    """Stem of the retune outputs; add `.json`, `.details.json`, `.csv`, `.svg`, or `/` for the heatmaps."""
    return layout.reports_dir(root) / "retune" / dataset


def curves(results: dict[str, RetuneResult]) -> dict:
    """Per run and rule, the test macro AUROC after each task (`retune_plots.scenario_curves`' input)."""
    return {name: {r: [e["auroc"][r]["macro"] for e in res.evaluations] for r in RULES} for name, res in results.items()}
