"""Spectral filtering (METHODS.md §15.1.3) at SpectralGCD's dictionary size: the exact route (K0 x K0
covariance + eigh, the reference's) against the truncated route (block Krylov on X, trace for the total)
and, for N < K0, the gram route; seconds and peak RSS of each, on synthetic teacher logits.

usage: python -m bench.spectral_filter [--rows 50000] [--concepts 22131] [--small-rows 5000 10000]
                                       [--exact-concepts 4096 8192] [--budget-s 900] [--seed 0]

Data: SYNTHETIC logits = cosine / 0.01 of CLIP-like unit vectors (D 512): every image and concept shares a
modality direction (cosine ~0.16 between non-matching pairs, spread ~0.03), images belong to one of 100
classes, 400 concepts (4 per class) match a class (cosine up to ~0.35), the other concepts match none
(`make_logits`). A dictionary of K0 columns always holds the 400; the N x K0 float32 array is written
once as .npy per size. Each measurement runs in a fresh child process that reads the rows it needs, then
runs one route; it reports the route's seconds (and its stages, `Filtered.info["seconds"]`), the k_e and
k_c found, the process's peak RSS (VmHWM, `own_peak_rss_mib`: includes the imports, ~0.7 GiB, and the
loaded logits) and how far the route raised it above the peak after loading (`rss_growth_mib`).
The exact route at K0 = 22,131 takes far longer than the budget on 2 cores (eigh ~n^3), so it runs on
N x --exact-concepts (all N rows) next to the truncated route, and its seconds at the full size are
EXTRAPOLATED from those runs, stage by stage: softmax/centring ~ N K0, covariance ~ N K0^2, eigh ~ K0^p
with p fitted on the two sizes (the cubic estimate is given too); its memory growth ~ a + b K0^2. It runs
at the full size as well when that estimate fits in --budget-s. Writes reports/bench/spectral_filter.json.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import peak_rss_mib, run_child, write_result
from bench.context import context
from pipeline.spectral_filter import auto_route, spectral_filter

TAU, DIM, CLASSES, PER_CLASS = 0.01, 512, 100, 4


def make_logits(n: int, k0: int, seed: int = 0) -> np.ndarray:
    """N x K0 float32 logits (cosine / TAU), module docstring: images depend on (n, seed), concepts on
    (seed, k0); the 400 class-matching concepts are shuffled among the others."""
    rng = np.random.default_rng(seed)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    shared = unit(rng.standard_normal(DIM))
    centres = unit(rng.standard_normal((CLASSES, DIM)))
    labels = rng.integers(CLASSES, size=n)
    strength = rng.uniform(0.3, 0.75, size=(n, 1))          # how clearly an image shows its class
    img = unit(0.45 * shared + strength * centres[labels] + 0.66 * unit(rng.standard_normal((n, DIM))))
    crng = np.random.default_rng([seed, k0])
    rel = CLASSES * PER_CLASS
    cls = np.r_[np.repeat(np.arange(CLASSES), PER_CLASS), crng.integers(CLASSES, size=k0 - rel)]
    match = np.r_[crng.uniform(0.15, 0.35, rel), crng.uniform(0.0, 0.1, k0 - rel)][:, None]
    txt = unit(0.35 * shared + match * centres[cls] + 0.88 * unit(crng.standard_normal((k0, DIM))))
    txt = txt[crng.permutation(k0)]
    return (torch.from_numpy(img.astype(np.float32)) @ torch.from_numpy(txt.astype(np.float32)).T / TAU).numpy()


def load_rows(path: Path, rows: int) -> np.ndarray:
    """The first `rows` rows of a C-order .npy, read into memory (no memory map, so RSS counts them once)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
        assert not fortran and rows <= shape[0]
        out = np.empty((rows, shape[1]), dtype)
        f.readinto(memoryview(out).cast("B"))
    return out


def own_peak_rss_mib() -> float:
    """This process's own peak RSS: VmHWM of /proc/self/status. getrusage's ru_maxrss (bench.common.
    peak_rss_mib) is not usable in a child here: Linux folds the spawning process's high-water mark into
    it at exec (a child of a parent that once held 9 GiB starts at 9 GiB), and this parent generates the
    logits. Falls back to getrusage off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def child(path: Path, rows: int, route: str, out: Path) -> dict:
    """One route in this (fresh) process."""
    logits = load_rows(path, rows)
    before = own_peak_rss_mib()
    start = time.perf_counter()
    got = spectral_filter(logits, route=route)
    seconds = time.perf_counter() - start
    peak = own_peak_rss_mib()
    np.save(out.with_suffix(".keep.npy"), got.keep)
    np.save(out.with_suffix(".scores.npy"), got.scores)
    info = {k: v for k, v in got.info.items() if k != "checks"}
    return {"requested": route, "route": got.route, "N": rows, "K0": logits.shape[1],
            "seconds": round(seconds, 2), "stages_s": info.pop("seconds"), **info,
            "k_e": got.k_e, "k_c": got.k_c, "peak_rss_mib": round(peak, 1),
            "peak_rss_before_mib": round(before, 1), "rss_growth_mib": round(peak - before, 1),
            "threads": torch.get_num_threads(), "loadavg_1m_after": round(os.getloadavg()[0], 2)}


def agreement(a: Path, b: Path) -> dict:
    """How far two runs' results differ: k_e, k_c, kept set, kept order, scores."""
    ka, kb = np.load(a.with_suffix(".keep.npy")), np.load(b.with_suffix(".keep.npy"))
    sa, sb = np.load(a.with_suffix(".scores.npy")), np.load(b.with_suffix(".scores.npy"))
    return {"same_keep_set": bool(set(ka.tolist()) == set(kb.tolist())),
            "same_keep_order": bool(np.array_equal(ka, kb)),
            "kept_overlap": round(len(set(ka.tolist()) & set(kb.tolist())) / max(len(ka), len(kb)), 4),
            "max_score_diff_over_max": float(f"{np.abs(sa - sb).max() / sa.max():.3g}")}


def extrapolate(runs: list[dict], n: int, k0: int) -> dict:
    """Exact-route seconds and RSS growth at (n, k0) from exact runs at other K0 (module docstring)."""
    (a, b) = sorted(runs, key=lambda r: r["K0"])[-2:]
    p = math.log(b["stages_s"]["eigh"] / a["stages_s"]["eigh"]) / math.log(b["K0"] / a["K0"])
    scale = lambda r, e: (k0 / r["K0"]) ** e
    stages = {"softmax_centre": b["stages_s"]["softmax_centre"] * n / b["N"] * scale(b, 1),
              "covariance": b["stages_s"]["covariance"] * n / b["N"] * scale(b, 2),
              "eigh": b["stages_s"]["eigh"] * scale(b, p), "scores": b["stages_s"]["scores"]}
    slope = (b["rss_growth_mib"] - a["rss_growth_mib"]) / (b["K0"] ** 2 - a["K0"] ** 2)
    return {"extrapolated": True, "N": n, "K0": k0, "from_K0": [a["K0"], b["K0"]], "eigh_exponent": round(p, 3),
            "stages_s": {k: round(v, 1) for k, v in stages.items()}, "seconds": round(sum(stages.values()), 1),
            "seconds_if_eigh_cubic": round(sum(stages.values()) - stages["eigh"]
                                           + b["stages_s"]["eigh"] * scale(b, 3), 1),
            "rss_growth_mib": round(b["rss_growth_mib"] + slope * (k0 ** 2 - b["K0"] ** 2), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--concepts", type=int, default=22_131)
    ap.add_argument("--small-rows", type=int, nargs="+", default=[5_000, 10_000],
                    help="N < K0 sizes (the first rows; the gram route)")
    ap.add_argument("--exact-concepts", type=int, nargs=2, default=[4096, 8192],
                    help="the two K0 the exact route is timed at (all rows), for the extrapolation")
    ap.add_argument("--budget-s", type=float, default=900, help="run exact at the full size if it fits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=4, metavar=("NPY", "ROWS", "ROUTE", "OUT"), help="internal")
    a = ap.parse_args()
    if a.child:
        npy, rows, route, out = a.child
        print(json.dumps(child(Path(npy), int(rows), route, Path(out))))
        return
    n, k0, small = a.rows, a.concepts, a.small_rows
    described = (f"synthetic CLIP-like logits (cosine / {TAU}): N {n} images of {CLASSES} classes x K0 {k0} "
                 f"concepts, {CLASSES * PER_CLASS} of them class-matching, D {DIM}, seed {a.seed}; "
                 f"also N {n} x K0 {a.exact_concepts} and the first {small} rows x K0 {k0}")
    runs, agree = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def measure(name, npy, rows, route):
            t0 = time.perf_counter()
            runs[name] = run_child("bench.spectral_filter", "--child", str(npy), str(rows), route, str(tmp / name))
            print(f"{name}: {json.dumps(runs[name])} ({time.perf_counter() - t0:.0f} s with loading)",
                  file=sys.stderr, flush=True)
            return tmp / name

        for kk in a.exact_concepts:
            npy = tmp / f"logits_{kk}.npy"
            np.save(npy, make_logits(n, kk, a.seed))
            e = measure(f"exact_K{kk}", npy, n, "exact")
            t = measure(f"truncated_K{kk}", npy, n, "truncated")
            agree[f"truncated_vs_exact_K{kk}"] = agreement(e, t)
            npy.unlink()
        full = tmp / "logits_full.npy"
        np.save(full, make_logits(n, k0, a.seed))
        t_full = measure("truncated_full", full, n, "truncated")
        estimate = extrapolate([runs[f"exact_K{kk}"] for kk in a.exact_concepts], n, k0)
        if estimate["seconds"] <= a.budget_s:
            agree["truncated_vs_exact_full"] = agreement(measure("exact_full", full, n, "exact"), t_full)
        for rows in small:
            g = measure(f"gram_N{rows}", full, rows, "gram")
            agree[f"truncated_vs_gram_N{rows}"] = agreement(g, measure(f"truncated_N{rows}", full, rows, "truncated"))
    exact_sweep = [runs[f"exact_K{kk}"] for kk in a.exact_concepts]
    small_exact = {f"N{rows}": extrapolate(exact_sweep, rows, k0) for rows in small}
    exact_full = runs.get("exact_full", estimate)
    ratios = {
        **{f"exact_over_truncated_K{kk}": {
            "seconds": round(runs[f"exact_K{kk}"]["seconds"] / runs[f"truncated_K{kk}"]["seconds"], 2),
            "rss_growth": round(runs[f"exact_K{kk}"]["rss_growth_mib"] / runs[f"truncated_K{kk}"]["rss_growth_mib"], 2),
            "measured": True} for kk in a.exact_concepts},
        "exact_over_truncated_full": {
            "seconds": round(exact_full["seconds"] / runs["truncated_full"]["seconds"], 1),
            "rss_growth": round(exact_full["rss_growth_mib"] / runs["truncated_full"]["rss_growth_mib"], 2),
            "measured": "exact_full" in runs},
        **{f"exact_over_gram_N{rows}": {"seconds": round(small_exact[f"N{rows}"]["seconds"]
                                                          / runs[f"gram_N{rows}"]["seconds"], 1),
                                         "measured": False} for rows in small},
        **{f"gram_over_truncated_N{rows}": {
            "seconds": round(runs[f"gram_N{rows}"]["seconds"] / runs[f"truncated_N{rows}"]["seconds"], 2),
            "rss_growth": round(runs[f"gram_N{rows}"]["rss_growth_mib"] / runs[f"truncated_N{rows}"]["rss_growth_mib"], 2),
            "measured": True} for rows in small},
    }
    write_result("spectral_filter", {
        "logits": described, "beta_e": 0.95, "beta_c": 0.99,
        "auto_picks": {f"{r}x{c}": auto_route(r, c) for r, c in
                       [(n, k0), *((r, k0) for r in small), *((n, kk) for kk in a.exact_concepts)]},
        "routes": runs, "exact_full_extrapolated": estimate, "exact_small_extrapolated": small_exact,
        "agreement": agree, "ratios": ratios,
    }, context("bench.spectral_filter", None, [], {"logits": described,
                                                   "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
