"""Integrity of finished stores and of their copies in the DVC cache (DESIGN.md §4); `--repair` mends them.

usage: python -m pipeline.verify [PATHS...] [--repair] [--repo DIR]

For every store under features/ and logits/ (or under PATHS, relative to the repo): the `complete` flag and
provenance; every inventoried file present with its recorded size; every shard decodes (crc32c, read shard
by shard: bounded memory); and every file, and its DVC cache object, has the md5 that the output's `.dir`
listing records. A checked-out output is hardlinked to its cache object, so a write through the link damages
both copies: each damaged copy gets its own line. One line per problem, a summary, exit status 0 only when
all is well. `--repair`: pipeline/repair.py.
"""

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zarr
from tqdm import tqdm

from pipeline import dvccache, repair
from pipeline.store import decode_error, shard_regions

STORE_ROOTS = ("features", "logits")
LARGE = 64 << 20     # stores at least this big get a progress bar
# Files checked at once: md5 (which releases the GIL) of one overlaps Zarr's decode of the next; each holds
# at most one shard in memory.
WORKERS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Problem:
    store: str                 # as the repo names it (relative path)
    array: str                 # the Zarr node the file belongs to; "" for the store as a whole
    file: str                  # the damaged copy: a path in the store, or a DVC cache object
    what: str
    rebuild: bool = True       # False: the DVC cache holds the recorded bytes, so a checkout restores them
    cache_object: Path | None = None   # a damaged cache object, which repair deletes before rebuilding

    def __str__(self) -> str:
        where = " ".join(part for part in (f"[{self.array}]" if self.array else "", self.file) if part)
        return f"{self.store} {where}: {self.what}" if where else f"{self.store}: {self.what}"


@dataclass
class Report:
    store: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    nbytes: int = 0


@dataclass
class _File:
    """What one file's checks found; md5s are None where that copy is absent or not listed."""
    rel: str
    stat: os.stat_result | None
    decode: str | None = None   # why it does not decode (a shard) or parse (metadata)
    md5: str | None = None
    cache_stat: os.stat_result | None = None
    cache_md5: str | None = None


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _files(root: Path) -> dict[str, os.stat_result]:
    """{posix path under `root`: stat} of its files (symlinks followed: DVC may link outputs that way)."""
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if (st := _stat(Path(dirpath) / name)) is not None:
                found[(Path(dirpath) / name).relative_to(root).as_posix()] = st
    return found


def _node_of(rel: str) -> str:
    """The Zarr node a file belongs to: 'image/pre' for image/pre/c/3/0 and image/pre/zarr.json."""
    if rel.endswith("zarr.json"):
        return rel[: -len("zarr.json")].rstrip("/")
    return rel.split("/c/")[0] if "/c/" in rel else ""


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable) -> Iterator:
    """pool.map, in order, with few files in flight: memory stays bounded on any store."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= 4 * WORKERS:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _StoreCheck:
    """The checks of one store; `run` returns its Report."""

    def __init__(self, repo: Path, rel: str, lock: dict, cache: Path):
        self.repo, self.path, self.rel, self.cache = repo, repo / rel, rel, cache
        self.report = Report(rel)
        self.absent = not self.path.exists()
        self.disk = _files(self.path)
        self.unreadable = {}   # {metadata file: why it does not parse}, reported with that file's other findings
        self.group, self.inventory = self._open()
        self.regions = self._regions()
        self.listing = self._listing(lock.get(rel))

    def problem(self, what: str, file: str = "", node: str | None = None, **kw) -> None:
        """Record a problem of `file` (a file of the store, else a cache object of the store's `node`)."""
        self.report.problems.append(Problem(self.rel, _node_of(file) if node is None else node, file, what, **kw))

    def shown(self, path: Path) -> str:
        """A cache path as the user sees it: relative to the repo when inside it."""
        return path.relative_to(self.repo).as_posix() if path.is_relative_to(self.repo) else str(path)

    def _open(self) -> tuple[zarr.Group | None, dict | None]:
        """The group and its file inventory; problems for a missing flag or provenance."""
        if self.absent:
            self.problem("absent from the workspace, though dvc.lock records it", rebuild=False)
            return None, None
        try:
            group = zarr.open_group(self.path, mode="r")
        except Exception as exc:  # any failure to open is the finding
            if "zarr.json" in self.disk:
                self.unreadable["zarr.json"] = f"{type(exc).__name__}: {exc}"
            return None, None
        attrs = dict(group.attrs)
        if attrs.get("complete") is not True:
            self.problem("not marked complete (an interrupted write?)")
        if not attrs.get("provenance"):
            self.problem("has no provenance (what produced it is unknown)")
        if "files" not in attrs:
            self.report.notes.append(f"{self.rel}: no file inventory (written before it existed): sizes unchecked")
        return group, attrs.get("files")

    def _regions(self) -> dict[str, tuple[zarr.Array, tuple]]:
        """{file: (array, selection)} of every shard file on disk."""
        regions = {}
        for rel in self.disk:
            if self.group is None or not rel.endswith("/zarr.json"):
                continue
            try:
                node = self.group[_node_of(rel)]
            except Exception as exc:  # metadata that does not parse
                self.unreadable[rel] = f"{type(exc).__name__}: {exc}"
                continue
            if isinstance(node, zarr.Array):
                for key, region in shard_regions(node):
                    if f"{node.path}/{key}" in self.disk:  # an absent shard is one Zarr never wrote (all fill)
                        regions[f"{node.path}/{key}"] = (node, region)
        return regions

    def _listing(self, entry: tuple[str, dict] | None) -> dict[str, str] | None:
        """{file: md5} that DVC recorded for this output, or None (with a note or a problem saying why)."""
        if entry is None:
            self.report.notes.append(f"{self.rel}: not an output in dvc.lock: DVC cache not checked")
            return None
        out = entry[1]
        if out.get("hash") != "md5" or not str(out.get("md5", "")).endswith(".dir"):
            self.report.notes.append(f"{self.rel}: dvc.lock entry is not a DVC 3 directory hash: cache not checked")
            return None
        where = dvccache.object_path(self.cache, out["md5"])
        try:
            found = dvccache.listing(self.cache, out["md5"])
        except ValueError as exc:
            self.problem(f"the DVC cache's listing of this store is damaged ({exc})", self.shown(where), "",
                         cache_object=where)
            return None
        if found is None:
            self.problem("the DVC cache lacks this store's listing (a pruned cache? `dvc pull` if it was pushed)",
                         self.shown(where), "")
        return found

    def check_file(self, rel: str) -> _File:
        """Decode (when a shard) and hash one file; the workspace file and its cache object are hashed once
        when they are one inode (DVC's hardlink), since their bytes cannot differ."""
        found = _File(rel, self.disk.get(rel), self.unreadable.get(rel))
        if rel in self.regions:
            found.decode = decode_error(*self.regions[rel])
        if self.listing is not None and rel in self.listing:
            obj = dvccache.object_path(self.cache, self.listing[rel])
            found.cache_stat = _stat(obj)
            if found.stat and found.cache_stat and dvccache.same_file(found.stat, found.cache_stat):
                found.md5 = found.cache_md5 = dvccache.md5_file(self.path / rel)
                return found
            found.cache_md5 = dvccache.md5_file(obj) if found.cache_stat else None
            found.md5 = dvccache.md5_file(self.path / rel) if found.stat else None
        return found

    def judge(self, f: _File) -> None:
        """Problems of one file: a line for the workspace copy, another for the cache object."""
        size = (self.inventory or {}).get(f.rel)
        recorded = (self.listing or {}).get(f.rel)
        ws = []
        if f.stat is None and self.absent:
            pass   # one line says the whole store is absent
        elif f.stat is None:
            ws.append("missing" + (f" (the store's inventory lists {size} bytes)" if size is not None else ""))
        else:
            if self.inventory is not None and f.rel != "zarr.json" and f.rel not in self.inventory:
                ws.append("not in the store's inventory (not written by the stage)")
            elif size is not None and f.stat.st_size != size:
                ws.append(f"has {f.stat.st_size} bytes, the store's inventory says {size}")
            if f.decode:
                ws.append(f"does not decode ({f.decode})")
            if self.listing is not None and recorded is None:
                ws.append("not in the DVC listing of this store")
            elif recorded is not None and f.md5 != recorded:
                ws.append(f"md5 {f.md5}, DVC recorded {recorded}")
        cache_ok = recorded is not None and f.cache_md5 == recorded
        if ws:
            # `dvc checkout --force` drops a stray file and restores a listed one from a sound cache object,
            # which helps only if those recorded bytes decode.
            restorable = self.listing is not None and (recorded is None or cache_ok)
            recorded_bad = recorded is not None and f.decode is not None and f.md5 == recorded
            self.problem("; ".join(ws), f.rel, rebuild=not restorable or recorded_bad)
        if recorded is None or cache_ok:
            return
        obj = dvccache.object_path(self.cache, recorded)
        if f.cache_stat is None:
            self.problem(f"cache object of {f.rel} is missing", self.shown(obj), _node_of(f.rel))
            return
        bad = [f"md5 {f.cache_md5}, DVC recorded {recorded}"]
        if size is not None and f.cache_stat.st_size != size:
            bad.insert(0, f"has {f.cache_stat.st_size} bytes, the store's inventory says {size}")
        if f.stat and dvccache.same_file(f.stat, f.cache_stat):
            bad.append("one inode with the workspace file: a write through the hardlink damaged both")
        self.problem(f"cache object of {f.rel}: {'; '.join(bad)}", self.shown(obj), _node_of(f.rel),
                     cache_object=obj)

    def run(self, progress: bool) -> Report:
        files = sorted(set(self.disk) | set(self.inventory or ()) | set(self.listing or ()))
        self.report.files = len(files)
        self.report.nbytes = sum(st.st_size for st in self.disk.values())
        bar = tqdm(total=self.report.nbytes, unit="B", unit_scale=True, desc=f"verify {self.rel}",
                   disable=not progress or self.report.nbytes < LARGE)
        with bar, ThreadPoolExecutor(WORKERS) as pool:
            for found in _bounded_map(pool, self.check_file, files):
                self.judge(found)
                bar.update(found.stat.st_size if found.stat else 0)
        return self.report


def check_store(repo: Path, rel: str, lock: dict | None = None, cache: Path | None = None,
                progress: bool = False) -> Report:
    """Every check of one store (`rel` relative to `repo`); `lock`, `cache` as `verify` reads them."""
    repo = Path(repo)
    lock = dvccache.lock_outs(repo) if lock is None else lock
    return _StoreCheck(repo, rel, lock, cache or dvccache.cache_dir(repo)).run(progress)


def _stores_under(repo: Path, folder: Path) -> list[str]:
    """Stores (`*.zarr` folders) under `folder`; hidden folders (the `.staging` work areas) are skipped."""
    found = []
    for dirpath, dirs, _ in os.walk(folder):
        here = Path(dirpath)
        if here.suffix == ".zarr":
            found.append(here.relative_to(repo).as_posix())
            dirs.clear()
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return found


def find_stores(repo: Path, paths: list[str], lock: dict) -> list[str]:
    """Stores to check: those on disk and those dvc.lock records, under `paths` (default features/, logits/)."""
    repo = Path(repo).resolve()
    stores = set()
    for given in paths or STORE_ROOTS:
        path = (repo / given).resolve()
        if not path.is_relative_to(repo):
            raise ValueError(f"{given} is outside the repo {repo}")
        rel = path.relative_to(repo).as_posix()
        recorded = {out for out in lock if rel == "." or out == rel or out.startswith(f"{rel}/")}
        stores |= {out for out in recorded if out.endswith(".zarr")}
        if path.suffix == ".zarr" or (path / "zarr.json").is_file():
            stores.add(rel)
        elif path.is_dir():
            stores |= set(_stores_under(repo, path))
        elif not recorded and paths:
            raise ValueError(f"{given}: no store there, and dvc.lock records none")
    return sorted(stores)


def verify(repo: Path, stores: list[str], progress: bool = True) -> list[Report]:
    """Check each store, printing its problems and notes as they are found."""
    lock, cache = dvccache.lock_outs(repo), dvccache.cache_dir(repo)
    reports = []
    for rel in stores:
        report = check_store(repo, rel, lock, cache, progress)
        for line in [*map(str, report.problems), *(f"note: {n}" for n in report.notes)]:
            print(line, flush=True)
        reports.append(report)
    return reports


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def summary(reports: list[Report], seconds: float) -> str:
    damaged = [r.store for r in reports if r.problems]
    head = (f"verify: {_count(len(reports), 'store')}, {_count(sum(r.files for r in reports), 'file')}, "
            f"{sum(r.nbytes for r in reports) / 2**20:.1f} MiB in {seconds:.1f} s")
    if not damaged:
        return f"{head}: all well"
    return (f"{head}: {_count(sum(len(r.problems) for r in reports), 'problem')} in "
            f"{_count(len(damaged), 'store')} ({', '.join(damaged)}); to mend: "
            f"`python -m pipeline.verify --repair {' '.join(damaged)}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="stores or folders holding stores (default: features/ logits/)")
    parser.add_argument("--repair", action="store_true", help="delete damaged cache objects and rebuild (or "
                        "check out) the stores that own them; refuses non-deterministic stages and changed params")
    parser.add_argument("--repo", default=".", help="the DVC repo (default: here)")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    start = time.perf_counter()
    try:
        stores = find_stores(repo, args.paths, dvccache.lock_outs(repo))
    except ValueError as exc:
        parser.error(str(exc))
    reports = verify(repo, stores, progress=sys.stderr.isatty())
    print(summary(reports, time.perf_counter() - start), flush=True)
    damaged = [r for r in reports if r.problems]
    if not damaged or not args.repair:
        return 1 if damaged else 0
    done, all_done = repair.repair(repo, damaged)
    if not done:
        return 1
    start = time.perf_counter()
    after = verify(repo, done, progress=sys.stderr.isatty())
    print(summary(after, time.perf_counter() - start).replace("verify:", "verify after repair:"), flush=True)
    return 0 if all_done and not any(r.problems for r in after) else 1


if __name__ == "__main__":
    sys.exit(main())
