"""The GCD protocol: which classes are old (known), and which of their train rows are labelled.

As the SpectralGCD reference (`data/get_datasets.py:get_class_splits`, `data/data_utils.py`):
- named splits: CIFAR-10 old 0-4 of 10; CIFAR-100 old 0-79 of 100; ImageNet-100 old 0-49 of the 100
  classes `imagenet100_classes()` picks from ImageNet-1k; the fine-grained sets (CUB, SCars,
  Aircraft) take the Semantic Shift Benchmark pickle: old = `known_classes`, new = its
  `unknown_classes` Hard + Medium + Easy (the reference cannot switch these off).
- labels: `subsample_instances` reseeds numpy's legacy generator to 0 and draws
  int(fraction * n) rows without replacement from ALL n old-class train rows at once (not per
  class), so the labelled set is the same for every training seed and per-class counts vary.

Class indices are the dataset's label order; for SSB that is the reference's (CUB and SCars: the
annotation id - 1; Aircraft: the sorted variant names).
"""

from numbers import Integral, Real

import numpy as np

from pipeline import safe_pickle

NAMED = {"cifar10": (10, 5), "cifar100": (100, 80), "imagenet100": (100, 50)}   # classes, old (the first)
SSB_DIFFICULTIES = ("Hard", "Medium", "Easy")


def imagenet100_classes() -> np.ndarray:
    """(100,) sorted ImageNet-1k class indices of ImageNet-100: the reference's
    `np.random.seed(0); np.random.choice(range(1000), size=(100,), replace=False)`, sorted.
    A legacy RandomState of its own, so the global numpy state is left alone."""
    return np.sort(np.random.RandomState(0).choice(range(1000), size=(100,), replace=False))


def old_classes(spec, classnames) -> np.ndarray:
    """Sorted indices of the old classes among `classnames` (the dataset's C classes, label order).

    spec: a list of class names; an int n (the first n classes); a float f in (0, 1) (the first
    round(f * C), half to even); "cifar10", "cifar100" or "imagenet100" (for which the dataset is
    the 100-class subset, labels in `imagenet100_classes()` order); or {"ssb": path to a
    *_osr_splits.pkl}. At least one class must be old and one new."""
    classnames = list(classnames)
    n = len(classnames)
    if isinstance(spec, str):
        if spec not in NAMED:
            raise ValueError(f"unknown GCD protocol {spec!r}; named ones are {sorted(NAMED)}, or pass a list of "
                             f"class names, a count, a fraction or {{'ssb': path}}")
        expected, n_old = NAMED[spec]
        if n != expected:
            hint = " (ImageNet-100 is the 100-class subset: see imagenet100_classes())" if spec == "imagenet100" else ""
            raise ValueError(f"protocol {spec!r} has {expected} classes, the dataset has {n}{hint}")
        old = np.arange(n_old)
    elif isinstance(spec, dict):
        if set(spec) != {"ssb"}:
            raise ValueError(f"a dict spec should be {{'ssb': path to *_osr_splits.pkl}}, got keys {sorted(spec)}")
        old = _ssb_old(spec["ssb"], n)
    elif isinstance(spec, bool):
        raise ValueError(f"spec = {spec!r} should be a class count, a fraction, names or a protocol, not a bool")
    elif isinstance(spec, Integral):
        if not 0 < spec < n:
            raise ValueError(f"spec = {spec} old classes should be from 1 to {n - 1} (the dataset has {n} classes)")
        old = np.arange(int(spec))
    elif isinstance(spec, Real):
        if not 0 < spec < 1:
            raise ValueError(f"spec = {spec} should be a fraction in (0, 1) of the {n} classes")
        old = np.arange(round(spec * n))
    elif isinstance(spec, (list, tuple)) and all(isinstance(s, str) for s in spec):
        old = _by_name(spec, classnames)
    else:
        raise ValueError(f"spec = {spec!r} should be a list of class names, an int, a float fraction, "
                         f"one of {sorted(NAMED)} or {{'ssb': path}}")
    if not 0 < len(old) < n:
        raise ValueError(f"spec = {spec!r} makes {len(old)} of the {n} classes old; GCD needs at least one "
                         f"old and one new class")
    return old.astype(np.int64)


def labelled_rows(labels, rows, old, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Sorted train row indices that carry their label: the reference's `subsample_instances`.

    `rows` (N,) distinct train row indices and `labels` (N,) their classes; `old` the old classes.
    The old-class rows, in ascending row order (the reference's dataset order), are drawn
    int(fraction * n) at a time by `RandomState(seed).choice(n, replace=False)`; `seed` is the
    protocol's (the reference always uses 0), not the training seed."""
    labels, rows, old = np.asarray(labels), np.asarray(rows), np.asarray(old)
    if old.ndim != 1 or not old.size or old.dtype.kind not in "iu":
        raise ValueError(f"old should be a non-empty 1-D array of class indices, got {old.dtype} {old.shape}")
    if labels.ndim != 1 or rows.shape != labels.shape or labels.dtype.kind not in "iu" or rows.dtype.kind not in "iu":
        raise ValueError(f"labels and rows should be integer arrays of one shape, got {labels.dtype} "
                         f"{labels.shape} and {rows.dtype} {rows.shape}")
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"rows should be distinct row indices; {len(rows) - len(np.unique(rows))} repeat")
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction = {fraction!r} should be in (0, 1]")
    order = np.argsort(rows, kind="stable")
    rows, labels = rows[order], labels[order]
    old_rows = rows[np.isin(labels, old)]
    n_labelled = int(fraction * len(old_rows))
    picked = np.sort(old_rows[np.random.RandomState(seed).choice(len(old_rows), size=n_labelled, replace=False)])
    missing = np.setdiff1d(old, labels[np.isin(rows, picked)])
    if missing.size:
        c = int(missing[0])
        raise ValueError(f"old class {c} gets no labelled row ({int((labels == c).sum())} train rows; "
                         f"fraction {fraction} of the {len(old_rows)} old-class rows labels {n_labelled}); "
                         f"{missing.size} old classes are unlabelled: {missing[:10].tolist()}")
    return picked


def _by_name(names, classnames) -> np.ndarray:
    index = {name: i for i, name in enumerate(classnames)}
    absent = [name for name in names if name not in index]
    if absent:
        raise ValueError(f"old class names {absent[:5]} are not among the dataset's {len(classnames)} classes "
                         f"(e.g. {classnames[:5]})")
    if len(set(names)) != len(names):
        raise ValueError(f"old class names repeat: {sorted({s for s in names if names.count(s) > 1})[:5]}")
    return np.sort([index[name] for name in names])


def _ssb_old(path, n) -> np.ndarray:
    """Known classes of an SSB split pickle, checked to partition the n classes with its unknown ones."""
    info = safe_pickle.load(path)
    unknown = info.get("unknown_classes") if isinstance(info, dict) else None
    if not isinstance(unknown, dict) or "known_classes" not in info or not set(SSB_DIFFICULTIES) <= set(unknown):
        raise ValueError(f"{path} should hold a dict with 'known_classes' and 'unknown_classes' "
                         f"{{{', '.join(map(repr, SSB_DIFFICULTIES))}}}")
    known = _ids(info["known_classes"], "known_classes", path)
    new = np.concatenate([_ids(unknown[d], f"unknown_classes[{d!r}]", path) for d in SSB_DIFFICULTIES])
    both = np.concatenate([known, new])
    if len(both) != n or not np.array_equal(np.sort(both), np.arange(n)):
        raise ValueError(f"{path}: known + unknown classes should be the dataset's {n} class indices, each once; "
                         f"got {len(known)} known + {len(new)} unknown ({len(np.unique(both))} distinct)")
    return np.sort(known)


def _ids(value, what, path) -> np.ndarray:
    ids = np.asarray(value).ravel()
    if ids.size and ids.dtype.kind not in "iu":
        raise ValueError(f"{path}: {what} should hold integer class indices, got {ids.dtype}")
    return ids.astype(np.int64)
