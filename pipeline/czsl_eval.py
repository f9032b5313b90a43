"""The CZSL literature's evaluator (ExplainableML/czsl `models/common.py:Evaluator`), on a score matrix.

Inputs, for N images and P pairs: `scores` (N, P); `labels` (N,) each image's true pair; `pair_ids` (P, 2)
each pair's attr and obj index; `seen` (P,) bool, the train pairs; `scored` (P,) bool, the pairs a
prediction may take (closed world: the split's pairs and the seen ones), None for all (open world).

A bias b is added to every unseen pair's score before the top-k. Sweeping b trades seen accuracy for
unseen accuracy; as the reference: the sweep's biases sit just below the gap (k-th best seen score minus
the true score) of each unseen image the model gets right at the large `bias`, at most ~20 of them, and
the curve ends at `bias` itself. AUC is the area under seen (y) over unseen (x) accuracy.
"""

from dataclasses import dataclass

import numpy as np

GAP_MARGIN = 1e-4   # the reference sets each sweep bias this far below a gap
CURVE_POINTS = 20   # the reference's `magic_binsize`: the sweep keeps every (n // 20)-th gap


@dataclass(frozen=True)
class Accuracy:
    """Top-k accuracy at one bias: of the pair on seen- and on unseen-pair images; of attr and obj on all."""
    seen: float
    unseen: float
    attr: float
    obj: float


@dataclass(frozen=True)
class CZSLResult:
    unbiased: Accuracy        # bias 0 (the reference's `closed_ub_*`)
    biased: Accuracy          # at `bias` (its `closed_*`)
    biases: np.ndarray        # the sweep, then `bias` (its `biaslist` + the final point)
    curve_seen: np.ndarray    # seen accuracy at each of `biases`
    curve_unseen: np.ndarray
    best_seen: float
    best_unseen: float
    best_hm: float            # max over the curve of the harmonic mean of seen and unseen accuracy
    hm_seen: float            # the curve point where it is reached (the first, on ties)
    hm_unseen: float
    hm_bias: float            # its bias (the reference's `biasterm`)
    auc: float


def predict(scores, seen, scored=None, biases=(0.0,), topk: int = 1) -> np.ndarray:
    """(B, N, topk) predicted pairs, best first, with each of `biases` added to the unseen pairs' scores.

    The top-k of (seen scores, unseen scores + b) merges the k best seen and the k best unseen pairs, so
    one top-k per side serves every bias: a seen candidate's rank is its rank among seen pairs plus the
    number of unseen candidates that beat it, and conversely. Ties go to the seen pair, then to the lower
    pair index; b may be ±inf. `scored` as in `evaluate`; None scores every pair.
    """
    scores, seen, scored = _check_scores(scores, seen, scored, topk)
    return _merge(_top(scores, seen, topk), _top(scores, ~seen & scored, topk), biases)


def accuracy(predictions, labels, pair_ids, seen) -> list[Accuracy]:
    """One Accuracy per bias of `predict`'s (B, N, k) output; a hit is the true pair (attr, obj) in the top k.
    An accuracy over no images (e.g. unseen, when every label is seen) is nan."""
    labels, pair_ids, seen = np.asarray(labels), np.asarray(pair_ids), np.asarray(seen, bool)
    hit = (predictions == labels[:, None]).any(-1)                                   # (B, N)
    attr_hit = (pair_ids[predictions, 0] == pair_ids[labels, 0][:, None]).any(-1)
    obj_hit = (pair_ids[predictions, 1] == pair_ids[labels, 1][:, None]).any(-1)
    seen_image = seen[labels]
    return [Accuracy(_mean(h[seen_image]), _mean(h[~seen_image]), _mean(a), _mean(o))
            for h, a, o in zip(hit, attr_hit, obj_hit)]


def evaluate(scores, labels, pair_ids, seen, scored=None, bias: float = 1e3, topk: int = 1) -> CZSLResult:
    """Seen / unseen accuracy, the calibration-bias sweep, best HM and AUC (the reference's defaults:
    `bias` 1e3, which must exceed every score gap, and top-1)."""
    scores, seen, scored = _check_scores(scores, seen, scored, topk)
    labels, pair_ids = _check_labels(labels, pair_ids, scores.shape, seen, scored)
    if topk > seen.sum():
        raise ValueError(f"topk = {topk} should be at most the {int(seen.sum())} seen pairs (the sweep's gaps use "
                         f"the k-th best seen score)")
    seen_top, unseen_top = _top(scores, seen, topk), _top(scores, ~seen & scored, topk)
    at_zero_and_bias = _merge(seen_top, unseen_top, (0.0, bias))
    unbiased, biased = accuracy(at_zero_and_bias, labels, pair_ids, seen)

    # Gaps of the unseen images that `bias` gets right (top-k hits), as the reference's `biaslist`.
    hits = (at_zero_and_bias[1] == labels[:, None]).any(-1)
    unseen_image = ~seen[labels]
    kth_seen = seen_top[0][:, -1]
    gaps = kth_seen - scores[np.arange(len(labels)), labels]
    gaps = np.sort(gaps[unseen_image & hits] - GAP_MARGIN)
    biases = np.append(gaps[::max(len(gaps) // CURVE_POINTS, 1)], bias)

    curve = accuracy(_merge(seen_top, unseen_top, biases), labels, pair_ids, seen)
    curve_seen = np.array([a.seen for a in curve])
    curve_unseen = np.array([a.unseen for a in curve])
    total = curve_seen + curve_unseen
    hm = np.divide(2 * curve_seen * curve_unseen, total, out=np.zeros_like(total), where=total > 0)
    best = int(np.argmax(hm))
    return CZSLResult(unbiased, biased, biases, curve_seen, curve_unseen,
                      best_seen=float(curve_seen.max()), best_unseen=float(curve_unseen.max()),
                      best_hm=float(hm[best]), hm_seen=float(curve_seen[best]), hm_unseen=float(curve_unseen[best]),
                      hm_bias=float(biases[best]), auc=float(np.trapezoid(curve_seen, curve_unseen)))


def _top(scores: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) best scores among the `allowed` pairs, best first (-inf where fewer than k), and their pairs.
    k argmax passes, not a sort: k is small, and argmax breaks ties towards the lower index."""
    masked = np.where(allowed, scores, -np.inf)
    images = np.arange(len(scores))
    pairs = np.empty((len(scores), k), dtype=np.int64)
    values = np.empty((len(scores), k))
    for j in range(k):
        pairs[:, j] = masked.argmax(1)
        values[:, j] = masked[images, pairs[:, j]]
        masked[images, pairs[:, j]] = -np.inf
    return values, pairs


def _merge(seen_top, unseen_top, biases) -> np.ndarray:
    """(B, N, k) top-k pairs of `_top`'s seen and unseen candidates, with each bias added to the unseen ones."""
    (seen_score, seen_pair), (unseen_score, unseen_pair) = seen_top, unseen_top
    k = seen_pair.shape[1]
    b = np.asarray(biases, dtype=np.float64)[:, None, None, None]
    real_seen, real_unseen = np.isfinite(seen_score)[:, :, None], np.isfinite(unseen_score)[:, None, :]
    both = real_seen & real_unseen
    # gap[n, j, m]: j-th seen minus m-th unseen score; a masked (-inf) candidate loses to every real one.
    gap = np.where(both, np.nan_to_num(seen_score, neginf=0)[:, :, None]
                   - np.nan_to_num(unseen_score, neginf=0)[:, None, :], 0.0)
    seen_wins = np.where(both, gap >= b, real_seen & ~real_unseen)
    unseen_wins = np.where(both, gap < b, real_unseen & ~real_seen)
    rank = np.arange(k)
    seen_rank = rank + unseen_wins.sum(-1)                  # (B, N, k)
    unseen_rank = rank + seen_wins.sum(-2)
    order = np.argsort(np.concatenate([seen_rank, unseen_rank], -1), axis=-1, kind="stable")[..., :k]
    candidates = np.broadcast_to(np.concatenate([seen_pair, unseen_pair], -1), order.shape[:-1] + (2 * k,))
    return np.take_along_axis(candidates, order, -1)


def _mean(hits: np.ndarray) -> float:
    """Fraction of hits; nan when there are no such images."""
    return float(hits.mean()) if hits.size else float("nan")


def _check_scores(scores, seen, scored, topk):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or not np.isfinite(scores).all():
        raise ValueError(f"scores should be a finite (images, pairs) matrix, got shape {scores.shape}"
                         + ("" if scores.ndim != 2 else " with non-finite values"))
    seen = np.asarray(seen)
    if seen.dtype != bool or seen.shape != scores.shape[1:]:
        raise ValueError(f"seen should be a bool mask over the {scores.shape[1]} pairs, got {seen.dtype} {seen.shape}")
    scored = np.ones_like(seen) if scored is None else np.asarray(scored)
    if scored.dtype != bool or scored.shape != seen.shape:
        raise ValueError(f"scored should be None or a bool mask over the {len(seen)} pairs, "
                         f"got {scored.dtype} {scored.shape}")
    if (seen & ~scored).any():
        raise ValueError(f"seen pairs {np.flatnonzero(seen & ~scored).tolist()} are not scored; the closed world "
                         f"scores the split's pairs and every seen pair")
    if not (type(topk) is int and 1 <= topk <= scored.sum()):
        raise ValueError(f"topk = {topk!r} should be an int from 1 to the {int(scored.sum())} scored pairs")
    return scores, seen, scored


def _check_labels(labels, pair_ids, shape, seen, scored):
    labels, pair_ids = np.asarray(labels), np.asarray(pair_ids)
    n_images, n_pairs = shape
    if labels.shape != (n_images,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels should be {n_images} pair indices, got {labels.dtype} {labels.shape}")
    outside = labels[(labels < 0) | (labels >= n_pairs)]
    if outside.size:
        raise ValueError(f"labels {outside[:5].tolist()} should be pair indices in 0..{n_pairs - 1}")
    if pair_ids.shape != (n_pairs, 2) or pair_ids.dtype.kind not in "iu" or len(np.unique(pair_ids, axis=0)) < n_pairs:
        raise ValueError(f"pair_ids should be {n_pairs} distinct (attr, obj) index rows, got {pair_ids.shape}")
    if not scored[labels].all():
        raise ValueError(f"images {np.flatnonzero(~scored[labels])[:5].tolist()} have true pairs that are not scored")
    n_seen = int(seen[labels].sum())
    if n_seen in (0, n_images):
        raise ValueError(f"labels should include images of both seen and unseen pairs ({n_seen} of {n_images} "
                         f"are seen); the seen / unseen accuracies and their HM need both")
    return labels, pair_ids
