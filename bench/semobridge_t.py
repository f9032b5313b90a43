"""SeMoBridge-T's training cost on a EuroSAT-sized 16-shot problem: real EuroSAT images, only the rows it needs.

usage: python -m bench.semobridge_t [--models demo vit_b32_random] [--steps 5000] [--val-per-class 20]
Per zoo model (loaded from models/<name> when the repo has it, else a `random` entry is built in a temp
dir): the `--key` draw of params' `fewshot` rule on the real EuroSAT manifest, its shots, the views its
`extra_shots` mode reads (EuroSAT 16 shots: hflip) and `--val-per-class` val images per class, extracted
with the library's own functions (`extract_images`, `extract_text`, `extract_views`) into a temp dir
(all 27,000 images would take an hour with ViT-B/32 on one CPU core, at ~7.5 images/s). The real val rows are tiled to
the val split's size (5,400 rows with `fewshot.val: full`), since every step scores the whole val split
and its cost depends only on shapes; tiling a class-balanced subset leaves its accuracy, hence the
kept step, unchanged. Then SeMoBridge-T's `fit`, as `adapt` runs it, with `--steps` steps (warm-up
as params). Reports the training seconds per (dataset, shots, seed) run, per 1,000 steps, the whole
fit (training + the val search after it), and how much of a step the val scoring alone takes.
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from bench.common import ROOT, write_result
from bench.context import context
from pipeline import config, datasets, demo, draws, extract, features, layout, models, runtime, views
from pipeline.adapt import Draw, Inputs
from pipeline.methods import REGISTRY
from pipeline.methods.semobridge_t import select_hits

DATASET = "eurosat"
METHOD = REGISTRY["semobridge_t"]
PARAMS_KEYS = ["extract.precision", "text", "fewshot", "views", "methods", f"data.{DATASET}"]


def load_model(params: dict, name: str, tmp: Path) -> models.LoadedModel:
    """models/<name> when reproduced; otherwise build a zoo entry that needs no training (random, pretrained)."""
    if (layout.model_dir(name) / "card.json").is_file():
        return models.load(layout.model_dir(name))
    entry = config.model(params, name, demo.DemoRecipe)
    if entry.source == "demo":
        raise SystemExit(f"models/{name} is absent: run `dvc repro model@{name}` first")
    models.save(models.build(entry), entry, tmp / "model")
    return models.load(tmp / "model")


def val_subset(manifest: pd.DataFrame, items, per_class: int) -> np.ndarray:
    """The first `per_class` val items of each class (by item id): class-balanced, so tiling keeps accuracy."""
    val = manifest[manifest["item"].isin(items)].sort_values("item")
    return val.groupby("label").head(per_class)["item"].to_numpy(np.int64)


def n_views(mode, recipe: config.ViewRecipe) -> int:
    """Views per shot the `extra_shots` mode reads (n, or all of them); none and hflip read none, but the
    store holds >= 1 beside the flipped view that hflip reads."""
    return mode if isinstance(mode, int) else recipe.n_views if mode == "views" else 1


def problem(params: dict, model: models.LoadedModel, key: str, per_class: int, tmp: Path, recipe_views):
    """(Inputs, Draw with the val rows tiled to the split's size, extraction seconds, real val rows)."""
    ds = config.dataset(params, DATASET, datasets.COOP)
    root = ROOT / ds.root
    manifest = datasets.coop_manifest(ds.coop_name, root)
    dataset = {"name": DATASET, "template": ds.template or datasets.COOP[ds.coop_name].template,
               "classnames": datasets.classnames(manifest), "manifest_sha256": datasets.manifest_digest(manifest)}
    shots, seed = layout.parse_draw_key(key)
    rule = dataclasses.replace(config.fewshot(params), shots=(shots,), seeds=(seed,))
    spec = draws.make(manifest, dataset, rule)["draws"][key]
    val = val_subset(manifest, spec["val"], per_class)
    rows = manifest[manifest["item"].isin(np.concatenate([spec["train"], val]))].reset_index(drop=True)
    precision, knobs = config.precision(params), runtime.settings(ROOT)
    prov = features.provenance(model.card, dataset, precision)
    fdir, stage = tmp / "features", tmp / "staging"
    start = time.perf_counter()
    extract.extract_images(model, rows, root, fdir / "images.zarr", stage / "images.zarr", prov,
                           batch_size=knobs["batch_size"], workers=knobs["workers"], progress=False)
    templates = extract.expand_templates(config.templates(params), dataset["template"])
    extract.extract_text(model, dataset["classnames"], templates, fdir / "text.zarr", stage / "text.zarr",
                         features.provenance(model.card, dataset, precision, templates=templates))
    views.extract_views(model, manifest, np.unique(spec["train"]), root, fdir / "views.zarr", stage / "views.zarr",
                        prov, recipe_views, batch_size=knobs["batch_size"], workers=knobs["workers"], progress=False)
    seconds = time.perf_counter() - start
    feats = features.load(fdir, model.card, dataset)
    inputs = Inputs(feats, views.load(fdir / "views.zarr", prov))
    draw = Draw(inputs, key, {**spec, "val": val})
    tiled = torch.arange(len(spec["val"])) % len(val)
    draw.q_val, draw.y_val = draw.q_val[tiled], draw.y_val[tiled]
    return inputs, draw, seconds, len(val)


def scoring_seconds(inputs: Inputs, draw: Draw, state, cfg, repeats: int = 20) -> float:
    """Seconds of one step's val scoring alone (`select_hits` at the closed-form bridge), mean of `repeats`."""
    (P0, W_txt, s), _ = state
    shots = METHOD.shots(inputs, draw, cfg)
    bias, select = torch.zeros(shots.shape[0], P0.shape[1]), torch.tensor([cfg.select])
    start = time.perf_counter()
    for _ in range(repeats):
        select_hits(draw, shots, inputs.protos, (P0, W_txt, s), bias, select)
    return (time.perf_counter() - start) / repeats


def bench_model(params: dict, name: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(params, name, Path(tmp))
        methods = {**params["methods"], "enabled": [METHOD.name]}
        cfg = config.methods({**params, "methods": methods}, model.card["arch"], DATASET, REGISTRY).settings[METHOD.name]
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, steps=args.steps))
        mode = cfg.extra_shots.get(None, cfg.extra_shots.get(layout.parse_draw_key(args.key)[0]))
        recipe_views = config.views(params)
        recipe_views = dataclasses.replace(recipe_views, n_views=n_views(mode, recipe_views))
        inputs, draw, extract_s, real_val = problem(params, model, args.key, args.val_per_class, Path(tmp), recipe_views)
    state = METHOD.setup(inputs, cfg)
    start = time.perf_counter()
    fit = METHOD.fit(inputs, draw, state, cfg)
    fit_s = time.perf_counter() - start
    train_s, score_s = fit.choice["train_seconds"], scoring_seconds(inputs, draw, state, cfg)
    return {"arch": model.card["arch"], "classes": inputs.num_classes, "shots_per_class": fit.choice["shots_per_class"],
            "extra_shots": mode, "D": int(inputs.protos.shape[1]), "d_t": int(inputs.feats.W_txt.shape[0]),
            "val_rows_scored": len(draw.y_val), "val_rows_real": real_val, "steps": args.steps,
            "warmup": cfg.recipe.warmup, "extract_s": round(extract_s, 2), "train_s": train_s,
            "train_s_per_1000_steps": round(1000 * train_s / max(args.steps, 1), 3), "fit_s": round(fit_s, 3),
            "val_scoring_ms_per_step": round(1000 * score_s, 3),
            "val_scoring_share": round(score_s * (args.steps + 1) / train_s, 3) if train_s else None,
            "best_step": fit.choice["best_step"], "select_val_acc": fit.choice["select_val_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["demo", "vit_b32_random"], help="model_zoo entries")
    ap.add_argument("--key", default=layout.draw_key(16, 1), help="the draw: shot_<K>-seed_<S>")
    ap.add_argument("--steps", type=int, default=5000, help="training steps (the reference's 5,000 by default)")
    ap.add_argument("--val-per-class", type=int, default=20, help="real val images per class, tiled to the split")
    args = ap.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    per_model = {name: bench_model(params, name, args) for name in args.models}
    write_result(f"semobridge_t-{DATASET}", {
        "setup": {"dataset": DATASET, "key": args.key, "steps": args.steps, "device": "cpu",
                  "threads": torch.get_num_threads(), "reference": "27 s per run, 5,000 steps, one GPU"},
        "per_model": per_model,
    }, context("bench.semobridge_t", ROOT / "params.yaml", PARAMS_KEYS + [f"model_zoo.{m}" for m in args.models],
               {"dataset": DATASET, "models": args.models}))


if __name__ == "__main__":
    main()
