"""Per-method cost on cached features, through the method contract exactly as `adapt` runs each method.

usage: python -m bench.closed_form [--repo .] [--model demo] [--dataset shapes] [--methods NAME ...]
Needs a reproduced repo. Builds `pipeline.adapt.Inputs` once and every draw of fewshot.json as a
`pipeline.adapt.Draw` once; then for each method (default: every one in `pipeline.methods.REGISTRY` but the
learned prompts, which `prompt@` trains, with
its params block; `--methods` picks some): `setup` once, and per draw (one fit, draw None, for draw-free
methods such as zero-shot) `fit`, which runs the method's val search (Tip's grid, APE's grid at params'
steps, SeMoBridge's random rows), then `components("test")`. Reports seconds of each phase and their total
per method, so a new method is benchmarked without editing this file.
"""

import time

import torch

from bench.common import context_of_repo, write_result
from bench.fewshot_common import load, parser
from pipeline.adapt import Draw, Inputs
from pipeline.methods import REGISTRY
from pipeline.methods.prompts import LearnedPrompts


def clock(device: str) -> float:
    """perf_counter after the device's queued work is done (CUDA kernels run asynchronously)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def time_method(method, settings, inputs: Inputs, draws: list[Draw]) -> dict:
    """Seconds of `setup`, of every `fit` and of every `components("test")` of one method."""
    dev = inputs.device
    t0 = clock(dev)
    state = method.setup(inputs, settings)
    t_setup = clock(dev) - t0
    t_fit = t_comp = 0.0
    for draw in draws if method.per_draw else [None]:
        t0 = clock(dev)
        fit = method.fit(inputs, draw, state, settings)
        t1 = clock(dev)
        fit.components("test")
        t_comp, t_fit = t_comp + clock(dev) - t1, t_fit + t1 - t0
    return {"setup_s": round(t_setup, 4), "fit_s": round(t_fit, 4), "components_test_s": round(t_comp, 4),
            "total_s": round(t_setup + t_fit + t_comp, 4), "fits": len(draws) if method.per_draw else 1}


def main() -> None:
    ap = parser(draw=False)
    cached = [n for n, m in REGISTRY.items() if not isinstance(m, LearnedPrompts)]   # prompt@ trains those
    ap.add_argument("--methods", nargs="+", choices=cached, default=cached,
                    help="methods to time (default: every registered one that reads only the cached features)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    ctx = load(args.repo.resolve(), args.model, args.dataset, args.methods)
    cfg, dev = ctx["methods"], ctx["device"]
    t0 = clock(dev)
    inputs = Inputs(ctx["feats"], ctx["views"], dev)
    t_inputs = clock(dev) - t0
    draws = [Draw(inputs, key, spec) for key, spec in ctx["fewshot"]["draws"].items()]
    t_draws = clock(dev) - t0 - t_inputs
    seconds = {name: time_method(REGISTRY[name], cfg.settings[name], inputs, draws) for name in cfg.enabled}
    write_result(f"closed_form-{args.model}-{args.dataset}", {
        "setup": {"model": args.model, "dataset": args.dataset, "draws": len(draws),
                  "queries_val": len(inputs.labels["val"]), "queries_test": len(inputs.labels["test"]),
                  "classes": inputs.num_classes, "D": int(inputs.protos.shape[1]), "device": dev,
                  "threads": torch.get_num_threads()},
        "shared_s": {"inputs": round(t_inputs, 4), "draws": round(t_draws, 4)},
        "seconds_per_method": seconds,
        "total_s": round(sum(s["total_s"] for s in seconds.values()), 4),
    }, context_of_repo("bench.closed_form", args.repo.resolve(), args.model, args.dataset,
                       ["extract.precision", "text", "fewshot", "views", "methods"]))


if __name__ == "__main__":
    main()
