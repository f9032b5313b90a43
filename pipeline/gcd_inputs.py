"""Everything category discovery reads, from the caches of the student and the teacher (METHODS.md §15.1).

The concept set is the dictionary (a text set) with the old classes' names appended where absent, as the
reference does. Their text features come from each model's text.zarr (the dataset's class prompts,
averaged over templates), not re-encoded with the dictionary's template: a documented deviation that
keeps the class prompts in one place.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import features, gcd_protocol, layout, textsets, views
from pipeline.gcd_config import GCDConfig
from pipeline.layout import SPLIT_CODES
from pipeline.store import StoreError


@dataclass
class GCDInputs:
    classnames: list[str]
    old: np.ndarray            # old class indices (label order)
    target: np.ndarray         # (N,) class ids relabelled old first (0..|old|-1, then new), every manifest row
    split: np.ndarray          # (N,) split codes
    train: np.ndarray          # train row indices
    labelled: np.ndarray       # (len(train),) bool: labelled old-class train rows
    student_emb: np.ndarray    # (N, D_s) test-transform student features
    student_views: np.ndarray  # (len(train), V, D_s) cached augmented views of the train rows
    concepts: list[str]        # K0 names: dictionary + appended old class names
    student_concepts: np.ndarray   # (K0, D_s)
    teacher_logits: np.ndarray     # (len(train), K0) teacher cosine / tau on the train rows
    distractors: set[str]          # names of the demo dictionary's distractors (empty for a file dictionary)

    @property
    def is_old(self) -> np.ndarray:
        """(N,) True where the row's class is old."""
        return self.target < len(self.old)


def unit(x: np.ndarray) -> np.ndarray:
    """L2-normalised along the last axis."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _class_text(f: features.Features) -> np.ndarray:
    return unit(unit(f.text_emb).mean(axis=1))


def _concepts(model: str, dictionary: str, card: dict, f: features.Features, classnames, old, root: Path):
    names, emb = textsets.load(layout.textset_store(model, dictionary, root), textsets.expected(card, dictionary))
    merged, rows = textsets.with_classes(names, [classnames[c] for c in old])
    appended = _class_text(f)[old][rows >= len(names)]
    order = np.argsort(rows[rows >= len(names)])
    return names, merged, np.concatenate([unit(emb), appended[order]])


def old_first(old: np.ndarray, n_classes: int) -> np.ndarray:
    """Class id -> target id with the old classes first (0..|old|-1, in `old`'s order), then the new ones,
    as the reference relabels before it evaluates."""
    relabel = np.empty(n_classes, np.int64)
    relabel[old] = np.arange(len(old))
    relabel[np.setdiff1d(np.arange(n_classes), old)] = np.arange(len(old), n_classes)
    return relabel


def load(student: str, teacher: str, dataset_name: str, cfg: GCDConfig, root: Path = layout.ROOT) -> GCDInputs:
    dataset = json.loads((layout.data_dir(dataset_name, root) / "dataset.json").read_text())
    manifest = pd.read_parquet(layout.data_dir(dataset_name, root) / "manifest.parquet")
    cards = {m: json.loads((layout.model_dir(m, root) / "card.json").read_text()) for m in (student, teacher)}
    feats = {m: features.load(layout.feature_dir(m, dataset_name, root), cards[m], dataset) for m in (student, teacher)}
    classnames = dataset["classnames"]
    old = gcd_protocol.old_classes(cfg.protocol.old, classnames)
    relabel = old_first(old, len(classnames))
    fs = feats[student]
    train = np.flatnonzero(fs.split == SPLIT_CODES["train"])
    labelled_rows = gcd_protocol.labelled_rows(fs.label[train], train, old, cfg.protocol.labelled, cfg.protocol.seed)
    s_names, concepts, s_concepts = _concepts(student, cfg.dictionary, cards[student], fs, classnames, old, root)
    t_names, _, t_concepts = _concepts(teacher, cfg.dictionary, cards[teacher], feats[teacher],
                                                      classnames, old, root)
    textsets.check_same_names(cfg.dictionary, {student: s_names, teacher: t_names})
    v = views.load(layout.feature_dir(student, dataset_name, root) / "gcd_views.zarr",
                   features.expected(cards[student], dataset))
    at = np.searchsorted(v.item, fs.item[train])
    if (at >= len(v.item)).any() or (v.item[np.minimum(at, len(v.item) - 1)] != fs.item[train]).any():
        raise StoreError(f"gcd_views.zarr of {student}/{dataset_name} does not cover every train image: "
                         f"re-run `dvc repro gcd_views@{dataset_name}`")
    teacher_img = unit(feats[teacher].emb[train])
    return GCDInputs(
        classnames=classnames, old=old, target=relabel[fs.label], split=fs.split, train=train,
        labelled=np.isin(train, labelled_rows), student_emb=fs.emb, student_views=v.emb[at], concepts=concepts,
        student_concepts=s_concepts, teacher_logits=(teacher_img @ t_concepts.T / cfg.tau).astype(np.float32),
        distractors=set(textsets.distractor_pool()) & set(concepts))
