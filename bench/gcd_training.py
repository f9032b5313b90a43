"""SpectralGCD training: seconds per epoch on cached views against running the student's image tower on each
batch's two views (what the reference does), measured in one run.

usage: python -m bench.gcd_training [--repo .] [--dataset scenes] [--forward-batches 4]
Needs a reproduced repo (`gcd@<dataset>`'s inputs). The cached epoch is `pipeline.gcd_train.train` with one
epoch; the forward cost is timed on `--forward-batches` batches of 2 x batch random images at each model's
input size (the demo student, and random ViT-B-32-quickgelu as a realistic tower) and scaled to the
epoch's batch count (every batch costs the same).
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import open_clip
import torch
import yaml

from bench.common import context_of_repo, write_result
from pipeline import config, gcd_config, gcd_inputs, gcd_train, layout, models


def forward_seconds(model: torch.nn.Module, size: int, rows: int, batches: int) -> float:
    """Mean seconds of one no-grad image-tower pass over `rows` images of `size` x `size`."""
    x = torch.randn(rows, 3, size, size)
    with torch.no_grad():
        model.encode_image(x[:2])          # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            model.encode_image(x)
    return (time.perf_counter() - start) / batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--dataset", default="scenes")
    ap.add_argument("--forward-batches", type=int, default=4)
    a = ap.parse_args()
    repo = a.repo.resolve()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    student, teacher = config.distill(params)
    cfg = gcd_config.config(params, a.dataset)
    one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1),
                              loss=dataclasses.replace(cfg.loss, epochs=1, warmup_teacher_temp_epochs=0))
    inputs = gcd_inputs.load(student, teacher, a.dataset, cfg, repo)
    keep = torch.arange(len(inputs.concepts)).numpy()
    start = time.perf_counter()
    gcd_train.train("spectralgcd", inputs, keep, one, seed=0, progress=False)
    cached = time.perf_counter() - start
    n_batches = int(inputs.labelled.size) // cfg.train.batch
    card = json.loads((layout.model_dir(student, repo) / "card.json").read_text())
    towers = {student: (models.load(layout.model_dir(student, repo)).trunk, card["preprocess"]["size"]),
              "vit_b32_random": (open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval(), 224)}
    result = {"dataset": a.dataset, "train_rows": int(inputs.labelled.size), "batch": cfg.train.batch,
              "batches_per_epoch": n_batches, "concepts": len(inputs.concepts), "cached_epoch_s": round(cached, 3),
              "towers": {}}
    for name, (tower, size) in towers.items():
        per_batch = forward_seconds(tower, size if isinstance(size, int) else size[0], 2 * cfg.train.batch,
                                    a.forward_batches)
        epoch = cached + per_batch * n_batches
        result["towers"][name] = {"forward_s_per_batch": round(per_batch, 4), "epoch_with_forward_s": round(epoch, 2),
                                  "ratio": round(epoch / cached, 1)}
    ctx = context_of_repo("bench.gcd_training", repo, student, a.dataset, ["gcd", "distill"])
    write_result(f"gcd_training-{a.dataset}", result, ctx)


if __name__ == "__main__":
    main()
