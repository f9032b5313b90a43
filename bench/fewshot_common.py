"""Shared loading for the few-shot benchmarks: one reproduced (model, dataset) and its params."""

import argparse
import json
from pathlib import Path

import yaml

from bench.common import ROOT
from pipeline import adapt, draws, features, runtime, views


def load(repo: Path, model: str, dataset: str) -> dict:
    """Features, draws, views and validated method settings of a repo after `dvc repro`."""
    card = json.loads((repo / "models" / model / "card.json").read_text())
    ds = json.loads((repo / "data" / dataset / "dataset.json").read_text())
    fdir = repo / "features" / model / dataset
    params = yaml.safe_load((repo / "params.yaml").read_text())
    return {
        "feats": features.load(fdir, card, ds),
        "fewshot": draws.load(repo / "fewshot" / dataset / "fewshot.json", ds["manifest_sha256"]),
        "views": views.load(fdir / "views.zarr", {"manifest_sha256": ds["manifest_sha256"]}),
        "methods": adapt.methods_section(params, card["arch"], dataset),
        "params": params, "card": card, "device": runtime.device(),
    }


def parser() -> argparse.ArgumentParser:
    """The arguments every few-shot benchmark takes: which reproduced repo, model, dataset and draw."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--key", default="shot_16-seed_1")
    return ap
