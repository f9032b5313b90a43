"""Shared loading for the few-shot benchmarks: one reproduced (model, dataset) and its params."""

import argparse
from pathlib import Path

import yaml

from bench.common import ROOT, cached
from pipeline import config, draws, features, layout, runtime, views
from pipeline.methods import REGISTRY


def load(repo: Path, model: str, dataset: str, methods=None) -> dict:
    """Features, draws, views and validated method settings (`config.Methods`) of a repo after `dvc repro`.

    `methods`: the names whose settings to parse (default: params' `methods.enabled`)."""
    card, ds, feats = cached(repo, model, dataset)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    if methods is not None:
        params = {**params, "methods": {**params.get("methods", {}), "enabled": list(methods)}}
    expect = {**{k: card[k] for k in features.MODEL_KEYS}, "manifest_sha256": ds["manifest_sha256"]}
    return {
        "feats": feats,
        "fewshot": draws.load(layout.fewshot_file(dataset, repo), ds["manifest_sha256"]),
        "views": views.load(layout.feature_dir(model, dataset, repo) / "views.zarr", expect),
        "methods": config.methods(params, card["arch"], dataset, REGISTRY),
        "params": params, "card": card, "device": runtime.device(),
    }


def parser(draw: bool = True) -> argparse.ArgumentParser:
    """The arguments every few-shot benchmark takes: which reproduced repo, model, dataset (and draw)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--dataset", default="shapes")
    if draw:
        ap.add_argument("--key", default=layout.draw_key(16, 1))
    return ap
