"""Extraction under torchrun: 2 CPU processes (gloo) against 1, same EuroSAT images, same random
ViT-B-32-quickgelu; the speed-up and whether the two stores are identical byte for byte.

usage: python -m bench.torchrun_extraction [--images 1024] [--shard-rows 256] [--nproc 2]
Each run is a fresh process tree; its time runs from the model being loaded to the store being in place.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, SHARED, write_result
from bench.context import context
from bench.extraction import ARCH, ENTRY, _manifest
from pipeline import distributed, models, runtime
from pipeline.extract import extract_images


def _child(model_dir: Path, n: int, dest: Path, shard_rows: int) -> None:
    """One rank's share of the extraction; rank 0 prints its seconds as JSON."""
    world, knobs = distributed.current_world(), runtime.settings(ROOT)
    with distributed.process_group(world, "cpu"):
        m = models.load(model_dir)
        world.barrier()
        start = time.perf_counter()
        extract_images(m, _manifest(n), SHARED / "eurosat", dest, dest.with_name("staging.zarr"), {"bench": n},
                       batch_size=knobs["batch_size"], workers=knobs["workers"], shard_rows=shard_rows,
                       progress=False, world=world)
        seconds = time.perf_counter() - start
    if world.rank == 0:
        print(json.dumps({"seconds": seconds}))


def _run(model_dir: Path, n: int, dest: Path, shard_rows: int, nproc: int) -> dict:
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    script = [str(ROOT / "bench" / "torchrun_extraction.py")]
    args = ["--child", str(model_dir), str(n), str(dest), str(shard_rows)]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *launch, *script, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise RuntimeError(f"{nproc} process(es) failed:\n{proc.stderr[-3000:]}")
    seconds = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])["seconds"]
    return {"seconds": seconds, "wall_seconds": time.perf_counter() - start}


def _files(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--shard-rows", type=int, default=256)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--child", nargs=4, help="internal: model_dir n dest shard_rows")
    args = parser.parse_args()
    if args.child:
        model_dir, n, dest, shard_rows = args.child
        _child(Path(model_dir), int(n), Path(dest), int(shard_rows))
        return
    if not (SHARED / "eurosat").is_dir():
        sys.exit(f"{SHARED / 'eurosat'} is absent: this benchmark needs the real EuroSAT images")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models.save(models.build(ENTRY), ENTRY, tmp / "model")
        one = _run(tmp / "model", args.images, tmp / "one" / "out.zarr", args.shard_rows, 1)
        many = _run(tmp / "model", args.images, tmp / "many" / "out.zarr", args.shard_rows, args.nproc)
        identical = _files(tmp / "one" / "out.zarr") == _files(tmp / "many" / "out.zarr")
    knobs = runtime.settings(ROOT)
    write_result("torchrun_extraction", {
        "model": ARCH, "device": "cpu", "images": args.images, "shard_rows": args.shard_rows,
        "nproc": args.nproc, "batch_size": knobs["batch_size"], "workers_per_process": knobs["workers"],
        "one_process": one, "torchrun": many, "speedup": one["seconds"] / many["seconds"],
        "speedup_wall": one["wall_seconds"] / many["wall_seconds"], "identical_bytes": identical,
    }, context("bench.torchrun_extraction", None, [], {"dataset": "eurosat (../shared/datasets)"}))


if __name__ == "__main__":
    main()
