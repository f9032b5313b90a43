"""What every stage script shares: its arguments, its declared params, and the project layout."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dvc.api  # noqa: E402


def args(doc: str, *names: str) -> list[str]:
    """The stage's positional arguments; `--help` or a wrong count prints the usage line of `doc`."""
    usage = next(line for line in doc.splitlines() if line.startswith("usage:"))
    given = sys.argv[1:]
    if any(a in ("-h", "--help") for a in given):
        print(usage)
        raise SystemExit(0)
    if len(given) != len(names):
        raise SystemExit(f"{usage}\n(expected {len(names)} argument(s): {', '.join(names) or 'none'})")
    return given


def stage_params(stage: str, *others: str) -> dict:
    """Only the params `stage` declares in dvc.yaml, so DVC's invalidation stays honest; a script that several
    stages run (the student's and the teacher's) names each, and the first that exists is read."""
    from dvc.stage.exceptions import StageNotFound

    *first, last = (stage, *others)
    for name in first:
        try:
            return dvc.api.params_show(stages=[name], repo=str(ROOT))
        except StageNotFound:
            pass
    return dvc.api.params_show(stages=[last], repo=str(ROOT))
