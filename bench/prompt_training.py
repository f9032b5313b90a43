"""CoOp / KDPL on cached views: seconds per step against running the image tower at each step (what the reference
does), and the training time per (dataset, shots, seed) run, measured in one run.

usage: python -m bench.prompt_training [--epochs 2] [--forward-batches 3]
Two problems at 16 shots with V = 10 cached views, `prompt.train`'s batch and optimiser: the repo's demo student
on shapes' shape (36 classes) and random ViT-B-32-quickgelu on EuroSAT's (10 classes). `pipeline.prompt_train.train`
runs `--epochs` epochs of CoOp and of KDPL (its teacher: features of the student's width) on synthetic features;
seconds per step = wall / steps (every step costs the same). The image tower's no-grad forward on one batch at
the model's input size is timed on `--forward-batches` batches: a CoOp step of the reference adds one, a KDPL
step two (student and teacher towers; here the teacher's is taken as the student's, a lower bound for a larger
teacher). Run time = steps of the reference's 50 epochs x seconds per step.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import ROOT, write_result
from bench.context import context
from bench.gcd_training import forward_seconds
from bench.semobridge_t import load_model
from pipeline import prompt_run
from pipeline.prompt_learner import PromptLearner
from pipeline.prompt_train import PromptTrainConfig, train

PROBLEMS = {"demo": ("shapes", 36), "vit_b32_random": ("eurosat", 10)}   # model -> (dataset shape, classes)
SHOTS, VIEWS, REFERENCE_EPOCHS = 16, 10, 50


def run_seconds(learner: PromptLearner, method: str, n_cls: int, shared: dict, epochs: int) -> float:
    """Wall seconds of `epochs` epochs of `method` on synthetic cached views of n_cls x 16 shots."""
    g = np.random.default_rng(0)
    n = n_cls * SHOTS
    views = g.standard_normal((n, VIEWS, learner.dim)).astype(np.float32)
    cfg = PromptTrainConfig(method=method, seed=1, **{**shared, "epochs": epochs})
    start = time.perf_counter()
    train(learner, cfg, [f"class {i}" for i in range(n_cls)], views, labels=np.arange(n) % n_cls,
          teacher_views=views, teacher_text=g.standard_normal((n_cls, learner.dim)).astype(np.float32),
          progress=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--forward-batches", type=int, default=3)
    a = ap.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    shared = prompt_run.config(params, "eurosat").train          # the block's values (no demo override)
    result = {"shots": SHOTS, "views": VIEWS, "batch": shared["batch"], "measured_epochs": a.epochs,
              "reference_epochs": REFERENCE_EPOCHS, "per_model": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (dataset, n_cls) in PROBLEMS.items():
            m = load_model(params, name, Path(tmp) / name)
            learner = PromptLearner(m)
            steps = (n_cls * SHOTS) // shared["batch"]
            size = m.card["preprocess"]["size"]
            tower = forward_seconds(m.trunk, size if isinstance(size, int) else size[0], shared["batch"],
                                    a.forward_batches)
            row = {"dataset_shape": dataset, "classes": n_cls, "steps_per_epoch": steps,
                   "image_forward_s_per_batch": round(tower, 4)}
            for method, towers in (("coop", 1), ("kdpl", 2)):
                step = run_seconds(learner, method, n_cls, shared, a.epochs) / (a.epochs * steps)
                row[method] = {"cached_s_per_step": round(step, 4), "with_towers_s_per_step": round(step + towers * tower, 4),
                               "ratio": round((step + towers * tower) / step, 1),
                               "run_s_cached": round(step * steps * REFERENCE_EPOCHS, 1),
                               "run_s_with_towers": round((step + towers * tower) * steps * REFERENCE_EPOCHS, 1)}
            result["per_model"][name] = row
    write_result("prompt_training", result, context("bench.prompt_training", ROOT / "params.yaml",
                                                    ["prompt", "model_zoo.demo", "model_zoo.vit_b32_random"]))


if __name__ == "__main__":
    main()
