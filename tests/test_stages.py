"""Stage scripts answer `--help` and a wrong argument count with their usage line, not a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "stages").glob("*.py") if p.name != "common.py")


def stage(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_usage_line(script):
    proc = stage(f"stages/{script}", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: python stages/{script}") and "Traceback" not in proc.stderr


def test_wrong_argument_count_prints_usage_and_fails():
    proc = stage("stages/adapt.py", "demo")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "usage: python stages/adapt.py <model> <dataset>" in proc.stderr and "expected 2 argument(s)" in proc.stderr


def test_stage_params_equal_dvcs_own_params_show_for_every_stage():
    """`common.stage_params` reads dvc.yaml and params.yaml itself (dvc.api builds the whole index, 1.7 s of
    every stage's start-up); DVC's own answer is the reference, on every stage of this dvc.yaml."""
    import dvc.api
    from dvc.repo import Repo

    sys.path.insert(0, str(ROOT / "stages"))
    import common

    names = [s.addressing for s in Repo(str(ROOT)).index.stages]
    assert len(names) > 20 and any("@" in n for n in names)
    for name in names:
        assert common.stage_params(name) == dvc.api.params_show(stages=[name], repo=str(ROOT)), name


def test_an_unknown_stage_name_is_named():
    sys.path.insert(0, str(ROOT / "stages"))
    import common

    with pytest.raises(SystemExit, match="no stage named views@nope-x or teacher_views@x"):
        common.stage_params("views@nope-x", "teacher_views@x")
