"""`clipcache`: look at a project's params and stores, and add a dataset entry. It wraps the library;
`dvc repro` still runs the pipeline.

usage: clipcache datasets [--repo DIR]            the `data` entries of params.yaml (kind, root)
       clipcache models [--repo DIR]              the `model_zoo` entries (arch, source)
       clipcache store PATH [--verify]            a store's state, provenance and arrays
       clipcache add-folder NAME ROOT [--repo DIR]   add `data.NAME: {kind: folder, root: ROOT}`
"""

import argparse
import os
import re
import sys
from pathlib import Path

import yaml

from pipeline import config
from pipeline.io import atomic_write_text

# Dataset names become folder names and DVC matrix items (`<model>-<dataset>`): no dashes, no dots.
NAME = re.compile(r"[a-z][a-z0-9_]*")


class CliError(Exception):
    """A command cannot do what was asked; the message says why."""


def _params(repo: Path) -> dict:
    path = Path(repo) / "params.yaml"
    if not path.is_file():
        raise CliError(f"{path}: no params.yaml there (pass --repo, the project's folder)")
    return yaml.safe_load(path.read_text()) or {}


def _table(header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in (header, *rows))


def dataset_rows(params: dict) -> list[tuple]:
    """(name, kind, root, in `datasets`) of every `data` entry; the demo's root is its generator."""
    data, active = config.need(params, "data", dict, ""), params.get("datasets") or []
    rows = []
    for name, entry in data.items():
        entry = entry if isinstance(entry, dict) else {}
        root = entry.get("root", "(generated: pipeline/shapes.py)" if entry.get("kind") == "shapes" else "-")
        rows.append((name, entry.get("kind", "?"), root, "yes" if name in active else ""))
    return rows


def model_rows(params: dict) -> list[tuple]:
    """(name, arch, source, where the weights come from, in `models`) of every `model_zoo` entry."""
    zoo, active = config.need(params, "model_zoo", dict, ""), params.get("models") or []
    rows = []
    for name, entry in zoo.items():
        entry = entry if isinstance(entry, dict) else {}
        where = {"pretrained": f"tag {entry.get('tag')}", "checkpoint": f"path {entry.get('path')}",
                 "random": f"seed {entry.get('seed')}", "demo": "trained by model@" + name}.get(entry.get("source"), "-")
        rows.append((name, entry.get("arch", "?"), entry.get("source", "?"), where, "yes" if name in active else ""))
    return rows


def describe_store(path: Path) -> str:
    """Whether a store is usable (pipeline.store.open_store's checks), its provenance and its arrays."""
    # zarr and DVC take seconds to import: only this command needs them
    import zarr

    from pipeline import store

    path = Path(path)
    try:
        group, state = store.open_store(path), "complete"
    except store.StoreError as exc:
        if not (path / "zarr.json").is_file():
            raise CliError(str(exc)) from None
        group, state = zarr.open_group(path, mode="r"), f"NOT usable: {exc}"
    attrs = dict(group.attrs)
    arrays = sorted((name, node) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))
    lines = [f"{path}: {state}", "provenance:"]
    lines += [f"  {k}: {v}" for k, v in sorted((attrs.get("provenance") or {}).items())] or ["  (none)"]
    lines.append(f"arrays ({len(arrays)}):")
    lines += ["  " + row for row in _table(("name", "shape", "dtype"), [
        (name, "x".join(map(str, a.shape)) or "scalar", str(a.dtype)) for name, a in arrays]).splitlines()]
    return "\n".join(lines)


def class_folders(root: Path) -> list[str]:
    """The class sub-folders of a class-per-folder dataset; CliError unless there are two or more, each
    holding at least one file."""
    if not root.is_dir():
        raise CliError(f"ROOT {root}: no such folder (expected a folder with one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise CliError(f"ROOT {root}: {len(classes)} class sub-folders {classes}, expected at least 2 "
                       "(one sub-folder of images per class)")
    empty = [c for c in classes if not any(f.is_file() for f in (root / c).rglob("*"))]
    if empty:
        raise CliError(f"ROOT {root}: class sub-folders without any file: {empty}")
    return classes


def add_folder(params_file: Path, name: str, root: Path) -> str:
    """Add `data.<name>: {kind: folder, root}` to params_file by inserting lines at the end of its `data:`
    block, so every other line (comments included) stays as it is; returns the lines inserted. `root` is
    written relative to the params file's folder unless given absolute. The edit is checked by parsing the
    result: nothing is written unless it reads as the old params plus that one entry."""
    params_file = Path(params_file)
    text = params_file.read_text()
    params = yaml.safe_load(text) or {}
    data = config.need(params, "data", dict, "")
    if not NAME.fullmatch(name):
        raise CliError(f"NAME {name!r}: expected lower-case letters, digits and '_', starting with a letter")
    if name in data:
        raise CliError(f"{params_file}: 'data.{name}' already exists ({data[name]})")
    class_folders(root)
    stored = str(root) if root.is_absolute() else os.path.relpath(root.resolve(), params_file.parent.resolve())

    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"data:\s*(#.*)?", line.rstrip("\r\n"))]
    if len(starts) != 1:
        raise CliError(f"{params_file}: expected one top-level 'data:' line opening a block mapping, found "
                       f"{len(starts)}; add the entry by hand")
    start = starts[0]
    # the block ends at the next line that starts in column 0 (a top-level key or comment)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()),
               len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    body = [line for line in lines[start + 1:end] if line.strip() and not line.lstrip().startswith("#")]
    indent = re.match(r"\s*", body[0]).group() if body else "  "
    entry = yaml.safe_dump({name: {"kind": "folder", "root": stored}}, default_flow_style=False, sort_keys=False)
    added = "".join(indent + line + "\n" for line in entry.splitlines())
    if end and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    new_text = "".join(lines[:end]) + added + "".join(lines[end:])

    expected = {**params, "data": {**data, name: {"kind": "folder", "root": stored}}}
    if yaml.safe_load(new_text) != expected:
        raise CliError(f"{params_file}: inserting the entry at line {end + 1} would change other keys; "
                       "add it by hand")
    atomic_write_text(params_file, new_text)
    return added


def main(argv: list[str] | None = None) -> int:
    repo = argparse.ArgumentParser(add_help=False)
    repo.add_argument("--repo", type=Path, default=Path("."), help="the project's folder (default: here)")
    parser = argparse.ArgumentParser(prog="clipcache", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("datasets", parents=[repo], help="list the dataset entries of params.yaml",
                   description="The `data` entries of params.yaml: kind, root, and whether `datasets` lists them.")
    sub.add_parser("models", parents=[repo], help="list the model entries of params.yaml",
                   description="The `model_zoo` entries of params.yaml: arch, source, and whether `models` "
                               "lists them.")
    s = sub.add_parser("store", parents=[repo], help="show a store's state, provenance and arrays",
                       description="Whether a Zarr store is complete and intact (the readers' checks), its "
                                   "provenance, and its arrays with shapes and dtypes.")
    s.add_argument("path", type=Path, help="a store, e.g. features/demo/shapes/images.zarr")
    s.add_argument("--verify", action="store_true", help="also decode every shard and check the DVC cache "
                   "(python -m pipeline.verify's checks; the store must be inside --repo)")
    a = sub.add_parser("add-folder", parents=[repo], help="add a class-per-folder dataset entry to params.yaml",
                       description="Add `data.NAME: {kind: folder, root: ROOT}` to params.yaml (its other lines "
                                   "and comments untouched). ROOT must hold one sub-folder of images per class.")
    a.add_argument("name", metavar="NAME", help="the dataset's name in params.yaml")
    a.add_argument("root", metavar="ROOT", type=Path, help="the folder holding one sub-folder per class")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (CliError, config.ParamsError) as exc:
        print(f"clipcache {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.command == "datasets":
        print(_table(("name", "kind", "root", "in datasets"), dataset_rows(_params(args.repo))))
    elif args.command == "models":
        print(_table(("name", "arch", "source", "weights", "in models"), model_rows(_params(args.repo))))
    elif args.command == "store":
        print(describe_store(args.path))
        if args.verify:
            from pipeline import verify

            repo, path = args.repo.resolve(), args.path.resolve()
            if not path.is_relative_to(repo):
                raise CliError(f"--verify: {args.path} is outside --repo {repo}")
            report = verify.check_store(repo, path.relative_to(repo).as_posix())
            print("\n".join(map(str, report.problems)) or "verify: all well")
            return 1 if report.problems else 0
    else:
        added = add_folder(args.repo / "params.yaml", args.name, args.root)
        print(f"added to {args.repo / 'params.yaml'}:\n{added}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
