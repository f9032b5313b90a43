"""Exact cosine retrieval over cached embeddings, and full-ranking retrieval metrics (METHODS.md §9).

Similarity is the inner product of L2-normalised float32 vectors. ``search`` is exact top-k with FAISS
(``IndexFlatIP`` on CPU, a GPU flat index when FAISS has GPUs); ``evaluate`` computes mAP, mAP@R, P@R
and R@k with relevance = same label, optionally leave-one-out; ``evaluate_topk`` computes R@k and mAP@k
from FAISS top-k lists, with memory bounded by query and gallery blocks (the route for large galleries).

Tie convention (everywhere in this module): the ranking is by descending score, and items with exactly
equal scores are ordered by ascending gallery index (position in the gallery array). ``search`` re-sorts
what FAISS returns into this order, but when items tie exactly at the k-th place, which of them FAISS
returns is its own choice; ``evaluate`` detects such rows and ranks them exactly instead. Scores
computed by different kernels (numpy, torch, FAISS) can differ in the last bit, so two near-equal scores
may order differently between paths; exact duplicate vectors always tie.
"""

import re

import faiss
import numpy as np

# FAISS's GPU_MAX_SELECTION_K (CUDA builds): GPU top-k refuses larger k.
GPU_MAX_K = 2048
# Gallery rows indexed at a time by the top-k route (the index copies them: 128 MiB at D = 512).
GALLERY_CHUNK = 65536


def l2_normalize(x, *, name="x"):
    """Return the rows of a 2-D float array scaled to unit L2 norm, as a new float32 array.

    ``name`` is used in error messages. Raises ValueError if ``x`` is not a non-empty 2-D floating-point
    array, or if any row holds NaN/inf or has zero norm (a zero row has no direction to rank by).
    """
    x = _finite_2d(x, name)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        raise ValueError(f"{name} has {int(zero.sum())} of {len(x)} rows with zero norm")
    return x / norms


def search(query, gallery, k, *, device=None):
    """Exact top-``k`` inner-product search of ``query`` rows against ``gallery`` rows with FAISS.

    Vectors are used as given: L2-normalise them first (``l2_normalize``) for cosine ranking.
    ``device``: None picks GPU 0 when ``faiss.get_num_gpus() > 0`` and ``k <= GPU_MAX_K``, else CPU;
    ``"cpu"`` forces ``IndexFlatIP`` on CPU; ``"cuda"``/``"cuda:N"`` forces the GPU (ValueError if
    FAISS has no such GPU or ``k > GPU_MAX_K``).
    Returns ``(scores, indices)``, both ``(n_query, k)``, float32 and int64, each row ordered by the
    module's tie convention (descending score, then ascending gallery index); when several items tie at
    the k-th score, FAISS chooses which of them are returned.
    """
    q = _finite_2d(query, "query")
    g = _finite_2d(gallery, "gallery")
    _check_dims(q, g)
    k = _positive_int(k, "k")
    if k > len(g):
        raise ValueError(f"k={k} is larger than the gallery ({len(g)} items)")
    device = _parse_device(device)
    gpu = _gpu_for(device, k) if device in (None, "cpu") else _faiss_gpu(device, k)
    scores, idx = _flat_ip_index(g, gpu).search(np.ascontiguousarray(q), k)
    return _tie_ordered(scores, idx, k)


def evaluate(query, query_labels, gallery, gallery_labels, *, query_ids=None, gallery_ids=None,
             leave_one_out=False, ks=(1, 5, 10), chunk=1024, full_ranking=True, device=None):
    """Cosine retrieval metrics of ``query`` against ``gallery``; relevant = same label.

    Features are L2-normalised here (raw or normalised input both work). Per query, with ``R`` = number
    of relevant gallery items and the ranking under the module's tie convention:
    AP over the full ranking (``mAP``), AP truncated at rank ``R`` and divided by ``R`` (``mAP@R``),
    fraction relevant in the top ``R`` (``P@R``), and ``R@k`` = 1 if any relevant item is in the top k.
    Returns the means over queries ×100 under keys ``"mAP"``, ``"mAP@R"``, ``"P@R"``, ``"R@<k>"``, plus
    ``"n_queries"`` (queries averaged) and ``"n_skipped_no_relevant"`` (queries with R = 0, for which AP is
    undefined: they are left out of every mean).

    ``leave_one_out``: each query's own item, found by id (``query_ids[i]`` in ``gallery_ids``, ids
    default to row positions when query and gallery have the same length), is removed from its ranking
    and from its R, wherever it ranks. Ids are only accepted with leave-one-out.

    ``full_ranking=True`` ranks the whole gallery for each block of ``chunk`` queries (matmul + stable
    sort; numpy on CPU, torch on GPU), so peak memory is about ``16 * chunk * n_gallery`` bytes whatever
    the number of queries; all metrics come from that ranking. ``full_ranking=False`` skips mAP (no
    ``"mAP"`` key) and reads the other metrics from exact FAISS top-k lists with k = max(max(ks), R), as
    ``evaluate_topk`` finds them (a search deeper than ``GPU_MAX_K`` runs on CPU FAISS).
    ``device``: None = GPU when available (torch CUDA for the matmul, FAISS GPUs for search), ``"cpu"``,
    or ``"cuda"``/``"cuda:N"``. GPU matmul honours torch's float32 matmul precision: leave TF32 off for
    exact ranks.

    Raises ValueError for: non-2-D/non-float/NaN/inf/zero-norm features, different feature dims, empty
    query or gallery, label arrays not 1-D or not matching their features, k in ``ks`` larger than the
    gallery (minus one under leave-one-out), non-positive ``ks``/``chunk``, bad ids, or no query with a
    relevant item.
    """
    p = _Problem(query, query_labels, gallery, gallery_labels, query_ids, gallery_ids, leave_one_out, ks, chunk,
                 device)
    if full_ranking:
        ranker = _matmul_ranker(p.g, p.gcode, p.device)
    else:
        ranker = _topk_ranker(p.g, p.gcode, p.device)
    parts = []
    for start in range(0, len(p.keep), p.chunk):
        rows = p.keep[start:start + p.chunk]
        sp = None if p.self_pos is None else p.self_pos[rows]
        k_need = max(p.ks[-1], int(p.n_rel[rows].max()))
        hit_rows, hit_ranks = ranker(p.q[rows], p.qcode[rows], sp, k_need)
        parts.append(_metrics_from_ranks(hit_rows, hit_ranks, p.n_rel[rows], p.ks, full_ranking))
    return p.summary({key: np.concatenate([part[key] for part in parts]) for key in parts[0]})


def evaluate_topk(query, query_labels, gallery, gallery_labels, *, query_ids=None, gallery_ids=None,
                  leave_one_out=False, ks=(1, 5, 10), chunk=1024, gallery_chunk=GALLERY_CHUNK, device=None):
    """R@k and mAP@k of ``query`` against ``gallery`` from exact FAISS top-k lists; relevant = same label.

    The route for galleries too large to rank in full: only the top max(ks) items of each query are found
    (FAISS ``IndexFlatIP``; a GPU flat index when FAISS has GPUs, except for a search deeper than
    ``GPU_MAX_K``, which runs on CPU). Per query, with ``R`` = number of relevant gallery items and
    ``rel(i)`` = 1 if the item at rank i is relevant, under the module's tie convention:
    ``R@k`` = 1 if any of the top k is relevant (as in ``evaluate``), and
    ``mAP@k`` = sum_{i <= k} rel(i) * P@i / min(k, R), AP truncated at rank k and normalised by the most
    relevant items the top k can hold, so a perfect top k scores 1 and mAP@R is ``evaluate``'s mAP@R.
    Returns the means over queries ×100 under ``"R@<k>"`` and ``"mAP@<k>"`` for each k in ``ks``, plus
    ``"n_queries"`` and ``"n_skipped_no_relevant"`` as ``evaluate`` does (queries with R = 0 are left out).

    Memory is bounded on both sides: ``gallery_chunk`` gallery rows are indexed at a time and searched by
    blocks of ``chunk`` queries, each block's top k merged into a running top k per query, so beyond the
    inputs and their normalised float32 copies peak memory is about ``4 * D * gallery_chunk + 12 * (max(ks)
    + 2) * n_query`` bytes (plus, for rows where items tie exactly across the k-th place, an exact numpy
    re-ranking of ``chunk`` x ``gallery_chunk`` scores), where the full ranking needs ``16 * chunk *
    n_gallery``. ``leave_one_out``, ids and the errors are those of ``evaluate``; ``device``:
    None, ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (a FAISS GPU; ValueError when FAISS has no such GPU).
    """
    p = _Problem(query, query_labels, gallery, gallery_labels, query_ids, gallery_ids, leave_one_out, ks, chunk,
                 device)
    gallery_chunk = _positive_int(gallery_chunk, "gallery_chunk")
    sp = None if p.self_pos is None else p.self_pos[p.keep]
    _, idx = _exact_topk(p.q[p.keep], p.g, p.ks[-1], sp, _FlatIPBlocks(p.device), p.chunk, gallery_chunk)
    rel = p.gcode[idx] == p.qcode[p.keep][:, None]
    return p.summary(_metrics_at_k(rel, p.n_rel[p.keep], p.ks))


class _Problem:
    """Validated, normalised inputs shared by ``evaluate`` and ``evaluate_topk``."""

    def __init__(self, query, query_labels, gallery, gallery_labels, query_ids, gallery_ids, leave_one_out, ks,
                 chunk, device):
        self.q = l2_normalize(query, name="query")
        self.g = l2_normalize(gallery, name="gallery")
        _check_dims(self.q, self.g)
        self.qcode, self.gcode = _label_codes(query_labels, len(self.q), gallery_labels, len(self.g))
        self.ks = sorted({_positive_int(k, "ks entry") for k in _as_tuple(ks, "ks")})
        self.chunk = _positive_int(chunk, "chunk")
        self.device = _parse_device(device)

        self.self_pos = None
        if leave_one_out:
            self.self_pos = _self_positions(query_ids, gallery_ids, len(self.q), len(self.g))
        elif query_ids is not None or gallery_ids is not None:
            raise ValueError("query_ids/gallery_ids are only used with leave_one_out=True; got ids without it")
        n_avail = len(self.g) - leave_one_out
        if self.ks[-1] > n_avail:
            raise ValueError(f"ks contains k={self.ks[-1]} but the gallery has only {n_avail} items to rank"
                             + (" after leave-one-out" if leave_one_out else ""))

        self.n_rel = np.bincount(self.gcode, minlength=self.qcode.max() + 1)[self.qcode]
        if leave_one_out:
            self.n_rel -= self.gcode[self.self_pos] == self.qcode
        self.keep = np.flatnonzero(self.n_rel > 0)
        if len(self.keep) == 0:
            raise ValueError(f"none of the {len(self.q)} queries has a relevant (same-label) item in the gallery")

    def summary(self, per_query: dict) -> dict:
        """Means ×100 of per-query metrics (over the kept queries), with the query counts."""
        out = {key: 100.0 * float(v.mean()) for key, v in per_query.items()}
        out["n_queries"] = int(len(self.keep))
        out["n_skipped_no_relevant"] = int(len(self.q) - len(self.keep))
        return out


def _metrics_at_k(rel, n_rel, ks):
    """Per-query R@k and mAP@k (``evaluate_topk``) from the relevance of the top max(ks), in rank order."""
    hits = np.cumsum(rel, axis=1)
    ap_sums = np.cumsum(rel * hits / np.arange(1, rel.shape[1] + 1), axis=1)
    out = {f"R@{k}": (hits[:, k - 1] > 0).astype(np.float64) for k in ks}
    out.update({f"mAP@{k}": ap_sums[:, k - 1] / np.minimum(k, n_rel) for k in ks})
    return out


def _metrics_from_ranks(rows, ranks, n_rel, ks, full):
    """Per-query metrics from the 0-based ranks of relevant items (``rows`` = query of each hit).

    With ``full`` all R hits of every query must be present; otherwise only hits ranked below
    max(R, max(ks)) are needed (a truncated FAISS list).
    """
    order = np.lexsort((ranks, rows))
    rows, ranks = rows[order], ranks[order]
    n = len(n_rel)
    # j-th hit of its query (1-based): precision at that hit is j / (rank + 1)
    j = np.arange(len(rows)) - np.searchsorted(rows, rows) + 1
    prec = j / (ranks + 1.0)
    within_r = ranks < n_rel[rows]
    out = {}
    if full:
        out["mAP"] = np.bincount(rows, prec, n) / n_rel
    out["mAP@R"] = np.bincount(rows, prec * within_r, n) / n_rel
    out["P@R"] = np.bincount(rows, within_r, n) / n_rel
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, rows, ranks)
    for k in ks:
        out[f"R@{k}"] = (first < k).astype(np.float64)
    return out


def _matmul_ranker(g, gcode, device):
    """Return f(q, qcode, self_pos, k) -> (rows, ranks) of relevant items in the full ranking of ``g``.

    ``k`` is ignored: the full ranking serves every cut-off.
    """
    if device == "cpu" or (device is None and not _torch_cuda()):
        return lambda q, qc, sp, k: _ranks_numpy(q, g, qc, gcode, sp)
    if not _torch_cuda():
        raise ValueError(f"device={device!r} needs torch with CUDA, which is not available")
    import torch

    g_t = torch.from_numpy(g).to(device or "cuda")
    gcode_t = torch.from_numpy(gcode).to(g_t.device)
    return lambda q, qc, sp, k: _ranks_torch(q, g_t, qc, gcode_t, sp)


def _ranks_numpy(q, g, qcode, gcode, self_pos):
    """(rows, ranks): 0-based rank of each relevant item in each query's full ranking, own item left out."""
    scores = q @ g.T
    if self_pos is not None:
        # finite scores of unit vectors are >= -1, so -inf sends the query's own item to the very end
        scores[np.arange(len(q)), self_pos] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")
    del scores
    rel = np.take_along_axis(gcode[None, :] == qcode[:, None], order, axis=1)
    if self_pos is not None:
        rel = rel[:, :-1]
    return np.nonzero(rel)


def _ranks_torch(q, g_t, qcode, gcode_t, self_pos):
    """``_ranks_numpy`` with torch on the gallery tensor's device."""
    import torch

    dev = g_t.device
    scores = torch.from_numpy(q).to(dev) @ g_t.T
    if self_pos is not None:
        scores[torch.arange(len(q), device=dev), torch.from_numpy(self_pos).to(dev)] = float("-inf")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    del scores
    rel = (gcode_t[None, :] == torch.from_numpy(qcode).to(dev)[:, None]).gather(1, order)
    if self_pos is not None:
        rel = rel[:, :-1]
    rows, ranks = rel.nonzero(as_tuple=True)
    return rows.cpu().numpy(), ranks.cpu().numpy()


def _topk_ranker(g, gcode, device):
    """f(q, qcode, self_pos, k) -> (rows, ranks) of relevant items among the exact top k (FAISS)."""
    search = _FlatIPBlocks(device)

    def ranker(q, qcode, self_pos, k):
        _, idx = _exact_topk(q, g, k, self_pos, search, len(q), GALLERY_CHUNK)
        return np.nonzero(gcode[idx] == qcode[:, None])
    return ranker


def _exact_topk(q, g, k, self_pos, search, chunk, gallery_chunk):
    """Top k of each ``q`` row over ``g`` in the module's tie convention, own item (``self_pos``) left out:
    ``(scores, idx)``, each ``(n_q, min(k, items left))``.

    ``search`` is a block searcher (``_FlatIPBlocks``). Rows where items tie exactly across the k-th place
    (FAISS picks which of them it returns) are searched again with numpy's stable sort, which keeps the
    lowest gallery indices.
    """
    loo = self_pos is not None
    n_search = min(k + loo + 1, len(g))  # the column beyond k shows a tie that crosses the cut-off
    scores, idx = _drop_self(*_blocked_topk(q, g, n_search, search, chunk, gallery_chunk), self_pos)
    if scores.shape[1] > k:
        tied = np.flatnonzero(scores[:, k - 1] == scores[:, k])
        if tied.size:
            sp = None if self_pos is None else self_pos[tied]
            exact = _blocked_topk(q[tied], g, n_search, _numpy_block_search, chunk, gallery_chunk)
            scores[tied], idx[tied] = _drop_self(*exact, sp)
    return scores[:, :k], idx[:, :k]


def _blocked_topk(q, g, k, search, chunk, gallery_chunk):
    """Top k of each ``q`` row over ``g``, ``gallery_chunk`` gallery rows x ``chunk`` queries at a time, each
    block's top k merged into the running one in the tie convention (which of several items tied at a
    block's cut-off comes back is the searcher's choice). Returns ``(scores, idx)``, ``(n_q, k)``."""
    scores = np.full((len(q), k), -np.inf, np.float32)
    idx = np.full((len(q), k), len(g), np.int64)  # placeholders rank after every real item
    for start in range(0, len(g), gallery_chunk):
        block = g[start:start + gallery_chunk]
        for r in range(0, len(q), chunk):
            s, i = search(start, block, q[r:r + chunk], min(k, len(block)))
            both = np.hstack([scores[r:r + chunk], s]), np.hstack([idx[r:r + chunk], i + start])
            scores[r:r + chunk], idx[r:r + chunk] = _tie_ordered(*both, k)
    return scores, idx


class _FlatIPBlocks:
    """search(start, block, q, k): FAISS top k of ``q`` in one gallery block (local indices). A block's index
    is built once and kept while that block is searched; a GPU one serves k <= GPU_MAX_K, CPU the rest."""

    def __init__(self, device):
        self.device, self.key, self.index = device, None, None

    def __call__(self, start, block, q, k):
        gpu = _gpu_for(self.device, k)
        if self.key != (start, len(block), gpu):
            self.index, self.key = None, (start, len(block), gpu)  # free the previous block's copy first
            self.index = _flat_ip_index(block, gpu)
        return self.index.search(np.ascontiguousarray(q), k)


def _numpy_block_search(start, block, q, k):
    """Exact top k of ``q`` in one gallery block: float32 matmul, stable sort (ties: lowest index first)."""
    scores = q @ block.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def _drop_self(scores, idx, self_pos):
    """Remove each row's own item (gallery position ``self_pos``, found by id) wherever it ranks; a row that
    did not return it loses its last column, so every row keeps one column fewer."""
    if self_pos is None:
        return scores, idx
    order = np.argsort(idx == self_pos[:, None], axis=1, kind="stable")[:, :-1]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _flat_ip_index(g, gpu):
    if gpu is None:
        index = faiss.IndexFlatIP(g.shape[1])
    else:
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = gpu
        index = faiss.GpuIndexFlatIP(res, g.shape[1], cfg)
        index.referenced_objects = [res]  # the index must not outlive its GPU resources
    index.add(np.ascontiguousarray(g))
    return index


def _tie_ordered(scores, idx, k):
    """The first k columns of each row by descending score, then ascending gallery index (FAISS orders equal
    scores its own way)."""
    order = np.lexsort((idx, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _finite_2d(x, name):
    """``x`` as float32 after checking it is a 2-D float array with at least one column, all finite."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x dims), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero feature dimensions (shape {x.shape})")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} of {len(x)} rows with NaN or inf values")
    return x.astype(np.float32)


def _check_dims(q, g):
    if len(q) == 0:
        raise ValueError("query is empty (0 rows)")
    if len(g) == 0:
        raise ValueError("gallery is empty (0 rows)")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query has {q.shape[1]} feature dims but gallery has {g.shape[1]}; "
                         "they must match")


def _label_codes(query_labels, n_query, gallery_labels, n_gallery):
    """Map both label arrays to shared integer codes (so torch and bincount can use them)."""
    ql = np.asarray(query_labels)
    gl = np.asarray(gallery_labels)
    for name, lab, n in (("query", ql, n_query), ("gallery", gl, n_gallery)):
        if lab.ndim != 1 or len(lab) != n:
            raise ValueError(f"{name}_labels must be 1-D with one label per {name} row ({n}), "
                             f"got shape {lab.shape}")
    _, codes = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    codes = codes.astype(np.int64)
    return codes[:n_query], codes[n_query:]


def _self_positions(query_ids, gallery_ids, n_query, n_gallery):
    """Gallery position of each query's own item, matched by id."""
    if query_ids is None and gallery_ids is None:
        if n_query != n_gallery:
            raise ValueError(f"leave_one_out without ids needs query and gallery of the same length "
                             f"(row i is item i), got {n_query} and {n_gallery}; "
                             "pass query_ids and gallery_ids")
        return np.arange(n_query)
    if query_ids is None or gallery_ids is None:
        raise ValueError("leave_one_out needs both query_ids and gallery_ids, or neither; got only one")
    qid = np.asarray(query_ids)
    gid = np.asarray(gallery_ids)
    if qid.shape != (n_query,) or gid.shape != (n_gallery,):
        raise ValueError(f"query_ids and gallery_ids must be 1-D with lengths {n_query} and {n_gallery}, "
                         f"got shapes {qid.shape} and {gid.shape}")
    order = np.argsort(gid, kind="stable")
    sorted_gid = gid[order]
    if (sorted_gid[1:] == sorted_gid[:-1]).any():
        dup = sorted_gid[1:][sorted_gid[1:] == sorted_gid[:-1]]
        raise ValueError(f"gallery_ids must be unique, got {len(dup)} repeated ids (e.g. {dup[0]!r})")
    pos = np.minimum(np.searchsorted(sorted_gid, qid), n_gallery - 1)
    missing = sorted_gid[pos] != qid
    if missing.any():
        raise ValueError(f"leave_one_out: {int(missing.sum())} query_ids are not in gallery_ids "
                         f"(e.g. {qid[missing][0]!r})")
    return order[pos]


def _positive_int(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _as_tuple(v, name):
    if isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be a sequence of positive integers, got the scalar {v!r}")
    v = tuple(v)
    if not v:
        raise ValueError(f"{name} must not be empty")
    return v


def _parse_device(device):
    if device in (None, "cpu") or (isinstance(device, str) and re.fullmatch(r"cuda(:\d+)?", device)):
        return device
    raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _gpu_for(device, k):
    """The FAISS GPU for a top-k search (None = CPU): GPU 0 for device None when FAISS has one, none for
    "cpu" or a k beyond the GPU's GPU_MAX_K."""
    if device == "cpu" or k > GPU_MAX_K or (device is None and faiss.get_num_gpus() == 0):
        return None
    return _faiss_gpu(device or "cuda", k)


def _faiss_gpu(device, k):
    gpu = int(device.partition(":")[2] or 0)
    if gpu >= faiss.get_num_gpus():
        raise ValueError(f"device={device!r} but FAISS reports {faiss.get_num_gpus()} GPUs")
    if k > GPU_MAX_K:
        raise ValueError(f"k={k} exceeds the FAISS GPU limit of {GPU_MAX_K}; use device='cpu'")
    return gpu


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()

