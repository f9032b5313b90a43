"""Class-per-folder datasets: `root/<class>/<image>`, split by a seeded ratio per class, or already split as
`root/<split>/<class>/<image>` for split in train, val, test.

Labels follow `root/classes.txt` (folder names, one per line) when there is one, else the sorted folder
names; class names are the folder names with underscores as spaces. Files are found recursively inside a
class folder; hidden ones are ignored, and files whose suffix is not an image suffix
(`datasets.IMAGE_SUFFIXES`) are skipped and returned so the caller can record them: folders gathered
by hand hold READMEs and annotation files. A file with an image suffix that does not decode is refused by
`datasets.check_images`, which prepare runs on the manifest.
"""

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.datasets import IMAGE_SUFFIXES, DatasetError, check_labels, frame, read_classes
from pipeline.layout import SPLITS


def folder_manifest(root: Path, split: str, ratio: tuple[float, float], seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Manifest of a class-per-folder dataset, paths relative to `root`, and the skipped non-image files.

    `split`: `folders` (root/train, root/val, root/test each hold class folders), `ratio` (`ratio` = train
    and val fractions per class, test the rest), or `auto` (folders when root holds all three split folders)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {root}: no such folder (expected one sub-folder of images per class)")
    if split == "auto":
        split = "folders" if all((root / s).is_dir() for s in SPLITS) else "ratio"
    rows, skipped = [], []
    if split == "folders":
        missing = [s for s in SPLITS if not (root / s).is_dir()]
        if missing:
            raise DatasetError(f"{root}: no split folders {missing} (split 'folders' expects {list(SPLITS)}, "
                               "each holding one sub-folder per class)")
        names = _label_order(root, _class_folders(root / "train"), root / "train")
        for s in SPLITS:
            for folder in _class_folders(root / s):
                if folder not in names:
                    raise DatasetError(f"{root / s / folder}: class folder not among the classes {names} "
                                       f"(from {_order_source(root, root / 'train')})")
                files = _images(root, root / s / folder, skipped)
                rows += [(f, names.index(folder), folder.replace("_", " "), s) for f in files]
    else:
        folders = _class_folders(root)
        clash = sorted(set(folders) & set(SPLITS))
        if clash:
            raise DatasetError(f"{root}: class folders named {clash} look like split folders; set "
                               "'split: folders' (with train/, val/ and test/) or rename them")
        names = _label_order(root, folders, root)
        for label, folder in enumerate(names):
            files = _images(root, root / folder, skipped)
            rng = np.random.default_rng([seed, zlib.crc32(folder.encode())])   # a class's split ignores the others
            order = [files[i] for i in rng.permutation(len(files))]
            n_train, n_val = _split_counts(len(files), ratio)
            for s, chosen in zip(SPLITS, (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])):
                rows += [(f, label, folder.replace("_", " "), s) for f in chosen]
    rows.sort(key=lambda r: (SPLITS.index(r[3]), r[1], r[0]))
    manifest = frame(rows)
    check_labels(manifest, str(root))
    return manifest, skipped


def _split_counts(n: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(train, val) images of a class of n under `ratio`, rounded half up; train keeps at least one."""
    n_train = max(1, int(np.floor(ratio[0] * n + 0.5)))
    return n_train, min(n - n_train, int(np.floor(ratio[1] * n + 0.5)))


def _class_folders(parent: Path) -> list[str]:
    folders = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise DatasetError(f"{parent}: {len(folders)} class sub-folders {folders}, expected at least 2 "
                           "(one sub-folder of images per class)")
    return folders


def _order_source(root: Path, parent: Path) -> str:
    return str(root / "classes.txt") if (root / "classes.txt").is_file() else f"the folders of {parent}"


def _label_order(root: Path, folders: list[str], parent: Path) -> list[str]:
    """Folder names in label order: `root/classes.txt`'s, which must name exactly the folders, else sorted."""
    listing = root / "classes.txt"
    if not listing.is_file():
        return folders
    names = read_classes(listing)
    absent, unlisted = [n for n in names if n not in folders], [f for f in folders if f not in names]
    if absent:
        raise DatasetError(f"{listing}: names classes {absent} that have no folder under {parent}")
    if unlisted:
        raise DatasetError(f"{parent}: class folders {unlisted} are not in {listing} (list every class once)")
    return names


def _images(root: Path, folder: Path, skipped: list[str]) -> list[str]:
    """Image files under `folder`, relative to `root`, sorted; non-image files are appended to `skipped`."""
    files = sorted(p.relative_to(root).as_posix() for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    images = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    skipped += [f for f in files if Path(f).suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        raise DatasetError(f"{folder}: class folder holds no image ({len(files)} other files; image suffixes: "
                           f"{', '.join(IMAGE_SUFFIXES)})")
    return images
