"""dvc.yaml is honest: every project module a stage imports is one of that stage's deps, so editing
it re-runs the stage. The import closure is computed from the source (ast), not by importing."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (pipeline.* or a sibling of the stage scripts), if any."""
    for base in (ROOT, ROOT / "stages"):
        path = base.joinpath(*name.split("."))
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py")
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
    return None


def imports_of(path: Path) -> set[Path]:
    """Project files imported by one file, including packages whose submodules it imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):   # importing a.b.c runs a/__init__ and a/b/__init__ too
                f = module_file(".".join(parts[:i]))
                if f:
                    found.add(f)
    return found


def closure(script: Path) -> set[Path]:
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imports_of(path) - seen)
    return seen


def test_closure_finds_nested_imports():
    # pipeline.adapt imports the method registry, which imports every method module
    files = {p.relative_to(ROOT).as_posix() for p in closure(ROOT / "pipeline" / "adapt.py")}
    assert {"pipeline/methods/__init__.py", "pipeline/methods/semobridge.py", "pipeline/fusion.py",
            "pipeline/layout.py", "pipeline/__init__.py"} <= files


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_its_import_closure(stage):
    spec = STAGES[stage]
    script = ROOT / spec["cmd"].split()[1]
    deps = [d for d in spec["deps"] if "$" not in d or d.startswith("stages/")]
    covered = lambda rel: any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)
    missing = sorted(r for r in (p.relative_to(ROOT).as_posix() for p in closure(script)) if not covered(r))
    assert not missing, f"dvc.yaml stage '{stage}' imports {missing} but does not list them in its deps"
