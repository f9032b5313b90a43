"""Feature store: round trip, schema, provenance checks, file inventory, and resume after a killed extraction."""

import os
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


def _sharded_store(tmp: Path) -> Path:
    """A finished 3-shard store where the layout puts images.zarr of model m, dataset ds."""
    dest = tmp / "features" / "m" / "ds" / "images.zarr"
    w = ShardedWriter(tmp / "staging.zarr", PROV, {"x": ((10, 2), "float32")}, {"label": np.arange(10)}, shard_rows=4)
    for s in w.pending():
        a, b = w.shard_range(s)
        w.write_shard(s, {"x": np.ones((b - a, 2), np.float32)})
    w.finalize(dest)
    return dest


def _files_on_disk(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root).replace(os.sep, "/")] = os.path.getsize(full)
    del out["zarr.json"]
    return out


def test_inventory_lists_every_file_but_the_root_metadata(tmp_path):
    dest = _sharded_store(tmp_path)
    files = dict(open_store(dest).attrs["files"])
    assert files == _files_on_disk(dest)
    assert {"x/zarr.json", "label/zarr.json", "x/c/0/0", "x/c/2/0"} <= set(files)
    write_store(tmp_path / "t.zarr", tmp_path / "tmp.zarr", PROV, {"y": np.ones(3, np.float32)}, {"note": 1})
    small = open_store(tmp_path / "t.zarr")
    assert dict(small.attrs["files"]) == _files_on_disk(tmp_path / "t.zarr") and "y/zarr.json" in small.attrs["files"]
    assert small.attrs["note"] == 1 and small.attrs["complete"] is True


def test_deleted_shard_is_refused_with_its_stage(tmp_path):
    dest = _sharded_store(tmp_path)
    (dest / "x" / "c" / "1" / "0").unlink()
    with pytest.raises(StoreError) as err:
        open_store(dest)
    msg = str(err.value)
    assert str(dest) in msg and "x/c/1/0 is missing" in msg
    assert f"`python -m pipeline.verify --repair features/m/ds/images.zarr` in {tmp_path}" in msg


def test_truncated_file_names_both_sizes(tmp_path):
    dest = _sharded_store(tmp_path)
    shard = dest / "x" / "c" / "0" / "0"
    size = shard.stat().st_size
    os.truncate(shard, size - 3)
    with pytest.raises(StoreError, match=f"x/c/0/0 has {size - 3} bytes, expected {size}"):
        open_store(dest)


def test_remedy_outside_the_layout_and_for_missing_stores(tmp_path):
    write_store(tmp_path / "t.zarr", tmp_path / "tmp.zarr", PROV, {"y": np.ones(3, np.float32)})
    (tmp_path / "t.zarr" / "y" / "zarr.json").unlink()
    command = f"`python -m pipeline.verify --repo {tmp_path} t.zarr`"
    with pytest.raises(StoreError, match=f"y/zarr.json is missing; run {command}"):
        open_store(tmp_path / "t.zarr")
    with pytest.raises(StoreError, match=r"does not exist \(run `dvc repro text@m-ds`\)"):
        open_store(tmp_path / "features" / "m" / "ds" / "text.zarr")
    half_written = tmp_path / "features" / "m" / "ds" / "views.zarr"
    ShardedWriter(half_written, PROV, {"x": ((4, 2), "float32")}, {}, shard_rows=4)
    with pytest.raises(StoreError, match="incomplete .*; re-run `dvc repro -f -s views@m-ds`"):
        open_store(half_written)


def test_store_without_inventory_still_opens(tmp_path):
    dest = _sharded_store(tmp_path)
    group = zarr.open_group(dest, mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.items() if k != "files"})  # as older code wrote it
    (dest / "x" / "c" / "1" / "0").unlink()
    assert "files" not in open_store(dest).attrs


EXTRACT_SCRIPT = """
import sys, torch, open_clip
from pathlib import Path
from pipeline import config, datasets, demo, models
from pipeline.extract import extract_images
out = Path(sys.argv[1])
torch.manual_seed(0)
demo.register_configs()
if not (out / "model" / "model.pt").exists():
    models.save(open_clip.create_model("demo-clip", pretrained=None), config.Model("demo-clip", "random"), out / "model")
    datasets.write_demo(out / "data", "shapes", 0, {"train": 10, "val": 1, "test": 1}).to_parquet(out / "manifest.parquet")
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
