"""Compositional zero-shot (CZSL) datasets in the layout ExplainableML/czsl reads (MIT-States, UT-Zappos, C-GQA).

    <root>/compositional-split-natural/{train,val,test}_pairs.txt   one "attr obj" per line
    <root>/metadata_compositional-split-natural.t7                  torch-saved list of
                                                                     {"image", "attr", "obj", "set"}
    <root>/images/<image>

As the reference's `CompositionDataset`: attrs, objs and pairs are the sorted union over the three pair
files; seen pairs are the train pairs; a metadata row is kept when its set is train/val/test, its attr is
not "NA" and its pair is in some pair file (rows of other pairs are dropped, not refused: the released
metadata lists images of every pair, and the splits use a subset). A pair's label is its index in `pairs`.
"""

from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.datasets import COLUMNS, DatasetError
from pipeline.layout import SPLITS

SPLIT_DIR = "compositional-split-natural"
METADATA = f"metadata_{SPLIT_DIR}.t7"
IMAGE_DIR = "images"
METADATA_KEYS = ("image", "attr", "obj", "set")
SET_VALUES = (*SPLITS, "NA")
MANIFEST_COLUMNS = [*COLUMNS, "attr", "obj"]   # attr, obj: indices into CZSLData.attrs / .objs

Pair = tuple[str, str]


@dataclass(frozen=True)
class Protocol:
    """What `pipeline.czsl_eval` needs to score one split's images (the reference `Evaluator`'s masks)."""
    pairs: tuple[Pair, ...]        # the label space: `CZSLData.pairs`, or every attr x obj in the open world
    pair_ids: np.ndarray           # (P, 2) attr and obj index of each pair
    seen: np.ndarray               # (P,) bool: a train pair
    scored: np.ndarray | None      # (P,) bool: the split's pairs and the train pairs; None in the open world
    rows: np.ndarray               # (N,) positions in the manifest of the split's images
    labels: np.ndarray             # (N,) each image's pair, as an index into `pairs`


@dataclass(frozen=True)
class CZSLData:
    """A dataset as `load` reads it: names, pair lists and one manifest row per kept image."""
    attrs: tuple[str, ...]
    objs: tuple[str, ...]
    pairs: tuple[Pair, ...]                   # sorted union of the split files; manifest labels index it
    split_pairs: dict[str, tuple[Pair, ...]]  # train / val / test, in file order
    manifest: pd.DataFrame                    # MANIFEST_COLUMNS; rows train, then val, then test
    dropped: int                              # metadata rows left out (set or attr "NA", pair in no split)

    @property
    def seen(self) -> tuple[Pair, ...]:
        return self.split_pairs["train"]

    def protocol(self, split: str, open_world: bool = False) -> Protocol:
        """Label space and masks for evaluating `split` (the reference's closed or open world)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} should be one of {SPLITS}")
        pairs = tuple(product(self.attrs, self.objs)) if open_world else self.pairs
        attr_index = {a: i for i, a in enumerate(self.attrs)}
        obj_index = {o: i for i, o in enumerate(self.objs)}
        pair_ids = np.array([(attr_index[a], obj_index[o]) for a, o in pairs], dtype=np.int64)
        train, evaluated = set(self.seen), set(self.split_pairs[split]) | set(self.seen)
        seen = np.array([p in train for p in pairs])
        scored = None if open_world else np.array([p in evaluated for p in pairs])
        rows = np.flatnonzero(self.manifest["split"].to_numpy() == split)
        label_of = {p: i for i, p in enumerate(pairs)}
        labels = np.array([label_of[(self.attrs[a], self.objs[o])]
                           for a, o in self.manifest[["attr", "obj"]].to_numpy()[rows]], dtype=np.int64)
        return Protocol(pairs, pair_ids, seen, scored, rows, labels)


def load(root: Path) -> CZSLData:
    """Pairs, splits and manifest of the CZSL dataset at `root`; image paths in the manifest are relative to it."""
    root = Path(root)
    split_pairs = {s: _read_pairs(root / SPLIT_DIR / f"{s}_pairs.txt") for s in SPLITS}
    metadata_path = root / METADATA
    metadata = _read_metadata(metadata_path)
    _check_names_in_metadata(split_pairs, metadata, root, metadata_path)

    attrs = tuple(sorted({a for pairs in split_pairs.values() for a, _ in pairs}))
    objs = tuple(sorted({o for pairs in split_pairs.values() for _, o in pairs}))
    pairs = tuple(sorted({p for ps in split_pairs.values() for p in ps}))
    label_of = {p: i for i, p in enumerate(pairs)}
    attr_index = {a: i for i, a in enumerate(attrs)}
    obj_index = {o: i for i, o in enumerate(objs)}

    kept = [(i, row) for i, row in enumerate(metadata)
            if row["set"] != "NA" and row["attr"] != "NA" and (row["attr"], row["obj"]) in label_of]
    _check_images_exist(kept, root, metadata_path)
    records = []
    for split in SPLITS:
        for _, row in kept:
            if row["set"] == split:
                pair = (row["attr"], row["obj"])
                records.append((f"{IMAGE_DIR}/{row['image']}", label_of[pair], " ".join(pair), split,
                                attr_index[pair[0]], obj_index[pair[1]]))
    manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS[1:])
    manifest.insert(0, "item", range(len(manifest)))
    return CZSLData(attrs, objs, pairs, split_pairs, manifest, dropped=len(metadata) - len(kept))


def from_classes(primitives: dict, manifest: pd.DataFrame, unseen: int, seed: int) -> CZSLData:
    """A CZSL split of a classification dataset whose classes are (attribute, object) pairs (the demo `scenes`):
    `unseen` pairs drawn with `seed` (every attribute and object keeps a seen pair), half of them val's and half
    test's, as the literature's splits; train keeps the images of seen pairs, val and test those of seen pairs
    and of their own unseen ones. `item` stays the source manifest's, so cached features are found by it."""
    attrs, objs = tuple(primitives["attrs"]), tuple(primitives["objs"])
    names = [(attrs[a], objs[o]) for a, o in primitives["pairs"]]
    if not 0 < unseen < len(names) - max(len(attrs), len(objs)) + 1:
        raise ValueError(f"unseen = {unseen}: need 1 .. {len(names) - max(len(attrs), len(objs))} of {len(names)} "
                         f"pairs, so that every attribute and object keeps a seen pair")
    rng = np.random.default_rng(seed)
    while True:   # rejection sampling: a draw leaving some primitive without a seen pair is redrawn
        held = rng.choice(len(names), unseen, replace=False)
        seen = [names[i] for i in range(len(names)) if i not in set(held)]
        if {a for a, _ in seen} == set(attrs) and {o for _, o in seen} == set(objs):
            break
    half = (unseen + 1) // 2
    split_pairs = {"train": tuple(seen), "val": tuple(seen) + tuple(names[i] for i in held[:half]),
                   "test": tuple(seen) + tuple(names[i] for i in held[half:])}
    pairs = tuple(sorted(names))
    label_of = {p: i for i, p in enumerate(pairs)}
    class_pair = [names[label] for label in manifest["label"]]
    keep = np.array([pair in set(split_pairs[split]) for pair, split in zip(class_pair, manifest["split"])])
    rows = manifest[keep]
    kept_pairs = [class_pair[i] for i in np.flatnonzero(keep)]
    out = pd.DataFrame({"item": rows["item"].to_numpy(), "path": rows["path"].to_numpy(),
                        "label": [label_of[p] for p in kept_pairs], "classname": [" ".join(p) for p in kept_pairs],
                        "split": rows["split"].to_numpy(), "attr": [attrs.index(a) for a, _ in kept_pairs],
                        "obj": [objs.index(o) for _, o in kept_pairs]})
    return CZSLData(attrs, objs, pairs, split_pairs, out, dropped=int((~keep).sum()))


PAIRS_FORMAT = "expected one 'attr obj' pair per line"
METADATA_FORMAT = f"expected a torch-saved list of dicts with keys {list(METADATA_KEYS)}, set in {list(SET_VALUES)}"


def _read_pairs(path: Path) -> tuple[Pair, ...]:
    if not path.is_file():
        raise DatasetError(f"pairs file {path} not found; {PAIRS_FORMAT}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); {PAIRS_FORMAT}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words:   # the released files end with a newline
            continue
        if len(words) != 2:
            raise DatasetError(f"{path}: line {number} = {line!r} should be two words, 'attr obj'")
        pairs.append((words[0], words[1]))
    if not pairs:
        raise DatasetError(f"{path}: no pairs; {PAIRS_FORMAT}")
    return tuple(pairs)


def _read_metadata(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"metadata file {path} not found; {METADATA_FORMAT}")
    try:
        rows = torch.load(path, weights_only=True)   # plain lists, dicts and strings: no pickle code runs
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise DatasetError(f"{path}: cannot be read by torch.load ({type(exc).__name__}: {exc}); "
                           f"{METADATA_FORMAT}") from None
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: holds a {type(rows).__name__}; {METADATA_FORMAT}")
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in METADATA_KEYS)):
            raise DatasetError(f"{path}: row {i} = {row!r} should map each of {list(METADATA_KEYS)} to a string")
        if row["set"] not in SET_VALUES:
            raise DatasetError(f"{path}: row {i} has set {row['set']!r}; expected one of {list(SET_VALUES)}")
    return rows


def _check_names_in_metadata(split_pairs: dict, metadata: list[dict], root: Path, metadata_path: Path) -> None:
    """A name no image carries is a typo in a pairs file (or the metadata of another split)."""
    attrs, objs = {row["attr"] for row in metadata}, {row["obj"] for row in metadata}
    for split, pairs in split_pairs.items():
        for attr, obj in pairs:
            for kind, name, known in (("attribute", attr, attrs), ("object", obj, objs)):
                if name not in known:
                    raise DatasetError(f"{root / SPLIT_DIR / f'{split}_pairs.txt'}: pair '{attr} {obj}' names "
                                       f"{kind} '{name}', which no row of {metadata_path} has")


def _check_images_exist(kept: list[tuple[int, dict]], root: Path, metadata_path: Path) -> None:
    paths = [(i, root / IMAGE_DIR / row["image"]) for i, row in kept]
    missing = [(i, path) for i, path in paths if not path.is_file()]
    if missing:
        first = "\n  ".join(f"row {i}: {path}" for i, path in missing[:5])
        raise DatasetError(f"{metadata_path}: {len(missing)} of {len(kept)} kept rows name missing images; "
                           f"first:\n  {first}")
