"""The CZSL evaluator against hand computations, a plain-Python loop over biases, and its invariants."""

import numpy as np
import pytest

from pipeline import czsl_eval

# Pairs: p0 = (red, cat), p1 = (red, dog) seen; p2 = (blue, cat), p3 = (blue, dog) unseen.
PAIR_IDS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
SEEN = np.array([True, True, False, False])
#                      p0    p1    p2    p3
SCORES = np.array([[0.9, 0.1, 0.5, 0.0],     # i0 true p0: right; turns to p2 once b > 0.4
                   [0.2, 0.6, 0.0, 0.3],     # i1 true p1: right; turns to p3 once b > 0.3
                   [0.3, 0.7, 0.1, 0.2],     # i2 true p0: predicts p1 (attr right, obj wrong)
                   [0.8, 0.1, 0.6, 0.2],     # i3 true p2: predicts p0 (obj right); gap 0.8 - 0.6 = 0.2
                   [0.1, 0.4, 0.2, 0.35],    # i4 true p3: predicts p1 (obj right); gap 0.4 - 0.35 = 0.05
                   [0.5, 0.0, 0.9, 0.1]])    # i5 true p3: predicts p2 (attr right) at any bias >= 0
LABELS = np.array([0, 1, 0, 2, 3, 3])


def test_hand_computed_example():
    r = czsl_eval.evaluate(SCORES, LABELS, PAIR_IDS, SEEN)
    # Bias 0: seen i0, i1 right of i0-i2; no unseen image right. Attr right on i0, i1, i2, i5; obj on i0, i1, i3, i4.
    assert r.unbiased == czsl_eval.Accuracy(seen=2 / 3, unseen=0, attr=4 / 6, obj=4 / 6)
    # Bias 1e3: every prediction is the best unseen pair: i0 p2, i1 p3, i2 p3, i3 p2, i4 p3, i5 p2.
    # Right: i3, i4 (unseen 2/3); attr (blue) right on i3, i4, i5; obj on i0, i3, i4, i5.
    assert r.biased == czsl_eval.Accuracy(seen=0, unseen=2 / 3, attr=3 / 6, obj=4 / 6)
    # Sweep: gaps of the unseen images right at 1e3 (i3: 0.2, i4: 0.05), minus 1e-4, sorted; 2 // 20 = 0 -> step 1.
    np.testing.assert_allclose(r.biases, [0.0499, 0.1999, 1e3])
    # b = 0.0499: i0, i1 still right, i2 wrong; i4's p3 at 0.3999 < 0.4 -> no unseen right.
    # b = 0.1999: i0 (0.6999 < 0.9), i1 (0.4999 < 0.6) right; i3 at 0.7999 < 0.8 wrong, i4's p3 0.5499 > 0.4 right.
    np.testing.assert_allclose(r.curve_seen, [2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(r.curve_unseen, [0, 1 / 3, 2 / 3])
    # HM: 0, 2 (2/3)(1/3) / (2/3 + 1/3) = 4/9, 0.
    assert r.best_hm == pytest.approx(4 / 9)
    assert (r.hm_seen, r.hm_unseen, r.hm_bias) == pytest.approx((2 / 3, 1 / 3, 0.1999))
    assert (r.best_seen, r.best_unseen) == pytest.approx((2 / 3, 2 / 3))
    # Trapezoids over unseen: (1/3)(2/3 + 2/3)/2 + (1/3)(2/3 + 0)/2 = 2/9 + 1/9.
    assert r.auc == pytest.approx(1 / 3)


def test_top2_hand_computed():
    # Top-2 at bias 0, (best, second): i0 p0 p2, i1 p1 p3, i2 p1 p0, i3 p0 p2, i4 p1 p3, i5 p2 p0.
    predictions = czsl_eval.predict(SCORES, SEEN, topk=2)
    np.testing.assert_array_equal(predictions[0], [[0, 2], [1, 3], [1, 0], [0, 2], [1, 3], [2, 0]])
    # Hits: i0, i1, i2 (seen 3/3); i3, i4 (unseen 2/3). i5 (true blue dog) has blue in p2 but dog in neither.
    (acc,) = czsl_eval.accuracy(predictions, LABELS, PAIR_IDS, SEEN)
    assert acc == czsl_eval.Accuracy(seen=1, unseen=2 / 3, attr=1, obj=5 / 6)


def test_closed_world_masks_pairs_outside_the_split():
    # p3 is an unseen pair of another split: the closed world never predicts it.
    scores = np.array([[0.1, 0.2, 0.5, 0.9],     # true p2: open world p3 (wrong), closed p2
                       [0.6, 0.1, 0.2, 0.7],     # true p0: open world p3 (wrong), closed p0
                       [0.1, 0.3, 0.2, 0.0]])    # true p1: p1 in both
    labels, closed = np.array([2, 0, 1]), np.array([True, True, True, False])
    (open_world,) = czsl_eval.accuracy(czsl_eval.predict(scores, SEEN), labels, PAIR_IDS, SEEN)
    (closed_world,) = czsl_eval.accuracy(czsl_eval.predict(scores, SEEN, closed), labels, PAIR_IDS, SEEN)
    assert (open_world.seen, open_world.unseen) == (1 / 2, 0)
    assert (closed_world.seen, closed_world.unseen) == (1, 1)


def test_infinite_biases_predict_only_unseen_or_only_seen_pairs():
    rng = np.random.default_rng(0)
    scores, seen = rng.normal(size=(30, 9)), np.arange(9) % 3 == 0      # 3 seen, 6 unseen pairs
    plus, minus = czsl_eval.predict(scores, seen, biases=(np.inf, -np.inf), topk=3)
    assert not seen[plus].any() and seen[minus].all()
    # Within each side the order is the scores' order: +inf gives the 3 best unseen pairs, best first.
    np.testing.assert_array_equal(plus, np.argsort(-np.where(seen, -np.inf, scores), axis=1)[:, :3])


def test_ties_go_to_the_seen_pair_then_the_lower_index():
    scores = np.array([[0.5, 0.1, 0.5, 0.1],      # seen p0 ties unseen p2
                       [0.1, 0.1, 0.3, 0.3]])     # p0 ties p1, p2 ties p3
    np.testing.assert_array_equal(czsl_eval.predict(scores, SEEN, topk=2)[0], [[0, 2], [2, 3]])
    np.testing.assert_array_equal(czsl_eval.predict(scores, SEEN, biases=(0.2,), topk=3)[0], [[2, 0, 3], [2, 3, 0]])


def test_reference_quirk_perfect_scores_never_reach_both_right():
    # The reference's sweep sits just *below* each flip, so a model right on every image at bias 0 gets a
    # curve of only (seen 1, unseen 0) and (0, 1): HM 0, AUC 1/2. Reproduced on purpose.
    labels = np.array([0, 1, 2, 3])
    r = czsl_eval.evaluate(np.eye(4), labels, PAIR_IDS, SEEN)
    assert r.unbiased.seen == r.unbiased.unseen == 1
    np.testing.assert_allclose(r.biases, [-1.0001, -1.0001, 1e3])
    assert (r.best_hm, r.auc) == (0, pytest.approx(0.5))


def brute_force(scores, labels, pair_ids, seen, scored, bias, topk):
    """The reference's procedure, one image and one bias at a time in plain Python."""
    n, p = scores.shape
    allowed = [j for j in range(p) if scored is None or scored[j]]

    def top(i, b):
        biased = {j: scores[i, j] + (0 if seen[j] else b) for j in allowed}
        return sorted(allowed, key=lambda j: -biased[j])[:topk]

    def accuracies(b):
        hits = [labels[i] in top(i, b) for i in range(n)]
        seen_hits = [h for h, lab in zip(hits, labels) if seen[lab]]
        unseen_hits = [h for h, lab in zip(hits, labels) if not seen[lab]]
        return sum(seen_hits) / len(seen_hits), sum(unseen_hits) / len(unseen_hits)

    gaps = []
    for i in range(n):
        if not seen[labels[i]] and labels[i] in top(i, bias):
            kth_seen = sorted((scores[i, j] for j in range(p) if seen[j]), reverse=True)[topk - 1]
            gaps.append(kth_seen - scores[i, labels[i]] - 1e-4)
    gaps.sort()
    biases = gaps[::max(len(gaps) // 20, 1)] + [bias]
    curve = [accuracies(b) for b in biases]
    hms = [2 * s * u / (s + u) if s + u else 0.0 for s, u in curve]
    best = hms.index(max(hms))
    auc = sum((curve[t + 1][1] - curve[t][1]) * (curve[t + 1][0] + curve[t][0]) / 2 for t in range(len(curve) - 1))
    return biases, curve, max(hms), biases[best], auc


def _random_case(seed, n_images=150, n_attrs=4, n_objs=5):
    rng = np.random.default_rng(seed)
    pair_ids = np.array([(a, o) for a in range(n_attrs) for o in range(n_objs)])
    p = len(pair_ids)
    seen = rng.permutation(p) < p // 2
    scored = rng.random(p) < 0.8
    scored |= seen
    labels = rng.choice(np.flatnonzero(scored), n_images)
    labels[:2] = [np.flatnonzero(seen)[0], np.flatnonzero(scored & ~seen)[0]]   # both kinds of image
    # Seen pairs score higher, as a trained model's do, so the sweep has work to do.
    scores = rng.normal(size=(n_images, p)) + 0.8 * seen
    scores[np.arange(n_images), labels] += 1.0
    return scores, labels, pair_ids, seen, scored


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("topk", [1, 2, 3])
@pytest.mark.parametrize("closed", [True, False])
def test_matches_brute_force(seed, topk, closed):
    scores, labels, pair_ids, seen, scored = _random_case(seed)
    scored = scored if closed else None
    r = czsl_eval.evaluate(scores, labels, pair_ids, seen, scored, bias=1e3, topk=topk)
    biases, curve, best_hm, hm_bias, auc = brute_force(scores, labels, pair_ids, seen, scored, 1e3, topk)
    np.testing.assert_allclose(r.biases, biases)
    np.testing.assert_allclose(np.c_[r.curve_seen, r.curve_unseen], curve)
    assert (r.best_hm, r.hm_bias, r.auc) == pytest.approx((best_hm, hm_bias, auc))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("topk", [1, 3])
def test_curve_invariants(seed, topk):
    scores, labels, pair_ids, seen, scored = _random_case(seed, n_images=300)
    r = czsl_eval.evaluate(scores, labels, pair_ids, seen, scored, topk=topk)
    # More bias: unseen accuracy never falls, seen accuracy never rises.
    assert (np.diff(r.biases) >= 0).all()
    assert (np.diff(r.curve_unseen) >= 0).all() and (np.diff(r.curve_seen) <= 0).all()
    assert 0 <= r.auc <= r.best_seen * r.best_unseen + 1e-12
    assert min(r.hm_seen, r.hm_unseen) <= r.best_hm <= max(r.hm_seen, r.hm_unseen)
    assert r.best_hm <= max(r.best_seen, r.best_unseen)
    assert r.curve_unseen[-1] == r.biased.unseen == r.best_unseen


def test_attribute_and_object_accuracy_follow_the_predicted_pair():
    scores, labels, pair_ids, seen, scored = _random_case(3)
    (predictions,) = czsl_eval.predict(scores, seen, scored)
    (acc,) = czsl_eval.accuracy(predictions[None], labels, pair_ids, seen)
    assert acc.attr == np.mean(pair_ids[predictions[:, 0], 0] == pair_ids[labels, 0])
    assert acc.obj == np.mean(pair_ids[predictions[:, 0], 1] == pair_ids[labels, 1])


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(scores=np.full((6, 4), np.nan)), "non-finite"),
    (lambda a: a.update(seen=np.array([1, 1, 0, 0])), "seen should be a bool mask"),
    (lambda a: a.update(scored=np.array([False, True, True, True])), r"seen pairs \[0\] are not scored"),
    (lambda a: a.update(scored=np.array([True, True, False, True])), "true pairs that are not scored"),
    (lambda a: a.update(labels=np.array([0, 1, 0, 0, 1, 4])), r"labels \[4\] should be pair indices in 0..3"),
    (lambda a: a.update(labels=np.array([0, 1, 0, 0, 1, 1])), "both seen and unseen"),
    (lambda a: a.update(topk=3), "topk = 3 should be at most the 2 seen pairs"),
    (lambda a: a.update(topk=0), "topk = 0 should be an int"),
    (lambda a: a.update(pair_ids=np.array([[0, 0], [0, 1], [1, 0], [0, 0]])), "distinct"),
])
def test_bad_inputs_are_named(change, message):
    args = dict(scores=SCORES, labels=LABELS, pair_ids=PAIR_IDS, seen=SEEN, scored=None, topk=1)
    change(args)
    with pytest.raises(ValueError, match=message):
        czsl_eval.evaluate(**args)
