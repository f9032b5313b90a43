"""A committed benchmark report must have been measured on the params the checkout has now (re-run the
benchmark when its inputs change); it records its code digest too, which the README's rendered figures
flag when the code moved on. The README's figures are rendered from the reports."""

import json
from pathlib import Path

import pytest
import yaml

from bench import context, summary

ROOT = Path(__file__).resolve().parents[1]
REPORTS = sorted((ROOT / "reports" / "bench").glob("*.json"))
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.stem)
def test_report_matches_the_current_params(path):
    ctx = json.loads(path.read_text()).get("context")
    assert ctx, f"{path.name} has no context block: re-run its benchmark (README, Benchmarks)"
    assert context.params_digest(PARAMS, ctx["params_keys"]) == ctx["params_sha256"], (
        f"{path.name} was measured on other values of params {ctx['params_keys']}: re-run "
        f"`python -m {ctx['module']}` and commit {path.name}")
    assert len(ctx["code_sha256"]) == 64 and ctx["commit"]


def test_params_digest_sees_a_changed_value():
    changed = {**PARAMS, "fewshot": {**PARAMS["fewshot"], "seeds": [1]}}
    assert context.params_digest(changed, ["fewshot"]) != context.params_digest(PARAMS, ["fewshot"])
    assert context.params_digest(changed, ["views"]) == context.params_digest(PARAMS, ["views"])


def test_readme_figures_are_rendered_from_the_reports():
    readme = (ROOT / "README.md").read_text()
    assert summary.block() in readme, "README's benchmark block is stale: run `python -m bench.summary --write`"
