"""Sweep cost: after a full `dvc repro`, edit one fusion param and re-run; only `fuse` (and the `report`
formatting downstream of its metrics) may run. Compares that wall time with re-running adapt + fuse.

usage: python -m bench.sweep_cost [--repo .] [--model demo] [--dataset shapes]
The repo must be reproduced (`dvc repro` finds nothing to do); params.yaml is restored at the end.
Scenarios, each timed as the `dvc repro` wall clock:
- fixed: fusion.mode fixed, then fusion.fixed.semobridge.lambda1 0.5 -> 0.3 (a weight sweep step);
- search: fusion.search.seed 0 -> 1 (fuse re-runs every weight search on val);
against `dvc repro -f -s adapt@<model>-<dataset>` + `dvc repro -f -s fuse` (what a sweep step would cost if
the weights lived in adapt). Target: ratio <= 0.2.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import ROOT, context_of_repo, write_result


def repro(repo: Path, *args: str) -> tuple[float, list[str]]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", *args], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"dvc repro {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]
    return round(wall, 2), ran


def edit(path: Path, change) -> None:
    params = yaml.safe_load(path.read_text())
    change(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--dataset", default="shapes")
    args = ap.parse_args()
    repo, adapt_stage = args.repo.resolve(), f"adapt@{args.model}-{args.dataset}"
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    _, ran = repro(repo)
    if ran:
        raise RuntimeError(f"{repo} was not reproduced: `dvc repro` ran {ran}; run it first")
    result = {"repo": str(repo), "stage": adapt_stage}
    try:
        edit(params_file, lambda p: p["fusion"].update(mode="fixed"))
        result["switch_to_fixed"] = repro(repo)
        edit(params_file, lambda p: p["fusion"]["fixed"]["semobridge"].update(lambda1=0.3))
        wall, ran = repro(repo)
        result["fixed_weight_edit"] = {"wall_s": wall, "stages_run": ran}
        result["fixed_forced"] = {"adapt_s": repro(repo, "-f", "-s", adapt_stage)[0],
                                  "fuse_s": repro(repo, "-f", "-s", "fuse")[0]}
        params_file.write_text(original)
        result["restore_search"] = repro(repo)
        edit(params_file, lambda p: p["fusion"]["search"].update(seed=1))
        wall, ran = repro(repo)
        result["search_param_edit"] = {"wall_s": wall, "stages_run": ran}
        result["search_forced"] = {"adapt_s": repro(repo, "-f", "-s", adapt_stage)[0],
                                   "fuse_s": repro(repo, "-f", "-s", "fuse")[0]}
    finally:
        params_file.write_text(original)
        repro(repo)
    for mode, edit_key in (("fixed", "fixed_weight_edit"), ("search", "search_param_edit")):
        forced = result[f"{mode}_forced"]
        result[f"ratio_{mode}"] = round(result[edit_key]["wall_s"] / (forced["adapt_s"] + forced["fuse_s"]), 3)
        result[f"only_fuse_ran_{mode}"] = set(result[edit_key]["stages_run"]) <= {"fuse", "report"}
    write_result(f"sweep_cost-{args.model}-{args.dataset}", result, context_of_repo(
        "bench.sweep_cost", repo, args.model, args.dataset,
        ["extract.precision", "text", "fewshot", "views", "methods", "fusion"]))


if __name__ == "__main__":
    main()
