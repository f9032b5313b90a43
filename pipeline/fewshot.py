"""Seeded few-shot draws following CoOp/Dassl's rule (METHODS.md §2.2).

The result of `draw_fewshot` is a JSON-serialisable dict keyed by `pipeline.layout.draw_key(K, S)`
("shot_K-seed_S", CoOp's cache slug):

    {"shot_16-seed_1": {"shots": 16, "seed": 1, "train": [item ids], "val": [item ids]}, ...}

`train` holds, class by class in order of first appearance in the manifest, the K sampled item
ids in the order `random.sample` returned them (exactly the order of Dassl's few-shot list).
`val` holds either every val item id in manifest order ("full", SeMoBridge/Tip/APE) or the CoOp
few-shot val draw ("coop").
"""

import random
from collections import defaultdict

import pandas as pd

from pipeline.config import VAL_PROTOCOLS
from pipeline.layout import draw_key

_COOP_VAL_SHOTS = 4
_REQUIRED_COLUMNS = ("item", "label", "classname", "split")


def _positive_int_list(value, name: str) -> list[int]:
    ok = (
        isinstance(value, list)
        and len(value) > 0
        # bool is an int subclass; True must not pass as "1 shot"
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not ok:
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} must not contain duplicates, got {value!r}")
    return value


def _items_by_label(rows: pd.DataFrame) -> tuple[dict[int, list[int]], dict[int, str]]:
    """Group item ids by label, labels in order of first appearance, items in manifest order."""
    groups: dict[int, list[int]] = defaultdict(list)
    names: dict[int, str] = {}
    for item, label, classname in zip(rows["item"], rows["label"], rows["classname"]):
        groups[int(label)].append(int(item))
        names.setdefault(int(label), str(classname))
    return groups, names


def _sample_per_class(rng: random.Random, rows: pd.DataFrame, k: int, repeat: bool, split: str) -> list[int]:
    groups, names = _items_by_label(rows)
    drawn: list[int] = []
    for label, items in groups.items():
        if len(items) >= k:
            drawn.extend(rng.sample(items, k))
        elif repeat:
            drawn.extend(rng.choices(items, k=k))
        else:
            raise ValueError(
                f"class {names[label]!r} (label {label}) has {len(items)} {split} images, "
                f"fewer than shots={k}; pass repeat=True to sample with replacement"
            )
    return drawn


def draw_fewshot(
    manifest: pd.DataFrame,
    shots: list[int],
    seeds: list[int],
    val_protocol: str = "full",
    repeat: bool = False,
) -> dict:
    """Draw K train shots per class for every (K, seed) with CoOp's rule.

    For each pair: a `random.Random(seed)` stream (the same stream as `random.seed(seed)`), train
    rows grouped by label in first-appearance order, `sample(items, K)` per label. With
    val_protocol="coop" the val split is then drawn the same way with min(K, 4) per class,
    continuing the same stream (CoOp samples train first, then val, under one seed); "full" keeps
    every val item. A class with fewer than K images raises ValueError unless repeat=True, which
    samples that class with replacement (`choices`, Tip-Adapter/APE's `repeat=True` rule).
    The global `random` state is left untouched. See the module docstring for the result shape.
    """
    if not isinstance(manifest, pd.DataFrame):
        raise ValueError(f"manifest must be a pandas DataFrame, got {type(manifest).__name__}")
    missing = [c for c in _REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks required columns {missing}")
    shots = _positive_int_list(shots, "shots")
    seeds = _positive_int_list(seeds, "seeds")
    if val_protocol not in VAL_PROTOCOLS:
        raise ValueError(f"val_protocol must be one of {VAL_PROTOCOLS}, got {val_protocol!r}")
    train = manifest[manifest["split"] == "train"]
    val = manifest[manifest["split"] == "val"]
    if train.empty:
        raise ValueError("manifest has no rows with split == 'train'")

    draws = {}
    for k in shots:
        for seed in seeds:
            rng = random.Random(seed)
            train_ids = _sample_per_class(rng, train, k, repeat, "train")
            if val_protocol == "coop":
                val_ids = _sample_per_class(rng, val, min(k, _COOP_VAL_SHOTS), repeat, "val")
            else:
                val_ids = [int(i) for i in val["item"]]
            draws[draw_key(k, seed)] = {"shots": k, "seed": seed, "train": train_ids, "val": val_ids}
    return draws
