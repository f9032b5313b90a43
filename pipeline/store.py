"""Zarr v3 feature stores: sharded, resumable writer and validating readers (DESIGN.md §5).

A store is a Zarr group whose attributes hold `provenance` (what produced it), `files` (the size of every
file but the root zarr.json) and `complete`, both set last: a store without `complete: true` is never read,
nor one whose files are missing or resized, since Zarr would silently read the gaps as fill values.
Row arrays (N x width) are sharded by `shard_rows`; each shard is written once, whole, then marked done
in a progress folder beside the store, so a killed extraction resumes from its finished shards.
Every chunk carries a crc32c, so a damaged byte fails on read; `read` turns that failure into a StoreError
that names the file and `python -m pipeline.verify --repair` (pipeline/verify.py).
"""

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from pipeline.io import replace_dir
from pipeline.layout import owner_stage

SHARD_ROWS = 2048
CHUNK_ROWS = 256


class StoreError(ValueError):
    """A feature store is missing, incomplete, damaged, or from another model/dataset than requested."""


def _inventory(root: Path) -> dict[str, int]:
    """{posix path under `root`: size} of every file but the root zarr.json, which will hold this list."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file() and p != root / "zarr.json"}


def _remedy(path: Path, force: bool) -> str:
    """How to (re)build `path`: its DVC stage when the layout knows it; `force` reruns whatever DVC's state says
    (`-s`: that stage alone, since `-f` would force every stage upstream of it too)."""
    stage = owner_stage(path)
    if stage is None:
        return "run the stage that writes it"
    return f"run `dvc repro {'-f -s ' if force else ''}{stage}`"


def _create_array(group: zarr.Group, name: str, shape: tuple, dtype, shard_rows: int | None):
    # Embeddings barely compress (~1.1x), so no compressor; but a crc32c per chunk (Zarr's sharding guards only
    # its index by default), so a damaged byte fails on read instead of reading as a plausible float.
    if shard_rows is None:  # small array: one chunk, one file
        return group.create_array(name, shape=shape, dtype=dtype, chunks=shape or (1,), compressors=Crc32cCodec())
    chunk = (min(CHUNK_ROWS, shard_rows),) + tuple(shape[1:])
    shard = (shard_rows,) + tuple(shape[1:])
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunk, shards=shard, compressors=Crc32cCodec())


@contextmanager
def _naming_full_disk(staging: Path, resumes: bool):
    """Re-raise "no space left on device" with what survives and how to go on."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        then = "it resumes from the shards already written" if resumes else "it starts this store over"
        raise OSError(errno.ENOSPC, f"no space left on device while writing {staging} ({exc}); free some and "
                                    f"re-run the stage: {then}") from exc


def _drop_partials(root: Path) -> None:
    """Remove Zarr's temporary `*.partial` files, left by a write killed mid-file, before they are inventoried."""
    for leftover in Path(root).rglob("*.partial"):
        leftover.unlink()


class ShardedWriter:
    """Writes a store in `staging`, shard by shard; `finalize` moves it to its destination."""

    def __init__(self, staging: Path, provenance: dict, rows: dict[str, tuple], small: dict[str, np.ndarray],
                 shard_rows: int = SHARD_ROWS, create: bool = True):
        """`rows`: name -> (shape, dtype) of row-sharded arrays (same N); `small`: arrays written at once.
        `create=False` (torchrun's ranks but 0) joins the staging store another process created, or fails."""
        self.staging = Path(staging)
        self.progress = self.staging.with_name(self.staging.name + ".progress")
        self.shard_rows = shard_rows
        self.n_rows = {shape[0] for shape, _ in rows.values()}.pop()
        self.n_shards = -(-self.n_rows // shard_rows)
        if self._resumable(provenance):
            self.group = zarr.open_group(self.staging, mode="r+")
            return
        if not create:
            raise StoreError(f"{self.staging}: no staging store with this provenance and shard size to join "
                             f"(rank 0 creates it before the other ranks open it)")
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.progress, ignore_errors=True)
        self.group = zarr.open_group(self.staging, mode="w")
        for name, (shape, dtype) in rows.items():
            _create_array(self.group, name, shape, dtype, shard_rows)
        for name, value in small.items():
            _create_array(self.group, name, value.shape, value.dtype, None)[...] = value
        self.progress.mkdir(parents=True)
        # `created` marks that layout and small arrays are on disk; only then may a later run resume.
        self.group.attrs.update({"provenance": provenance, "shard_rows": shard_rows, "created": True})

    def _resumable(self, provenance: dict) -> bool:
        try:
            attrs = dict(zarr.open_group(self.staging, mode="r").attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return False
        return (attrs.get("created") and attrs.get("provenance") == provenance
                and attrs.get("shard_rows") == self.shard_rows and self.progress.is_dir())

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Rows [start, stop) of a shard."""
        return shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.n_rows)

    def pending(self) -> list[int]:
        """Shards not yet written, in order."""
        return [s for s in range(self.n_shards) if not (self.progress / f"{s:06d}.done").exists()]

    def pending_rows(self, shards: list[int] | None = None) -> int:
        """Rows of `shards` (default: every pending one) still to write: a progress bar's total."""
        return sum(stop - start for start, stop in map(self.shard_range, self.pending() if shards is None else shards))

    def write_shard(self, shard: int, blocks: dict[str, np.ndarray]) -> None:
        """Write one whole shard of every row array, then mark it done."""
        start, stop = self.shard_range(shard)
        for name, block in blocks.items():
            if len(block) != stop - start:
                raise ValueError(f"shard {shard} of '{name}' has {len(block)} rows, expected {stop - start}")
        with _naming_full_disk(self.staging, resumes=True):
            for name, block in blocks.items():
                self.group[name][start:stop] = block
            (self.progress / f"{shard:06d}.done").touch()

    def finalize(self, dest: Path) -> None:
        """Flag the store complete and move it to `dest`; refuses while shards are missing.

        The flag is set in the staging store, which no reader opens; the move is one rename, so `dest` is
        either absent or whole. Killed in between, the next run resumes with nothing left to write.
        """
        missing = self.pending()
        if missing:
            raise StoreError(f"{self.staging}: shards {missing[:5]} ({len(missing)} in all) were never written")
        _drop_partials(self.staging)
        with _naming_full_disk(self.staging, resumes=True):
            self.group.attrs.update({"files": _inventory(self.staging), "complete": True})
        replace_dir(self.staging, dest)
        shutil.rmtree(self.progress, ignore_errors=True)


def write_store(dest: Path, staging: Path, provenance: dict, arrays: dict[str, np.ndarray],
                attrs: dict | None = None) -> None:
    """Write a small store in one go (text features, logits): staging, complete flag, rename."""
    shutil.rmtree(staging, ignore_errors=True)
    with _naming_full_disk(staging, resumes=False):
        group = zarr.open_group(staging, mode="w")
        for name, value in arrays.items():
            _create_array(group, name, value.shape, value.dtype, None)[...] = value
        group.attrs.update({**(attrs or {}), "provenance": provenance, "files": _inventory(staging),
                            "complete": True})
    replace_dir(staging, dest)


def open_store(path: Path, expect: dict | None = None) -> zarr.Group:
    """Open a complete store read-only (its files may be the DVC cache's, DESIGN.md §4); with `expect`, every
    given provenance key must match. Read its arrays with `read`."""
    path = Path(path)
    try:
        group = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise StoreError(f"feature store {path} does not exist ({_remedy(path, False)})") from None
    if group.attrs.get("complete") is not True:
        raise StoreError(f"feature store {path} is incomplete (an interrupted write?); re-{_remedy(path, True)}")
    _check_files(path, group.attrs.get("files", {}))  # stores from before the inventory have none: unchecked
    if expect:
        check_provenance(path, dict(group.attrs["provenance"]), expect)
    return group


def _check_files(path: Path, files: dict[str, int]) -> None:
    """Raise StoreError if an inventoried file is missing or has another size (stat only, no data read)."""
    problems = []
    for rel, size in files.items():
        try:
            found = os.stat(path / rel).st_size
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        if found != size:
            problems.append(f"{rel} has {found} bytes, expected {size}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise StoreError(f"feature store {path} is damaged: {'; '.join(problems[:5])}{more}; "
                         f"run {repair_command(path)}")


def repair_command(path: Path) -> str:
    """The verify command that checks and mends `path`, with where to run it when that is not here."""
    path = Path(path).resolve()
    if owner_stage(path) is None:   # no stage to rebuild it: verify still names what is wrong
        return f"`python -m pipeline.verify --repo {path.parent} {path.name}`"
    root = path.parents[3]
    command = f"`python -m pipeline.verify --repair {path.relative_to(root).as_posix()}`"
    return command if Path.cwd().resolve() == root else f"{command} in {root}"


def shard_regions(array: zarr.Array) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """(file under the array, selection) of each shard (each chunk when unsharded): one file per region."""
    grid = array.shards or array.chunks
    for index in np.ndindex(*(-(-n // g) for n, g in zip(array.shape, grid))):
        region = tuple(slice(i * g, min((i + 1) * g, n)) for i, g, n in zip(index, grid, array.shape))
        yield array.metadata.encode_chunk_key(index), region


def decode_error(array: zarr.Array, region: tuple[slice, ...]) -> str | None:
    """Why `region` does not decode (a crc32c mismatch, a truncated shard, ...), or None if it does."""
    try:
        array[region]
    except Exception as exc:  # any failure to decode is the finding; its text says which
        return f"{type(exc).__name__}: {exc}"
    return None


def read(group: zarr.Group, name: str) -> np.ndarray:
    """`group[name]` as numpy; a chunk that does not decode raises a StoreError naming the store, the array,
    the files and the repair command, where Zarr's error (e.g. "Stored and computed checksum do not match")
    names none of them."""
    array = group[name]
    try:
        return array[...]
    except Exception as exc:  # re-raised below with the files it came from
        path = Path(group.store.root)
        bad = [f"{array.path}/{key} ({why})" for key, region in shard_regions(array)
               if (why := decode_error(array, region))] or [f"{name} ({type(exc).__name__}: {exc})"]
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise StoreError(f"feature store {path}: array '{name}' does not decode: {'; '.join(bad[:3])}{more}; "
                         f"run {repair_command(path)}") from exc


def check_provenance(path, found: dict, expect: dict) -> None:
    """Raise StoreError naming every key whose value differs from what was asked for."""
    diff = {k: (found.get(k), v) for k, v in expect.items() if found.get(k) != v}
    if diff:
        lines = "; ".join(f"{k}: store has {a!r}, expected {b!r}" for k, (a, b) in diff.items())
        raise StoreError(f"feature store {path} comes from a different source: {lines}")
