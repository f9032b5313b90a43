"""The GCD clustering accuracy against a brute force over one-to-one maps, a loop transcription of the
reference's `split_cluster_acc_v2`, and hand computations."""

from itertools import permutations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from pipeline import gcd_eval


def brute_force(y_true, y_pred):
    """Every one-to-one map of the present clusters to the present classes (either side may be left
    over): (best matched rows, and the (old hits, new hits, per-class hits) of each map reaching it)."""
    clusters, classes = np.unique(y_pred), np.unique(y_true)
    count = {(p, c): int(((y_pred == p) & (y_true == c)).sum()) for p in clusters for c in classes}
    k = max(len(clusters), len(classes))
    best, reached = -1, []
    for perm in permutations(range(k), len(classes)):   # class i -> cluster perm[i], none if past the end
        hits = {c: count[clusters[j], c] if j < len(clusters) else 0 for c, j in zip(classes, perm)}
        total = sum(hits.values())
        if total > best:
            best, reached = total, []
        if total == best:
            reached.append(hits)
    return best, reached


def summaries(hits, y_true, old_mask):
    """v2 and v2b (all, old, new) of one map's per-class hits."""
    old, new = set(y_true[old_mask].tolist()), set(y_true[~old_mask].tolist())
    size = {c: int((y_true == c).sum()) for c in hits}
    v2 = (sum(hits.values()) / len(y_true),
          sum(hits[c] for c in old) / sum(size[c] for c in old) if old else None,
          sum(hits[c] for c in new) / sum(size[c] for c in new) if new else None)
    v2b = (np.mean([hits[c] / size[c] for c in hits]),
           np.mean([hits[c] / size[c] for c in old]) if old else None,
           np.mean([hits[c] / size[c] for c in new]) if new else None)
    return v2, v2b


def reference_v2(y_true, y_pred, mask):
    """The reference's v2 step by step: square count matrix, one assignment, then loops over classes."""
    d = max(y_pred.max(), y_true.max()) + 1
    w = np.zeros((d, d), dtype=int)
    for p, t in zip(y_pred, y_true):
        w[p, t] += 1
    rows, cols = linear_sum_assignment(w.max() - w)
    cluster_of = dict(zip(cols.tolist(), rows.tolist()))
    total = sum(w[r, c] for r, c in zip(rows, cols)) / len(y_true)
    split = []
    for classes in (set(y_true[mask].tolist()), set(y_true[~mask].tolist())):
        split.append(sum(w[cluster_of[c], c] for c in classes) / sum(w[:, c].sum() for c in classes))
    return total, split[0], split[1]


def _close(a, b):
    return all((x is None and y is None) or (x is not None and y is not None and abs(x - y) < 1e-12)
               for x, y in zip(a, b))


def random_case(rng, n_classes, n_clusters):
    n = int(rng.integers(n_classes, 14))
    y_true = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    ids = rng.choice(40, n_clusters, replace=False)          # arbitrary, sparse cluster ids
    y_pred = ids[rng.integers(0, n_clusters, n)]
    n_old = int(rng.integers(0, n_classes + 1))               # sometimes no old, sometimes no new class
    return y_true, y_pred, y_true < n_old


@pytest.mark.parametrize("n_classes, n_clusters", [(3, 3), (3, 5), (4, 2), (2, 6), (5, 4), (1, 3)])
def test_matches_brute_force_over_one_to_one_maps(n_classes, n_clusters):
    rng = np.random.default_rng(n_classes * 10 + n_clusters)
    for _ in range(40):
        y_true, y_pred, old_mask = random_case(rng, n_classes, n_clusters)
        best, reached = brute_force(y_true, y_pred)
        v2 = gcd_eval.cluster_accuracy(y_true, y_pred, old_mask)
        v2b = gcd_eval.cluster_accuracy(y_true, y_pred, old_mask, variant="v2b")
        assert v2["all"] == pytest.approx(best / len(y_true))
        # Old / New (and v2b) are those of ONE optimal map: the same for both variants.
        got = ((v2["all"], v2["old"], v2["new"]), (v2b["all"], v2b["old"], v2b["new"]))
        assert any(_close(got[0], s[0]) and _close(got[1], s[1])
                   for s in (summaries(h, y_true, old_mask) for h in reached))


def test_matches_the_reference_loop_including_ties():
    rng = np.random.default_rng(7)
    for _ in range(200):
        y_true, y_pred, old_mask = random_case(rng, int(rng.integers(2, 6)), int(rng.integers(1, 7)))
        if old_mask.all() or not old_mask.any():
            continue
        r = gcd_eval.cluster_accuracy(y_true, y_pred, old_mask)
        assert (r["all"], r["old"], r["new"]) == pytest.approx(reference_v2(y_true, y_pred, old_mask))


def test_the_map_is_chosen_once_on_all_rows():
    # Cluster 7 holds old class 0 (3 rows) and new class 1 (2 rows): globally it goes to class 0, so
    # New is 0, where a map chosen on the new rows alone would give class 1 cluster 7 and New = 1.
    y_true, y_pred = np.array([0, 0, 0, 1, 1]), np.array([7, 7, 7, 7, 7])
    r = gcd_eval.cluster_accuracy(y_true, y_pred, y_true == 0)
    assert r == {"all": 3 / 5, "old": 1.0, "new": 0.0}


def test_v2_and_v2b_by_hand():
    # Old classes 0 (4 rows), 1 (2 rows); new class 2 (4 rows).
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0, 0])
    # Counts (cluster, class): (0,0) 3, (1,0) 1, (1,1) 1, (2,1) 1, (2,2) 2, (0,2) 2. The best map is the
    # identity (3 + 1 + 2 = 6); every other map matches at most 4. Per class: 3/4, 1/2, 2/4.
    old = y_true < 2
    assert gcd_eval.cluster_accuracy(y_true, y_pred, old) == pytest.approx({"all": 0.6, "old": 4 / 6, "new": 0.5})
    v2b = gcd_eval.cluster_accuracy(y_true, y_pred, old, variant="v2b")
    assert v2b == pytest.approx({"all": (0.75 + 0.5 + 0.5) / 3, "old": (0.75 + 0.5) / 2, "new": 0.5})


@pytest.mark.parametrize("variant", gcd_eval.VARIANTS)
def test_perfect_clustering_with_permuted_ids_scores_one(variant):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 6, 200)
    ids = np.array([40, 3, 17, 0, 8, 25])                    # class c is cluster ids[c]
    r = gcd_eval.cluster_accuracy(y_true, ids[y_true], y_true < 3, variant=variant)
    assert r == {"all": 1.0, "old": 1.0, "new": 1.0}


@pytest.mark.parametrize("variant", gcd_eval.VARIANTS)
def test_an_absent_subset_is_none(variant):
    y_true, y_pred = np.array([0, 1, 1]), np.array([1, 0, 0])
    assert gcd_eval.cluster_accuracy(y_true, y_pred, np.ones(3, bool), variant)["new"] is None
    r = gcd_eval.cluster_accuracy(y_true, y_pred, np.zeros(3, bool), variant)
    assert r["old"] is None and r["new"] == 1.0


@pytest.mark.parametrize("args, message", [
    (([0, 1], [0, 1, 1], [True, False]), "lengths 2, 3 and 2"),
    (([0, 1], [0, 1], [True]), "lengths 2, 2 and 1"),
    (([0, -1], [0, 1], [True, False]), r"y_true has negative ids \[-1\]"),
    (([0, 1], [-3, 1], [True, False]), r"y_pred has negative ids \[-3\]"),
    (([], [], []), "should be a 1-D array of integer ids"),
    ((np.array([], int), np.array([], int), np.array([], bool)), "y_true is empty"),
    (([0.0, 1.0], [0, 1], [True, False]), "y_true should be a 1-D array of integer ids, got float64"),
    (([0, 1], [0, 1], [1, 0]), "old_mask should be a 1-D bool array, got int64"),
    (([0, 0, 1], [0, 1, 1], [True, False, False]), r"classes \[0\] have rows both inside and outside"),
    (([0, 1], [0, 9999], [True, False]), "relabel them densely"),
])
def test_bad_inputs_say_what_was_expected(args, message):
    y_true, y_pred, old_mask = (np.asarray(a) for a in args)
    with pytest.raises(ValueError, match=message):
        gcd_eval.cluster_accuracy(y_true, y_pred, old_mask)


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"variant = 'v1' should be one of \('v2', 'v2b'\)"):
        gcd_eval.cluster_accuracy(np.array([0]), np.array([0]), np.array([True]), variant="v1")
