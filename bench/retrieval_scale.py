"""Retrieval at scale: the FAISS top-k route (R@k, mAP@k) against the full ranking (mAP, the papers'
protocol), seconds and peak RSS of each, on synthetic clustered vectors.

usage: python -m bench.retrieval_scale [--queries 100000] [--gallery 100000] [--dim 512] [--classes 100]
                                       [--full-queries 10240] [--chunk 1024]

Data: SYNTHETIC, --queries x --gallery L2-normalised float32 vectors of width --dim, --classes clusters
(class centre + Gaussian noise; labels = cluster; relevant = same label), written once as npy files.
Each measurement runs in a fresh child process that loads the arrays, then runs one route; it reports the
route's seconds, the process's peak RSS (getrusage, so it includes the imports, ~0.8 GiB with torch, and
the loaded inputs) and how far the route raised that peak above the peak after loading
(`eval_rss_growth_mib`: the memory the route itself needs).
The full ranking costs the same per query block whatever the number of queries (each block of --chunk
queries ranks the whole gallery), so it runs on the first --full-queries queries and its seconds are
extrapolated linearly to all queries (`eval_s_extrapolated`); its memory is the block's, measured as is.
The top-k route also runs on that subset, so its R@k can be checked against the full ranking's.
Writes reports/bench/retrieval_scale.json and prints it.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import peak_rss_mib, run_child, write_result
from bench.context import context
from pipeline.retrieval import evaluate, evaluate_topk

KS = (1, 5, 10)


def make_data(out: Path, n_query: int, n_gallery: int, dim: int, n_classes: int, seed: int = 0) -> None:
    """Clustered float32 unit vectors: each class a random centre of norm ~0.25, each item its centre plus
    isotropic noise of norm ~1, so classes overlap (at D 512, 100 classes: R@1 ~57%, mAP@10 ~33%)."""
    rng = np.random.default_rng(seed)
    scale = np.float32(1 / np.sqrt(dim))  # a float32 factor keeps the arrays float32 (NumPy 2 promotion)
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32) * (scale / 4)
    for name, n in (("query", n_query), ("gallery", n_gallery)):
        labels = rng.integers(0, n_classes, n)
        x = centres[labels] + rng.standard_normal((n, dim), dtype=np.float32) * scale
        np.save(out / f"{name}.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
        np.save(out / f"{name}_labels.npy", labels)


def child(data: Path, route: str, n_query: int, chunk: int) -> dict:
    """One route in this (fresh) process, on the first n_query queries."""
    q, ql = np.load(data / "query.npy")[:n_query], np.load(data / "query_labels.npy")[:n_query]
    g, gl = np.load(data / "gallery.npy"), np.load(data / "gallery_labels.npy")
    before = peak_rss_mib()
    start = time.perf_counter()
    if route == "topk":
        res = evaluate_topk(q, ql, g, gl, ks=KS, chunk=chunk)
    else:
        res = evaluate(q, ql, g, gl, ks=KS, chunk=chunk)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    return {"route": route, "n_query": len(q), "n_gallery": len(g), "eval_s": round(seconds, 2),
            "peak_rss_mib": round(peak, 1), "peak_rss_before_eval_mib": round(before, 1),
            "eval_rss_growth_mib": round(peak - before, 1),
            "metrics": {k: round(v, 4) for k, v in res.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--full-queries", type=int, default=10_240,
                        help="queries the full ranking runs on (its seconds are extrapolated to --queries)")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--child", nargs=4, metavar=("DATA", "ROUTE", "NQ", "CHUNK"),
                        help="internal: one measurement, print JSON")
    args = parser.parse_args()
    if args.child:
        data, route, nq, chunk = args.child
        print(json.dumps(child(Path(data), route, int(nq), int(chunk))))
        return
    n_full = min(args.full_queries, args.queries)
    described = (f"synthetic clustered unit vectors: {args.queries} queries x {args.gallery} gallery, D {args.dim}, "
                 f"{args.classes} classes")
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), args.queries, args.gallery, args.dim, args.classes)
        runs = {}
        for name, route, n in (("topk", "topk", args.queries), ("full_ranking", "full", n_full),
                               ("topk_on_full_subset", "topk", n_full)):
            runs[name] = run_child("bench.retrieval_scale", "--child", tmp, route, str(n), str(args.chunk))
            print(json.dumps(runs[name]), file=sys.stderr)
    topk, full = runs["topk"], runs["full_ranking"]
    full["eval_s_extrapolated"] = round(full["eval_s"] * args.queries / n_full, 1)
    sub = runs["topk_on_full_subset"]["metrics"]
    write_result("retrieval_scale", {
        "features": described, "ks": list(KS), "chunk": args.chunk,
        "routes": runs,
        "full_ranking_extrapolated": n_full < args.queries,
        "full_over_topk": {"eval_s": round(full["eval_s_extrapolated"] / topk["eval_s"], 2),
                           "peak_rss": round(full["peak_rss_mib"] / topk["peak_rss_mib"], 2),
                           "eval_rss_growth": round(full["eval_rss_growth_mib"]
                                                    / max(topk["eval_rss_growth_mib"], 1.0), 2)},
        "R@k_abs_diff_on_subset": max(abs(sub[f"R@{k}"] - full["metrics"][f"R@{k}"]) for k in KS),
    }, context("bench.retrieval_scale", None, [], {"features": described}))


if __name__ == "__main__":
    main()
