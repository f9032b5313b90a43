"""Provenance of feature stores and the validated view downstream stages read."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.store import StoreError, check_provenance, open_store, read

MODEL_KEYS = ("arch", "source", "tag", "checkpoint_sha256", "open_clip_version", "quick_gelu", "preprocess")


def provenance(card: dict, dataset: dict, precision: str, **extra) -> dict:
    """Everything that determines a store's content (DESIGN.md §5)."""
    return {**{k: card[k] for k in MODEL_KEYS}, "precision": precision, "dataset": dataset["name"],
            "manifest_sha256": dataset["manifest_sha256"], "project_version": __version__, **extra}


@dataclass
class Features:
    """Cached arrays of one (model, dataset): rows follow the manifest."""
    pre: np.ndarray          # (N, d_v) image pre-projection
    emb: np.ndarray          # (N, D) projected, un-normalised
    label: np.ndarray
    split: np.ndarray        # 0 train, 1 val, 2 test
    item: np.ndarray
    text_pre: np.ndarray     # (C, P, d_t)
    text_emb: np.ndarray     # (C, P, D)
    W_img: np.ndarray
    b_img: np.ndarray | None
    W_txt: np.ndarray
    logit_scale: float
    provenance: dict


def nonfinite_rows(name: str, array: np.ndarray) -> str | None:
    """"'name' has K rows with NaN or inf (first row R)", or None when every row is finite."""
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return f"'{name}' has {int(bad.sum())} rows with NaN or inf (first row {int(bad.argmax())})" if bad.any() else None


def _finite(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    if why := nonfinite_rows(name, array):
        raise StoreError(f"{path}: {why}")
    return array


def expected(card: dict, dataset: dict) -> dict:
    """The provenance keys a store of this model and dataset must carry (`open_store(path, expect)`)."""
    return {**{k: card[k] for k in MODEL_KEYS}, "dataset": dataset["name"], "manifest_sha256": dataset["manifest_sha256"]}


def load(feature_dir: Path, card: dict, dataset: dict) -> Features:
    """Read images.zarr + text.zarr, refusing incomplete stores or ones from another model/dataset."""
    expect = expected(card, dataset)
    images = open_store(feature_dir / "images.zarr", expect)
    text = open_store(feature_dir / "text.zarr", expect)
    check_provenance(feature_dir / "text.zarr", dict(text.attrs["provenance"]),
                     {"precision": images.attrs["provenance"]["precision"]})

    def finite(group, name):
        return _finite(feature_dir, name, read(group, name))

    return Features(
        pre=finite(images, "image/pre"), emb=finite(images, "image/emb"),
        label=read(images, "image/label"), split=read(images, "image/split"), item=read(images, "image/item"),
        text_pre=finite(text, "text/pre"), text_emb=finite(text, "text/emb"),
        W_img=read(images, "model/W_img"), W_txt=read(images, "model/W_txt"),
        b_img=read(images, "model/b_img") if "model/b_img" in images else None,
        logit_scale=float(read(images, "model/logit_scale")[0]), provenance=dict(images.attrs["provenance"]))
