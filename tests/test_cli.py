"""The `clipcache` command (pipeline/cli.py): listings against the params they read, store descriptions
against the arrays written, and add-folder's edit against the params text it started from."""

import difflib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from pipeline import cli, store

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out):
    """The rows of a printed table, split on runs of 2+ spaces, header dropped."""
    return [tuple(c for c in line.split("  ") if c.strip()) for line in out.splitlines()[1:]]


# ----------------------------------------------------------------------------- datasets and models


def test_datasets_and_models_list_every_entry_of_params(capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    _, out, _ = run(capsys, "datasets", "--repo", ROOT)
    rows = {r[0].strip(): r for r in table_rows(out)}
    assert set(rows) == set(params["data"])
    for name, entry in params["data"].items():
        assert rows[name][1].strip() == entry["kind"]
        if "root" in entry:
            assert rows[name][2].strip() == entry["root"]
        assert (rows[name][-1].strip() == "yes") == (name in params["datasets"])
    _, out, _ = run(capsys, "models", "--repo", ROOT)
    rows = {r[0].strip(): r for r in table_rows(out)}
    assert set(rows) == set(params["model_zoo"])
    for name, entry in params["model_zoo"].items():
        assert (rows[name][1].strip(), rows[name][2].strip()) == (entry["arch"], entry["source"])
        assert (rows[name][-1].strip() == "yes") == (name in params["models"])


def test_listing_errors_name_the_file_or_key(tmp_path, capsys):
    code, _, err = run(capsys, "datasets", "--repo", tmp_path)
    assert code == 1 and f"{tmp_path / 'params.yaml'}: no params.yaml there" in err
    (tmp_path / "params.yaml").write_text("models: [demo]\n")
    code, _, err = run(capsys, "models", "--repo", tmp_path)
    assert code == 1 and "missing key 'model_zoo'" in err


# ----------------------------------------------------------------------------- store


# not all fill values: Zarr writes no chunk that holds only the fill value
ARRAYS = {"image/emb": np.arange(1, 16, dtype=np.float32).reshape(5, 3), "image/label": np.arange(5, dtype=np.int32),
          "model/W_txt": np.ones((4, 3), np.float64)}
PROVENANCE = {"arch": "toy-arch", "dataset": "toy", "precision": "fp32"}


@pytest.fixture
def toy_store(tmp_path):
    path = tmp_path / "features" / "toy" / "images.zarr"
    store.write_store(path, tmp_path / "staging.zarr", PROVENANCE, ARRAYS)
    return path


def test_store_shows_state_provenance_and_arrays(toy_store, capsys):
    code, out, _ = run(capsys, "store", toy_store)
    assert code == 0 and out.splitlines()[0] == f"{toy_store}: complete"
    for key, value in PROVENANCE.items():
        assert f"  {key}: {value}" in out
    arrays = {r[0].strip(): r[1:] for r in table_rows(out.split("arrays (3):\n")[1])}
    assert arrays == {name: ("x".join(map(str, a.shape)), str(a.dtype)) for name, a in ARRAYS.items()}


def test_store_says_why_it_is_not_usable(toy_store, capsys):
    (toy_store / "image" / "label" / "c" / "0").unlink()  # an inventoried file gone
    code, out, _ = run(capsys, "store", toy_store)
    assert code == 0 and "NOT usable" in out and "image/label/c/0 is missing" in out
    zarr.open_group(toy_store, mode="r+").attrs["complete"] = False
    _, out, _ = run(capsys, "store", toy_store)
    assert "NOT usable" in out and "is incomplete" in out
    code, _, err = run(capsys, "store", toy_store.parent / "absent.zarr")
    assert code == 1 and "does not exist" in err


def test_store_verify_decodes_every_shard(toy_store, capsys):
    code, out, _ = run(capsys, "store", toy_store, "--verify", "--repo", toy_store.parents[2])
    assert code == 0 and out.rstrip().endswith("verify: all well")
    shard = toy_store / "image" / "emb" / "c" / "0" / "0"
    damaged = bytearray(shard.read_bytes())
    damaged[0] ^= 0xFF  # same size: only decoding finds it
    shard.write_bytes(bytes(damaged))
    code, out, _ = run(capsys, "store", toy_store, "--verify", "--repo", toy_store.parents[2])
    assert code == 1 and "image/emb/c/0/0" in out and "does not decode" in out


# ----------------------------------------------------------------------------- add-folder


def image_folder(root, classes=("cat", "dog")):
    for c in classes:
        (root / c).mkdir(parents=True)
        (root / c / "0.png").write_bytes(b"")
    return root


@pytest.fixture
def repo(tmp_path):
    """A copy of the project's params.yaml, comments and all."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_add_folder_inserts_only_the_entry(repo, capsys, monkeypatch):
    before = (repo / "params.yaml").read_text()
    image_folder(repo / "images" / "pets")
    monkeypatch.chdir(repo / "images")  # ROOT relative to here; written relative to params.yaml's folder
    code, out, _ = run(capsys, "add-folder", "pets", "pets", "--repo", "..")
    assert code == 0, out
    after = (repo / "params.yaml").read_text()
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    root = "images/pets"
    assert new == {**old, "data": {**old["data"], "pets": {"kind": "folder", "root": root}}}
    # every line of the old text is still there, in order: the diff only inserts
    ops = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False).get_opcodes()
    assert [op for op, *_ in ops if op != "equal"] == ["insert"]
    assert f"pets:\n    kind: folder\n    root: {root}\n" in after  # indented like the other data entries
    _, out, _ = run(capsys, "datasets", "--repo", "..")
    assert ("pets", "folder", root) in [tuple(c.strip() for c in r[:3]) for r in table_rows(out)]


def test_add_folder_keeps_an_absolute_root(repo, tmp_path_factory, capsys):
    folder = image_folder(tmp_path_factory.mktemp("elsewhere"))
    assert run(capsys, "add-folder", "far", folder, "--repo", repo)[0] == 0
    assert yaml.safe_load((repo / "params.yaml").read_text())["data"]["far"] == {"kind": "folder",
                                                                                  "root": str(folder)}


@pytest.mark.parametrize("name, make, match", [
    ("pets", lambda r: r / "missing", "no such folder"),
    ("pets", lambda r: image_folder(r / "one", ("cat",)), r"1 class sub-folders \['cat'\], expected at least 2"),
    ("pets", lambda r: (image_folder(r / "gap"), (r / "gap" / "emu").mkdir())[0],
     r"class sub-folders without any file: \['emu'\]"),
    ("shapes", lambda r: image_folder(r / "x"), "'data.shapes' already exists"),
    ("My-Pets", lambda r: image_folder(r / "y"), "NAME 'My-Pets': expected lower-case letters"),
])
def test_add_folder_refuses_and_leaves_params_alone(repo, capsys, name, make, match):
    before = (repo / "params.yaml").read_text()
    code, _, err = run(capsys, "add-folder", name, make(repo), "--repo", repo)
    assert code == 1 and re.search(match, err), err
    assert (repo / "params.yaml").read_text() == before


def test_add_folder_into_a_data_block_at_the_end_of_the_file(tmp_path, monkeypatch):
    # the last line has no newline and the block is the file's last one
    params = tmp_path / "params.yaml"
    params.write_text("datasets: [a]\ndata:\n  # CoOp sets\n  a: {kind: coop, name: dtd, root: /d}")
    image_folder(tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    cli.add_folder(params, "b", Path("b"))
    assert params.read_text() == ("datasets: [a]\ndata:\n  # CoOp sets\n  a: {kind: coop, name: dtd, root: /d}\n"
                                  "  b:\n    kind: folder\n    root: b\n")


def test_add_folder_refuses_a_flow_style_data_block(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data: {a: {kind: shapes}}\n")
    with pytest.raises(cli.CliError, match="expected one top-level 'data:' line opening a block mapping"):
        cli.add_folder(params, "b", image_folder(tmp_path / "b"))


# ----------------------------------------------------------------------------- the console command


def test_help_of_every_subcommand_in_a_subprocess():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["clipcache"] == "pipeline.cli:main"
    for argv in ([], ["datasets"], ["models"], ["store"], ["add-folder"]):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv, "--help"], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"usage: clipcache {' '.join(argv)}".rstrip())
