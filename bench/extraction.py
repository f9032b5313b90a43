"""Extraction benchmarks on real EuroSAT images, random-init ViT-B-32-quickgelu, CPU.

usage: python -m bench.extraction [--images 1024] [--rss 2000 8000]
- efficiency: end-to-end images/s (decode + preprocess + forward + Zarr write) / forward-only images/s,
  same model, same batch size, in one run (target >= 0.85);
- peak RSS of a whole extraction at two sizes, each in a fresh process (target growth <= 10%);
- files per array of a EuroSAT-sized (27,000-row) store (target <= 20).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, SHARED, peak_rss_mib, run_child, write_result
from bench.context import context
from pipeline import config, datasets, models, runtime
from pipeline.extract import extract_images, image_store_layout
from pipeline.store import ShardedWriter

ARCH = "ViT-B-32-quickgelu"
ENTRY = config.Model(arch=ARCH, source="random", seed=0)


def _model(tmp: Path) -> models.LoadedModel:
    models.save(models.build(ENTRY), ENTRY, tmp / "model")
    return models.load(tmp / "model")


def _manifest(n: int):
    manifest = datasets.coop_manifest("eurosat", SHARED / "eurosat")
    # Spread over classes and splits: every 3rd row until n.
    return manifest.iloc[:: max(1, len(manifest) // n)].head(n).reset_index(drop=True)


def extract_once(n: int, batch_size: int, workers: int) -> dict:
    """Extract n EuroSAT images into a temp store; seconds and this process's peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m, manifest = _model(tmp), _manifest(n)
        start = time.perf_counter()
        extract_images(m, manifest, SHARED / "eurosat", tmp / "out.zarr", tmp / "stage.zarr", {"bench": n},
                       batch_size=batch_size, workers=workers, progress=False)
        seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "peak_rss_mib": peak_rss_mib()}


def forward_only(n: int, batch_size: int) -> dict:
    """Same model and batch size on tensors already in memory: the compute-only ceiling."""
    with tempfile.TemporaryDirectory() as tmp:
        m = _model(Path(tmp))
    batch = torch.randn(batch_size, 3, 224, 224)
    batches = -(-n // batch_size)
    with torch.no_grad():
        m.trunk.encode_image(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            m.trunk.encode_image(batch) @ m.W_img
        seconds = time.perf_counter() - start
    return {"images": batches * batch_size, "images_per_s": batches * batch_size / seconds}


def files_per_array(rows: int = 27_000) -> dict:
    """Write a EuroSAT-sized store of random features with the real layout and count files per array."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = _model(tmp)
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
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rss", type=int, nargs=2, default=[2000, 8000])
    parser.add_argument("--child", type=int, help="internal: one extraction of N images, print JSON")
    args = parser.parse_args()
    knobs = runtime.settings(ROOT)
    if args.child:
        print(json.dumps(extract_once(args.child, knobs["batch_size"], knobs["workers"])))
        return
    if not (SHARED / "eurosat").is_dir():
        sys.exit(f"{SHARED / 'eurosat'} is absent: this benchmark needs the real EuroSAT images")
    e2e = run_child("bench.extraction", "--child", str(args.images))
    fwd = forward_only(args.images, knobs["batch_size"])
    small, large = (run_child("bench.extraction", "--child", str(n)) for n in args.rss)
    write_result("extraction", {
        "model": ARCH, "device": "cpu", "batch_size": knobs["batch_size"], "workers": knobs["workers"],
        "end_to_end_images_per_s": e2e["images_per_s"], "forward_only_images_per_s": fwd["images_per_s"],
        "efficiency": e2e["images_per_s"] / fwd["images_per_s"],
        "peak_rss_mib": {str(small["images"]): small["peak_rss_mib"], str(large["images"]): large["peak_rss_mib"]},
        "rss_growth": large["peak_rss_mib"] / small["peak_rss_mib"] - 1,
        **files_per_array(),
    }, context("bench.extraction", None, [], {"dataset": "eurosat (../shared/datasets), first images of the manifest"}))


if __name__ == "__main__":
    main()
