"""Dataset registry and manifests.

A manifest is a DataFrame with one row per image: `item` (stable int id), `path` (relative to the
dataset root; `<shard>.tar::<member>` for a webdataset image), `label`, `classname`, `split`. Rows follow
the split file: train, then val, then test. Class-per-folder and webdataset datasets are built by
pipeline/folder_datasets.py and pipeline/webdataset_datasets.py with the helpers here.
"""

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline import shapes
from pipeline.layout import SPLITS

COLUMNS = ["item", "path", "label", "classname", "split"]
# Suffixes read as images by folder and webdataset datasets (lower case); other files are not images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
GENERIC_TEMPLATE = "a photo of a {}."   # folder and webdataset datasets: CLIP's generic prompt


@dataclass(frozen=True)
class CoOpDataset:
    split_file: str
    image_dir: str
    template: str


# CoOp's split files and the literature's single prompt template (METHODS.md §2.3).
COOP = {
    "eurosat": CoOpDataset("split_zhou_EuroSAT.json", "2750", "a centered satellite photo of {}."),
    "caltech101": CoOpDataset("split_zhou_Caltech101.json", "101_ObjectCategories", "a photo of a {}."),
    "dtd": CoOpDataset("split_zhou_DescribableTextures.json", "images", "{} texture."),
    "oxford_pets": CoOpDataset("split_zhou_OxfordPets.json", "images", "a photo of a {}, a type of pet."),
    "oxford_flowers": CoOpDataset("split_zhou_OxfordFlowers.json", "jpg", "a photo of a {}, a type of flower."),
    "stanford_cars": CoOpDataset("split_zhou_StanfordCars.json", "", "a photo of a {}."),
    "food101": CoOpDataset("split_zhou_Food101.json", "images", "a photo of {}, a type of food."),
    "sun397": CoOpDataset("split_zhou_SUN397.json", "SUN397", "a photo of a {}."),
    "ucf101": CoOpDataset("split_zhou_UCF101.json", "UCF-101-midframes", "a photo of a person doing {}."),
}


class DatasetError(ValueError):
    """A dataset on disk does not match its split file."""


def manifest_digest(manifest: pd.DataFrame) -> str:
    """sha256 of the manifest's canonical CSV: identifies the exact images, labels and splits."""
    return hashlib.sha256(manifest[COLUMNS].to_csv(index=False).encode()).hexdigest()


def coop_manifest(name: str, root: Path) -> pd.DataFrame:
    """Manifest of a CoOp-style dataset from `<root>/<split file>`, image paths relative to `root`."""
    if name not in COOP:
        raise DatasetError(f"unknown CoOp dataset '{name}'; known: {sorted(COOP)}")
    info = COOP[name]
    split_path = Path(root) / info.split_file
    if not split_path.is_file():
        raise DatasetError(f"split file {split_path} not found (data root '{root}' for dataset '{name}')")
    splits = _read_splits(split_path)
    rows = []
    for split in SPLITS:
        if split not in splits:
            raise DatasetError(f"{split_path}: no '{split}' list (expected keys {SPLITS})")
        if not isinstance(splits[split], list):
            raise DatasetError(f"{split_path}: '{split}' should be a list of [relative path, integer label, "
                               f"class name], not {type(splits[split]).__name__}")
        for i, entry in enumerate(splits[split]):
            rel, label, classname = _check_entry(entry, f"{split_path}: {split}[{i}]")
            path = f"{info.image_dir}/{rel}" if info.image_dir else rel
            rows.append((path, label, classname.replace("_", " "), split))
    manifest = frame(rows)
    check_labels(manifest, str(split_path))
    return manifest


def frame(rows: list[tuple]) -> pd.DataFrame:
    """A manifest from (path, label, classname, split) rows in manifest order; items are 0..N-1."""
    manifest = pd.DataFrame(rows, columns=COLUMNS[1:])
    manifest.insert(0, "item", range(len(manifest)))
    return manifest


def read_classes(path: Path) -> list[str]:
    """The class names of a `classes.txt`, one per line in label order (blank lines skipped), each once."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    seen = set()
    for name in names:
        if name in seen:
            raise DatasetError(f"{path}: class '{name}' is listed twice (one class per line, each once)")
        seen.add(name)
    if len(names) < 2:
        raise DatasetError(f"{path}: {len(names)} class names, expected at least 2 (one per line)")
    return names


SPLIT_FORMAT = "expected CoOp's split_zhou_*.json with 'train', 'val', 'test' lists of [path, label, classname]"


def _read_splits(split_path: Path) -> dict:
    """The split file's top-level object; a broken or truncated download gets a DatasetError, not a traceback."""
    try:
        splits = json.loads(split_path.read_bytes())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{split_path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                           f"{SPLIT_FORMAT}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{split_path}: not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start}); "
                           f"{SPLIT_FORMAT}") from None
    if not isinstance(splits, dict):
        raise DatasetError(f"{split_path}: top level should be an object, not {type(splits).__name__}; {SPLIT_FORMAT}")
    return splits


def _check_entry(entry, where: str) -> tuple[str, int, str]:
    """One `[relative path, integer label, class name]` entry; `where` names file, split and index."""
    if not isinstance(entry, list) or len(entry) != 3:
        raise DatasetError(f"{where} = {entry!r} should be [relative path, integer label, class name]")
    rel, label, classname = entry
    # CoOp stores plain ints; bool is an int subclass and "3" or 3.0 would hide a broken file.
    if type(label) is not int or label < 0:
        raise DatasetError(f"{where} = {entry!r}: label {label!r} should be a non-negative integer")
    if not (isinstance(rel, str) and rel and isinstance(classname, str) and classname):
        raise DatasetError(f"{where} = {entry!r}: path and class name should be non-empty strings")
    return rel, label, classname


def check_labels(manifest: pd.DataFrame, source: str) -> None:
    """Labels must be 0..C-1, one class name each, and every class must have train images."""
    names = manifest.groupby("label")["classname"].unique()
    clashes = {int(k): list(v) for k, v in names.items() if len(v) > 1}
    if clashes:
        raise DatasetError(f"{source}: labels with several class names: {clashes}")
    n_classes = int(manifest["label"].max()) + 1
    missing = sorted(set(range(n_classes)) - set(manifest.loc[manifest.split == "train", "label"]))
    if missing:
        raise DatasetError(f"{source}: classes {missing} have no train images (labels must be 0..{n_classes - 1})")


def classnames(manifest: pd.DataFrame) -> list[str]:
    """Class names in label order."""
    return manifest.drop_duplicates("label").sort_values("label")["classname"].tolist()


def decode_problem(source) -> str | None:
    """None when `source` (a path or a binary file object) decodes as an RGB image, else what is wrong."""
    try:
        with Image.open(source) as img:
            img.convert("RGB").load()
    except Exception as exc:  # PIL raises many types for bad files
        return f"corrupt ({type(exc).__name__}: {exc})"
    return None


def _problem(path: Path) -> str | None:
    return "missing" if not path.is_file() else decode_problem(path)


def check_images(manifest: pd.DataFrame, root: Path, workers: int = 8) -> None:
    """Every listed file must exist and decode; otherwise name the first offenders and the count."""
    paths = [Path(root) / p for p in manifest["path"]]
    with ThreadPoolExecutor(workers) as pool:
        problems = [(p, why) for p, why in zip(paths, pool.map(_problem, paths)) if why]
    if problems:
        first = "\n  ".join(f"{p}: {why}" for p, why in problems[:5])
        raise DatasetError(f"{len(problems)} of {len(paths)} listed images are missing or corrupt under "
                           f"{root}; first:\n  {first}")


def write_demo(out_dir: Path, world: str, seed: int, per_class: dict[str, int], blur: float = 0.0) -> pd.DataFrame:
    """Render a demo world (`shapes` or `scenes`, pipeline/shapes.py) as PNGs under `out_dir/images` and return
    its manifest; a `scenes` manifest also lists each image's nuisances (`tint`, `small`)."""
    rows, nuisances = [], []
    for split in SPLITS:
        for i in range(per_class[split] * len(shapes.classnames())):
            if world == "scenes":
                img, scene = shapes.sample_scene(seed, split, i, blur)
                label = scene.label
                nuisances.append((scene.tint, scene.small))
            else:
                img, label = shapes.sample(seed, split, i, blur)
            rel = f"images/{split}/{i:05d}.png"
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(out_dir / rel)
            rows.append((rel, label, shapes.classnames()[label], split))
    manifest = frame(rows)
    if nuisances:
        manifest[["tint", "small"]] = nuisances
    return manifest
