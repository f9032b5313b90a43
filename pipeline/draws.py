"""Few-shot draws on disk: fewshot.json, and draws -> feature rows.

fewshot.json = {"manifest_sha256": ..., "dataset": ..., "shots": [...], "seeds": [...], "val": "full"|"coop",
"repeat": bool, "draws": `pipeline.fewshot.draw_fewshot` output}. The manifest digest ties the draws to the
exact manifest they were drawn from; `load` refuses draws made on another manifest.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Fewshot
from pipeline.fewshot import draw_fewshot
from pipeline.layout import draw_key


class DrawsError(ValueError):
    """fewshot.json is missing, malformed, or was drawn on another manifest than the features."""


def make(manifest: pd.DataFrame, dataset: dict, cfg: Fewshot) -> dict:
    """Every (shots, seed) draw of `cfg` (CoOp's rule), with the manifest's digest."""
    if not (manifest["split"] == "val").any():
        raise DrawsError(f"dataset '{dataset['name']}' has no val split to choose weights on")
    try:
        draws = draw_fewshot(manifest, list(cfg.shots), list(cfg.seeds), cfg.val, cfg.repeat)
    except ValueError as exc:
        raise DrawsError(f"dataset '{dataset['name']}': {exc} (params.yaml 'fewshot.repeat')") from None
    return {"dataset": dataset["name"], "manifest_sha256": dataset["manifest_sha256"], "shots": list(cfg.shots),
            "seeds": list(cfg.seeds), "val": cfg.val, "repeat": cfg.repeat, "draws": draws}


def load(path: Path, manifest_sha256: str) -> dict:
    """Read fewshot.json, refusing draws made on a manifest other than `manifest_sha256`."""
    path = Path(path)
    if not path.is_file():
        raise DrawsError(f"few-shot draws {path} do not exist (run the `fewshot` stage)")
    fewshot = json.loads(path.read_text())
    found = fewshot.get("manifest_sha256")
    if found != manifest_sha256:
        raise DrawsError(f"{path} was drawn on manifest {found!r} but the features come from manifest "
                         f"{manifest_sha256!r}; re-run `dvc repro` so draws and features agree")
    expected = {draw_key(k, s) for k in fewshot["shots"] for s in fewshot["seeds"]}
    if set(fewshot["draws"]) != expected:
        raise DrawsError(f"{path}: draws {sorted(fewshot['draws'])} do not match shots x seeds")
    return fewshot


def train_items(fewshot: dict) -> np.ndarray:
    """Sorted ids of every train image some draw uses (the images that need augmented views)."""
    return np.unique(np.concatenate([np.asarray(d["train"], np.int64) for d in fewshot["draws"].values()]))


def rows_of(items: np.ndarray, wanted) -> np.ndarray:
    """Positions in `items` (feature-store row ids) of each id in `wanted`; every id must be present."""
    order = np.argsort(items)
    wanted = np.asarray(wanted, np.int64)
    pos = np.searchsorted(items, wanted, sorter=order).clip(0, len(items) - 1)
    rows = order[pos]
    missing = wanted[items[rows] != wanted]
    if missing.size:
        raise DrawsError(f"{missing.size} drawn item ids are not in the store (first {missing[:5].tolist()}); "
                         f"draws and store disagree")
    return rows


def class_major(rows: np.ndarray, labels: np.ndarray, num_classes: int, shots: int) -> np.ndarray:
    """(C, K) rows of one draw, class c in row c, from its flat row list and the rows' labels."""
    out = np.empty((num_classes, shots), np.int64)
    for c in range(num_classes):
        mine = rows[labels == c]
        if len(mine) != shots:
            raise DrawsError(f"class {c} has {len(mine)} drawn shots, expected {shots}")
        out[c] = mine
    return out
