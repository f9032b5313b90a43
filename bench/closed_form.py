"""Closed-form cost per method on cached features, and the cost of each method's val search in `adapt`.

usage: python -m bench.closed_form [--repo .] [--model demo] [--dataset shapes] [--key shot_16-seed_1]
Needs a reproduced repo. For one draw: seconds to build each training-free method with fixed knobs and
score val + test (prototypes / cache keys / bridge / IsoCLIP basis, then logits), and seconds of each
method's search on val as `adapt` runs it (Tip 200x20 grid, APE grid at params' steps and at the
reference 200x20x20, SeMoBridge random rows), plus `adapt.run` for all draws and methods.
"""

import copy
import time

import torch

from bench.common import write_result
from bench.fewshot_common import load, parser
from pipeline import adapt
from pipeline.methods import ape, isoclip, ncm, semobridge, tip_adapter, zeroshot


def timed(fn, repeat: int = 3) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round((time.perf_counter() - t0) / repeat, 4)


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    ctx = load(args.repo.resolve(), args.model, args.dataset)
    feats, cfg, v = ctx["feats"], ctx["methods"], ctx["views"]
    t = lambda a: torch.from_numpy(a).float()
    val_rows = (feats.split == 1).nonzero()[0]
    d = adapt._Draw(feats, ctx["fewshot"]["draws"][args.key], val_rows, feats.text_emb.shape[0], v)
    q = t(feats.emb[(feats.split >= 1)])  # val + test queries
    q_pre = t(feats.pre[(feats.split >= 1)])
    y_val = torch.from_numpy(feats.label[val_rows].astype("int64"))
    q_val = t(feats.emb[val_rows])
    protos = zeroshot.class_prototypes(t(feats.text_emb))
    shots, view_emb = t(feats.emb[d.idx]), t(v.emb[d.view_rows])
    W_img, W_txt = t(feats.W_img), t(feats.W_txt)
    keys = tip_adapter.cache_keys(view_emb)
    k_iso = cfg.get("isoclip", {"k_top": 0, "k_bottom": 0})
    q_ape = ape.select_channels(protos, keys, adapt._channel_count(cfg["ape"]["channels"], keys.shape[-1]),
                                *cfg["ape"]["w"])
    semo_shots = torch.cat([shots.unsqueeze(2), t(v.flip[d.view_rows]).unsqueeze(2)], 2).flatten(1, 2)

    def semo():
        P = semobridge.bridge_matrix(W_txt, cfg["semobridge"]["atol"])
        cos = semobridge.semobridge_cosines(q, semo_shots, protos, P, W_txt, semobridge.text_scale(t(feats.text_pre)))
        return semobridge.semobridge_terms(cos, 0.1, 1.0, 1.0, 1.0)

    def iso():
        U_k, _ = isoclip.iso_basis(W_img, W_txt, k_iso["k_top"], k_iso["k_bottom"])
        return isoclip.isoncm_logits(q_pre, t(feats.pre[d.idx]).flatten(0, 1),
                                     torch.arange(d.idx.shape[0]).repeat_interleave(d.idx.shape[1]),
                                     d.idx.shape[0], isoclip.iso_image_projector(W_img, U_k))

    closed = {
        "zeroshot": timed(lambda: zeroshot.zeroshot_logits(q, zeroshot.class_prototypes(t(feats.text_emb)))),
        "ncm": timed(lambda: ncm.ncm_logits(q, zeroshot.normalize(shots.mean(1)))),
        "isoncm": timed(iso),
        "tip": timed(lambda: tip_adapter.tip_logits(q, protos, tip_adapter.cache_keys(view_emb), 1.0, 5.0)),
        "ape": timed(lambda: ape.ape_logits(q, protos, tip_adapter.cache_keys(view_emb), ape.select_channels(
            protos, keys, q_ape.numel(), *cfg["ape"]["w"]), 1.0, 5.0, 0.5)),
        "semobridge": timed(semo),
    }
    steps = cfg["ape"]["steps"]
    searches = {
        "tip_grid": timed(lambda: tip_adapter.tip_search(q_val, y_val, protos, keys, *cfg["tip"]["scales"],
                                                         *cfg["tip"]["steps"]), 1),
        f"ape_grid_{'x'.join(map(str, steps))}": timed(lambda: ape.ape_search(
            q_val, y_val, protos, keys, q_ape, tuple(cfg["ape"]["scales"]), steps[2], steps[0], steps[1]), 1),
        "ape_grid_200x20x20_reference": timed(lambda: ape.ape_search(
            q_val, y_val, protos, keys, q_ape, tuple(cfg["ape"]["scales"]), 20, 200, 20), 1),
    }
    all_cfg = copy.deepcopy(cfg)
    per_method_all_draws = {}
    for method in cfg["enabled"]:
        all_cfg["enabled"] = [method]
        t0 = time.perf_counter()
        adapt.run(feats, ctx["fewshot"], v, all_cfg)
        per_method_all_draws[method] = round(time.perf_counter() - t0, 2)
    write_result(f"closed_form-{args.model}-{args.dataset}", {
        "setup": {"model": args.model, "dataset": args.dataset, "draw": args.key, "queries_val_test": len(q),
                  "classes": int(protos.shape[0]), "D": int(protos.shape[1]), "threads": torch.get_num_threads()},
        "closed_form_s_one_draw_val_and_test": closed,
        "val_search_s_one_draw": searches,
        "adapt_run_s_all_draws_per_method": per_method_all_draws,
        "draws": len(ctx["fewshot"]["draws"]),
    })


if __name__ == "__main__":
    main()
