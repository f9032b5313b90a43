"""Extraction benchmarks on real EuroSAT images, random-init ViT-B-32-quickgelu, CPU.

usage: python -m bench.extraction [--images 512] [--rounds 3] [--rss 2000 8000]
- efficiency: end-to-end images/s (decode + preprocess + forward + Zarr write) / forward-only images/s,
  same model, same batch size, alternated in one process (target >= 0.9), at 0, 1 and 2 loader workers;
- peak RSS of a whole extraction at two sizes, each in a fresh process that loads the saved model (the
  random initialisation's own peak is not the extraction's), target growth <= 10%;
- files per array of a EuroSAT-sized (27,000-row) store (target <= 20).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, SHARED, peak_rss_mib, rss_mib, run_child, write_result
from bench.context import context
from pipeline import config, datasets, models, runtime
from pipeline.extract import extract_images, image_store_layout
from pipeline.store import SHARD_ROWS, ShardedWriter

ARCH = "ViT-B-32-quickgelu"
ENTRY = config.Model(arch=ARCH, source="random", seed=0)


def _saved_model(tmp: Path) -> Path:
    models.save(models.build(ENTRY), ENTRY, tmp / "model")
    return tmp / "model"


def _manifest(n: int):
    manifest = datasets.coop_manifest("eurosat", SHARED / "eurosat")
    # Spread over classes and splits: every 3rd row until n.
    return manifest.iloc[:: max(1, len(manifest) // n)].head(n).reset_index(drop=True)


def _extract_seconds(m: models.LoadedModel, n: int, batch_size: int, workers: int, rss: list | None = None
                     ) -> float:
    """One extraction of n EuroSAT images into a temp store; with `rss`, this process's RSS after each shard."""
    manifest = _manifest(n)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shard = ShardedWriter.write_shard

        def recorded(self, *args):
            write_shard(self, *args)
            rss.append(rss_mib())

        if rss is not None:   # bench-only instrumentation: the library has no per-shard hook
            ShardedWriter.write_shard = recorded
        try:
            start = time.perf_counter()
            extract_images(m, manifest, SHARED / "eurosat", tmp / "out.zarr", tmp / "stage.zarr", {"bench": n},
                           batch_size=batch_size, workers=workers, progress=False, shard_rows=SHARD_ROWS)
            return time.perf_counter() - start
        finally:
            ShardedWriter.write_shard = write_shard


def _forward_seconds(m: models.LoadedModel, n: int, batch_size: int) -> float:
    """The same batches' forward on one tensor already in memory: the compute-only ceiling."""
    batch = torch.randn(batch_size, 3, 224, 224)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            m.trunk.encode_image(batch[: min(batch_size, n - i)]) @ m.W_img
    return time.perf_counter() - start


def efficiency(model_dir: Path, n: int, batch_size: int, workers: int, rounds: int) -> dict:
    """End-to-end rate / forward-only rate, the two alternated `rounds` times in one process after a warm-up:
    this shared 2-core machine drifts by 20% between minutes, and alternation exposes both to the drift alike."""
    m = models.load(model_dir)
    _forward_seconds(m, batch_size, batch_size)
    pairs = [(_forward_seconds(m, n, batch_size), _extract_seconds(m, n, batch_size, workers)) for _ in range(rounds)]
    ratios = [f / e for f, e in pairs]
    return {"workers": workers, "ratios": [round(r, 3) for r in ratios], "median": statistics.median(ratios),
            "forward_images_per_s": [round(n / f, 1) for f, _ in pairs],
            "end_to_end_images_per_s": [round(n / e, 1) for _, e in pairs]}


def memory(model_dir: Path, n: int, batch_size: int, workers: int) -> dict:
    """Peak RSS of one extraction in a fresh process that loads the saved model, and RSS after each shard."""
    m = models.load(model_dir)
    loaded, per_shard = rss_mib(), []
    _extract_seconds(m, n, batch_size, workers, per_shard)
    return {"images": n, "loaded_rss_mib": loaded, "rss_after_shard_mib": per_shard, "peak_rss_mib": peak_rss_mib()}


def files_per_array(model_dir: Path, rows: int = 27_000) -> dict:
    """Write a EuroSAT-sized store of random features with the real layout and count files per array."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = models.load(model_dir)
        manifest = datasets.coop_manifest("eurosat", SHARED / "eurosat")
        assert len(manifest) == rows
        layout, small = image_store_layout(m, manifest)
        w = ShardedWriter(tmp / "s.zarr", {}, layout, small)
        rng = np.random.default_rng(0)
        for s in w.pending():
            a, b = w.shard_range(s)
            w.write_shard(s, {k: rng.standard_normal((b - a,) + shape[1:], dtype=np.float32)
                              for k, (shape, _) in layout.items()})
        w.finalize(tmp / "out.zarr")
        arrays = [p.parent for p in (tmp / "out.zarr").rglob("zarr.json") if p.parent != tmp / "out.zarr"
                  and json.loads(p.read_text())["node_type"] == "array"]
        counts = {str(a.relative_to(tmp / "out.zarr")): sum(f.is_file() for f in a.rglob("*")) for a in arrays}
    return {"rows": rows, "files_per_array": counts, "max_files_per_array": max(counts.values())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss", type=int, nargs=2, default=[2000, 8000])
    parser.add_argument("--child", nargs=4, help="internal: efficiency|memory N MODEL_DIR WORKERS, print JSON")
    args = parser.parse_args()
    knobs = runtime.settings(ROOT)
    if args.child:
        what, n, model_dir, workers = args.child
        run = (lambda: efficiency(Path(model_dir), int(n), knobs["batch_size"], int(workers), args.rounds)) \
            if what == "efficiency" else (lambda: memory(Path(model_dir), int(n), knobs["batch_size"], int(workers)))
        print(json.dumps(run()))
        return
    if not (SHARED / "eurosat").is_dir():
        sys.exit(f"{SHARED / 'eurosat'} is absent: this benchmark needs the real EuroSAT images")
    workers = knobs["workers"]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(_saved_model(Path(tmp)))
        child = lambda *a: run_child("bench.extraction", "--rounds", str(args.rounds), "--child", *map(str, a))
        by_workers = {w: child("efficiency", args.images, model_dir, w) for w in sorted({workers, 0, 1, 2})}
        small, large = (child("memory", n, model_dir, workers) for n in args.rss)
        files = files_per_array(Path(model_dir))
    write_result("extraction", {
        "model": ARCH, "device": "cpu", "batch_size": knobs["batch_size"], "images": args.images,
        "rounds": args.rounds, "workers": workers, "efficiency": by_workers[workers]["median"],
        "efficiency_by_workers": {str(w): r for w, r in by_workers.items()},
        "peak_rss_mib": {str(small["images"]): small["peak_rss_mib"], str(large["images"]): large["peak_rss_mib"]},
        "rss_growth": large["peak_rss_mib"] / small["peak_rss_mib"] - 1,
        "memory": {str(small["images"]): small, str(large["images"]): large},
        **files,
    }, context("bench.extraction", None, [], {"dataset": "eurosat (../shared/datasets), first images of the manifest"}))


if __name__ == "__main__":
    main()
