"""RE-tune's multi-label metrics (METHODS.md §15.3.4): per-label and macro / weighted AUROC, macro F1, subset
accuracy, the task x label AUROC matrix and forgetting. Plain functions over arrays.

Inputs: Y (N, C) targets in {0, 1}, NaN where a cell is ignored (`pipeline.multilabel`); cos_pos, cos_neg
(N, C), the cosines of the adapted image to the adapted mean positive / negative prompts of each label.
- Scores (for AUROC), by rule: "positive" = (cos+ + 1) / 2, the reference's default; "difference" =
  (cos+ - cos- + 2) / 4 (its PRED_LOGIT_DIFF). Both are reported.
- Predictions (for F1, subset accuracy): 1[cos+ > cos-], whatever the rule.
- NaN cells are masked: a label's AUROC and F1 use its known rows; subset accuracy is over the rows with a
  known cell, a row matching exactly when all of its known cells match.
- A label whose known test rows hold no positive or no negative has AUROC None with the reason; the macro
  and weighted averages leave it out, with a warning, never a silent NaN. Weighted = sklearn's weighting, by
  each label's count of positives.
"""

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

RULES = ("positive", "difference")


def score_of(rule: str, cos_pos: np.ndarray, cos_neg: np.ndarray) -> np.ndarray:
    """AUROC scores in [0, 1] under `rule` (RULES)."""
    if rule == "positive":
        return (cos_pos + 1) / 2
    if rule == "difference":
        return (cos_pos - cos_neg + 2) / 4
    raise ValueError(f"score rule {rule!r} should be one of {list(RULES)}")


def label_auroc(y: np.ndarray, s: np.ndarray) -> tuple[float | None, str | None]:
    """(AUROC, None) of one label's targets (NaN = ignored) and scores, or (None, why it is undefined)."""
    known = ~np.isnan(y)
    y, s = y[known], s[known]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        what = "no known target" if not len(y) else ("no positive" if n_pos == 0 else "no negative")
        return None, f"{what} among the {len(y)} known test rows ({n_pos} positive, {n_neg} negative)"
    return float(roc_auc_score(y, s)), None


def auroc(Y: np.ndarray, S: np.ndarray, labels: Sequence[str]) -> dict:
    """{"macro", "weighted", "per_label": {label: value or None}, "undefined": {label: reason}}; labels with
    an undefined AUROC are left out of both averages (a warning says so); both averages are None if all are."""
    per, why = {}, {}
    for c, name in enumerate(labels):
        per[name], reason = label_auroc(Y[:, c], S[:, c])
        if reason:
            why[name] = reason
            warnings.warn(f"AUROC of label {name!r} is undefined: {reason}; macro and weighted AUROC leave it out",
                          stacklevel=2)
    ok = [c for c, name in enumerate(labels) if per[name] is not None]
    values = np.array([per[labels[c]] for c in ok])
    support = np.array([np.nansum(Y[:, c]) for c in ok])
    return {"macro": float(values.mean()) if ok else None,
            "weighted": float((values * support).sum() / support.sum()) if ok else None,
            "per_label": per, "undefined": why}


def evaluate(Y: np.ndarray, cos_pos: np.ndarray, cos_neg: np.ndarray, labels: Sequence[str]) -> dict:
    """All metrics of one evaluation: subset accuracy, macro F1, per-label F1, and AUROC under both rules."""
    Y, cos_pos, cos_neg = (np.asarray(a, dtype=np.float64) for a in (Y, cos_pos, cos_neg))
    if not (Y.shape == cos_pos.shape == cos_neg.shape and Y.ndim == 2 and Y.shape[1] == len(labels)):
        raise ValueError(f"evaluate: Y {Y.shape}, cos_pos {cos_pos.shape}, cos_neg {cos_neg.shape} should all be "
                         f"(N, {len(labels)}) for labels {list(labels)}")
    P = (cos_pos > cos_neg).astype(np.float64)
    known = ~np.isnan(Y)
    if known.all():
        subset = float(accuracy_score(Y, P))
    else:   # exact match on the known cells of each row that has any
        rows = known.any(axis=1)
        subset = float(np.mean(np.all((P == Y) | ~known, axis=1)[rows])) if rows.any() else None
    f1 = {name: float(f1_score(Y[known[:, c], c], P[known[:, c], c], zero_division=0))
          for c, name in enumerate(labels) if known[:, c].any()}
    return {"rows": len(Y), "subset_accuracy": subset,
            "f1_macro": float(np.mean(list(f1.values()))) if f1 else None, "f1_per_label": f1,
            "auroc": {rule: auroc(Y, score_of(rule, cos_pos, cos_neg), labels) for rule in RULES}}


def auroc_matrix(evaluations: Sequence[dict], labels: Sequence[str], rule: str) -> list[list[float | None]]:
    """Task x label AUROC (rows: the evaluation after each task), None where undefined."""
    return [[e["auroc"][rule]["per_label"][name] for name in labels] for e in evaluations]


def forgetting(matrix: Sequence[Sequence[float | None]], labels: Sequence[str]) -> dict[str, float | None]:
    """Per label: the best AUROC after an earlier task minus the final one (may be negative when the final is
    the best). None with a single task, or when the final or every earlier AUROC is undefined."""
    out = {}
    for c, name in enumerate(labels):
        earlier = [row[c] for row in matrix[:-1] if row[c] is not None]
        final = matrix[-1][c] if matrix else None
        out[name] = float(max(earlier) - final) if earlier and final is not None else None
    return out
