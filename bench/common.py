"""Shared bench plumbing: where results go, and measurements taken in fresh child processes."""

import json
import resource
import subprocess
import sys
from pathlib import Path

from bench.context import context
from pipeline import features, layout

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def write_result(name: str, result: dict, ctx: dict) -> None:
    """Print and save reports/bench/<name>.json, with its `context` (bench.context) first."""
    out = ROOT / "reports" / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"context": ctx, **result}, indent=2) + "\n"
    out.write_text(text)
    print(text, end="")


def context_of_repo(module: str, repo: Path, model: str, dataset: str, keys: list[str]) -> dict:
    """`bench.context.context` of a benchmark on one (model, dataset) of a reproduced repo: its params
    sections `keys` plus that model's zoo entry and that dataset's entry, and the manifest it ran on."""
    ds = json.loads((layout.data_dir(dataset, repo) / "dataset.json").read_text())
    return context(module, repo / "params.yaml", [*keys, f"data.{dataset}", f"model_zoo.{model}"],
                   {"dataset": dataset, "model": model, "manifest_sha256": ds["manifest_sha256"]})


def cached(repo: Path, model: str, dataset: str) -> tuple[dict, dict, features.Features]:
    """card.json, dataset.json and the cached features of one (model, dataset) of a reproduced repo."""
    card = json.loads((layout.model_dir(model, repo) / "card.json").read_text())
    ds = json.loads((layout.data_dir(dataset, repo) / "dataset.json").read_text())
    return card, ds, features.load(layout.feature_dir(model, dataset, repo), card, ds)


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident set size now (/proc/self/statm, Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def run_child(module: str, *args: str) -> dict:
    """Run `python -m module args` in a fresh process; it must print one JSON object as its last line."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{module} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
