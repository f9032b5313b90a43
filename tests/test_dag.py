"""The DVC DAG on the embedded demo: runs end to end, is idempotent, and invalidates honestly."""

import json

import numpy as np
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


def test_extraction_under_torchrun_leaves_the_store_and_its_stage_unchanged(demo_repo):
    """The stage's cmd stays; CLIPCACHE_TORCHRUN puts it under torchrun (2 gloo ranks), same bytes."""
    lock = lambda: yaml.safe_load((demo_repo / "dvc.lock").read_text())["stages"]["extract@demo-shapes"]["outs"]
    before = lock()
    out = run(["dvc", "repro", "-f", "-s", "extract@demo-shapes"], demo_repo,
              env={"CLIPCACHE_TORCHRUN": "--standalone --nproc_per_node 2"})
    assert "rank 1 of 2" in out.stderr + out.stdout
    assert lock() == before
    assert json.loads(run(["dvc", "status", "--json"], demo_repo).stdout) == {}


def _stale_after(repo, edit) -> set[str]:
    """The stages `dvc status` calls changed after `edit(params)`; params.yaml is restored afterwards."""
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    edit(params)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        return set(json.loads(run(["dvc", "status", "--json"], repo).stdout))
    finally:
        params_file.write_text(original)


def test_gcd_params_invalidate_only_the_gcd_stage(demo_repo):
    stale = _stale_after(demo_repo, lambda p: p["gcd"]["overrides"]["scenes"]["train"].update(epochs=3))
    assert stale == {"gcd@scenes"}, stale


def test_editing_the_dictionary_re_encodes_only_that_set(demo_repo):
    # `dvc status` lists the stages whose own deps changed; gcd@scenes follows once the set's store does
    stale = _stale_after(demo_repo, lambda p: p["text_sets"]["demo_concepts"].update(distractors=100))
    assert stale == {"textset@demo-demo_concepts", "teacher_textset@demo_concepts"}, stale


def test_the_teacher_is_measurably_stronger_than_its_student(demo_repo):
    from pipeline import features, layout

    dataset = json.loads((layout.data_dir("scenes", demo_repo) / "dataset.json").read_text())
    acc = {}
    for m in ("demo", "demo_teacher"):
        card = json.loads((layout.model_dir(m, demo_repo) / "card.json").read_text())
        f = features.load(layout.feature_dir(m, "scenes", demo_repo), card, dataset)
        test = f.split == layout.SPLIT_CODES["test"]
        img = f.emb[test] / np.linalg.norm(f.emb[test], axis=1, keepdims=True)
        txt = f.text_emb[:, 0] / np.linalg.norm(f.text_emb[:, 0], axis=1, keepdims=True)
        acc[m] = float(((img @ txt.T).argmax(1) == f.label[test]).mean())
    assert acc["demo_teacher"] > acc["demo"] + 0.02, acc
    gcd = json.loads((demo_repo / "reports" / "gcd" / "scenes.json").read_text())
    assert set(gcd) == {"kmeans_image", "kmeans_concepts", "kmeans_filtered", "simgcd", "spectralgcd", "filter"}
    # Spectral Filtering on the teacher's logits drops the distractors no caption ever used, keeps the world's words
    assert gcd["filter"]["distractors_kept"] <= 0.05 and gcd["filter"]["class_words_kept"] >= 0.5, gcd["filter"]


def test_prompt_learning_on_the_demo(demo_repo):
    """In its own domain CoOp beats zero-shot (all classes and base classes, 16 shots); out of it (the shapes'
    contexts on scenes) KDPL's label-free contexts transfer better than CoOp's supervised ones, whose gain does
    not leave the shapes world. The KL to the teacher falls during training."""
    reports = demo_repo / "reports"
    fused = json.loads((reports / "metrics.json").read_text())["shapes"]["demo"]
    assert fused["coop"]["shots_16"]["mean"] > fused["zeroshot"]["test_acc"] + 3, fused
    b2n = json.loads((reports / "prompt" / "demo-shapes.json").read_text())
    assert b2n["coop"]["shots_16"]["base"]["mean"] > b2n["zeroshot"]["base"] + 2, b2n
    transfer = json.loads((reports / "prompt" / "demo-scenes-transfer.json").read_text())["shapes"]
    assert transfer["kdpl"]["shots_16"]["mean"] > transfer["coop"]["shots_16"]["mean"] + 2, transfer
    history = json.loads((reports / "prompt" / "demo-shapes.details.json").read_text())["history"]
    for method in ("kdpl", "kdpl_ca"):
        loss = history[f"all/{method}/shot_16-seed_1"]["loss"]
        assert loss[-1] < loss[0], (method, loss)


def test_retune_params_invalidate_only_the_retune_stage(demo_repo):
    stale = _stale_after(demo_repo, lambda p: p["retune"]["overrides"]["multilabel"]["train"].update(epochs=3))
    assert stale == {"retune@multilabel"}, stale


def test_retune_on_the_multilabel_demo(demo_repo):
    """Joint training beats zero-shot on test macro AUROC under the headline rule (the positive cosine), and its
    loss falls; zero-shot under the difference rule is well above chance, so the negative prompts mean something
    to the fine-tuned demo CLIP (README: RE-tune)."""
    reports = demo_repo / "reports" / "retune"
    text = (reports / "multilabel.json").read_text()
    assert "NaN" not in text   # an undefined AUROC is null, never a NaN
    metrics = json.loads(text)
    rule = yaml.safe_load((demo_repo / "params.yaml").read_text())["retune"]["score"]
    zero, joint = metrics["zeroshot"]["auroc_macro"], metrics["joint"]["auroc_macro"]
    assert joint[rule] > zero[rule] + 0.05, metrics
    assert zero["difference"] > 0.6 and zero["difference"] > zero["positive"], zero
    assert {"data_incremental_5", "class_incremental", "label_incremental"} <= set(metrics)
    runs = json.loads((reports / "multilabel.details.json").read_text())["runs"]
    (losses,) = runs["joint"]["losses"]
    assert losses[-1] < losses[0], losses
    assert (reports / "multilabel" / "class_incremental.svg").is_file()
