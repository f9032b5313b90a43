"""Milliseconds per query of OTI, OVI, IsoCLIP and SeMoBridge's closed-form bridge, in one run on one machine.

usage: python -m bench.inversion_latency [--repo .] [--model demo] [--dataset shapes] [--queries 64]
Needs a reproduced repo (cached features, the model). OTI and OVI run with the dataset's `inversion` settings
(what `oti@` / `ovi@` run), each at batch `batch` (throughput: seconds / queries) and at batch 1 (latency,
2 queries), and scaled linearly to the reference's steps; IsoCLIP (x_v @ its band projector) and the bridge
(f P W_txt with the text-norm rescale), both built once, are one matmul each, timed over every test query
(median of 20) and over single queries (median of 200). METHODS.md §6.3.
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.closed_form import clock
from bench.common import cached, context_of_repo, write_result
from pipeline import config, inversion, layout, models, retrieval_variants as rv, runtime
from pipeline.methods import semobridge

REFERENCE_STEPS = {"oti": 150, "ovi": 1000}   # Cross-the-Gap's configs (METHODS.md §6)


def per_query_ms(fn, n: int, device: str, repeats: int = 1) -> float:
    """Median over `repeats` of the milliseconds `fn()` takes, divided by the `n` queries it handles."""
    times = []
    for _ in range(repeats):
        t0 = clock(device)
        fn()
        times.append(clock(device) - t0)
    return 1000 * statistics.median(times) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--model", default="demo")
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--queries", type=int, default=64, help="OTI queries timed at full batch")
    a = ap.parse_args()
    repo = a.repo.resolve()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    card, _, feats = cached(repo, a.model, a.dataset)
    device = runtime.device()
    m = models.load(layout.model_dir(a.model, repo), device)
    test = np.flatnonzero(feats.split == 2)
    t = lambda x: torch.as_tensor(np.asarray(x, np.float32), device=device)
    out = {}

    oti = inversion.settings(params, "oti", a.dataset, layout.SPLITS)
    text = inversion.TextWithTokens(m, oti.template, oti.tokens, device)
    rows = test[:a.queries]
    run_oti = lambda r: inversion.invert(text, t(feats.emb[r]), r, oti, text.width)
    out["oti"] = {"steps": oti.steps, "batch": min(oti.batch, len(rows)),
                  "ms_per_query_batched": per_query_ms(lambda: run_oti(rows[:oti.batch]), min(oti.batch, len(rows)), device),
                  "ms_per_query_batch1": per_query_ms(lambda: [run_oti(rows[[i]]) for i in range(2)], 2, device)}

    ovi = inversion.settings(params, "ovi", a.dataset, layout.SPLITS)
    image = inversion.ImageWithTokens(m, device)
    prompts = feats.text_emb.reshape(-1, feats.text_emb.shape[-1])[:ovi.batch]
    run_ovi = lambda p: inversion.invert(image, t(p), np.arange(len(p)), ovi, image.width)
    out["ovi"] = {"steps": ovi.steps, "batch": len(prompts),
                  "ms_per_query_batched": per_query_ms(lambda: run_ovi(prompts), len(prompts), device),
                  "ms_per_query_batch1": per_query_ms(lambda: [run_ovi(prompts[[i]]) for i in range(2)], 2, device)}

    band = config.isoclip_band(params, card["arch"], "bench.inversion_latency")
    W_iso, _ = rv.isoclip_projectors(t(feats.W_img), t(feats.W_txt), band.k_top, band.k_bottom)
    pre, emb, text_pre = t(feats.pre[test]), t(feats.emb[test]), t(feats.text_pre)
    W_txt = t(feats.W_txt)
    P, scale = semobridge.bridge_matrix(W_txt, config.bridge_atol(params)), semobridge.text_scale(text_pre)
    # both operators are built once per model (setup); a query pays one matmul (+ the bridge's rescale)
    closed = {"isoclip": lambda x, e: x @ W_iso, "bridge": lambda x, e: semobridge.bridge(e, P, W_txt, scale)}
    for name, fn in closed.items():
        out[name] = {"ms_per_query_batched": per_query_ms(lambda: fn(pre, emb), len(test), device, repeats=20),
                     "ms_per_query_batch1": per_query_ms(lambda: fn(pre[:1], emb[:1]), 1, device, repeats=200),
                     "batch": len(test)}
    bridge = out["bridge"]
    ratios = {f"{k}_over_bridge": {b: float(f"{v[f'ms_per_query_{b}'] / bridge[f'ms_per_query_{b}']:.3g}")
                                   for b in ("batched", "batch1")} for k, v in out.items() if k != "bridge"}
    for name, ref in REFERENCE_STEPS.items():   # the cost is linear in steps: scale to the reference's
        out[name]["ms_per_query_batched_at_reference_steps"] = out[name]["ms_per_query_batched"] * ref / out[name]["steps"]
        out[name]["reference_steps"] = ref
    ctx = context_of_repo("bench.inversion_latency", repo, a.model, a.dataset,
                          ["inversion", "methods.isoclip", "methods.semobridge.atol"])
    write_result(f"inversion_latency-{a.model}-{a.dataset}", {"ms_per_query": out, "ratios": ratios}, ctx)


if __name__ == "__main__":
    main()
