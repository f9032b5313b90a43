"""`verify --repair`: mend damaged stores through DVC (DESIGN.md §4).

A store whose damage is in the workspace only (the cache holds the recorded bytes) is checked out again.
One whose cache objects are damaged or missing is rebuilt: delete those objects (else DVC would keep and
check out the damaged bytes again), then re-run its stage alone with `dvc repro -f -s` (`-f` without `-s`
forces every upstream stage too, e.g. retraining the demo model). That restores the recorded bytes only
where the stage is deterministic and its params and deps are those dvc.lock recorded; otherwise it refuses.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline import dvccache
from pipeline.layout import owner_stage

# Stages whose outputs come back bit-identical from the same inputs, in DAG order. Not `model`: the demo
# model trains on CPU and is not bit-reproducible across machines (measured).
DETERMINISTIC = ("prepare", "fewshot", "extract", "text", "views", "adapt")


def plan(repo: Path, reports: list) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """(stores to check out, {stage: stores to rebuild} in DAG order, {store: why it is refused}) for the
    damaged stores in `reports` (verify.Report), before asking DVC what changed."""
    tracked = dvccache.lock_outs(repo)
    checkout, rebuild, refused = [], {}, {}
    for report in reports:
        store, stage = report.store, owner_stage(Path(repo) / report.store)
        if store not in tracked:
            refused[store] = "dvc.lock does not record it, so DVC cannot restore it; run the stage that writes it"
        elif not any(p.rebuild for p in report.problems):
            checkout.append(store)
        elif stage is None:
            refused[store] = "it is outside the layout (pipeline/layout.py): no stage is known to rebuild it"
        elif stage.split("@")[0] not in DETERMINISTIC:
            refused[store] = (f"its stage {stage} is not deterministic: a re-run would not give the recorded "
                              f"bytes; restore the cache from a remote (`dvc pull`) or re-run the DAG")
        else:
            rebuild.setdefault(stage, []).append(store)
    order = sorted(rebuild, key=lambda s: DETERMINISTIC.index(s.split("@")[0]))
    return checkout, {stage: rebuild[stage] for stage in order}, refused


def _run(repo: Path, *cmd: str, capture: bool = False) -> subprocess.CompletedProcess:
    """A DVC or git command in `repo`, with this interpreter's venv first on PATH (the stages run `python`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=repo, env=env, text=True, capture_output=capture)


def changes(repo: Path, stages: list[str], repaired: set[str]) -> dict[str, list[str]]:
    """{stage: what `dvc status` says changed in it} beyond its own outputs and the stores being repaired."""
    if not stages:
        return {}
    proc = _run(repo, "dvc", "status", "--json", *stages, capture=True)
    if proc.returncode:
        raise RuntimeError(f"dvc status failed:\n{proc.stdout}{proc.stderr}")
    dirty_params = _run(repo, "git", "status", "--porcelain", "--", "params.yaml", capture=True).stdout.strip()
    found = {}
    for stage, entries in json.loads(proc.stdout or "{}").items():
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict):   # e.g. "changed command", "always changed"
                found.setdefault(stage, []).append(str(entry))
                continue
            for dep, state in entry.get("changed deps", {}).items():
                if isinstance(state, dict):   # a params file: {key: "modified" | "new" | "deleted"}
                    where = "uncommitted changes in params.yaml" if dep == "params.yaml" and dirty_params else dep
                    found.setdefault(stage, []).extend(f"{key} ({where})" for key in state)
                elif dep not in repaired:
                    found.setdefault(stage, []).append(f"{dep} ({state})")
    return found


def repair(repo: Path, reports: list) -> tuple[list[str], bool]:
    """Mend what can be mended, printing each step and refusal (DVC prints its own failures).
    Returns (the stores it mended, whether it mended all it was given)."""
    repo = Path(repo)
    checkout, rebuild, refused = plan(repo, reports)
    repaired = set(checkout) | {s for stores in rebuild.values() for s in stores}
    for stage, why in changes(repo, list(rebuild), repaired).items():
        for store in rebuild.pop(stage):
            refused[store] = (f"its stage {stage} would not produce what dvc.lock records: changed since it ran: "
                              f"{', '.join(why)}; commit and `dvc repro` (or revert) them first")
    for store, why in refused.items():
        print(f"repair refused for {store}: {why}", flush=True)
    done, failed = [], []
    for store in checkout:
        print(f"repair: {store}: the DVC cache holds its recorded bytes: dvc checkout --force {store}", flush=True)
        if _run(repo, "dvc", "checkout", "--force", store).returncode:
            failed.append(store)
        else:
            done.append(store)
    before = dvccache.lock_outs(repo)
    for stage, stores in rebuild.items():
        doomed = {p.cache_object for r in reports if r.store in stores for p in r.problems if p.cache_object}
        for obj in doomed:
            obj.unlink(missing_ok=True)
        removed = f"removed {len(doomed)} damaged cache object(s); " if doomed else ""
        print(f"repair: {', '.join(stores)}: {removed}dvc repro -f -s {stage}", flush=True)
        if _run(repo, "dvc", "repro", "-f", "-s", stage).returncode:
            failed.append(stage)
            continue
        done += stores
    after = dvccache.lock_outs(repo)
    for store in done:
        old, new = before[store][1].get("md5"), after.get(store, (None, {}))[1].get("md5")
        if old != new:
            print(f"repair: {store} came back different from what dvc.lock recorded ({old} -> {new}): "
                  f"stages downstream of it are now out of date (`dvc repro`)", flush=True)
    return done, not refused and not failed
