"""SeMoBridge's 7-knob val search (METHODS.md §3.5): adapt's batched random + refinement vs Optuna's TPE.

usage: python -m bench.fusion_search [--repo .] [--model demo] [--dataset shapes] [--optuna 1000]
                                     [--speed-trials 16384] [--loop 400]
Needs a reproduced repo (features, fewshot.json, views.zarr). On every draw of its fewshot.json, on the
draw's val cosines (built as `SeMoBridge.fit` builds them):
- random: the first stage of adapt's search alone (`methods.semobridge.trials`, `seed`);
- refined: adapt's whole search, `search_space` with params' `methods.semobridge` (+ `refine` rounds);
- tpe: Optuna's TPE (the reference's sampler, seed 1), `--optuna` sequential trials;
with the best val accuracy of each and the test accuracy its choice gives (test is scored only after
all three choices of a draw). Throughput on the largest-shot, first-seed draw: batched trials/s with the
one chunk policy (`chunk_for`) and with the GPU budget's chunk, a per-trial loop, and TPE.
"""

import dataclasses
import time

import optuna
import torch

from bench.common import context_of_repo, write_result
from bench.fewshot_common import load, parser
from pipeline.adapt import Draw, Inputs
from pipeline.fusion import chunk_for, count_correct, sample_weights, search_batched, search_space
from pipeline.methods import semobridge

SPACE = semobridge.SEARCH_SPACE


def accuracy(cos: dict, row: torch.Tensor, labels: torch.Tensor) -> float:
    return int(count_correct(semobridge.semobridge_builder(cos)(row[None])[0], labels)) / len(labels)


def tpe(cos: dict, labels: torch.Tensor, trials: int) -> tuple[torch.Tensor, float]:
    build = semobridge.semobridge_builder(cos)

    def objective(trial):
        row = torch.tensor([[trial.suggest_float(n, lo, hi) for n, (lo, hi) in SPACE.items()]])
        return int(count_correct(build(row)[0], labels)) / len(labels)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    study.optimize(objective, n_trials=trials)
    return torch.tensor([study.best_params[n] for n in SPACE]), study.best_value


def per_draw(inputs: Inputs, draw: Draw, state, cfg, optuna_trials: int) -> dict:
    shots = semobridge.METHOD.shots(inputs, draw, cfg)
    cosines = lambda query: semobridge.semobridge_cosines(query, shots, inputs.protos, *state)
    val = cosines(draw.q_val)
    build = semobridge.semobridge_builder(val)
    first = dataclasses.replace(cfg.search, rounds=0)   # stage 1 only
    picks, seconds = {}, {}
    for name, run in (("random", lambda: search_space(build, SPACE, draw.y_val, first)[:2]),
                      ("refined", lambda: search_space(build, SPACE, draw.y_val, cfg.search)[:2]),
                      ("tpe", lambda: tpe(val, draw.y_val, optuna_trials))):
        t0 = time.perf_counter()
        picks[name] = run()
        seconds[name] = round(time.perf_counter() - t0, 3)
    test = cosines(inputs.query["test"])   # only now, after every choice of this draw
    out = {name: {"val": round(100 * acc, 3), "test": round(100 * accuracy(test, row, inputs.labels["test"]), 3)}
           for name, (row, acc) in picks.items()}
    return {**out, "seconds": seconds, "refined_ge_tpe": picks["refined"][1] >= picks["tpe"][1]}


def throughput(inputs: Inputs, draw: Draw, state, cfg, args) -> dict:
    shots = semobridge.METHOD.shots(inputs, draw, cfg)
    cos = semobridge.semobridge_cosines(draw.q_val, shots, inputs.protos, *state)
    build, y = semobridge.semobridge_builder(cos), draw.y_val
    rows = sample_weights(SPACE, args.speed_trials, 0)
    per_trial = len(y) * inputs.num_classes
    chunk, gpu_chunk = chunk_for(per_trial, inputs.device), chunk_for(per_trial, "cuda")
    search_batched(build, rows[:64], y, chunk)  # warm-up
    timed = {}
    for name, step in (("batched", chunk), ("batched_gpu_chunk", gpu_chunk)):
        t0 = time.perf_counter()
        _, acc = search_batched(build, rows, y, step)
        timed[name] = args.speed_trials / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    loop = [accuracy(cos, row, y) for row in rows[: args.loop]]
    timed["loop"] = args.loop / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    tpe(cos, y, args.optuna)
    timed["tpe"] = args.optuna / (time.perf_counter() - t0)
    return {"key": draw.key, "val_rows": len(y), "classes": inputs.num_classes, "chunk_trials": chunk,
            "gpu_chunk_trials": gpu_chunk, "trials_per_s": {k: round(v, 1) for k, v in timed.items()},
            "batched_over_tpe": round(timed["batched"] / timed["tpe"], 1),
            "batched_over_loop": round(timed["batched"] / timed["loop"], 1),
            "loop_matches_batched_max_abs_diff": max(abs(a - float(b)) for a, b in zip(loop, acc))}


def main() -> None:
    ap = parser(draw=False)
    ap.add_argument("--optuna", type=int, default=1000)
    ap.add_argument("--speed-trials", type=int, default=16384)
    ap.add_argument("--loop", type=int, default=400)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = load(args.repo.resolve(), args.model, args.dataset, ["semobridge"])
    cfg = ctx["methods"].settings["semobridge"]
    inputs = Inputs(ctx["feats"], ctx["views"], ctx["device"])
    state = semobridge.METHOD.setup(inputs, cfg)
    specs = ctx["fewshot"]["draws"]
    draws = {key: per_draw(inputs, Draw(inputs, key, spec), state, cfg, args.optuna) for key, spec in specs.items()}
    for key, d in draws.items():
        print(f"{key:16s} " + "  ".join(f"{n} val {d[n]['val']:.2f} test {d[n]['test']:.2f}"
                                        for n in ("random", "refined", "tpe")))
    last = max(specs, key=lambda k: (specs[k]["shots"], -specs[k]["seed"]))
    mean = lambda name, split: round(sum(d[name][split] for d in draws.values()) / len(draws), 3)
    write_result(f"fusion_search-{args.model}-{args.dataset}", {
        "setup": {"model": args.model, "dataset": args.dataset, "draws": len(draws), "optuna_trials": args.optuna,
                  "search": dataclasses.asdict(cfg.search)},
        "per_draw": draws,
        "mean": {n: {"val": mean(n, "val"), "test": mean(n, "test")} for n in ("random", "refined", "tpe")},
        "refined_ge_tpe_on_every_draw": all(d["refined_ge_tpe"] for d in draws.values()),
        "throughput": throughput(inputs, Draw(inputs, last, specs[last]), state, cfg, args),
    }, context_of_repo("bench.fusion_search", args.repo.resolve(), args.model, args.dataset,
                       ["extract.precision", "text", "fewshot", "views", "methods.semobridge",
                        f"methods.overrides.{args.dataset}.semobridge"]))


if __name__ == "__main__":
    main()
