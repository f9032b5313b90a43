"""Feature store: round trip, schema, provenance checks, and resume after a killed extraction."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.store import ShardedWriter, StoreError, open_store, write_store

PROV = {"arch": "a", "checkpoint_sha256": "x", "manifest_sha256": "m"}


def test_sharded_round_trip_and_schema(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1000, 8)).astype(np.float32)
    labels = np.arange(1000, dtype=np.int32) % 7
    w = ShardedWriter(tmp_path / "stage.zarr", PROV, {"x": ((1000, 8), "float32")}, {"label": labels}, shard_rows=256)
    assert w.pending() == [0, 1, 2, 3]
    for s in w.pending():
        a, b = w.shard_range(s)
        w.write_shard(s, {"x": data[a:b]})
    w.finalize(tmp_path / "out.zarr")
    g = open_store(tmp_path / "out.zarr", expect={"arch": "a"})
    np.testing.assert_array_equal(g["x"][...], data)
    np.testing.assert_array_equal(g["label"][...], labels)
    assert g["x"].shards == (256, 8) and g["x"].dtype == np.float32
    assert not (tmp_path / "stage.zarr").exists() and not (tmp_path / "stage.zarr.progress").exists()
    # one file per shard, not per chunk
    assert len(list((tmp_path / "out.zarr" / "x" / "c").rglob("*"))) <= 4 + 4


def test_incomplete_store_is_never_read(tmp_path):
    w = ShardedWriter(tmp_path / "s.zarr", PROV, {"x": ((10, 2), "float32")}, {}, shard_rows=4)
    w.write_shard(0, {"x": np.zeros((4, 2), np.float32)})
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match=r"shards \[1, 2\]"):
        w.finalize(tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_provenance_mismatch_names_the_key(tmp_path):
    write_store(tmp_path / "t.zarr", tmp_path / "tmp.zarr", PROV, {"y": np.ones(3, np.float32)})
    with pytest.raises(StoreError, match="checkpoint_sha256: store has 'x', expected 'other'"):
        open_store(tmp_path / "t.zarr", expect={"checkpoint_sha256": "other"})
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "missing.zarr")


def test_changed_provenance_restarts_instead_of_resuming(tmp_path):
    w = ShardedWriter(tmp_path / "s.zarr", PROV, {"x": ((8, 2), "float32")}, {}, shard_rows=4)
    w.write_shard(0, {"x": np.ones((4, 2), np.float32)})
    assert ShardedWriter(tmp_path / "s.zarr", PROV, {"x": ((8, 2), "float32")}, {}, shard_rows=4).pending() == [1]
    fresh = ShardedWriter(tmp_path / "s.zarr", {**PROV, "arch": "b"}, {"x": ((8, 2), "float32")}, {}, shard_rows=4)
    assert fresh.pending() == [0, 1]


EXTRACT_SCRIPT = """
import sys, torch, open_clip
from pathlib import Path
from pipeline import datasets, demo, models
from pipeline.extract import extract_images
out = Path(sys.argv[1])
torch.manual_seed(0)
demo.register_configs()
if not (out / "model" / "model.pt").exists():
    models.save(open_clip.create_model("demo-clip", pretrained=None), {"arch": "demo-clip", "source": "random"}, out / "model")
    datasets.write_shapes(out / "data", 0, {"train": 10, "val": 1, "test": 1}).to_parquet(out / "manifest.parquet")
import pandas as pd
m = models.load(out / "model")
extract_images(m, pd.read_parquet(out / "manifest.parquet"), out / "data", out / sys.argv[2], out / "staging.zarr",
               {"run": "test"}, batch_size=16, workers=0, shard_rows=48, progress=False)
"""


def _extract(tmp: Path, dest: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", EXTRACT_SCRIPT, str(tmp), dest],
                            cwd=Path(__file__).resolve().parents[1])


def test_killed_extraction_resumes_and_matches_uninterrupted_run(tmp_path):
    assert _extract(tmp_path, "full.zarr").wait() == 0
    proc = _extract(tmp_path, "resumed.zarr")
    progress = tmp_path / "staging.zarr.progress"
    deadline = time.time() + 120
    while len(list(progress.glob("*.done"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in progress.glob("*.done")}
    assert 2 <= len(done_before) < 9, "kill did not land mid-run"
    assert not (tmp_path / "resumed.zarr").exists()
    first_shard = Path("image/pre/c/0/0")
    written_before = (tmp_path / "staging.zarr" / first_shard).stat().st_mtime_ns
    assert _extract(tmp_path, "resumed.zarr").wait() == 0
    full, resumed = open_store(tmp_path / "full.zarr"), open_store(tmp_path / "resumed.zarr")
    for name in ("image/pre", "image/emb", "image/label", "image/item", "model/W_img"):
        np.testing.assert_array_equal(full[name][...], resumed[name][...])
    assert zarr.open_group(tmp_path / "resumed.zarr").attrs["complete"] is True
    # the shard finished before the kill was not recomputed (same file, untouched)
    assert (tmp_path / "resumed.zarr" / first_shard).stat().st_mtime_ns == written_before
