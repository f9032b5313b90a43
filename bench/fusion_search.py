"""Search throughput: SeMoBridge's 7 knobs (METHODS.md §3.5) scored on val, batched vs per-trial loop vs Optuna.

usage: python -m bench.fusion_search [--repo .] [--model demo] [--dataset shapes] [--key shot_16-seed_1]
                                     [--trials 16384] [--loop 400] [--optuna 1000]
Needs a reproduced repo (features, fewshot.json, views.zarr). In one run, on the same val cosines:
- batched: `pipeline.fusion.search_batched` over `sample_weights(SEARCH_SPACE, trials)` with the chunk
  `adapt` uses on CPU (and with the library's default chunk);
- loop: the same rows one at a time through `semobridge_logits` + argmax (a per-trial Python loop);
- Optuna TPE (the reference's sampler, seed 1), `--optuna` trials, sequential by nature.
Reports trials/s of each, the speed-up (target >= 50x over the loop) and best val accuracy (target: batched
>= Optuna), and the linear lambda search `fuse` runs (pipeline.fusion.search).
"""

import time

import optuna
import torch

from bench.common import write_result
from bench.fewshot_common import load, parser
from pipeline import adapt as adaptlib
from pipeline.adapt import search_chunk
from pipeline.fusion import count_correct, sample_weights, search, search_batched
from pipeline.methods import semobridge, zeroshot


def val_cosines(ctx: dict, key: str):
    """SeMoBridge cosines of one draw on its val rows, built as `adapt` builds them."""
    feats, cfg, dev = ctx["feats"], ctx["methods"]["semobridge"], ctx["device"]
    t = lambda a: torch.from_numpy(a).float().to(dev)
    val_rows = (feats.split == 1).nonzero()[0]
    d = adaptlib._Draw(feats, ctx["fewshot"]["draws"][key], val_rows, feats.text_emb.shape[0], ctx["views"])
    rows = val_rows[d.val_index]
    shots = t(feats.emb[d.idx]).unsqueeze(2)
    extra = {"none": [], "hflip": [t(ctx["views"].flip[d.view_rows]).unsqueeze(2)],
             "views": [t(ctx["views"].emb[d.view_rows])]}[cfg["extra_shots"]]
    protos = zeroshot.class_prototypes(t(feats.text_emb))
    W_txt = t(feats.W_txt)
    cos = semobridge.semobridge_cosines(t(feats.emb[rows]), torch.cat([shots, *extra], 2).flatten(1, 2), protos,
                                        semobridge.bridge_matrix(W_txt, cfg["atol"]), W_txt,
                                        semobridge.text_scale(t(feats.text_pre)))
    return cos, torch.from_numpy(feats.label[rows].astype("int64")).to(dev)


def main() -> None:
    ap = parser()
    ap.add_argument("--trials", type=int, default=16384)
    ap.add_argument("--loop", type=int, default=400)
    ap.add_argument("--optuna", type=int, default=1000)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    ctx = load(args.repo.resolve(), args.model, args.dataset)
    cos, y = val_cosines(ctx, args.key)
    rows = sample_weights(semobridge.SEARCH_SPACE, args.trials, 0)
    build = semobridge.semobridge_builder(cos)
    chunk = search_chunk(len(y), int(cos["c1"].shape[1]), ctx["device"])
    search_batched(build, rows[:64], y, chunk)  # warm-up

    t0 = time.perf_counter()
    best, acc = search_batched(build, rows, y, chunk)  # as adapt runs it
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    search_batched(build, rows, y)  # the library's default chunking (sized for GPUs)
    t_default = time.perf_counter() - t0
    first_1000 = int(torch.argmax(acc[: args.optuna]))

    t0 = time.perf_counter()
    loop_acc = []
    for row in rows[: args.loop]:
        logits = semobridge.semobridge_logits(cos, dict(zip(semobridge.PARAM_NAMES, row.tolist())))
        loop_acc.append(int(count_correct(logits, y)) / len(y))
    t_loop = time.perf_counter() - t0
    agree = max(abs(a - float(b)) for a, b in zip(loop_acc, acc[: args.loop]))

    def objective(trial):
        p = {n: trial.suggest_float(n, lo, hi) for n, (lo, hi) in semobridge.SEARCH_SPACE.items()}
        return int(count_correct(semobridge.semobridge_logits(cos, p), y)) / len(y)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=args.optuna)
    t_optuna = time.perf_counter() - t0

    # fuse's linear step: lambda1..3 over fixed z1..z3 at the knobs adapt chose
    z = dict(zip(("lambda1", "lambda2", "lambda3"), semobridge.semobridge_terms(
        cos, *[float(rows[best, i]) for i in range(4)])))
    lam = sample_weights({k: (0.0, 1.0) for k in z}, args.trials, 0)
    search(z, y, lam[:64])
    t0 = time.perf_counter()
    search(z, y, lam)
    t_linear = time.perf_counter() - t0

    tps = {"batched": args.trials / t_batched, "batched_default_chunk": args.trials / t_default,
           "loop": args.loop / t_loop, "optuna": args.optuna / t_optuna}
    write_result(f"fusion_search-{args.model}-{args.dataset}", {
        "setup": {"model": args.model, "dataset": args.dataset, "draw": args.key, "val_rows": len(y),
                  "classes": int(cos["c1"].shape[1]), "device": ctx["device"], "threads": torch.get_num_threads(),
                  "chunk_trials": chunk},
        "trials_per_s": {k: round(v, 1) for k, v in tps.items()},
        "seconds": {"batched": round(t_batched, 3), "loop": round(t_loop, 3), "optuna": round(t_optuna, 3)},
        "trials": {"batched": args.trials, "loop": args.loop, "optuna": args.optuna},
        "speedup_batched_vs_loop": round(tps["batched"] / tps["loop"], 1),
        "speedup_batched_vs_optuna": round(tps["batched"] / tps["optuna"], 1),
        "loop_matches_batched_max_abs_diff": agree,
        "best_val_acc": {"batched_all": round(float(acc[best]), 4),
                         f"batched_first_{args.optuna}": round(float(acc[first_1000]), 4),
                         "optuna_tpe": round(study.best_value, 4)},
        "linear_lambda_search_trials_per_s": round(args.trials / t_linear, 1),
        "targets": {"speedup_vs_loop_ge_50": tps["batched"] / tps["loop"] >= 50,
                    "batched_best_ge_optuna": float(acc[best]) >= study.best_value},
    })


if __name__ == "__main__":
    main()
