"""Multi-label datasets given as a labels CSV (CheXpert's layout): one image-path column and one column per
label, each cell 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned) (METHODS.md §15.3.2).

Uncertain and blank cells are mapped by a `Policy`, each part one of
- "zeros": the cell becomes 0 (CheXpert's U-Zeros),
- "ones": the cell becomes 1 (U-Ones),
- "ignore": the cell becomes NaN, which the loss and the metrics mask out (U-Ignore).
A policy given as one name applies it to uncertain cells only and maps blanks to 0: CheXpert's labeler leaves
a cell blank when the report does not mention the finding, which the CheXpert paper's U-approaches and the
usual loaders (`fillna(0)`) read as negative. `{"uncertain": ..., "blank": ...}` sets the two apart.

Every error names the file, and the 1-based line and the column where it concerns a cell.
"""

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import ParamsError
from pipeline.datasets import DatasetError

CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHOICES = ("zeros", "ones", "ignore")
VALUE = {"zeros": 0.0, "ones": 1.0, "ignore": math.nan}
SHOWN = 5   # bad cells / missing images named in an error (then the count)


@dataclass(frozen=True)
class Policy:
    """Where uncertain (-1) and blank cells go: each one of CHOICES."""
    uncertain: str = "zeros"
    blank: str = "zeros"

    def __post_init__(self):
        for part in ("uncertain", "blank"):
            if getattr(self, part) not in CHOICES:
                raise ValueError(f"label policy {part} = {getattr(self, part)!r} should be one of {list(CHOICES)}")


def policy_of(value, where: str | None = None) -> Policy:
    """A Policy from a name (uncertain cells; blanks -> 0) or a mapping {uncertain: name, blank: name}.
    With `where` (the params key, e.g. 'retune.policy') a bad value raises ParamsError naming it."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, str) and value in CHOICES:
        return Policy(uncertain=value)
    if isinstance(value, Mapping) and set(value) <= {"uncertain", "blank"} and value \
            and all(isinstance(v, str) and v in CHOICES for v in value.values()):
        return Policy(**value)
    expected = (f"one of {list(CHOICES)} (uncertain cells; blanks -> 0) or a mapping "
                f"{{uncertain: name, blank: name}} with names from {list(CHOICES)}")
    if where:
        raise ParamsError(f"params.yaml: '{where}' = {value!r} should be {expected}")
    raise ValueError(f"label policy {value!r} should be {expected}")


def _cell(text: str) -> float | None:
    """1.0, 0.0, -1.0 or NaN (blank) for an accepted cell, None for anything else."""
    text = text.strip()
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value in (1.0, 0.0, -1.0) else None


def _header(path: Path, header: list[str], path_column: str, labels: Sequence[str]) -> list[int]:
    """Column index of the path column, then of each label."""
    if not header:
        raise DatasetError(f"{path}: empty file (expected a header with '{path_column}' and the label columns)")
    wanted = [path_column, *labels]
    absent = [c for c in wanted if c not in header]
    if absent:
        raise DatasetError(f"{path}: no column {absent[0]!r}" + (f" (nor {absent[1:]})" if absent[1:] else "")
                           + f"; the CSV's columns: {header}")
    twice = [c for c in wanted if header.count(c) > 1]
    if twice:
        raise DatasetError(f"{path}: column {twice[0]!r} appears {header.count(twice[0])} times in the header")
    return [header.index(c) for c in wanted]


def read_labels_csv(path, path_column: str, labels: Sequence[str], policy="zeros",
                    root=None) -> tuple[list[str], np.ndarray]:
    """(image paths as written, Y) from a labels CSV. Y is float32 (N, len(labels)), columns in `labels`'
    order, cells 1 / 0 after `policy` (see the module doc) and NaN where the policy ignores them.

    Accepted cells: 1, 0, -1, blank, and the floats 1.0 / 0.0 / -1.0 (pandas writes those). With `root`,
    every image path must name a file under it (the error shows the first few missing and their count)."""
    path, policy = Path(path), policy_of(policy)
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels {list(labels)} should be distinct column names, at least one")
    if not path.is_file():
        raise DatasetError(f"{path}: no such labels CSV")
    mapped = {1.0: 1.0, 0.0: 0.0, -1.0: VALUE[policy.uncertain]}
    paths, rows, bad = [], [], []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        at = _header(path, header, path_column, labels)
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) != len(header):
                raise DatasetError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
            image = row[at[0]].strip()
            if not image:
                raise DatasetError(f"{path}: line {line}, column {path_column!r}: empty image path")
            values = []
            for name, i in zip(labels, at[1:]):
                v = _cell(row[i])
                if v is None:
                    bad.append(f"line {line}, column {name!r}: {row[i]!r}")
                values.append(VALUE[policy.blank] if v is not None and math.isnan(v) else mapped.get(v, math.nan))
            paths.append(image)
            rows.append(values)
    if bad:
        raise DatasetError(f"{path}: {len(bad)} label cell(s) not one of 1, 0, -1 (uncertain) or blank "
                           f"(1.0 / 0.0 / -1.0 accepted): " + "; ".join(bad[:SHOWN]) + ("; ..." if bad[SHOWN:] else ""))
    if not paths:
        raise DatasetError(f"{path}: header only, no rows")
    if root is not None:
        check_paths(path, paths, Path(root))
    return paths, np.asarray(rows, dtype=np.float32).reshape(len(paths), len(labels))


def check_paths(source: Path, paths: Sequence[str], root: Path) -> None:
    """Every path must be a file under `root`; else a DatasetError naming `source`, the first few missing
    and their count."""
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        shown = ", ".join(repr(p) for p in missing[:SHOWN]) + (", ..." if missing[SHOWN:] else "")
        raise DatasetError(f"{source}: {len(missing)} of {len(paths)} image paths are not files under {root}: {shown}")
