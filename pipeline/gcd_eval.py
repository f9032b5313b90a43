"""The GCD clustering accuracy (SpectralGCD `utils/cluster_and_log_utils.py`, SimGCD / GET lineage).

Predicted cluster ids carry no meaning, so they are matched to classes by one Hungarian assignment
chosen on ALL rows; Old and New accuracy then read that same map on the rows of old and of new
classes. A separate map per subset would let each subset pick its own best match and overstate both.

As the reference: w[pred, true] counts on a square D x D matrix, D = max(pred.max(), true.max()) + 1,
assigned by scipy's `linear_sum_assignment(w.max() - w)`. Keeping that exact matrix keeps the
reference's tie-breaking, which decides how a tie splits between Old and New (All is the same
either way). Cluster ids may outnumber the classes (spare clusters match nothing) or fall short.

- "v2" (the reference's default): All = matched rows / N; Old (New) = matched rows of old (new)
  classes / rows of old (new) classes.
- "v2b" (`split_cluster_acc_v2_balanced`): per-class accuracy under the same map, averaged over
  every class present for All, over the old classes for Old and the new ones for New.

Old or New is None when there are no rows of old or of new classes (the reference divides by zero).
"""

import numpy as np
from scipy.optimize import linear_sum_assignment

VARIANTS = ("v2", "v2b")
MAX_IDS = 5000   # D x D counts: 5000 ids take 200 MB; relabel sparse ids densely beyond that


def cluster_accuracy(y_true, y_pred, old_mask, variant: str = "v2") -> dict:
    """{"all", "old", "new"}: fractions in [0, 1] (None for an empty subset, see the module doc).

    y_true (N,) class ids, y_pred (N,) cluster ids, both non-negative ints; old_mask (N,) bool,
    True on rows whose class is old (constant within a class)."""
    y_true, y_pred, old_mask = _check(y_true, y_pred, old_mask, variant)
    d = int(max(y_pred.max(), y_true.max())) + 1
    w = np.zeros((d, d), dtype=np.int64)
    np.add.at(w, (y_pred, y_true), 1)
    clusters, classes = linear_sum_assignment(w.max() - w)
    cluster_of = np.empty(d, dtype=np.int64)
    cluster_of[classes] = clusters                  # square: every class id gets one cluster
    hits = w[cluster_of, np.arange(d)]              # matched rows per class
    sizes = w.sum(0)                                # rows per class
    old = np.unique(y_true[old_mask])
    new = np.unique(y_true[~old_mask])
    if variant == "v2":
        return {"all": float(hits.sum() / len(y_true)),
                "old": float(hits[old].sum() / sizes[old].sum()) if old.size else None,
                "new": float(hits[new].sum() / sizes[new].sum()) if new.size else None}
    per_class = hits / np.maximum(sizes, 1)
    present = np.concatenate([old, new])
    return {"all": float(per_class[present].mean()),
            "old": float(per_class[old].mean()) if old.size else None,
            "new": float(per_class[new].mean()) if new.size else None}


def _check(y_true, y_pred, old_mask, variant):
    if variant not in VARIANTS:
        raise ValueError(f"variant = {variant!r} should be one of {VARIANTS}")
    y_true, y_pred, old_mask = np.asarray(y_true), np.asarray(y_pred), np.asarray(old_mask)
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise ValueError(f"{name} should be a 1-D array of integer ids, got {a.dtype} {a.shape}")
    if old_mask.ndim != 1 or old_mask.dtype != bool:
        raise ValueError(f"old_mask should be a 1-D bool array, got {old_mask.dtype} {old_mask.shape}")
    if not len(y_true) == len(y_pred) == len(old_mask):
        raise ValueError(f"y_true, y_pred and old_mask should have one entry per row, got lengths "
                         f"{len(y_true)}, {len(y_pred)} and {len(old_mask)}")
    if not len(y_true):
        raise ValueError("y_true is empty: the accuracy of no rows is undefined")
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        if a.min() < 0:
            raise ValueError(f"{name} has negative ids {np.unique(a[a < 0])[:5].tolist()}; ids should be >= 0")
    if max(y_true.max(), y_pred.max()) >= MAX_IDS:
        raise ValueError(f"ids reach {max(y_true.max(), y_pred.max())}, at most {MAX_IDS - 1} are supported "
                         f"(the counts are a D x D matrix); relabel them densely, e.g. np.unique(ids, "
                         f"return_inverse=True)[1]")
    mixed = np.intersect1d(y_true[old_mask], y_true[~old_mask])
    if mixed.size:
        raise ValueError(f"classes {mixed[:5].tolist()} have rows both inside and outside old_mask; "
                         f"old_mask should be True exactly on the rows of old classes")
    return y_true.astype(np.int64), y_pred.astype(np.int64), old_mask
