"""OTI / OVI stores: `features/<m>/<ds>/{oti,ovi}.zarr`, as `pipeline.inversion.write` fills them, and their reader.

    <method>/tokens (n, R, width)   the optimised pseudo-tokens (OTI: text token space; OVI: patch space)
    <method>/emb    (n, D)          the feature they produce (OTI: a text feature; OVI: an image feature)
    <method>/cos    (n, 2)          cosine to the target at the initialisation and at the end
    <method>/row    (n,)            OTI: the manifest row inverted; OVI: class * P + prompt of text.zarr
    <method>/label  (n,)            the row's class

Shards hold whole batches, and every row's tokens depend only on its own target and seed
(pipeline/inversion.py), so a resumed run writes the bytes an uninterrupted one would.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.features import Features, expected, provenance
from pipeline.layout import SPLIT_CODES
from pipeline.store import StoreError, open_store, read


@dataclass
class Inverted:
    """One complete OTI or OVI store, read back."""
    row: np.ndarray
    label: np.ndarray
    emb: np.ndarray
    cos: np.ndarray
    provenance: dict


def targets(method: str, feats: Features, splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, labels, target features) that `method` inverts: OTI the images of `splits`, OVI every
    (class, prompt) text feature."""
    if method == "oti":
        rows = np.flatnonzero(np.isin(feats.split, [SPLIT_CODES[s] for s in splits]))
        if len(rows) == 0:
            raise StoreError(f"no image rows in splits {list(splits)} to invert")
        return rows, feats.label[rows], feats.emb[rows]
    n_cls, n_prompts, dim = feats.text_emb.shape
    rows = np.arange(n_cls * n_prompts)
    return rows, rows // n_prompts, feats.text_emb.reshape(-1, dim)


def store_provenance(method: str, card: dict, dataset: dict, feats: Features, settings: dict) -> dict:
    """The model and dataset keys of the source features, plus what the inversion itself depends on (as JSON
    will read it back: a tuple would never equal the stored list, and a killed run would start over)."""
    return provenance(card, dataset, feats.provenance["precision"], method=method,
                      settings=json.loads(json.dumps(settings)))


def load(path: Path, method: str, card: dict, dataset: dict) -> Inverted:
    """A complete OTI/OVI store of this model and dataset (StoreError otherwise)."""
    expect = {**expected(card, dataset), "method": method}
    group = open_store(path, expect)
    get = lambda name: read(group, f"{method}/{name}")
    return Inverted(get("row"), get("label"), get("emb"), get("cos"), dict(group.attrs["provenance"]))

