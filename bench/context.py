"""What a benchmark report must carry so that a stale one cannot sit beside new code: the commit, the
machine, and digests of the params sections, data and code it measured (tests/test_bench_reports.py
recomputes the params and code digests from the checkout and fails on a mismatch).
"""

import ast
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def params_digest(params: dict, keys: list[str]) -> str:
    """sha256 of the named dotted params sections (a missing section digests as null)."""
    def get(path):
        node = params
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node
    return _sha256({k: get(k) for k in sorted(keys)})


def _module_file(name: str, beside: Path = ROOT) -> Path | None:
    """The project file of a dotted module name, from the root or from the importing script's folder."""
    for base in (ROOT, beside):
        path = base.joinpath(*name.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def import_closure(path: Path) -> set[Path]:
    """Every project file `path` imports, directly or not (found from the source with ast, nothing is run);
    importing a.b.c counts a/__init__.py and a/b/__init__.py too."""
    seen, todo = set(), [Path(path)]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in ast.walk(ast.parse(current.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                todo += [f for i in range(1, len(parts) + 1)
                         if (f := _module_file(".".join(parts[:i]), current.parent))]
    return seen


def code_digest(module: str) -> str:
    """sha256 of the source of a bench module and everything it imports from the project."""
    files = sorted(import_closure(_module_file(module)))
    return _sha256({f.relative_to(ROOT).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def context(module: str, params_file: Path, params_keys: list[str], data: dict | None = None) -> dict:
    """The `context` block of a report: run by `module` on the params in `params_file` (its `params_keys`
    sections are the inputs) and `data` (e.g. manifest digests)."""
    params = yaml.safe_load(Path(params_file).read_text()) if params_file else {}
    return {
        "module": module, "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--", "pipeline", "bench")),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "params_keys": sorted(params_keys), "params_sha256": params_digest(params, params_keys),
        "data": data or {}, "code_sha256": code_digest(module),
    }
