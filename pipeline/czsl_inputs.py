"""The cached arrays of one (model, dataset) arranged for compositional zero-shot (`pipeline.czsl_sam.run`).

The dataset's classes must be (attribute, object) pairs (dataset.json `primitives`, written by `prepare` for
the demo `scenes`); its CZSL split (which pairs are unseen, per `czsl.splits.<dataset>`) is drawn by
`czsl_data.from_classes`. Images come from images.zarr (image/tokens: CLS + patches), compositions from the
class prompts of text.zarr, primitives from its attr/ and obj/ prompts.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import czsl_data
from pipeline.config import ParamsError, need
from pipeline.czsl_methods import CZSLInputs
from pipeline.features import expected
from pipeline.layout import SPLIT_CODES
from pipeline.methods.cosine import class_prototypes
from pipeline.store import StoreError, open_store, read


def split_settings(params: dict, dataset: str) -> tuple[int, int]:
    """(unseen, seed) of `czsl.splits.<dataset>`."""
    table = need(need(params, "czsl", dict, ""), "splits", dict, "czsl")
    if dataset not in table or not isinstance(table[dataset], dict):
        raise ParamsError(f"params.yaml: 'czsl.splits.{dataset}' should be a mapping {{unseen, seed}} "
                          f"(known: {sorted(table)})")
    where = f"czsl.splits.{dataset}"
    return need(table[dataset], "unseen", int, where, minimum=1), need(table[dataset], "seed", int, where, minimum=0)


def load(feature_dir: Path, card: dict, dataset: dict, manifest: pd.DataFrame, unseen: int, seed: int
         ) -> tuple[CZSLInputs, czsl_data.CZSLData]:
    """CZSLInputs over the images the CZSL split keeps, and the split itself."""
    if "primitives" not in dataset:
        raise ValueError(f"dataset '{dataset['name']}' has no (attribute, object) classes (no `primitives` in its "
                         f"dataset.json): compositional zero-shot needs a dataset like the demo `scenes`")
    expect = expected(card, dataset)
    images, text = open_store(feature_dir / "images.zarr", expect), open_store(feature_dir / "text.zarr", expect)
    if "image/tokens" not in images:
        raise StoreError(f"{feature_dir / 'images.zarr'} has no image/tokens: add `{dataset['name']}: fp16` to "
                         f"extract.tokens in params.yaml")
    data = czsl_data.from_classes(dataset["primitives"], manifest, unseen, seed)
    row_of = {int(item): i for i, item in enumerate(read(images, "image/item"))}
    rows = np.array([row_of[int(item)] for item in data.manifest["item"]])
    tokens = read(images, "image/tokens")[rows].astype(np.float32)
    class_of = {name: c for c, name in enumerate(dataset["classnames"])}
    comp = class_prototypes(torch.from_numpy(read(text, "text/emb")))[[class_of[" ".join(p)] for p in data.pairs]]
    protocols = {s: data.protocol(s) for s in ("val", "test")}
    inputs = CZSLInputs(tokens=tokens, comp_text=comp, attr_text=read(text, "attr/emb"), obj_text=read(text, "obj/emb"),
                        pair_ids=protocols["test"].pair_ids, labels=data.manifest["label"].to_numpy(),
                        split=data.manifest["split"].map(SPLIT_CODES).to_numpy(), seen=protocols["test"].seen,
                        logit_scale=float(read(images, "model/logit_scale")[0]),
                        closed={s: p.scored for s, p in protocols.items()})
    return inputs, data
