"""verify's cost on a EuroSAT-sized store: 27,000 rows, image/pre 768 and image/emb 512 wide float32
(ViT-B/32), written with ShardedWriter as extraction writes it, as the output of a one-stage DVC repo
built in a temp dir (git init, dvc init, the project's cache.type, `dvc repro`), so the cache part is real.

usage: python -m bench.verify [--rows 27000] [--repeat 3]
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
        w.write_shard(s, {name: rng.standard_normal((b - a, width), dtype=np.float32) for name, width in WIDTHS.items()})
    w.finalize(repo / "work" / "images.zarr")
    (repo / "dvc.yaml").write_text(f"stages:\n  extract:\n    cmd: mkdir -p {Path(STORE).parent} && "
                                   f"mv work/images.zarr {STORE}\n    outs:\n      - {STORE}\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "cache.type", "reflink,hardlink,symlink"],
                ["dvc", "repro", "-q"]):
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=27_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        build_repo(repo, args.rows)
        store = repo / STORE
        files = [p for p in sorted(store.rglob("*")) if p.is_file()]
        nbytes = sum(p.stat().st_size for p in files)
        group = zarr.open_group(store, mode="r")
        arrays = [node for _, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
        zarr_read = best(lambda: [a[...] for a in arrays], args.repeat)
        store_checks = best(lambda: checked(repo, lock={}), args.repeat)
        copies = best(lambda: checked(repo), args.repeat)
        _sh(repo, "dvc", "checkout", "--relink", "-q")
        assert all(p.stat().st_nlink == 2 for p in files), "dvc checkout --relink did not hardlink the store"
        hardlinked = best(lambda: checked(repo), args.repeat)
        blobs = [p.read_bytes() for p in files]
        md5_floor = best(lambda: [hashlib.md5(b).hexdigest() for b in blobs], args.repeat)
    ratio = lambda s: round(s / zarr_read, 2)  # noqa: E731
    result = {
        "setup": {"rows": args.rows, "widths": WIDTHS, "files": len(files), "mib": round(nbytes / 2**20, 1),
                  "repeat": args.repeat, "verify_workers": verify.WORKERS,
                  "dvc": "one-stage repo in a temp dir, cache.type reflink,hardlink,symlink"},
        "seconds": {"zarr_read": zarr_read, "store_checks": store_checks, "verify_copies": copies,
                    "verify_hardlinked": hardlinked, "md5_floor": md5_floor},
        "ratio_to_zarr_read": {"store_checks": ratio(store_checks), "verify_copies": ratio(copies),
                               "verify_hardlinked": ratio(hardlinked), "md5_floor": ratio(md5_floor)},
        "summary": {"store checks / Zarr read": f"{ratio(store_checks)}x (target <= 1.5)",
                    "whole verify / Zarr read": f"{ratio(hardlinked)}x hardlinked, {ratio(copies)}x copies",
                    "md5 floor / Zarr read": f"{ratio(md5_floor)}x"},
    }
    write_result("verify", result, context("bench.verify", None, [], {
        "store": f"synthetic, {args.rows} rows, image/pre 768 + image/emb 512 float32, ShardedWriter"}))


if __name__ == "__main__":
    main()
