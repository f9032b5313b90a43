"""The DVC DAG on the embedded demo: runs end to end, is idempotent, and invalidates honestly."""

import json

import yaml

from conftest import run


def _stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_repro_completes_and_reports(demo_repo):
    metrics = json.loads((demo_repo / "reports" / "metrics.json").read_text())
    assert "demo" in metrics["shapes"]
    assert (demo_repo / "features" / "demo" / "shapes" / "images.zarr" / "zarr.json").is_file()
    shown = run(["dvc", "metrics", "show", "--json"], demo_repo).stdout
    assert "zeroshot" in shown


def test_second_repro_does_nothing(demo_repo):
    out = run(["dvc", "repro"], demo_repo).stdout
    assert _stages_run(out) == set(), out


def test_downstream_param_leaves_model_and_extract_alone(demo_repo):
    params_file = demo_repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["text"]["templates"] = params["text"]["templates"] + ["a drawing of a {}."]
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        ran = _stages_run(run(["dvc", "repro"], demo_repo).stdout)
        assert "text@demo-shapes" in ran
        assert not {"model@demo", "extract@demo-shapes", "prepare@shapes"} & ran, ran
    finally:
        params_file.write_text(original)
        run(["dvc", "repro"], demo_repo)
