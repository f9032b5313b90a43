"""pipeline.retrieval against hand-computed values and independent brute-force references."""

import faiss
import numpy as np
import pytest

from pipeline import retrieval
from pipeline.retrieval import GPU_MAX_K, evaluate, evaluate_topk, l2_normalize, search

GPU = faiss.get_num_gpus() > 0 and retrieval._torch_cuda()


# ---------------------------------------------------------------- independent references


def ref_query_metrics(ranked_rel, ks):
    """Metrics of one query by their definitions, from the relevance of the full ranking (in rank order)."""
    big_r = sum(ranked_rel)
    hits, ap, ap_at_r = 0, 0.0, 0.0
    for pos, rel in enumerate(ranked_rel, start=1):
        if rel:
            hits += 1
            ap += hits / pos
            if pos <= big_r:
                ap_at_r += hits / pos
    out = {"mAP": ap / big_r, "mAP@R": ap_at_r / big_r, "P@R": sum(ranked_rel[:big_r]) / big_r}
    out.update({f"R@{k}": float(any(ranked_rel[:k])) for k in ks})
    return out


def ref_topk_metrics(ranked_rel, ks):
    """R@k and mAP@k of one query by definition: AP over the top k, divided by min(k, R)."""
    big_r = sum(ranked_rel)
    out = {}
    for k in ks:
        hits, ap = 0, 0.0
        for pos, rel in enumerate(ranked_rel[:k], start=1):
            if rel:
                hits += 1
                ap += hits / pos
        out[f"R@{k}"] = float(hits > 0)
        out[f"mAP@{k}"] = ap / min(k, big_r)
    return out


def ref_evaluate(query, query_labels, gallery, gallery_labels, ks, query_ids=None, gallery_ids=None,
                 per_query_metrics=ref_query_metrics):
    """Brute force in float64: python sort by (-score, gallery index), own item dropped by id."""
    q = np.asarray(query, np.float64)
    g = np.asarray(gallery, np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    per_query, skipped = [], 0
    for i in range(len(q)):
        scores = [float(np.dot(q[i], g[j])) for j in range(len(g))]
        ranking = sorted(range(len(g)), key=lambda j: (-scores[j], j))
        if query_ids is not None:
            ranking = [j for j in ranking if gallery_ids[j] != query_ids[i]]
        ranked_rel = [int(gallery_labels[j] == query_labels[i]) for j in ranking]
        if sum(ranked_rel) == 0:
            skipped += 1
            continue
        per_query.append(per_query_metrics(ranked_rel, ks))
    out = {key: 100 * float(np.mean([m[key] for m in per_query])) for key in per_query[0]}
    out["n_queries"] = len(per_query)
    out["n_skipped_no_relevant"] = skipped
    return out


def assert_no_near_ties(query, gallery, gap=1e-5):
    """Guard: distinct float64 scores are far enough apart that float32 rounding cannot reorder them."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    for row in q.astype(np.float64) @ g.astype(np.float64).T:
        d = np.diff(np.sort(row))
        assert not ((d > 0) & (d < gap)).any()


def assert_metrics_close(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def vectors_for_scores(scores):
    """Query i = e_i and gallery j = (scores[:, j], padding): query i . gallery j = scores[i, j]."""
    scores = np.asarray(scores, np.float64)
    n_q, n_g = scores.shape
    pad = np.sqrt(1.0 - (scores**2).sum(axis=0))
    query = np.eye(n_q, n_q + 1, dtype=np.float32)
    gallery = np.vstack([scores, pad]).T.astype(np.float32)
    return query, gallery


def random_case(seed, n_q=12, n_g=40, dim=8, n_dup=4):
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n_g, dim)).astype(np.float32)
    gallery[-n_dup:] = gallery[:n_dup]  # exact duplicates: exact ties
    gallery_labels = rng.integers(0, 4, n_g)
    query = rng.standard_normal((n_q, dim)).astype(np.float32)
    query_labels = rng.integers(0, 5, n_q)  # label 4 is absent from the gallery
    query_labels[0] = 4
    return query, query_labels, gallery, gallery_labels


# ---------------------------------------------------------------- hand-made rankings


def test_reference_metrics_on_hand_values():
    # relevant at ranks 1 and 3 of 5
    m = ref_query_metrics([1, 0, 1, 0, 0], ks=(1, 2))
    assert m == pytest.approx({"mAP": (1 / 1 + 2 / 3) / 2, "mAP@R": (1 / 1) / 2, "P@R": 1 / 2,
                               "R@1": 1.0, "R@2": 1.0})
    # R = 2: the top 1 can hold one relevant item, the top 3 both
    m = ref_topk_metrics([0, 1, 1, 0, 0], ks=(1, 2, 3))
    assert m == pytest.approx({"R@1": 0.0, "R@2": 1.0, "R@3": 1.0, "mAP@1": 0.0, "mAP@2": (1 / 2) / 2,
                               "mAP@3": (1 / 2 + 2 / 3) / 2})


# gallery labels 0,1,0,1,1,2; query 0 (label 0) ranks the gallery 0,1,2,3,4,5 -> relevant at ranks 1, 3;
# query 1 (label 1) ranks it 5,0,3,2,1,4 -> relevant at ranks 3, 5, 6; query 2 (label 3) has no relevant item
HAND_SCORES = [[0.50, 0.40, 0.30, 0.20, 0.10, 0.05],
               [0.40, 0.10, 0.20, 0.30, 0.05, 0.50],
               [0.10, 0.10, 0.10, 0.10, 0.10, 0.10]]
HAND_LABELS = {"query_labels": [0, 1, 3], "gallery_labels": [0, 1, 0, 1, 1, 2]}


@pytest.mark.parametrize("full_ranking", [True, False])
def test_hand_made_rankings(full_ranking):
    query, gallery = vectors_for_scores(HAND_SCORES)
    got = evaluate(query=query, gallery=gallery, **HAND_LABELS, ks=(1, 2, 3), full_ranking=full_ranking)
    ap = [(1 / 1 + 2 / 3) / 2, (1 / 3 + 2 / 5 + 3 / 6) / 3]
    ap_at_r = [(1 / 1) / 2, (1 / 3) / 3]  # R = 2: top-2 has one hit at rank 1; R = 3: one hit at rank 3
    p_at_r = [1 / 2, 1 / 3]
    want = {"mAP@R": 100 * np.mean(ap_at_r), "P@R": 100 * np.mean(p_at_r),
            "R@1": 50.0, "R@2": 50.0, "R@3": 100.0, "n_queries": 2, "n_skipped_no_relevant": 1}
    if full_ranking:
        want["mAP"] = 100 * np.mean(ap)
    assert_metrics_close(got, want)


@pytest.mark.parametrize("gallery_chunk", [1, 4, 6])
def test_topk_hand_made_rankings(gallery_chunk):
    # query 0 (R = 2) relevant at ranks 1, 3; query 1 (R = 3) at 3, 5, 6
    query, gallery = vectors_for_scores(HAND_SCORES)
    got = evaluate_topk(query=query, gallery=gallery, **HAND_LABELS, ks=(1, 2, 3), gallery_chunk=gallery_chunk)
    ap_at = {1: [1 / 1, 0.0], 2: [(1 / 1) / 2, 0.0], 3: [(1 / 1 + 2 / 3) / 2, (1 / 3) / 3]}
    want = {"R@1": 50.0, "R@2": 50.0, "R@3": 100.0, "n_queries": 2, "n_skipped_no_relevant": 1}
    want.update({f"mAP@{k}": 100 * np.mean(v) for k, v in ap_at.items()})
    assert_metrics_close(got, want)


def test_topk_map_at_r_is_map_at_r():
    # with k = R for every query (R = 2 each), mAP@k is evaluate's mAP@R
    rng = np.random.default_rng(21)
    query, gallery = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((8, 6)).astype(np.float32)
    q_lab, g_lab = np.arange(5) % 4, np.arange(8) % 4
    got = evaluate_topk(query, q_lab, gallery, g_lab, ks=(2,))
    assert got["mAP@2"] == pytest.approx(evaluate(query, q_lab, gallery, g_lab, ks=(2,))["mAP@R"], abs=1e-9)


@pytest.mark.parametrize("full_ranking", [True, False])
@pytest.mark.parametrize("ks", [(1,), (1, 3)])
def test_ties_ordered_by_gallery_index(full_ranking, ks):
    # gallery 0 (not relevant) and 1 (relevant) are the same vector, gallery 2 (relevant) scores higher.
    # Convention: tie -> lower index first, so the ranking is 2, 0, 1 (relevant at ranks 1 and 3).
    # With ks=(1,) the FAISS path searches k=R=2, so the tie straddles its cut-off.
    scores = [[0.3, 0.3, 0.6, 0.1]]
    query, gallery = vectors_for_scores(scores)
    gallery[1] = gallery[0]
    got = evaluate(query, [0], gallery, [1, 0, 0, 1], ks=ks, full_ranking=full_ranking)
    want = {"mAP@R": 100 * (1 / 1) / 2, "P@R": 100 * 1 / 2, "n_queries": 1, "n_skipped_no_relevant": 0}
    want.update({f"R@{k}": 100.0 for k in ks})
    if full_ranking:
        want["mAP"] = 100 * (1 / 1 + 2 / 3) / 2
    assert_metrics_close(got, want)


def _loo_case():
    # rows: 0 = a (label 1, id 11), 1 = a again (label 0, id 10), 2 = b near a (label 0, id 12),
    # 3 = c far from both (label 1, id 13). Rows 0 and 1 tie exactly, so for query row 1 the duplicate
    # row 0 ranks before the query's own item.
    angles = np.array([0.0, 0.0, 0.3, 2.0])
    feats = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    return feats, np.array([1, 0, 0, 1]), np.array([11, 10, 12, 13])


@pytest.mark.parametrize("full_ranking", [True, False])
def test_leave_one_out_removes_own_id_not_rank_one(full_ranking):
    feats, labels, ids = _loo_case()
    # rankings without the own item: q0 -> 1(n) 2(n) 3(r); q1 -> 0(n) 2(r) 3(n); q2 -> 0(n) 1(r) 3(n);
    # q3 -> 2(n) 0(r) 1(n). Each query has R = 1.
    want = {"mAP@R": 0.0, "P@R": 0.0, "R@1": 0.0, "R@2": 75.0, "n_queries": 4, "n_skipped_no_relevant": 0}
    if full_ranking:
        want["mAP"] = 100 * np.mean([1 / 3, 1 / 2, 1 / 2, 1 / 2])
    got = evaluate(feats, labels, feats, labels, query_ids=ids, gallery_ids=ids, leave_one_out=True,
                   ks=(1, 2), full_ranking=full_ranking)
    assert_metrics_close(got, want)
    # ids default to row positions; a permuted query set with permuted ids finds the same own items
    assert evaluate(feats, labels, feats, labels, leave_one_out=True, ks=(1, 2),
                    full_ranking=full_ranking) == got
    perm = np.array([2, 0, 3, 1])
    permuted = evaluate(feats[perm], labels[perm], feats, labels, query_ids=ids[perm], gallery_ids=ids,
                        leave_one_out=True, ks=(1, 2), full_ranking=full_ranking)
    assert_metrics_close(permuted, got)


def test_leave_one_out_skips_singleton_class():
    feats, _, ids = _loo_case()
    labels = np.array([0, 0, 1, 2])  # rows 2 and 3 are alone in their class once they are left out
    got = evaluate(feats, labels, feats, labels, query_ids=ids, gallery_ids=ids, leave_one_out=True, ks=(1,))
    # q0: ranking 1(r) 2 3; q1: ranking 0(r) 2 3 -> both AP = 1
    assert_metrics_close(got, {"mAP": 100.0, "mAP@R": 100.0, "P@R": 100.0, "R@1": 100.0,
                               "n_queries": 2, "n_skipped_no_relevant": 2})


# ---------------------------------------------------------------- brute force on random data


@pytest.mark.parametrize("full_ranking", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_against_brute_force(seed, full_ranking):
    query, query_labels, gallery, gallery_labels = random_case(seed)
    assert_no_near_ties(query, gallery)
    ks = (1, 5, 10)
    want = ref_evaluate(query, query_labels, gallery, gallery_labels, ks)
    assert want["n_skipped_no_relevant"] >= 1
    if not full_ranking:
        del want["mAP"]
    got = evaluate(query, query_labels, gallery, gallery_labels, ks=ks, full_ranking=full_ranking)
    assert_metrics_close(got, want)


@pytest.mark.parametrize("full_ranking", [True, False])
def test_random_leave_one_out_against_brute_force(full_ranking):
    _, _, gallery, labels = random_case(2, n_g=30)
    assert_no_near_ties(gallery, gallery)
    ids = np.random.default_rng(3).permutation(1000)[:len(gallery)]
    ks = (1, 5)
    want = ref_evaluate(gallery, labels, gallery, labels, ks, query_ids=ids, gallery_ids=ids)
    if not full_ranking:
        del want["mAP"]
    got = evaluate(gallery, labels, gallery, labels, query_ids=ids, gallery_ids=ids, leave_one_out=True,
                   ks=ks, full_ranking=full_ranking)
    assert_metrics_close(got, want)


@pytest.mark.parametrize("chunk, gallery_chunk", [(1024, 65536), (5, 7), (1, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_topk_random_against_brute_force(seed, chunk, gallery_chunk):
    # random_case has exact duplicate gallery rows (exact ties) and a query label absent from the gallery
    query, query_labels, gallery, gallery_labels = random_case(seed)
    assert_no_near_ties(query, gallery)
    ks = (1, 5, 10)
    want = ref_evaluate(query, query_labels, gallery, gallery_labels, ks, per_query_metrics=ref_topk_metrics)
    got = evaluate_topk(query, query_labels, gallery, gallery_labels, ks=ks, chunk=chunk,
                        gallery_chunk=gallery_chunk, device="cpu")
    assert_metrics_close(got, want)


@pytest.mark.parametrize("gallery_chunk", [4, 30])
def test_topk_leave_one_out_against_brute_force(gallery_chunk):
    _, _, gallery, labels = random_case(2, n_g=30)
    assert_no_near_ties(gallery, gallery)
    ids = np.random.default_rng(3).permutation(1000)[:len(gallery)]
    ks = (1, 5)
    want = ref_evaluate(gallery, labels, gallery, labels, ks, query_ids=ids, gallery_ids=ids,
                        per_query_metrics=ref_topk_metrics)
    got = evaluate_topk(gallery, labels, gallery, labels, query_ids=ids, gallery_ids=ids, leave_one_out=True,
                        ks=ks, gallery_chunk=gallery_chunk)
    assert_metrics_close(got, want)


def test_topk_leave_one_out_drops_own_id_not_rank_one():
    # _loo_case: rows 0 and 1 are the same vector, so query row 1 finds row 0 before (or tied with) itself
    feats, labels, ids = _loo_case()
    want = {"R@1": 0.0, "R@2": 75.0, "mAP@1": 0.0, "mAP@2": 100 * np.mean([0, 1 / 2, 1 / 2, 1 / 2]),
            "n_queries": 4, "n_skipped_no_relevant": 0}
    for gallery_chunk in (1, 2, 4):
        got = evaluate_topk(feats, labels, feats, labels, query_ids=ids, gallery_ids=ids, leave_one_out=True,
                            ks=(1, 2), gallery_chunk=gallery_chunk)
        assert_metrics_close(got, want)


def test_gallery_blocked_topk_equals_unblocked_topk():
    # duplicates make exact ties, also across the k-th place and across gallery blocks
    rng = np.random.default_rng(12)
    gallery = l2_normalize(rng.standard_normal((50, 6)).astype(np.float32))
    gallery[[7, 19, 33, 48]] = gallery[2]
    query = np.vstack([gallery[2], l2_normalize(rng.standard_normal((9, 6)).astype(np.float32))])
    ref = query.astype(np.float64) @ gallery.astype(np.float64).T
    for k in (1, 3, 8):
        want = [sorted(range(len(gallery)), key=lambda j: (-row[j], j))[:k] for row in ref]
        got = [retrieval._exact_topk(query, gallery, k, None, retrieval._FlatIPBlocks("cpu"), chunk, gallery_chunk)
               for chunk, gallery_chunk in ((len(query), len(gallery)), (3, 7), (1, 1))]
        for scores, idx in got:
            np.testing.assert_array_equal(idx, want)
            np.testing.assert_array_equal(scores, got[0][0])


def test_topk_indexes_one_gallery_block_at_a_time(monkeypatch):
    # memory is bounded on both sides: FAISS never holds more than gallery_chunk rows or sees more than chunk queries
    seen = []
    flat_ip_index = retrieval._flat_ip_index

    def spy(g, gpu):
        index = flat_ip_index(g, gpu)
        search = index.search
        seen.append((len(g), []))
        index.search = lambda q, k: (seen[-1][1].append(len(q)), search(q, k))[1]
        return index

    monkeypatch.setattr(retrieval, "_flat_ip_index", spy)
    query, query_labels, gallery, gallery_labels = random_case(6, n_q=11)
    got = evaluate_topk(query, query_labels, gallery, gallery_labels, ks=(1,), chunk=4, gallery_chunk=16,
                        device="cpu")
    assert [n for n, _ in seen] == [16, 16, 8]  # 40 gallery rows
    assert all(max(q) <= 4 and sum(q) == got["n_queries"] for _, q in seen)


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("full_ranking", [True, False])
def test_chunking_invariance(full_ranking, leave_one_out):
    query, query_labels, gallery, gallery_labels = random_case(4, n_q=10, n_g=25)
    if leave_one_out:
        query, query_labels = gallery, gallery_labels
    results = [evaluate(query, query_labels, gallery, gallery_labels, leave_one_out=leave_one_out, ks=(1, 5),
                        chunk=chunk, full_ranking=full_ranking) for chunk in (1, 3, len(query) + 5)]
    assert results[0] == results[1] == results[2]


def test_full_ranking_is_chunked(monkeypatch):
    # peak memory is chunk x gallery: the ranking kernel must never see more than `chunk` queries
    seen = []
    ranks_numpy = retrieval._ranks_numpy

    def spy(q, g, *args):
        seen.append(len(q))
        return ranks_numpy(q, g, *args)

    monkeypatch.setattr(retrieval, "_ranks_numpy", spy)
    query, query_labels, gallery, gallery_labels = random_case(6, n_q=11)
    got = evaluate(query, query_labels, gallery, gallery_labels, ks=(1,), chunk=4, device="cpu")
    assert max(seen) <= 4 and sum(seen) == got["n_queries"]


def test_torch_ranks_match_numpy_ranks():
    torch = pytest.importorskip("torch")
    _, _, gallery, labels = random_case(5, n_g=20)
    g = l2_normalize(gallery)
    self_pos = np.arange(len(g))
    codes = labels.astype(np.int64)
    want = retrieval._ranks_numpy(g, g, codes, codes, self_pos)
    got = retrieval._ranks_torch(g, torch.from_numpy(g), codes, torch.from_numpy(codes), self_pos)
    assert sorted(zip(*map(np.ndarray.tolist, got))) == sorted(zip(*map(np.ndarray.tolist, want)))


# ---------------------------------------------------------------- FAISS search vs numpy


@pytest.mark.parametrize("n_q", [5, 30])  # FAISS switches from SIMD to BLAS at 20 queries
def test_search_matches_numpy_matmul(n_q):
    rng = np.random.default_rng(n_q)
    query = l2_normalize(rng.standard_normal((n_q, 16)).astype(np.float32))
    gallery = l2_normalize(rng.standard_normal((60, 16)).astype(np.float32))
    assert_no_near_ties(query, gallery)
    ref = query.astype(np.float64) @ gallery.astype(np.float64).T
    ref_idx = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    scores, idx = search(query, gallery, 10, device="cpu")
    assert scores.shape == idx.shape == (n_q, 10)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_idx, axis=1), atol=1e-5)
    np.testing.assert_array_equal(idx, ref_idx)


@pytest.mark.parametrize("n_q", [1, 25])
def test_search_orders_ties_by_gallery_index(n_q):
    # four exact copies of row 0; k=5 returns all of them (no tie at the cut-off), in ascending index order
    rng = np.random.default_rng(7)
    gallery = l2_normalize(rng.standard_normal((8, 4)).astype(np.float32))
    gallery[[2, 5, 6]] = gallery[0]
    query = np.repeat(gallery[:1], n_q, axis=0)
    ref = gallery.astype(np.float64) @ gallery[0].astype(np.float64)
    ref_idx = sorted(range(8), key=lambda j: (-ref[j], j))[:5]
    assert ref_idx[:4] == [0, 2, 5, 6]
    scores, idx = search(query, gallery, 5, device="cpu")
    np.testing.assert_allclose(scores, np.broadcast_to(ref[ref_idx], scores.shape), atol=1e-6)
    np.testing.assert_array_equal(idx, np.broadcast_to(ref_idx, idx.shape))


# ---------------------------------------------------------------- GPU (only where FAISS and torch see one)


@pytest.mark.skipif(not GPU, reason="needs FAISS GPU and torch CUDA")
def test_gpu_matches_cpu():
    query, query_labels, gallery, gallery_labels = random_case(8)
    assert_no_near_ties(query, gallery)  # GPU and CPU kernels round differently
    for full_ranking in (True, False):
        kwargs = dict(ks=(1, 5), chunk=4, full_ranking=full_ranking)
        assert_metrics_close(evaluate(query, query_labels, gallery, gallery_labels, device="cuda", **kwargs),
                             evaluate(query, query_labels, gallery, gallery_labels, device="cpu", **kwargs))
    s_gpu, i_gpu = search(l2_normalize(query), l2_normalize(gallery), 7, device="cuda")
    s_cpu, i_cpu = search(l2_normalize(query), l2_normalize(gallery), 7, device="cpu")
    np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-5)
    np.testing.assert_array_equal(i_gpu, i_cpu)


@pytest.mark.skipif(not GPU, reason="needs FAISS GPU and torch CUDA")
def test_gpu_topk_matches_cpu():
    query, query_labels, gallery, gallery_labels = random_case(8)
    assert_no_near_ties(query, gallery)
    kwargs = dict(ks=(1, 5, 10), chunk=4, gallery_chunk=16)
    assert_metrics_close(evaluate_topk(query, query_labels, gallery, gallery_labels, device="cuda", **kwargs),
                         evaluate_topk(query, query_labels, gallery, gallery_labels, device="cpu", **kwargs))


@pytest.mark.skipif(not GPU, reason="needs FAISS GPU and torch CUDA")
def test_gpu_large_k():
    rng = np.random.default_rng(9)
    gallery = rng.standard_normal((GPU_MAX_K + 500, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="GPU limit"):
        search(gallery[:2], gallery, GPU_MAX_K + 1, device="cuda")
    labels = np.zeros(len(gallery), dtype=int)  # R = n - 1 > GPU_MAX_K: falls back to the matmul ranking
    kwargs = dict(leave_one_out=True, ks=(1,), full_ranking=False)
    assert_metrics_close(evaluate(gallery[:3], labels[:3], gallery, labels, query_ids=[0, 1, 2],
                                  gallery_ids=np.arange(len(gallery)), device="cuda", **kwargs),
                         {"mAP@R": 100.0, "P@R": 100.0, "R@1": 100.0, "n_queries": 3,
                          "n_skipped_no_relevant": 0})


# ---------------------------------------------------------------- l2_normalize and bad input


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    y = l2_normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-6)
    assert x[0, 0] == 3.0


@pytest.mark.parametrize("bad, match", [
    ([[1.0, np.nan], [1.0, 0.0], [np.inf, 0.0]], "feats has 2 of 3 rows with NaN or inf"),
    ([[1.0, 0.0], [0.0, 0.0]], "feats has 1 of 2 rows with zero norm"),
    ([1.0, 2.0], "feats must be a 2-D array"),
    ([[1, 2]], "feats must be a floating-point array"),
])
def test_l2_normalize_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        l2_normalize(np.asarray(bad), name="feats")


def _good():
    rng = np.random.default_rng(11)
    return dict(query=rng.standard_normal((3, 4)).astype(np.float32), query_labels=np.array([0, 1, 0]),
                gallery=rng.standard_normal((5, 4)).astype(np.float32),
                gallery_labels=np.array([0, 1, 0, 1, 1]), ks=(1, 2))


def _with_nan(x, where):
    x = x.copy()
    x[where] = np.nan
    return x


@pytest.mark.parametrize("change, match", [
    (lambda a: {"gallery": a["gallery"][:, :3]}, "query has 4 feature dims but gallery has 3"),
    (lambda a: {"gallery": np.zeros((0, 4), np.float32), "gallery_labels": np.zeros(0, int)},
     "gallery is empty"),
    (lambda a: {"query": np.zeros((0, 4), np.float32), "query_labels": np.zeros(0, int)}, "query is empty"),
    (lambda a: {"query": _with_nan(a["query"], (1, 2))}, "query has 1 of 3 rows with NaN or inf"),
    (lambda a: {"gallery": a["gallery"] * np.array([1, 1, np.inf, 1], np.float32)},
     "gallery has 5 of 5 rows with NaN or inf"),
    (lambda a: {"ks": (1, 6)}, "k=6 but the gallery has only 5 items"),
    (lambda a: {"ks": (0,)}, "ks entry must be a positive integer"),
    (lambda a: {"ks": 5}, "ks must be a sequence"),
    (lambda a: {"ks": ()}, "ks must not be empty"),
    (lambda a: {"chunk": 0}, "chunk must be a positive integer"),
    (lambda a: {"query_labels": np.array([0, 1])}, "query_labels must be 1-D with one label per query row"),
    (lambda a: {"gallery_labels": np.zeros((5, 1), int)}, "gallery_labels must be 1-D"),
    (lambda a: {"query_labels": np.array([7, 8, 9])}, "none of the 3 queries has a relevant"),
    (lambda a: {"query_ids": [1, 2, 3], "gallery_ids": [1, 2, 3, 4, 5]}, "only used with leave_one_out=True"),
    (lambda a: {"device": "gpu"}, "device must be None, 'cpu', 'cuda'"),
])
def test_evaluate_rejects(change, match):
    args = _good()
    args.update(change(args))
    with pytest.raises(ValueError, match=match):
        evaluate(**args)


@pytest.mark.parametrize("change, match", [
    ({}, "leave_one_out without ids needs query and gallery of the same length"),
    ({"query_ids": [1, 2, 3]}, "needs both query_ids and gallery_ids"),
    ({"query_ids": [1, 2, 9], "gallery_ids": [1, 2, 3, 4, 5]}, "1 query_ids are not in gallery_ids"),
    ({"query_ids": [1, 2, 3], "gallery_ids": [1, 2, 3, 3, 5]}, "gallery_ids must be unique"),
    ({"query_ids": [1, 2], "gallery_ids": [1, 2, 3, 4, 5]}, "query_ids and gallery_ids must be 1-D"),
    ({"query_ids": [1, 2, 3], "gallery_ids": [1, 2, 3, 4, 5], "ks": (5,)},
     "k=5 but the gallery has only 4 items to rank after leave-one-out"),
])
def test_leave_one_out_rejects(change, match):
    args = _good()
    args.update(change)
    with pytest.raises(ValueError, match=match):
        evaluate(leave_one_out=True, **args)


@pytest.mark.parametrize("k, match", [(6, "k=6 is larger than the gallery"),
                                      (0, "k must be a positive integer")])
def test_search_rejects_k(k, match):
    args = _good()
    with pytest.raises(ValueError, match=match):
        search(args["query"], args["gallery"], k)


def test_search_rejects_bad_features():
    args = _good()
    with pytest.raises(ValueError, match="query has 4 feature dims but gallery has 3"):
        search(args["query"], args["gallery"][:, :3], 1)
    with pytest.raises(ValueError, match="gallery has 1 of 5 rows with NaN or inf"):
        search(args["query"], _with_nan(args["gallery"], (0, 0)), 1)


def test_evaluate_topk_rejects():
    args = _good()
    with pytest.raises(ValueError, match="gallery_chunk must be a positive integer"):
        evaluate_topk(**args, gallery_chunk=0)
    with pytest.raises(ValueError, match="k=6 but the gallery has only 5 items"):
        evaluate_topk(**{**args, "ks": (1, 6)})
