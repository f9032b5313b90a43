"""What verify needs from DVC, read from the files DVC writes (DESIGN.md §4): an output's entry in dvc.lock,
the `.dir` listing of a directory output in the local cache, and the cache object of each listed file."""

import hashlib
import json
import os
from pathlib import Path

import yaml
from dvc.config import Config


def lock_outs(repo: Path) -> dict[str, tuple[str, dict]]:
    """{output path as dvc.lock writes it (posix, relative to the repo): (stage, its entry)}."""
    lock = Path(repo) / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {out["path"]: (stage, out) for stage, entry in stages.items() for out in entry.get("outs", [])}


def cache_dir(repo: Path) -> Path:
    """The local cache: `cache.dir` from DVC's config (every level, resolved as DVC does), else .dvc/cache."""
    configured = Config(dvc_dir=str(Path(repo) / ".dvc"))["cache"].get("dir")
    return Path(configured) if configured else Path(repo) / ".dvc" / "cache"


def object_path(cache: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object of an md5 (`<md5>.dir` for a directory's listing)."""
    return Path(cache) / "files" / "md5" / md5[:2] / md5[2:]


def listing(cache: Path, dir_md5: str) -> dict[str, str] | None:
    """{relpath: md5} of a directory output's `.dir` object; None when the cache lacks it.

    Raises ValueError when the object is there but is not the listing its name says (its md5 is its bytes')."""
    path = object_path(cache, dir_md5)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if hashlib.md5(raw).hexdigest() != dir_md5.removesuffix(".dir"):
        raise ValueError(f"{path} does not match its md5 (damaged listing)")
    return {entry["relpath"]: entry["md5"] for entry in json.loads(raw)}


def md5_file(path: Path, block: int = 1 << 20) -> str:
    """Hex md5 of a file's bytes, read in blocks (bounded memory whatever the file's size)."""
    h = hashlib.md5()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats are one inode (a hardlinked or symlinked cache object and its workspace file)."""
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
