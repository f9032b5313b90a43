"""Webdatasets: uncompressed tar shards of samples, the layout img2dataset writes. Members that share a key
(the member name up to the first dot of its base name, webdataset's rule) form a sample: one image
(`datasets.IMAGE_SUFFIXES`) and a label, `<key>.cls` (an integer) or `<key>.json` whose `label` field
(else `class`) is an integer or a class name. Other members (captions, metadata) are ignored.

Labels: with `<root>/classes.txt` (one class per line, in label order) an integer indexes it and a name
must be in it; without it the names found define the classes, sorted, and integers are refused. Images are
never unpacked: a manifest path is `<shard>.tar::<member>`, read by offset (pipeline.extract.ImageSource).
"""

import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from glob import glob
from pathlib import Path

import pandas as pd

from pipeline.datasets import IMAGE_SUFFIXES, DatasetError, check_labels, decode_problem, frame, read_classes
from pipeline.layout import SPLITS

MEMBER = "::"   # a manifest path: <shard relative to root>::<member name>
LABEL_FORMAT = "expected <key>.cls holding an integer, or <key>.json with a 'label' or 'class' field"


def _shard_lists(root: Path, shards: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Per split, the shard files under `root` (each glob sorted); every pattern must match, no shard twice."""
    if not root.is_dir():
        raise DatasetError(f"data root {root}: no such folder (expected the webdataset's .tar shards there)")
    out, owner = {}, {}
    for split in SPLITS:
        out[split] = []
        for pattern in shards[split]:
            found = sorted(glob(pattern, root_dir=root))
            if not found:
                raise DatasetError(f"{root}: shards '{pattern}' of split '{split}' match no file")
            for name in found:
                if name in owner:
                    raise DatasetError(f"{root / name}: listed for both '{owner[name]}' and '{split}'")
                owner[name] = split
            out[split] += found
    return out


def webdataset_manifest(root: Path, shards: dict[str, tuple[str, ...]], workers: int = 8) -> pd.DataFrame:
    """Manifest of a webdataset under `root` (`shards`: split -> names or globs); every image is decoded once."""
    root = Path(root)
    lists = _shard_lists(root, shards)
    names = [(split, name) for split in SPLITS for name in lists[split]]
    with ThreadPoolExecutor(workers) as pool:
        scanned = list(pool.map(lambda sn: _samples(root / sn[1]), names))
    listing = root / "classes.txt"
    classes = read_classes(listing) if listing.is_file() else sorted(
        {lab for samples in scanned for _, lab, _ in samples if isinstance(lab, str)})
    rows = []
    for (split, name), samples in zip(names, scanned):
        for member, value, where in samples:
            label = _resolve(value, classes, listing, where)
            rows.append((f"{name}{MEMBER}{member}", label, classes[label].replace("_", " "), split))
    if not rows:
        raise DatasetError(f"{root}: the shards {[n for _, n in names]} hold no samples")
    manifest = frame(rows)
    check_labels(manifest, str(root))
    return manifest


def _resolve(value: int | str, classes: list[str], listing: Path, where: str) -> int:
    """The label index of a sample's label value."""
    if isinstance(value, str):
        if value not in classes:
            raise DatasetError(f"{where}: unknown class '{value}' (not in {listing})")
        return classes.index(value)
    if not listing.is_file():
        raise DatasetError(f"{where}: integer label {value} but no {listing} to name the classes (put one there, "
                           "one class per line in label order, or give class names in the .json)")
    if not 0 <= value < len(classes):
        raise DatasetError(f"{where}: unknown class {value} ({listing} lists {len(classes)} classes, 0.."
                           f"{len(classes) - 1})")
    return value


def _split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the key ends at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _samples(shard: Path) -> list[tuple[str, int | str, str]]:
    """(image member, label value, where) per sample of `shard`, in tar order; each image decoded once."""
    samples, current = {}, None
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                current = info.name   # a member cut short raises ReadError on reading it or on moving past it
                key, ext = _split_name(info.name)
                if f".{ext}" in IMAGE_SUFFIXES:
                    problem = decode_problem(io.BytesIO(tar.extractfile(info).read()))
                    if problem:
                        raise DatasetError(f"{shard}{MEMBER}{info.name}: {problem}")
                    samples.setdefault(key, {}).setdefault("image", []).append(info.name)
                elif ext in ("cls", "json"):
                    samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
            end = tar.offset
    except tarfile.ReadError as exc:
        where = f"in member '{current}'" if current else "before its first member"
        raise DatasetError(f"{shard}: truncated or not a tar, {where} ({exc})") from None
    with open(shard, "rb") as f:   # tarfile stops quietly at a cut between members: the end marker is missing
        f.seek(end)
        if f.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise DatasetError(f"{shard}: truncated after member '{current}' (no end-of-archive block at byte {end})")
    return [_sample(shard, key, parts) for key, parts in samples.items()]


def _sample(shard: Path, key: str, parts: dict) -> tuple[str, int | str, str]:
    where = f"{shard}{MEMBER}{key}"
    images = parts.get("image", [])
    if len(images) != 1:
        raise DatasetError(f"{where}: {len(images)} image members {images}, expected one per sample")
    where = f"{shard}{MEMBER}{images[0]}"
    if "cls" in parts:
        text = parts["cls"].decode("utf-8", "replace").strip()
        if not text.lstrip("-").isdigit():
            raise DatasetError(f"{shard}{MEMBER}{key}.cls = {text!r}: should be an integer label")
        return images[0], int(text), where
    if "json" not in parts:
        raise DatasetError(f"{where}: no label ({LABEL_FORMAT})")
    try:
        meta = json.loads(parts["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{shard}{MEMBER}{key}.json: not valid JSON ({exc}); {LABEL_FORMAT}") from None
    value = meta.get("label", meta.get("class")) if isinstance(meta, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise DatasetError(f"{where}: no label in {key}.json (label/class = {value!r}; {LABEL_FORMAT})")
    return images[0], value, where
