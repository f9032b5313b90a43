"""Extraction under torchrun (gloo, CPU): the store equals a single-process run byte for byte, and a run
whose rank is killed resumes, with another world size, to the same bytes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import distributed

ROOT = Path(__file__).resolve().parents[1]

# One extraction of a random demo-clip over the prepared demo manifest in `out`, as this process's rank.
EXTRACT = """
import os, sys
from pathlib import Path
import pandas as pd
from pipeline import demo, distributed, models
from pipeline.extract import extract_images
out, dest = Path(sys.argv[1]), sys.argv[2]
world = distributed.current_world()
(out / f"pid{world.rank}").write_text(str(os.getpid()))
demo.register_configs()
with distributed.process_group(world, "cpu"):
    extract_images(models.load(out / "model"), pd.read_parquet(out / "manifest.parquet"), out / "data",
                   out / dest, out / "staging.zarr", {"run": "test"}, batch_size=16, workers=0, shard_rows=48,
                   progress=False, world=world)
"""


def _popen(out: Path, dest: str, nproc: int) -> subprocess.Popen:
    script = out / "extract_rank.py"
    script.write_text(EXTRACT)
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *torchrun, str(script), str(out), dest], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _files(store: Path) -> dict[str, bytes]:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, random_demo_dir) -> tuple[Path, dict[str, bytes]]:
    """A random demo-clip, 432 demo images (9 shards of 48 rows) and the store one process writes."""
    from pipeline import datasets

    out = tmp_path_factory.mktemp("dist")
    (out / "model").symlink_to(random_demo_dir)
    datasets.write_demo(out / "data", "shapes", 0, {"train": 10, "val": 1, "test": 1}).to_parquet(
        out / "manifest.parquet")
    proc = _popen(out, "single.zarr", 1)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return out, _files(out / "single.zarr")


def test_two_gloo_ranks_write_the_single_process_store_byte_for_byte(prepared):
    out, single = prepared
    proc = _popen(out, "two.zarr", 2)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert _files(out / "two.zarr") == single
    assert not (out / "staging.zarr.progress").exists()


def test_a_killed_rank_resumes_with_another_world_size(prepared):
    out, single = prepared
    progress = out / "staging.zarr.progress"
    proc = _popen(out, "resumed.zarr", 2)
    deadline = time.time() + 240
    while len(list(progress.glob("*.done"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(int((out / "pid1").read_text()), signal.SIGKILL)   # one rank dies; torchrun stops the other
    assert proc.wait(timeout=120) != 0
    done = {p.name: p.stat().st_mtime_ns for p in progress.glob("*.done")}
    assert 2 <= len(done) < 9, "the kill did not land mid-run"
    assert not (out / "resumed.zarr").exists()
    proc = _popen(out, "resumed.zarr", 3)   # shard i now belongs to rank i mod 3
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert _files(out / "resumed.zarr") == single


def test_world_from_torchruns_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    world = distributed.current_world()
    assert (world.rank, world.size) == (2, 3)
    assert [s for s in range(8) if world.owns(s)] == [2, 5]
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK=3 is outside WORLD_SIZE=3"):
        distributed.current_world()


def test_launcher_from_env_or_local_yaml(tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPCACHE_TORCHRUN", raising=False)
    assert distributed.launcher_args(tmp_path) == []
    (tmp_path / "local.yaml").write_text("workers: 2\ntorchrun: --nproc_per_node 2 --standalone\n")
    assert distributed.launcher_args(tmp_path) == ["--nproc_per_node", "2", "--standalone"]
    monkeypatch.setenv("CLIPCACHE_TORCHRUN", "--nnodes 2 --rdzv_endpoint host:29400")
    assert distributed.launcher_args(tmp_path) == ["--nnodes", "2", "--rdzv_endpoint", "host:29400"]
    monkeypatch.delenv("CLIPCACHE_TORCHRUN")
    (tmp_path / "local.yaml").write_text("torchrun: 2\n")
    with pytest.raises(ValueError, match="local.yaml.*must be a string of torchrun arguments"):
        distributed.launcher_args(tmp_path)


def test_a_joining_rank_refuses_a_staging_store_nobody_created(tmp_path):
    import numpy as np

    from pipeline.store import ShardedWriter, StoreError

    with pytest.raises(StoreError, match="no staging store .* to join"):
        ShardedWriter(tmp_path / "s.zarr", {"run": 1}, {"x": ((10, 2), "float32")}, {"y": np.zeros(1)},
                      shard_rows=4, create=False)
