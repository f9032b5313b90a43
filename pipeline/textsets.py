"""Named text sets: a list of names through one template, encoded per model into
features/<model>/textsets/<set>.zarr (SpectralGCD's concept dictionary; later the name lists of KDPL-CA
and RE-tune's prompts).

A set's names come from a file (a CSV with SpectralGCD's `ClassName` column, or a text file with one name a
line) or, for the embedded demo, from the demo world's vocabulary plus distractor concepts that no caption
ever uses. Names are cleaned as the reference does (`_` -> space, stripped) and deduplicated
case-insensitively, first occurrence kept; what was dropped is counted in the log.

Store layout: text/pre (N, d_t) EOS features, text/emb (N, D) projected, written in resumable shards;
`names` in the group attrs, their sha256 and the template in the provenance.
"""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline import __version__, shapes
from pipeline.features import MODEL_KEYS
from pipeline.extract import encode_prompts, project
from pipeline.models import LoadedModel
from pipeline.store import ShardedWriter, StoreError, open_store, read

log = logging.getLogger(__name__)

SHARD_ROWS = 2048
# Words of no caption of the demo world (pipeline/shapes.py): distractor concepts are their compounds.
_DISTRACTOR_ADJ = ("wooden", "furry", "metal", "glass", "paper", "rusty", "frozen", "muddy", "golden", "silky",
                   "broken", "ancient", "tiny", "giant", "smoky", "leafy")
_DISTRACTOR_NOUN = ("dog", "car", "tree", "house", "bottle", "guitar", "cloud", "boat", "chair", "mountain",
                    "lamp", "shoe", "river", "bridge", "apple")


class TextSetError(ValueError):
    """A text set's source cannot be read as asked."""


def demo_vocabulary() -> list[str]:
    """Every word and compound a demo caption can use for an object: colours, shapes, colour-shape pairs."""
    return list(shapes.COLOURS) + list(shapes.SHAPES) + shapes.classnames()


def distractor_pool() -> list[str]:
    """Every distractor concept ("furry guitar"): 16 x 15 = 240 compounds of words no demo caption uses."""
    return [f"{a} {b}" for a in _DISTRACTOR_ADJ for b in _DISTRACTOR_NOUN]


def demo_distractors(n: int, seed: int = 0) -> list[str]:
    """`n` distractor concepts of `distractor_pool` in a seeded order."""
    pool = distractor_pool()
    if n > len(pool):
        raise TextSetError(f"text set: {n} distractors asked, the demo has {len(pool)}")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in order]


def read_names(path: Path) -> list[str]:
    """Names of a dictionary file: `.csv` with a `ClassName` column, else one name a line."""
    path = Path(path)
    if not path.is_file():
        raise TextSetError(f"text set file {path} does not exist")
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "ClassName" not in table.columns:
            raise TextSetError(f"{path}: no 'ClassName' column (columns: {list(table.columns)[:10]})")
        return table["ClassName"].tolist()
    return path.read_text(encoding="utf-8").splitlines()


def clean(names: list[str], where: str) -> list[str]:
    """`_` -> space, stripped, empty ones and case-insensitive duplicates dropped (first kept), counted."""
    kept, seen, empty, dupes = [], set(), 0, 0
    for name in names:
        name = str(name).replace("_", " ").strip()
        if not name:
            empty += 1
        elif name.lower() in seen:
            dupes += 1
        else:
            seen.add(name.lower())
            kept.append(name)
    if empty or dupes:
        log.warning("%s: dropped %d empty and %d duplicate names (%d kept)", where, empty, dupes, len(kept))
    if not kept:
        raise TextSetError(f"{where}: no names left")
    return kept


def with_classes(names: list[str], classnames: list[str]) -> tuple[list[str], np.ndarray]:
    """The dictionary with the dataset's class names appended unless already there (case-insensitive), as
    SpectralGCD's extract_class_names does; and each class's row in the result."""
    rows = {n.lower(): i for i, n in enumerate(names)}
    out = list(names)
    for c in classnames:
        if c.lower() not in rows:
            rows[c.lower()] = len(out)
            out.append(c)
    return out, np.array([rows[c.lower()] for c in classnames], np.int64)


def names_sha256(names: list[str]) -> str:
    return hashlib.sha256(json.dumps(names, ensure_ascii=False).encode()).hexdigest()


def provenance(card: dict, precision: str, set_name: str, names: list[str], template: str) -> dict:
    """Everything that determines a text-set store's content."""
    return {**{k: card[k] for k in MODEL_KEYS}, "precision": precision, "text_set": set_name,
            "names_sha256": names_sha256(names), "n_names": len(names), "template": template,
            "project_version": __version__}


def expected(card: dict, set_name: str) -> dict:
    """The provenance keys a reader checks: the model's and the set's name."""
    return {**{k: card[k] for k in MODEL_KEYS}, "text_set": set_name}


def encode(m: LoadedModel, names: list[str], template: str, dest: Path, staging: Path, provenance: dict, *,
           device: str = "cpu", precision: str = "fp32", shard_rows: int = SHARD_ROWS, progress: bool = True) -> None:
    """Encode `template.format(name)` for every name into `dest` (via `staging`: a killed run resumes at the
    first shard not written)."""
    n, d_t, D = len(names), m.W_txt.shape[0], m.W_txt.shape[1]
    rows = {"text/pre": ((n, d_t), "float32"), "text/emb": ((n, D), "float32")}
    writer = ShardedWriter(staging, provenance, rows, {}, shard_rows)
    writer.group.attrs["names"] = names
    bar = tqdm(total=writer.pending_rows(), desc=f"text set {dest.stem}", unit="name", disable=not progress)
    for shard in writer.pending():
        start, stop = writer.shard_range(shard)
        pre = encode_prompts(m, [template.format(x) for x in names[start:stop]], device, precision)
        if not torch.isfinite(pre).all():
            raise StoreError(f"{dest}: text features of names {start}..{stop} contain NaN or inf")
        writer.write_shard(shard, {"text/pre": pre.cpu().numpy(), "text/emb": project(pre, m.W_txt).cpu().numpy()})
        bar.update(stop - start)
    bar.close()
    writer.finalize(dest)


def check_same_names(set_name: str, by_model: dict[str, list[str]]) -> None:
    """Teacher and student must have encoded the same names (distillation compares distributions over
    them): else a StoreError naming both models and the first difference."""
    (a, names_a), (b, names_b) = by_model.items()
    if names_a != names_b:
        first = next((i for i, (x, y) in enumerate(zip(names_a, names_b)) if x != y), min(len(names_a), len(names_b)))
        raise StoreError(f"text set '{set_name}': {a} has {len(names_a)} names and {b} {len(names_b)}, first "
                         f"difference at name {first}; re-run `dvc repro textset@{a}-{set_name}` and the teacher's")


def load(path: Path, expect: dict) -> tuple[list[str], np.ndarray]:
    """(names, text/emb) of a complete text-set store whose provenance matches `expect`."""
    group = open_store(path, expect)
    return list(group.attrs["names"]), read(group, "text/emb")
