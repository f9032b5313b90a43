"""RE-tune's multi-label datasets in `prepare` (METHODS.md §15.3.2): `data.<name>` of kind `multilabel` (the demo
world, `pipeline.multilabel_world`) or `multilabel_csv` (one labels CSV per split in CheXpert's layout,
`pipeline.multilabel`, uncertain and blank cells mapped by `policy`).

The manifest keeps the usual columns (`label` -1: an image has no single class; `classname` empty) and adds one
float column per label, `label:<name>` (1, 0, or NaN where the policy ignores a cell): the N x C label matrix,
which `retune` joins to the cached features by `item`. dataset.json lists the labels in column order; its
`manifest_sha256` covers the label columns too.
"""

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import datasets
from pipeline import multilabel_world as mw
from pipeline.config import ParamsError, entry, need
from pipeline.io import atomic_write_json
from pipeline.layout import SPLITS
from pipeline.multilabel import Policy, policy_of, read_labels_csv

KINDS = ("multilabel", "multilabel_csv")
PREFIX = "label:"


@dataclass(frozen=True)
class MultilabelDataset:
    """`data.<name>` of a multi-label kind."""
    name: str
    kind: str
    labels: tuple[str, ...]
    seed: int = 0                     # multilabel: the renders' seed
    blur: float = 0.0                 # multilabel: camera blur (px)
    p_present: float = 0.4            # multilabel: probability that each label's object is drawn
    count: dict = field(default_factory=dict)    # multilabel: images per split
    root: str | None = None           # multilabel_csv: the folder the CSVs' image paths are relative to
    splits: dict = field(default_factory=dict)   # multilabel_csv: split -> CSV path relative to root
    path_column: str = "Path"         # multilabel_csv: CheXpert's image-path column
    policy: Policy = field(default_factory=Policy)


def is_multilabel(params: dict, name: str) -> bool:
    """Whether `data.<name>` is of a multi-label kind."""
    return entry(params.get("data"), name, "data").get("kind") in KINDS


def dataset(params: dict, name: str) -> MultilabelDataset:
    """Validated `data.<name>` of kind multilabel {seed, blur, p_present, count: {train, val, test}} or
    multilabel_csv {root, splits: {train, val, test}: CSV paths, labels, policy, path_column (default Path)}."""
    cfg, where = entry(params.get("data"), name, "data"), f"data.{name}"
    kind = need(cfg, "kind", str, where, choices=KINDS)
    if kind == "multilabel":
        _known(cfg, where, ("kind", "seed", "blur", "p_present", "count"))
        count = need(cfg, "count", dict, where)
        _known(count, f"{where}.count", SPLITS)
        return MultilabelDataset(name, kind, mw.LABELS, seed=need(cfg, "seed", int, where, minimum=0),
                                 blur=float(need(cfg, "blur", (int, float), where, minimum=0)),
                                 p_present=float(need(cfg, "p_present", (int, float), where, minimum=0, maximum=1)),
                                 count={s: need(count, s, int, f"{where}.count", minimum=1) for s in SPLITS})
    _known(cfg, where, ("kind", "root", "splits", "labels", "policy", "path_column"))
    splits = need(cfg, "splits", dict, where)
    _known(splits, f"{where}.splits", SPLITS)
    labels = need(cfg, "labels", list, where)
    if not labels or not all(isinstance(c, str) and c for c in labels) or len(set(labels)) != len(labels):
        raise ParamsError(f"params.yaml: '{where}.labels' = {labels!r} should be distinct column names of the CSVs")
    return MultilabelDataset(name, kind, tuple(labels), root=need(cfg, "root", str, where),
                             splits={s: need(splits, s, str, f"{where}.splits") for s in SPLITS},
                             path_column=need(cfg, "path_column", str, where) if "path_column" in cfg else "Path",
                             policy=policy_of(need(cfg, "policy", (str, dict), where), f"{where}.policy"))


def _known(section: dict, where: str, known: tuple) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key '{where}.{unknown[0]}' (known: {sorted(known)})")


def columns(labels) -> list[str]:
    """The manifest's label-matrix columns, in label order."""
    return [PREFIX + c for c in labels]


def manifest(paths: list[str], splits: list[str], Y: np.ndarray, labels) -> pd.DataFrame:
    """A manifest (rows in split order, items 0..N-1) with the label matrix Y (N, C) as `label:<name>` columns."""
    frame = datasets.frame([(p, -1, "", s) for p, s in zip(paths, splits)])
    return frame.join(pd.DataFrame(np.asarray(Y, np.float32), columns=columns(labels)))


def label_matrix(frame: pd.DataFrame, labels) -> np.ndarray:
    """(N, C) float32 label matrix of a multi-label manifest (NaN = ignored cell)."""
    missing = [c for c in columns(labels) if c not in frame.columns]
    if missing:
        raise datasets.DatasetError(f"manifest has no label column(s) {missing}: not a multi-label manifest of "
                                    f"labels {list(labels)} (re-run prepare)")
    return frame[columns(labels)].to_numpy(np.float32)


def digest(frame: pd.DataFrame) -> str:
    """sha256 of the manifest's canonical CSV, label columns included."""
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def demo_manifest(cfg: MultilabelDataset, out_dir: Path) -> pd.DataFrame:
    """Render the demo world's splits as PNGs under `out_dir/images`; their manifest."""
    rows, scenes = [], []
    for split in SPLITS:
        for i in range(cfg.count[split]):
            img, scene = mw.sample(cfg.seed, split, i, cfg.p_present, cfg.blur)
            rel = f"images/{split}/{i:05d}.png"
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(out_dir / rel)
            rows.append((rel, split))
            scenes.append(scene)
    return manifest([r for r, _ in rows], [s for _, s in rows], mw.label_matrix(scenes), cfg.labels)


def csv_manifest(cfg: MultilabelDataset, root: Path) -> pd.DataFrame:
    """The manifest of one labels CSV per split under `root` (every image must exist, decode, and sit in one
    split only)."""
    paths, splits, parts = [], [], []
    for split in SPLITS:
        rel, Y = read_labels_csv(root / cfg.splits[split], cfg.path_column, cfg.labels, cfg.policy, root=root)
        paths += rel
        splits += [split] * len(rel)
        parts.append(Y)
    seen = pd.Series(splits, index=paths)
    twice = seen.index[seen.index.duplicated()].unique().tolist()
    if twice:
        raise datasets.DatasetError(f"{root}: {len(twice)} image path(s) listed twice across or within the split "
                                    f"CSVs {cfg.splits}, e.g. {twice[:3]}")
    frame = manifest(paths, splits, np.concatenate(parts), cfg.labels)
    datasets.check_images(frame, root)
    return frame


def prepare(cfg: MultilabelDataset, out: Path, repo: Path) -> pd.DataFrame:
    """Write `out`/manifest.parquet and dataset.json (through a temporary folder, then renamed)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if cfg.kind == "multilabel":
        frame, root = demo_manifest(cfg, tmp), f"data/{cfg.name}"
    else:
        frame, root = csv_manifest(cfg, repo / cfg.root), cfg.root
    frame.to_parquet(tmp / "manifest.parquet", index=False)
    Y = label_matrix(frame, cfg.labels)
    atomic_write_json(tmp / "dataset.json", {
        "name": cfg.name, "kind": cfg.kind, "root": root, "labels": list(cfg.labels), "classnames": list(cfg.labels),
        "manifest_sha256": digest(frame), "counts": frame["split"].value_counts().to_dict(),
        "positives": {s: dict(zip(cfg.labels, np.nansum(Y[(frame["split"] == s).to_numpy()], 0).astype(int).tolist()))
                      for s in SPLITS},
        **({"policy": {"uncertain": cfg.policy.uncertain, "blank": cfg.policy.blank}} if cfg.kind != "multilabel" else {})})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return frame
