"""Store integrity: verify's checks, repair's plan, readers' errors, interrupted writes (issue 15).

Unit tests build small stores in tmp_path, with the DVC side (dvc.lock entry, `.dir` listing, cache objects
hardlinked as a DVC checkout links them) written by hand; the slow tests damage the reproduced demo repo and mend it.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from pipeline import dvccache, features, repair, store, verify, views
from pipeline.store import ShardedWriter, StoreError, open_store, write_store
from conftest import ROOT, run

PROV = {"arch": "a", "checkpoint_sha256": "x", "manifest_sha256": "m"}
STORE = "features/m/ds/images.zarr"


def _data(rows: int = 10) -> np.ndarray:
    return np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)


def _write(repo: Path, rel: str = STORE, offset: int = 0) -> Path:
    """A finished 3-shard store at `rel`, written the way stages write it (`offset` shifts its values)."""
    w = ShardedWriter(repo / "staging.zarr", PROV, {"x": ((10, 2), "float32")}, {"label": np.arange(10)},
                      shard_rows=4)
    for s in w.pending():
        a, b = w.shard_range(s)
        w.write_shard(s, {"x": _data()[a:b] + offset})
    w.finalize(repo / rel)
    return repo / rel


def _track(repo: Path, rel: str = STORE, stage: str = "extract@m-ds", hardlink: bool = True) -> None:
    """Record `rel` as DVC 3 does: cache objects (hardlinked to the workspace files, or copies), a `.dir`
    listing named by its own md5, and the output's entry in dvc.lock."""
    cache = repo / ".dvc" / "cache"
    entries = []
    for path in sorted(p for p in (repo / rel).rglob("*") if p.is_file()):
        md5 = dvccache.md5_file(path)
        obj = dvccache.object_path(cache, md5)
        obj.parent.mkdir(parents=True, exist_ok=True)
        if obj.exists():
            pass   # same bytes as a file already cached
        elif hardlink:
            os.link(path, obj)
        else:
            shutil.copyfile(path, obj)
        entries.append({"md5": md5, "relpath": path.relative_to(repo / rel).as_posix()})
    raw = json.dumps(entries, sort_keys=True).encode()
    dir_md5 = hashlib.md5(raw).hexdigest() + ".dir"
    listing = dvccache.object_path(cache, dir_md5)
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_bytes(raw)
    lock = repo / "dvc.lock"
    data = yaml.safe_load(lock.read_text()) if lock.exists() else {"schema": "2.0", "stages": {}}
    data["stages"][stage] = {"cmd": "true", "outs": [{"path": rel, "hash": "md5", "md5": dir_md5}]}
    lock.write_text(yaml.safe_dump(data))


def _repo(tmp_path: Path, hardlink: bool = True) -> Path:
    (tmp_path / ".dvc").mkdir()
    _write(tmp_path)
    _track(tmp_path, hardlink=hardlink)
    return tmp_path


def _check(repo: Path, rel: str = STORE) -> verify.Report:
    return verify.check_store(repo, rel)


def _cache_object(repo: Path, file: str, rel: str = STORE) -> Path:
    dir_md5 = dvccache.lock_outs(repo)[rel][1]["md5"]
    return dvccache.object_path(repo / ".dvc" / "cache", dvccache.listing(repo / ".dvc" / "cache", dir_md5)[file])


# --- verify on healthy and damaged stores


def test_healthy_store_has_no_problem_and_hashes_each_hardlinked_file_once(tmp_path, monkeypatch, capsys):
    repo = _repo(tmp_path)
    hashed = []
    real = dvccache.md5_file
    monkeypatch.setattr(dvccache, "md5_file", lambda p: hashed.append(p) or real(p))
    report = _check(repo)
    assert report.problems == [] and report.notes == []
    files = [p for p in (repo / STORE).rglob("*") if p.is_file()]
    assert sorted(hashed) == sorted(files)       # once per file: its cache object is the same inode
    assert verify.main(["--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("verify: 1 store, 7 files, ") and "all well" in out


def test_copies_in_the_cache_are_hashed_separately(tmp_path, monkeypatch):
    repo = _repo(tmp_path, hardlink=False)
    hashed = []
    real = dvccache.md5_file
    monkeypatch.setattr(dvccache, "md5_file", lambda p: hashed.append(p) or real(p))
    assert _check(repo).problems == []
    assert len(hashed) == 2 * len([p for p in (repo / STORE).rglob("*") if p.is_file()])


def test_deleted_shard_is_reported_and_a_checkout_can_restore_it(tmp_path, capsys):
    repo = _repo(tmp_path)
    (repo / STORE / "x/c/1/0").unlink()
    [problem] = _check(repo).problems
    assert (problem.store, problem.array, problem.file) == (STORE, "x", "x/c/1/0")
    assert problem.what.startswith("missing (the store's inventory lists") and not problem.rebuild
    assert verify.main(["--repo", str(repo)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{STORE} [x] x/c/1/0: {problem.what}"
    assert lines[1].endswith(f": 1 problem in 1 store ({STORE}); to mend: `python -m pipeline.verify --repair {STORE}`")


def test_truncation_through_the_hardlink_reports_both_copies(tmp_path):
    repo = _repo(tmp_path)
    shard = repo / STORE / "x/c/0/0"
    size = shard.stat().st_size
    os.truncate(shard, size - 5)
    ws, cached = _check(repo).problems
    assert ws.file == "x/c/0/0" and ws.array == "x" and ws.rebuild and ws.cache_object is None
    assert f"has {size - 5} bytes, the store's inventory says {size}" in ws.what
    assert "does not decode (ValueError: Stored and computed checksum do not match" in ws.what
    assert "DVC recorded" in ws.what
    obj = _cache_object(repo, "x/c/0/0")
    assert cached.file == obj.relative_to(repo).as_posix() and cached.cache_object == obj and cached.array == "x"
    assert cached.what.startswith(f"cache object of x/c/0/0: has {size - 5} bytes")
    assert "one inode with the workspace file" in cached.what


def test_flipped_byte_fails_its_crc32c_and_its_md5(tmp_path):
    repo = _repo(tmp_path, hardlink=False)
    shard = repo / STORE / "x/c/2/0"
    raw = bytearray(shard.read_bytes())
    raw[3] ^= 1
    shard.write_bytes(raw)
    [problem] = _check(repo).problems   # the cache's copy is intact: one line
    assert "does not decode (ValueError: Stored and computed checksum do not match" in problem.what
    assert "md5" in problem.what and not problem.rebuild


def test_damaged_cache_object_alone(tmp_path):
    repo = _repo(tmp_path, hardlink=False)
    obj = _cache_object(repo, "label/c/0")
    obj.chmod(0o644)
    obj.write_bytes(b"junk")
    [problem] = _check(repo).problems
    assert problem.cache_object == obj and problem.array == "label" and problem.rebuild
    assert "cache object of label/c/0: has 4 bytes" in problem.what and "one inode" not in problem.what


def test_flags_provenance_inventory_and_stray_files(tmp_path):
    repo = tmp_path
    dest = _write(repo)
    group = zarr.open_group(dest, mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.items() if k not in ("complete", "provenance")})
    (dest / "x" / "c" / "9").mkdir()
    (dest / "x" / "c" / "9" / "0").write_bytes(b"?")
    whats = {(p.file, p.what) for p in _check(repo).problems}
    assert whats == {("", "not marked complete (an interrupted write?)"),
                     ("", "has no provenance (what produced it is unknown)"),
                     ("x/c/9/0", "not in the store's inventory (not written by the stage)")}
    group.attrs.put({k: v for k, v in group.attrs.items() if k != "files"})
    assert any("no file inventory" in n for n in _check(repo).notes)


def test_stray_file_in_a_tracked_store_is_dropped_by_a_checkout(tmp_path):
    repo = _repo(tmp_path)
    (repo / STORE / "x" / "c" / "0" / "0.5e1f.partial").write_bytes(b"?")
    [problem] = _check(repo).problems
    assert problem.what == "not in the store's inventory (not written by the stage); not in the DVC listing of " \
                           "this store" and not problem.rebuild


def test_unparsable_metadata_is_one_line_per_file(tmp_path):
    repo = _repo(tmp_path, hardlink=False)
    (repo / STORE / "zarr.json").write_text("{")
    [root] = _check(repo).problems
    assert (root.file, root.rebuild) == ("zarr.json", False)   # the cache's copy restores it
    assert "does not decode (" in root.what and "DVC recorded" in root.what
    shutil.copyfile(_cache_object(repo, "zarr.json"), repo / STORE / "zarr.json")
    (repo / STORE / "x" / "zarr.json").write_text("{")
    [node] = _check(repo).problems
    assert (node.array, node.file) == ("x", "x/zarr.json") and "does not decode (" in node.what


def test_cache_dir_follows_the_dvc_config(tmp_path):
    (tmp_path / ".dvc").mkdir()
    assert dvccache.cache_dir(tmp_path) == tmp_path / ".dvc" / "cache"
    (tmp_path / ".dvc" / "config").write_text("[cache]\n    dir = ../elsewhere\n")
    assert dvccache.cache_dir(tmp_path).resolve() == (tmp_path / "elsewhere").resolve()


def test_cli_refuses_a_path_with_no_store(tmp_path, capsys):
    _repo(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        verify.main(["--repo", str(tmp_path), "nowhere"])
    assert exit_.value.code == 2 and "nowhere: no store there" in capsys.readouterr().err


def test_untracked_store_gets_a_note_and_passes(tmp_path, capsys):
    _write(tmp_path)
    report = _check(tmp_path)
    assert report.problems == [] and report.notes == [f"{STORE}: not an output in dvc.lock: DVC cache not checked"]
    assert verify.main(["--repo", str(tmp_path)]) == 0
    assert "note: " in capsys.readouterr().out


def test_missing_listing_and_damaged_listing(tmp_path):
    repo = _repo(tmp_path)
    dir_md5 = dvccache.lock_outs(repo)[STORE][1]["md5"]
    listing = dvccache.object_path(repo / ".dvc" / "cache", dir_md5)
    listing.write_bytes(listing.read_bytes()[:-2])
    [problem] = _check(repo).problems
    assert "listing of this store is damaged" in problem.what and problem.cache_object == listing
    listing.unlink()
    [problem] = _check(repo).problems
    assert "the DVC cache lacks this store's listing" in problem.what and problem.rebuild


def test_store_absent_from_the_workspace_is_one_line(tmp_path):
    repo = _repo(tmp_path)
    shutil.rmtree(repo / STORE)
    [problem] = _check(repo).problems
    assert problem.what == "absent from the workspace, though dvc.lock records it" and not problem.rebuild


def test_find_stores_skips_staging_and_adds_what_dvc_lock_records(tmp_path):
    repo = _repo(tmp_path)
    ShardedWriter(repo / "features" / ".staging" / "m" / "ds" / "images.zarr", PROV, {"x": ((4, 2), "float32")}, {})
    _write(repo, "logits/m/ds/logits.zarr")
    lock = dvccache.lock_outs(repo) | {"features/m/other/text.zarr": ("text@m-other", {})}
    assert verify.find_stores(repo, [], lock) == ["features/m/ds/images.zarr", "features/m/other/text.zarr",
                                                  "logits/m/ds/logits.zarr"]
    assert verify.find_stores(repo, ["logits"], lock) == ["logits/m/ds/logits.zarr"]
    assert verify.find_stores(repo, [STORE], lock) == [STORE]
    with pytest.raises(ValueError, match="no store there"):
        verify.find_stores(repo, ["features/nope"], lock)


# --- repair's plan and refusals


def _reports(repo: Path) -> list[verify.Report]:
    return [r for r in (_check(repo, s) for s in verify.find_stores(repo, [], dvccache.lock_outs(repo))) if r.problems]


def test_plan_checks_out_workspace_damage_and_rebuilds_cache_damage(tmp_path):
    repo = _repo(tmp_path)
    _write(repo, "logits/m/ds/logits.zarr", offset=100)   # other bytes: cache objects of its own
    _track(repo, "logits/m/ds/logits.zarr", "adapt@m-ds")
    (repo / STORE / "x/c/1/0").unlink()
    os.truncate(repo / "logits/m/ds/logits.zarr/x/c/0/0", 3)
    checkout, rebuild, refused = repair.plan(repo, _reports(repo))
    assert checkout == [STORE] and rebuild == {"adapt@m-ds": ["logits/m/ds/logits.zarr"]} and refused == {}


def test_plan_refuses_untracked_and_non_deterministic_stages(tmp_path, monkeypatch):
    repo = _repo(tmp_path)
    os.truncate(repo / STORE / "x/c/0/0", 3)
    monkeypatch.setattr(repair, "owner_stage", lambda path: "model@m")
    assert "model" not in repair.DETERMINISTIC
    _, rebuild, refused = repair.plan(repo, _reports(repo))
    assert rebuild == {} and "model@m is not deterministic" in refused[STORE]
    (repo / "dvc.lock").unlink()
    _, _, refused = repair.plan(repo, [verify.Report(STORE, [verify.Problem(STORE, "", "", "x")])])
    assert "dvc.lock does not record it" in refused[STORE]


def _fake_run(status: dict, params_dirty: bool):
    def fake(repo, *cmd, capture=False):
        out = json.dumps(status) if cmd[:2] == ("dvc", "status") else (" M params.yaml" if params_dirty else "")
        return subprocess.CompletedProcess(cmd, 0, out, "")
    return fake


def test_changed_params_and_deps_refuse_but_repaired_stores_do_not(tmp_path, monkeypatch):
    status = {"extract@m-ds": [{"changed deps": {"params.yaml": {"extract.precision": "modified"}}},
                               {"changed outs": {STORE: "modified"}}],
              "adapt@m-ds": [{"changed deps": {STORE: "modified"}}],
              "text@m-ds": [{"changed deps": {"pipeline/extract.py": "modified"}}, "changed command"]}
    monkeypatch.setattr(repair, "_run", _fake_run(status, params_dirty=True))
    found = repair.changes(tmp_path, list(status), {STORE})
    assert found == {"extract@m-ds": ["extract.precision (uncommitted changes in params.yaml)"],
                     "text@m-ds": ["pipeline/extract.py (modified)", "changed command"]}
    monkeypatch.setattr(repair, "_run", _fake_run(status, params_dirty=False))
    assert repair.changes(tmp_path, ["extract@m-ds"], set())["extract@m-ds"] == ["extract.precision (params.yaml)"]


def test_repair_refuses_a_stage_whose_params_changed(tmp_path, monkeypatch, capsys):
    repo = _repo(tmp_path)
    os.truncate(repo / STORE / "x/c/0/0", 3)
    status = {"extract@m-ds": [{"changed deps": {"params.yaml": {"extract.precision": "modified"}}}]}
    monkeypatch.setattr(repair, "_run", _fake_run(status, params_dirty=True))
    assert verify.main(["--repo", str(repo), "--repair"]) == 1
    out = capsys.readouterr().out
    assert (f"repair refused for {STORE}: its stage extract@m-ds would not produce what dvc.lock records: "
            "changed since it ran: extract.precision (uncommitted changes in params.yaml)") in out
    assert _cache_object(repo, "x/c/0/0").exists()    # nothing deleted


# --- readers


def _feature_stores(tmp_path: Path) -> tuple[Path, dict, dict]:
    card = {k: "v" for k in features.MODEL_KEYS}
    dataset = {"name": "ds", "manifest_sha256": "m"}
    prov = features.provenance(card, dataset, "fp32")
    fdir = tmp_path / "features" / "m" / "ds"
    write_store(fdir / "images.zarr", tmp_path / "s1", prov, {
        "image/pre": np.ones((4, 3), np.float32), "image/emb": np.ones((4, 2), np.float32),
        "image/label": np.arange(4), "image/split": np.zeros(4, np.int8), "image/item": np.arange(4),
        "model/W_img": np.ones((3, 2), np.float32), "model/W_txt": np.ones((3, 2), np.float32),
        "model/logit_scale": np.ones(1, np.float32)})
    write_store(fdir / "text.zarr", tmp_path / "s2", prov,
                {"text/pre": np.ones((2, 1, 3), np.float32), "text/emb": np.ones((2, 1, 2), np.float32)})
    write_store(fdir / "views.zarr", tmp_path / "s3", prov, {"view/emb": np.ones((2, 3, 2), np.float32),
                "flip/emb": np.ones((2, 2), np.float32), "view/item": np.arange(2)})
    return fdir, card, dataset


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[0] ^= 1
    path.write_bytes(raw)   # same size: only the crc32c can tell


@pytest.mark.parametrize("array", ["image/pre", "image/label", "text/emb"])
def test_features_load_names_store_array_file_and_command(tmp_path, monkeypatch, array):
    fdir, card, dataset = _feature_stores(tmp_path)
    features.load(fdir, card, dataset)
    store_path = fdir / ("text.zarr" if array.startswith("text") else "images.zarr")
    _flip_byte(store_path / array / "c" / ("0/0/0" if array == "text/emb" else "0/0" if "pre" in array else "0"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as err:
        features.load(fdir, card, dataset)
    msg = str(err.value)
    assert f"feature store {store_path}: array '{array}' does not decode: {array}/c/" in msg
    assert "Stored and computed checksum do not match" in msg
    rel = store_path.relative_to(tmp_path).as_posix()
    assert msg.endswith(f"run `python -m pipeline.verify --repair {rel}`")


def test_views_load_names_the_file(tmp_path):
    fdir, card, _ = _feature_stores(tmp_path)
    _flip_byte(fdir / "views.zarr" / "flip/emb/c/0/0")
    with pytest.raises(StoreError, match=r"array 'flip/emb' does not decode: flip/emb/c/0/0 .*--repair "
                                         r"features/m/ds/views.zarr` in "):
        views.load(fdir / "views.zarr", {"arch": "v"})


def test_open_store_is_read_only(tmp_path):
    group = open_store(_write(tmp_path))
    assert group.read_only and group.store.read_only
    with pytest.raises(ValueError, match="read-only"):
        group["x"][0:1] = 1
    with pytest.raises(ValueError, match="read-only"):
        group.attrs["complete"] = False


# --- interrupted writes

KILL_BEFORE_MOVE = """
import os, signal, sys
import numpy as np
from pipeline import store
store.replace_dir = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)   # dies between flag and move
out = sys.argv[1]
if sys.argv[2] == "sharded":
    w = store.ShardedWriter(out + "/staging.zarr", {"run": 1}, {"x": ((10, 2), "float32")}, {}, shard_rows=4)
    for s in w.pending():
        a, b = w.shard_range(s)
        w.write_shard(s, {"x": np.arange(a * 2, b * 2, dtype=np.float32).reshape(-1, 2)})
    w.finalize(out + "/dest.zarr")
else:
    store.write_store(out + "/dest.zarr", out + "/staging.zarr", {"run": 1}, {"y": np.ones(3, np.float32)})
"""


@pytest.mark.parametrize("writer", ["sharded", "small"])
def test_killed_between_flag_and_move_leaves_no_complete_store_and_resumes(tmp_path, writer):
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_MOVE, str(tmp_path), writer], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "dest.zarr").exists()
    assert (tmp_path / "staging.zarr" / "zarr.json").exists()   # kept, and never where a reader looks
    if writer == "small":
        return   # write_store starts a small store over; nothing to resume
    resumed = ShardedWriter(tmp_path / "staging.zarr", {"run": 1}, {"x": ((10, 2), "float32")}, {}, shard_rows=4)
    assert resumed.pending() == []
    resumed.finalize(tmp_path / "dest.zarr")
    np.testing.assert_array_equal(store.read(open_store(tmp_path / "dest.zarr"), "x"), _data())


def _disk_full_on(monkeypatch, key_part: str) -> None:
    """Make Zarr's writes of keys containing `key_part` fail as a full disk does."""
    real = zarr.storage.LocalStore.set

    async def full(self, key, value):
        if key_part in key:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, key, value)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)


def test_disk_full_mid_extraction_keeps_finished_shards_and_resumes(tmp_path, monkeypatch):
    staging, dest = tmp_path / "staging.zarr", tmp_path / "features" / "m" / "ds" / "images.zarr"
    args = (PROV, {"x": ((10, 2), "float32")}, {"label": np.arange(10)})
    w = ShardedWriter(staging, *args, shard_rows=4)
    _disk_full_on(monkeypatch, "x/c/1/")
    with pytest.raises(OSError, match=f"no space left on device while writing {staging}.*resumes from the shards"):
        for s in w.pending():
            a, b = w.shard_range(s)
            w.write_shard(s, {"x": _data()[a:b]})
    assert not dest.exists() and w.pending() == [1, 2]
    assert not list(staging.rglob("*.partial"))
    monkeypatch.undo()
    resumed = ShardedWriter(staging, *args, shard_rows=4)
    assert resumed.pending() == [1, 2]
    for s in resumed.pending():
        a, b = resumed.shard_range(s)
        resumed.write_shard(s, {"x": _data()[a:b]})
    resumed.finalize(dest)
    np.testing.assert_array_equal(store.read(open_store(dest), "x"), _data())


def test_disk_full_while_flagging_complete(tmp_path, monkeypatch):
    w = ShardedWriter(tmp_path / "staging.zarr", PROV, {"x": ((4, 2), "float32")}, {}, shard_rows=4)
    w.write_shard(0, {"x": _data(4)})
    _disk_full_on(monkeypatch, "zarr.json")
    with pytest.raises(OSError, match="no space left"):
        w.finalize(tmp_path / "dest.zarr")
    assert not (tmp_path / "dest.zarr").exists()
    assert zarr.open_group(tmp_path / "staging.zarr", mode="r").attrs.get("complete") is None
    monkeypatch.undo()
    ShardedWriter(tmp_path / "staging.zarr", PROV, {"x": ((4, 2), "float32")}, {}, shard_rows=4).finalize(
        tmp_path / "dest.zarr")
    assert open_store(tmp_path / "dest.zarr").attrs["complete"] is True


def test_disk_full_in_a_small_store_leaves_no_store(tmp_path, monkeypatch):
    _disk_full_on(monkeypatch, "y/c/")
    with pytest.raises(OSError, match="starts this store over"):
        write_store(tmp_path / "t.zarr", tmp_path / "tmp.zarr", PROV, {"y": np.ones(3, np.float32)})
    assert not (tmp_path / "t.zarr").exists() and (tmp_path / "tmp.zarr").exists()


def test_replacing_a_store_never_leaves_a_partial_one(tmp_path, monkeypatch):
    old = _write(tmp_path, "old.zarr")
    real, calls = os.replace, []

    def dies_on_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt   # stands in for a kill between moving the old store aside and the new in
        real(src, dst)
    write_store(tmp_path / "new.zarr", tmp_path / "tmp.zarr", PROV, {"y": np.ones(3, np.float32)})
    monkeypatch.setattr(os, "replace", dies_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        store.replace_dir(tmp_path / "new.zarr", old)
    assert not old.exists()   # gone whole, not half-deleted
    monkeypatch.undo()
    store.replace_dir(tmp_path / "new.zarr", old)
    assert "y" in open_store(old) and not (tmp_path / "new.zarr.replaced").exists()


def test_leftover_partial_files_are_not_inventoried(tmp_path):
    w = ShardedWriter(tmp_path / "staging.zarr", PROV, {"x": ((4, 2), "float32")}, {}, shard_rows=4)
    w.write_shard(0, {"x": _data(4)})
    (tmp_path / "staging.zarr" / "x" / "c" / "0" / "0.1f2e.partial").write_bytes(b"half a shard")  # killed write
    w.finalize(tmp_path / "dest.zarr")
    assert not list((tmp_path / "dest.zarr").rglob("*.partial"))
    assert not any(f.endswith(".partial") for f in open_store(tmp_path / "dest.zarr").attrs["files"])


# --- the reproduced demo repo (slow; each test leaves it as it found it)

DEMO_IMAGES = "features/demo/shapes/images.zarr"


def _verify(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "pipeline.verify", *args], cwd=repo, env=env,
                          capture_output=True, text=True)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _largest_shard(repo: Path) -> str:
    shards = (repo / DEMO_IMAGES / "image" / "pre" / "c").rglob("*")
    return max((p for p in shards if p.is_file()), key=lambda p: p.stat().st_size).relative_to(
        repo / DEMO_IMAGES).as_posix()


def test_healthy_demo_repo_verifies(demo_repo):
    proc = _verify(demo_repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = proc.stdout.splitlines()
    assert re.fullmatch(r"verify: \d+ stores, \d+ files, .*: all well", line), line


def test_deleted_shard_in_the_demo_repo(demo_repo):
    before = _snapshot(demo_repo / DEMO_IMAGES)
    shard = _largest_shard(demo_repo)
    (demo_repo / DEMO_IMAGES / shard).unlink()
    reader = subprocess.run([sys.executable, "stages/adapt.py", "demo", "shapes"], cwd=demo_repo,
                            capture_output=True, text=True)
    assert reader.returncode != 0 and f"{shard} is missing" in reader.stderr
    assert f"`python -m pipeline.verify --repair {DEMO_IMAGES}`" in reader.stderr
    proc = _verify(demo_repo)
    assert proc.returncode == 1 and f"{DEMO_IMAGES} [image/pre] {shard}: missing" in proc.stdout
    proc = _verify(demo_repo, "--repair", DEMO_IMAGES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _snapshot(demo_repo / DEMO_IMAGES) == before
    assert _verify(demo_repo).returncode == 0


def test_truncated_shard_through_its_hardlink_in_the_demo_repo(demo_repo):
    before = _snapshot(demo_repo / DEMO_IMAGES)
    run(["dvc", "checkout", "--relink", DEMO_IMAGES], demo_repo)   # DVC's own link, as a checkout makes it
    shard = demo_repo / DEMO_IMAGES / _largest_shard(demo_repo)
    assert shard.stat().st_nlink == 2
    os.truncate(shard, shard.stat().st_size // 2)
    proc = _verify(demo_repo)
    rel = shard.relative_to(demo_repo / DEMO_IMAGES).as_posix()
    lines = [line for line in proc.stdout.splitlines() if rel in line]
    assert proc.returncode == 1 and len(lines) == 2, proc.stdout
    assert lines[0].startswith(f"{DEMO_IMAGES} [image/pre] {rel}: has ")
    assert ".dvc/cache/files/md5/" in lines[1] and "one inode with the workspace file" in lines[1]
    proc = _verify(demo_repo, "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "removed 1 damaged cache object(s); dvc repro -f -s extract@demo-shapes" in proc.stdout
    assert _snapshot(demo_repo / DEMO_IMAGES) == before
    shutil.rmtree(demo_repo / DEMO_IMAGES)
    run(["dvc", "checkout", DEMO_IMAGES], demo_repo)
    assert _snapshot(demo_repo / DEMO_IMAGES) == before
    assert _verify(demo_repo).returncode == 0
