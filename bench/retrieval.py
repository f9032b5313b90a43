"""Retrieval benchmark: the EuroSAT full protocol for every variant on CPU, wall time and peak RSS.

usage: python -m bench.retrieval [--queries 8100] [--gallery 13500] [--chunk 1024] [--quick]
       python -m bench.retrieval --repo /path/to/reproduced/repo --model demo --dataset eurosat

With --repo: the real cached features of (model, dataset) from a reproduced repo (e.g. the demo CLIP over
the real EuroSAT images), all test queries against the whole train gallery. Without it: SYNTHETIC
features of exactly EuroSAT's shapes under the CoOp split (8,100 test queries x 13,500 train gallery,
10 classes) and ViT-B/32's widths (d_v 768, D 512, d_t 512; W_txt a scaled Gaussian, so some singular
values fall below the bridge's 0.3 cut-off), with 8 prompts per class so text->text runs: metric values
mean nothing there, costs do (they depend on shapes only). Each measurement runs in a fresh child process: it loads the features, builds the
variant's task (timed as `build_s`), then ranks every query against the whole gallery with
`retrieval_variants.run` (`eval_s`). Memory, read in the child: `setup_peak_rss_mib` is the peak
(getrusage) through imports (torch alone is ~0.9 GiB), loading and building; the peak is then reset to the
current RSS (`rss_before_eval_mib`; Linux clear_refs), so `eval_peak_rss_mib` (VmHWM) is the peak of the
ranking phase alone and `eval_rss_growth_mib` the memory the ranking itself added.
Compared in the same run: a naive numpy implementation that materialises the full Q x G similarity
matrix and its argsort (what the reference code does), on i2i at Q and Q/4; FAISS IndexFlatIP top-k (no mAP) on i2i;
and i2i at three chunk sizes and at a quarter of the queries, to show that peak memory follows the
chunk, not Q x G. Writes reports/bench/retrieval.json and prints it.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml

from bench.common import cached, context_of_repo, peak_rss_mib, run_child, write_result
from bench.context import context

N_CLS, D_V, D, D_T, PROMPTS = 10, 768, 512, 512, 8
KS = [1, 5, 10]


def make_data(out: Path, n_query: int, n_gallery: int, seed: int = 0) -> None:
    """Write the synthetic store (npy files) that every child loads."""
    rng = np.random.default_rng(seed)
    label = np.concatenate([np.arange(n_gallery) % N_CLS, np.arange(n_query) % N_CLS])
    split = np.concatenate([np.zeros(n_gallery, np.int8), np.full(n_query, 2, np.int8)])
    centres = rng.standard_normal((N_CLS, D_V), dtype=np.float32)
    pre = centres[label] * 0.3 + rng.standard_normal((len(label), D_V), dtype=np.float32)
    W_img = rng.standard_normal((D_V, D), dtype=np.float32) / np.sqrt(D_V)
    W_txt = rng.standard_normal((D_T, D), dtype=np.float32) / np.sqrt(D_T)
    text_pre = rng.standard_normal((N_CLS, 1, D_T), dtype=np.float32) + rng.standard_normal(
        (N_CLS, PROMPTS, D_T), dtype=np.float32)
    arrays = {"pre": pre, "emb": pre @ W_img, "label": label, "split": split, "item": np.arange(len(label)),
              "text_pre": text_pre, "text_emb": text_pre @ W_txt, "W_img": W_img, "W_txt": W_txt}
    for name, a in arrays.items():
        np.save(out / f"{name}.npy", a)
    write_bands(out, {"k_top": 150, "k_bottom": 50}, {"k_top": 20, "k_bottom": 100}, 0.3)   # ViT-B/32 (§5.4)


def write_bands(out: Path, image: dict, text: dict, atol: float) -> None:
    """The IsoCLIP bands (image and text side) and the bridge's atol every child's variants use."""
    (out / "bands.json").write_text(json.dumps({"image": image, "text": text, "atol": atol}))


def export_store(repo: Path, model: str, dataset: str, out: Path) -> str:
    """Write a reproduced repo's cached features as the npy files every child loads; describe them."""
    from pipeline import config
    from pipeline.retrieval_variants import VARIANTS
    card, _, f = cached(repo, model, dataset)
    for name in ("pre", "emb", "label", "split", "item", "text_pre", "text_emb", "W_img", "W_txt"):
        np.save(out / f"{name}.npy", getattr(f, name))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    every = {**params, "retrieval": {**params.get("retrieval", {}), "variants": list(VARIANTS)}}
    cfg = config.retrieval(every, card["arch"], VARIANTS)   # the bands and atol of every variant
    write_bands(out, asdict(cfg.isoclip), asdict(cfg.isoclip_text), cfg.atol)
    return (f"real: {card['arch']} ({model}) over {dataset}, {int((f.split == 2).sum())} test queries x "
            f"{int((f.split == 0).sum())} train gallery, d_v {f.pre.shape[1]}, D {f.emb.shape[1]}, "
            f"{f.text_pre.shape[1]} prompts/class")


def load(data: Path):
    from pipeline.features import MODEL_KEYS, Features
    a = {p.stem: np.load(p) for p in data.glob("*.npy")}
    prov = {k: "bench" for k in MODEL_KEYS} | {"precision": "fp32"}
    return Features(**a, b_img=None, logit_scale=100.0, provenance=prov)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> float:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0, clear_refs 5); return it.

    getrusage's ru_maxrss cannot be used after a reset: in a multi-threaded process (torch, FAISS,
    OpenMP) it also keeps the peak recorded when threads exit.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def naive_map(q, q_lab, g, g_lab) -> dict:
    """Full Q x G similarity matrix, full argsort, AP from the whole relevance matrix (reference style)."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    rel = g_lab[order] == q_lab[:, None]
    prec = np.cumsum(rel, axis=1, dtype=np.float32) / np.arange(1, g.shape[0] + 1, dtype=np.float32)
    ap = (prec * rel).sum(axis=1) / rel.sum(axis=1)
    return {"mAP": 100 * float(ap.mean()), "R@1": 100 * float(rel[:, 0].mean())}


def child(data: Path, variant: str, impl: str, chunk: int, n_query: int) -> dict:
    """One measurement in this (fresh) process."""
    from pipeline import retrieval_variants as rv
    from pipeline.config import Band, Retrieval

    feats = load(data)
    bands = json.loads((data / "bands.json").read_text())
    cfg = Retrieval(("test",), ("train",), False, tuple(KS), (variant,), isoclip=Band(**bands["image"]),
                    isoclip_text=Band(**bands["text"]), atol=bands["atol"])
    q_rows = rv.split_rows(feats.split, ["test"], "query")[:n_query]
    g_rows = rv.split_rows(feats.split, ["train"], "gallery")
    start = time.perf_counter()
    task = rv.build(variant, feats, q_rows, feats, g_rows, cfg, "cpu")
    build_s = time.perf_counter() - start
    del feats
    setup_peak = max(peak_rss_mib(), _status_mib("VmHWM"))
    before = reset_peak_rss()
    start = time.perf_counter()
    if impl == "naive":
        res = naive_map(task.query, task.query_labels, task.gallery, task.gallery_labels)
    elif impl == "faiss":
        from pipeline.retrieval import evaluate
        res = evaluate(task.query, task.query_labels, task.gallery, task.gallery_labels, ks=KS, chunk=chunk,
                       full_ranking=False, device="cpu")
    else:
        res = rv.run(task, KS, chunk=chunk, device="cpu")
    eval_s = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    return {"variant": variant, "impl": impl, "chunk": chunk if impl != "naive" else None,
            "n_query": len(task.query), "n_gallery": len(task.gallery), "build_s": round(build_s, 3),
            "eval_s": round(eval_s, 3), "setup_peak_rss_mib": round(setup_peak, 1),
            "rss_before_eval_mib": round(before, 1), "eval_peak_rss_mib": round(peak, 1),
            "eval_rss_growth_mib": round(peak - before, 1),
            "mAP": round(res["mAP"], 4) if "mAP" in res else None, "R@1": round(res["R@1"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=8100)
    parser.add_argument("--gallery", type=int, default=13500)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, for a smoke run")
    parser.add_argument("--repo", type=Path, help="a reproduced repo whose cached features to use")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--child", nargs=5, metavar=("DATA", "VARIANT", "IMPL", "CHUNK", "NQ"),
                        help="internal: one measurement, print JSON")
    args = parser.parse_args()
    if args.child:
        data, variant, impl, chunk, nq = args.child
        print(json.dumps(child(Path(data), variant, impl, int(chunk), int(nq))))
        return
    from pipeline.retrieval_variants import INVERTED, VARIANTS

    nq, ng = (args.queries // 10, args.gallery // 10) if args.quick else (args.queries, args.gallery)
    with tempfile.TemporaryDirectory() as tmp:
        skipped = list(INVERTED)   # their cost is the inversion itself: bench.inversion_latency
        if args.repo:
            described = export_store(args.repo.resolve(), args.model, args.dataset, Path(tmp))
            nq = int((np.load(Path(tmp) / "split.npy") == 2).sum())
            if np.load(Path(tmp) / "text_pre.npy").shape[1] < 2:   # text->text has no relevant items
                skipped += [v for v in VARIANTS if v.startswith("t2t")]
        else:
            make_data(Path(tmp), nq, ng)
            described = (f"synthetic Gaussian, EuroSAT shapes: {nq} queries x {ng} gallery, {N_CLS} classes, "
                         f"d_v {D_V}, D {D}, d_t {D_T}, {PROMPTS} prompts/class")
        runs = [(v, "chunked", args.chunk, nq) for v in VARIANTS if v not in skipped]
        runs += [("i2i", "naive", 0, nq), ("i2i", "naive", 0, nq // 4), ("i2i", "faiss", args.chunk, nq)]
        runs += [("i2i", "chunked", c, nq) for c in (args.chunk // 4, args.chunk * 4)]
        runs += [("i2i", "chunked", args.chunk, nq // 4)]
        results = []
        for variant, impl, chunk, n in runs:
            r = run_child("bench.retrieval", "--child", tmp, variant, impl, str(chunk), str(n))
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    base = next(r for r in results if r["variant"] == "i2i" and r["impl"] == "chunked"
                and r["chunk"] == args.chunk and r["n_query"] == nq)
    naive = next(r for r in results if r["impl"] == "naive" and r["n_query"] == nq)
    write_result("retrieval" + (f"-{args.model}-{args.dataset}" if args.repo else ""), {
        "features": described,
        "device": "cpu", "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "chunk": args.chunk, "ks": KS, "skipped_variants": skipped,
        "runs": results,
        "i2i_naive_over_chunked": {"eval_s": round(naive["eval_s"] / base["eval_s"], 3),
                                   "eval_rss_growth": round(naive["eval_rss_growth_mib"]
                                                            / max(base["eval_rss_growth_mib"], 1.0), 2),
                                   "mAP_abs_diff": round(abs(naive["mAP"] - base["mAP"]), 5)},
        "expected_chunk_bytes_mib": round(16 * args.chunk * base["n_gallery"] / 2**20, 1),
        "full_matrix_bytes_mib": round(4 * nq * base["n_gallery"] / 2**20, 1),
    }, context_of_repo("bench.retrieval", args.repo.resolve(), args.model, args.dataset,
                       ["extract.precision", "text", "retrieval", "methods.isoclip", "methods.semobridge.atol"])
       if args.repo else context("bench.retrieval", None, [], {"features": described}))


if __name__ == "__main__":
    main()
