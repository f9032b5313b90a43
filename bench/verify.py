"""verify's cost on a EuroSAT-sized store: 27,000 rows, image/pre 768 and image/emb 512 wide float32
(ViT-B/32), written with ShardedWriter as extraction writes it, as the output of a one-stage DVC repo
built in a temp dir (git init, dvc init, the project's cache.type, `dvc repro`), so the cache part is real.

usage: python -m bench.verify [--rows 27000] [--repeat 5]
Each figure is the best of --repeat, all in one run, page cache warm:
- zarr_read_s: every array of the store read once with Zarr (`array[...]`, what the readers do);
- store_checks_s: verify's checks of the store alone (flag, provenance, inventory, every shard decoded);
- verify_copies_s: the whole verify of the store (+ every file's md5 against DVC's `.dir` listing) as
  `dvc repro` leaves it: with `reflink,hardlink,symlink` on ext4 the cache holds copies, so both are hashed;
- verify_hardlinked_s: the same after `dvc checkout --relink` (what any checkout makes): one inode, one md5;
- md5_floor_s: hashlib md5 of the store's bytes already in memory, one thread: the floor of the cache part.
Target: store_checks_s / zarr_read_s <= 1.5; the cache part is bound by md5 throughput (see the floor).
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from bench.common import write_result
from bench.context import context
from pipeline import verify
from pipeline.store import ShardedWriter

STORE = "features/bench/eurosat/images.zarr"
WIDTHS = {"image/pre": 768, "image/emb": 512}   # ViT-B/32: width 768, embedding 512


def _sh(repo: Path, *cmd: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def build_repo(repo: Path, rows: int) -> None:
    """A DVC repo whose one stage moves a freshly written store into place, so DVC hashes and caches it."""
    repo.mkdir()
    rng = np.random.default_rng(0)
    layout = {name: ((rows, width), "float32") for name, width in WIDTHS.items()}
    small = {"image/label": rng.integers(0, 10, rows), "image/item": np.arange(rows)}
    w = ShardedWriter(repo / "work" / "staging.zarr", {"bench": "verify"}, layout, small)
    for s in w.pending():
        a, b = w.shard_range(s)
        w.write_shard(s, {name: rng.standard_normal((b - a, width), dtype=np.float32)
                          for name, width in WIDTHS.items()})
    w.finalize(repo / "work" / "images.zarr")
    (repo / "dvc.yaml").write_text(f"stages:\n  extract:\n    cmd: mkdir -p {Path(STORE).parent} && "
                                   f"mv work/images.zarr {STORE}\n    outs:\n      - {STORE}\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "config", "cache.type", "reflink,hardlink,symlink"], ["dvc", "repro", "-q"]):
        _sh(repo, *cmd)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times), 4)


def checked(repo: Path, **kw) -> None:
    report = verify.check_store(repo, STORE, **kw)
    assert not report.problems and (kw or not report.notes), report


def measure(repo: Path, repeat: int) -> dict:
    """Seconds of each figure (module docstring) on the store of `repo`, and the store's size."""
    store = repo / STORE
    files = [p for p in sorted(store.rglob("*")) if p.is_file()]
    group = zarr.open_group(store, mode="r")
    arrays = [node for _, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
    seconds = {"zarr_read": best(lambda: [a[...] for a in arrays], repeat),
               "store_checks": best(lambda: checked(repo, lock={}), repeat),
               "verify_copies": best(lambda: checked(repo), repeat)}
    _sh(repo, "dvc", "checkout", "--relink", "-q")
    assert all(p.stat().st_nlink >= 2 for p in files), "dvc checkout --relink did not hardlink the store"
    seconds["verify_hardlinked"] = best(lambda: checked(repo), repeat)
    blobs = [p.read_bytes() for p in files]
    seconds["md5_floor"] = best(lambda: [hashlib.md5(b).hexdigest() for b in blobs], repeat)
    return {"files": len(files), "mib": round(sum(map(len, blobs)) / 2**20, 1), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=27_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_repo(Path(tmp) / "repo", args.rows)
        found = measure(Path(tmp) / "repo", args.repeat)
    seconds = found["seconds"]
    ratio = {k: round(v / seconds["zarr_read"], 2) for k, v in seconds.items() if k != "zarr_read"}
    write_result("verify", {
        "setup": {"rows": args.rows, "widths": WIDTHS, "files": found["files"], "mib": found["mib"],
                  "repeat": args.repeat, "verify_workers": verify.WORKERS,
                  "dvc": "one-stage repo in a temp dir, cache.type reflink,hardlink,symlink"},
        "seconds": seconds, "ratio_to_zarr_read": ratio,
        "summary": {"store checks / Zarr read": f"{ratio['store_checks']}x (target <= 1.5)",
                    "whole verify / Zarr read": f"{ratio['verify_hardlinked']}x hardlinked, "
                                                f"{ratio['verify_copies']}x copies",
                    "md5 floor / Zarr read": f"{ratio['md5_floor']}x"},
    }, context("bench.verify", None, [], {
        "store": f"synthetic, {args.rows} rows, image/pre 768 + image/emb 512 float32, ShardedWriter"}))


if __name__ == "__main__":
    main()
