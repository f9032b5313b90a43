"""Shared fixtures: locations, a small model bundle, and a full `dvc repro` of the demo in a temp copy."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
VENV_BIN = Path(sys.executable).parent


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/datasets, or skip the test with the reason."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real dataset folder {path} is absent")
    return path


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command with the project's venv first on PATH; fail with its output."""
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def copy_repo(dest: Path) -> Path:
    """A fresh git + DVC repo holding the project's tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    (dest / "dvc.lock").unlink(missing_ok=True)
    # ../shared beside the copy, so data roots in params.yaml resolve as in the real checkout.
    if SHARED_DATASETS.parent.is_dir() and not (dest.parent / "shared").exists():
        (dest.parent / "shared").symlink_to(SHARED_DATASETS.parent)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], git + ["commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


@pytest.fixture(scope="session")
def random_demo_dir(tmp_path_factory) -> Path:
    """A random-init demo-clip saved as a model directory (plumbing for tests that run its towers)."""
    import open_clip
    import torch

    from pipeline import config, demo, models

    demo.register_configs()
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("random-demo")
    models.save(open_clip.create_model("demo-clip", pretrained=None), config.Model("demo-clip", "random"), out)
    return out


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory) -> Path:
    """The project copied to a temp dir, after a full default `dvc repro` (trains the demo CLIP)."""
    repo = copy_repo(tmp_path_factory.mktemp("demo") / "repo")
    run(["dvc", "repro"], repo, env={"CLIPCACHE_WORKERS": "2"})
    return repo


def pytest_collection_modifyitems(items):
    """Every test that needs the full demo DAG is `slow`, whether or not it says so itself."""
    for item in items:
        if "demo_repo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
