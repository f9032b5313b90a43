"""dvc.yaml is honest: every project module a stage imports is one of that stage's deps, so editing
it re-runs the stage. The import closure is computed from the source (ast), not by importing; it is the
same closure the benchmark reports digest (bench/context.py)."""

from pathlib import Path

import pytest
import yaml

from bench.context import import_closure as closure

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_closure_finds_nested_imports():
    # pipeline.adapt imports the method registry, which imports every method module
    files = {p.relative_to(ROOT).as_posix() for p in closure(ROOT / "pipeline" / "adapt.py")}
    assert {"pipeline/methods/__init__.py", "pipeline/methods/semobridge.py", "pipeline/fusion.py",
            "pipeline/layout.py", "pipeline/__init__.py"} <= files


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_its_import_closure(stage):
    spec = STAGES[stage].get("do", STAGES[stage])   # foreach stages keep their body under `do`
    script = ROOT / spec["cmd"].split()[1]
    deps = [d for d in spec["deps"] if "$" not in d or d.startswith("stages/")]
    covered = lambda rel: any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)
    missing = sorted(r for r in (p.relative_to(ROOT).as_posix() for p in closure(script)) if not covered(r))
    assert not missing, f"dvc.yaml stage '{stage}' imports {missing} but does not list them in its deps"
