"""RE-tune training: seconds per epoch on a CheXpert-sized cache, and host memory bounded by the batch.

usage: python -m bench.retune_epoch [--rows 200000] [--dims 128 512] [--labels 5] [--prompts 4]
                                    [--batch 6144] [--epochs 3] [--small-rows 20000]

Data: SYNTHETIC, --rows float32 image features of width D (standard normal), random 0/1 targets for --labels
labels (about 30% positive), --prompts positive and --prompts negative prompt embeddings per label. One
fresh child process per D builds the arrays, then trains the default double-MLP adapters on all rows and
labels (the joint task: `pipeline.retune_train.train_task`, Adam, batch --batch) on the CPU for --epochs
epochs, timing each; the first epoch also pays one-off costs, so `s_per_epoch` is the median of the later
ones. Memory: the process's peak RSS (getrusage: it includes torch's import) after the arrays, the model and
the optimiser are built (Adam's construction imports ~150 MiB of torch._dynamo), and after training; their difference (`train_rss_growth_mib`) is what training needs beyond the cached rows, to
set against the row array's size (`row_array_mib`) and one batch's (`batch_array_mib`). The same is measured
at --small-rows rows (one epoch, `small`): bounded by the batch means that growth stays put while the row
array shrinks (`growth_over_small_growth` ~1).
Writes reports/bench/retune_epoch.json and prints it. Run it alone:
`flock /tmp/heavy.lock env OMP_NUM_THREADS=2 .venv/bin/python -m bench.retune_epoch`.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from bench.common import peak_rss_mib, run_child, write_result
from bench.context import context
from pipeline.retune import RetuneModel, Task, TrainConfig
from pipeline.retune_train import RetuneData, train_task

MIB = 2 ** 20


def child(rows: int, dim: int, labels: int, prompts: int, batch: int, epochs: int) -> dict:
    """One D in this (fresh) process."""
    rng = np.random.default_rng(0)
    names = tuple(f"label{c}" for c in range(labels))
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    y = (rng.random((rows, labels)) < 0.3).astype(np.float32)
    emb = lambda: rng.standard_normal((labels, prompts, dim), dtype=np.float32)
    data = RetuneData(names, x, y, x[:1], y[:1], emb(), emb())
    cfg = TrainConfig(batch=batch, epochs=1)
    model = RetuneModel("mlp", dim, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=0.0)   # imports ~150 MiB (torch._dynamo)
    before = peak_rss_mib()
    gen = torch.Generator().manual_seed(cfg.seed)
    task = Task("joint", 0, rows, tuple(range(labels)))
    seconds, losses = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        losses += train_task(model, opt, data, task, cfg, gen, "cpu", progress=False)
        seconds.append(time.perf_counter() - start)
    peak = peak_rss_mib()
    return {"D": dim, "rows": rows, "batch": batch, "batches_per_epoch": -(-rows // batch),
            "epoch_s": [round(s, 2) for s in seconds],
            "s_per_epoch": round(statistics.median(seconds[1:] or seconds), 2),
            "rows_per_s": round(rows / statistics.median(seconds[1:] or seconds)),
            "loss_per_epoch": [round(v, 4) for v in losses],
            "row_array_mib": round(x.nbytes / MIB, 1), "batch_array_mib": round(batch * dim * 4 / MIB, 1),
            "peak_rss_before_train_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "train_rss_growth_mib": round(peak - before, 1),
            "growth_over_row_array": round((peak - before) / (x.nbytes / MIB), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--labels", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4, help="positive prompts per label (as many negative)")
    ap.add_argument("--batch", type=int, default=6144)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--small-rows", type=int, default=20_000, help="rows of the memory check (one epoch)")
    ap.add_argument("--child", type=int, metavar="D", help="internal: one D, print JSON")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.rows, a.child, a.labels, a.prompts, a.batch, a.epochs)))
        return
    setup = {"rows": a.rows, "small_rows": a.small_rows, "labels": a.labels, "prompts": f"{a.prompts}+{a.prompts}",
             "batch": a.batch, "epochs": a.epochs, "adapter": "mlp (double)", "device": "cpu"}
    per_dim = {}
    for dim in a.dims:
        common = ["--child", str(dim), "--labels", str(a.labels), "--prompts", str(a.prompts), "--batch", str(a.batch)]
        big = run_child("bench.retune_epoch", *common, "--rows", str(a.rows), "--epochs", str(a.epochs))
        small = run_child("bench.retune_epoch", *common, "--rows", str(a.small_rows), "--epochs", "1")
        big["small"] = {k: small[k] for k in ("rows", "row_array_mib", "peak_rss_before_train_mib", "peak_rss_mib",
                                              "train_rss_growth_mib")}
        big["growth_over_small_growth"] = round(big["train_rss_growth_mib"] / max(small["train_rss_growth_mib"], 1.0), 2)
        per_dim[str(dim)] = big
        print(json.dumps(big), file=sys.stderr)
    write_result("retune_epoch", {"setup": setup, "per_dim": per_dim},
                 context("bench.retune_epoch", None, [], {"synthetic": setup}))


if __name__ == "__main__":
    main()
