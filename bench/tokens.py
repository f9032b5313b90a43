"""Patch tokens in images.zarr: store size and extraction time with and without them, in one run.

usage: python -m bench.tokens [--repo .] [--model demo] [--dataset scenes] [--images 1024]
Needs a reproduced repo (the model, the dataset's images). Extracts the first `--images` rows of the
dataset three times into temp stores, interleaved so drift hits all alike: without tokens, with
fp16 tokens, with fp32 tokens (`extract.tokens`); reports bytes on disk and seconds of each, and their
ratios to the store without tokens.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import context_of_repo, write_result
from pipeline import layout, models, runtime
from pipeline.extract import extract_images

VARIANTS = {"none": None, "fp16": "fp16", "fp32": "fp32"}


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--model", default="demo")
    ap.add_argument("--dataset", default="scenes")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    repo = a.repo.resolve()
    dataset = json.loads((layout.data_dir(a.dataset, repo) / "dataset.json").read_text())
    manifest = pd.read_parquet(layout.data_dir(a.dataset, repo) / "manifest.parquet").head(a.images)
    m = models.load(layout.model_dir(a.model, repo), runtime.device())
    knobs = runtime.settings(repo)
    seconds, size = {k: [] for k in VARIANTS}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, tokens in VARIANTS.items():
                out = Path(tmp) / f"{name}-{r}.zarr"
                start = time.perf_counter()
                extract_images(m, manifest, repo / dataset["root"], out, Path(tmp) / "staging", {"bench": name},
                               batch_size=knobs["batch_size"], workers=knobs["workers"], device=runtime.device(),
                               tokens=tokens, progress=False)
                seconds[name].append(time.perf_counter() - start)
                size[name] = store_bytes(out)
    best = {k: min(v) for k, v in seconds.items()}
    result = {"images": len(manifest), "bytes": size, "seconds": best,
              "size_over_none": {k: round(size[k] / size["none"], 2) for k in VARIANTS},
              "time_over_none": {k: round(best[k] / best["none"], 2) for k in VARIANTS}}
    ctx = context_of_repo("bench.tokens", repo, a.model, a.dataset, ["extract"])
    write_result(f"tokens-{a.model}-{a.dataset}", result, ctx)


if __name__ == "__main__":
    main()
