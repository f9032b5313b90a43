"""What every stage script shares: its arguments, its declared params, and the project layout."""

import itertools
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

INTERPOLATION = re.compile(r"\$\{([^}]+)\}")


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


def _lookup(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _resolve(text, context: dict):
    """DVC's ${...} interpolation: a string that is one ${x} is x itself (a list, a dict), else text."""
    if not isinstance(text, str):
        return text
    whole = INTERPOLATION.fullmatch(text)
    if whole:
        return _lookup(context, whole.group(1))
    return INTERPOLATION.sub(lambda m: str(_lookup(context, m.group(1))), text)


def _instances(spec: dict, params: dict):
    """(name suffix, context) of every stage a dvc.yaml entry generates, and the body they share."""
    if "foreach" in spec:
        items = _resolve(spec["foreach"], params)
        pairs = items.items() if isinstance(items, dict) else ((str(v), v) for v in items)
        return [(str(k), {"key": k, "item": v}) for k, v in pairs], spec["do"]
    if "matrix" in spec:
        axes = {k: _resolve(v, params) for k, v in spec["matrix"].items()}
        axes = {k: list(v) if isinstance(v, dict) else v for k, v in axes.items()}
        return [("-".join(map(str, combo)), {"item": dict(zip(axes, combo))})
                for combo in itertools.product(*axes.values())], spec
    return [("", {})], spec


def _declared(stage: str, root: Path = ROOT) -> dict | None:
    """Only the params.yaml keys `stage` lists under `params` in dvc.yaml, nested as DVC's params_show gives
    them; None when dvc.yaml has no such stage. Read directly: dvc.api.params_show builds the index of every
    stage, 1.7 s of each stage's start-up (tests/test_stages.py checks the two agree on every stage)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    base, _, suffix = stage.partition("@")
    spec = (yaml.safe_load((root / "dvc.yaml").read_text()).get("stages") or {}).get(base)
    if spec is None:
        return None
    for name, context in _instances(spec, params)[0]:
        if name == suffix:
            out = {}
            for key in (_resolve(k, {**params, **context}) for k in _instances(spec, params)[1].get("params", [])):
                *parents, last = key.split(".")
                node = out
                for part in parents:
                    node = node.setdefault(part, {})
                node[last] = _lookup(params, key)
            return out
    return None


def stage_params(stage: str, *others: str) -> dict:
    """Only the params `stage` declares in dvc.yaml, so DVC's invalidation stays honest; a script that several
    stages run (the student's and the teacher's) names each, and the first that exists is read."""
    for name in (stage, *others):
        found = _declared(name)
        if found is not None:
            return found
    raise SystemExit(f"dvc.yaml has no stage named {' or '.join((stage, *others))}")
