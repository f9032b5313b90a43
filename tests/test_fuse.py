"""fuse: weight choice on val only, fixed/reference modes, metrics layout, bad input; demo claims."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
import zarr

from conftest import run
from pipeline import adapt, config, evaluate, fusion
from pipeline.config import ParamsError
from pipeline.methods import REGISTRY
from pipeline.store import write_store
from test_adapt import settings, toy_features, toy_fewshot, toy_views

FUSION = {
    "mode": "search",
    "methods": ["zeroshot", "ncm", "isoncm", "tip", "ape", "semobridge"],
    "search": {"trials": 40, "grid": 3, "seed": 0},
    "ranges": {"tip": {"alpha": [0.0, 50.0]}, "ape": {"alpha": [0.0, 50.0]},
               "semobridge": {"lambda1": [0.0, 1.0], "lambda2": [0.0, 1.0], "lambda3": [0.0, 1.0]}},
    "fixed": {"tip": {"alpha": 1.0}, "ape": {"alpha": 2.0},
              "semobridge": {"lambda1": 0.5, "lambda2": 0.25, "lambda3": 0.125}},
}
FEW_SHOT = ("ncm", "isoncm", "tip", "ape", "semobridge")


def cfg(**changes) -> dict:
    section = copy.deepcopy(FUSION)
    section.update(changes)
    return config.fusion({"fusion": section}, REGISTRY)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    feats, fewshot = toy_features(), toy_fewshot()
    arrays, attrs = adapt.run(feats, fewshot, toy_views(feats, fewshot), settings())
    path = tmp_path_factory.mktemp("logits") / "logits.zarr"
    write_store(path, path.with_name("staging"), {"manifest_sha256": "toy"}, arrays, attrs)
    return path


def open_(path):
    return zarr.open_group(path, mode="r")


def _acc(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100 * float((logits.argmax(1) == labels).mean())


def test_fixed_weights_metrics_equal_a_hand_computation_from_the_raw_arrays(store):
    # fixed weights: every figure is recomputed here from the stored arrays with numpy
    group, c = open_(store), cfg(mode="fixed")
    metrics, picks, rows = evaluate.evaluate_store(group, "toy", c)
    y = group["label/test"][...]
    zs = group["zeroshot/all/logits/test"][...]
    assert metrics["zeroshot"] == {"test_acc": pytest.approx(_acc(zs, y), abs=1e-3)}
    fused = {
        "tip": lambda k: zs + 1.0 * group[f"tip/{k}/alpha/test"][...],
        "ape": lambda k: zs + 2.0 * group[f"ape/{k}/alpha/test"][...],
        "semobridge": lambda k: sum(w * group[f"semobridge/{k}/lambda{i}/test"][...]
                                    for i, w in ((1, 0.5), (2, 0.25), (3, 0.125))),
        "ncm": lambda k: group[f"ncm/{k}/logits/test"][...],
    }
    for method, logits in fused.items():
        for shots in (1, 4):
            accs = [_acc(logits(f"shot_{shots}-seed_{s}"), y) for s in (1, 2)]
            assert metrics[method][f"shots_{shots}"] == {"mean": pytest.approx(np.mean(accs), abs=1e-3),
                                                         "std": pytest.approx(np.std(accs), abs=1e-3)}
            for s, acc in zip((1, 2), accs):
                assert {"method": method, "shots": shots, "seed": s, "test_acc": pytest.approx(acc, abs=1e-3),
                        "val_acc": picks[method][f"shot_{shots}-seed_{s}"]["val_acc"]} in rows
    assert not any(k.startswith("seed_") for m in FEW_SHOT for cell in metrics[m].values() for k in cell)
    assert len(rows) == len(FEW_SHOT) * 4
    assert "adapt" in picks["ape"]["shot_4-seed_1"]


def test_choices_never_read_test(store, tmp_path):
    junk = tmp_path / "junk.zarr"
    shutil.copytree(store, junk)
    group = zarr.open_group(junk, mode="r+")
    rng = np.random.default_rng(0)
    for name in _arrays(group):
        if name.endswith("test"):
            arr = group[name]
            values = rng.normal(size=arr.shape) if arr.dtype.kind == "f" else rng.integers(0, 4, size=arr.shape)
            arr[...] = values.astype(arr.dtype)
    for mode in ("search", "fixed", "reference"):
        _, clean, _ = evaluate.evaluate_store(open_(store), "clean", cfg(mode=mode))
        _, dirty, _ = evaluate.evaluate_store(open_(junk), "junk", cfg(mode=mode))
        for method in clean:
            for key in clean[method]:
                assert clean[method][key]["weights"] == dirty[method][key]["weights"], (mode, method, key)
                assert clean[method][key]["val_acc"] == dirty[method][key]["val_acc"], (mode, method, key)


def _arrays(group, prefix=""):
    for name in group.array_keys():
        yield f"{prefix}{name}"
    for name, sub in group.groups():
        yield from _arrays(sub, f"{prefix}{name}/")


def test_search_picks_the_first_best_of_an_explicit_loop(store):
    group, c = open_(store), cfg()
    key = "shot_4-seed_2"
    rows = group[f"draw/{key}/val_index"][...]
    labels = torch.from_numpy(group["label/val"][...].astype(np.int64))[rows]
    z = [torch.from_numpy(group[f"semobridge/{key}/lambda{i}/val"][...][rows]) for i in (1, 2, 3)]
    trials = fusion.sample_weights(c.ranges["semobridge"], c.search.trials, c.search.seed, c.search.grid)
    accs = [float(((w[0] * z[0] + w[1] * z[1] + w[2] * z[2]).argmax(1) == labels).double().mean() * 100)
            for w in trials]
    best = int(np.argmax(accs))
    _, picks, _ = evaluate.evaluate_store(group, "toy", c)
    pick = picks["semobridge"][key]
    assert pick["val_acc"] == pytest.approx(accs[best], abs=1e-3)
    assert list(pick["weights"].values()) == pytest.approx(trials[best].tolist())


def test_fixed_and_reference_modes(store):
    group = open_(store)
    _, fixed, _ = evaluate.evaluate_store(group, "toy", cfg(mode="fixed"))
    assert fixed["ape"]["shot_1-seed_1"]["weights"] == {"alpha": 2.0}
    assert fixed["semobridge"]["shot_4-seed_1"]["weights"] == {"lambda1": 0.5, "lambda2": 0.25, "lambda3": 0.125}
    _, ref, _ = evaluate.evaluate_store(group, "toy", cfg(mode="reference"))
    choices = dict(group.attrs)["choices"]
    for key in ("shot_1-seed_1", "shot_4-seed_2"):
        assert ref["tip"][key]["weights"] == {"alpha": choices["tip"][key]["alpha"]}
        # the reference weights reproduce the reference search's val accuracy
        assert ref["tip"][key]["val_acc"] == pytest.approx(choices["tip"][key]["val_acc"], abs=1e-3)
        assert ref["semobridge"][key]["val_acc"] == pytest.approx(choices["semobridge"][key]["val_acc"], abs=1e-3)


def test_method_without_logits_is_refused(tmp_path):
    feats, fewshot = toy_features(), toy_fewshot()
    arrays, attrs = adapt.run(feats, fewshot, toy_views(feats, fewshot), settings(enabled=["zeroshot", "ncm"]))
    path = tmp_path / "logits.zarr"
    write_store(path, tmp_path / "staging", {}, arrays, attrs)
    with pytest.raises(evaluate.FusionError, match=r"'tip'.*methods\.enabled"):
        evaluate.evaluate_store(open_(path), "toy", cfg())


@pytest.mark.parametrize("change, key", [
    ({"mode": "optuna"}, "fusion.mode"),
    ({"methods": ["zeroshot", "clip-adapter"]}, "fusion.methods"),
    ({"fixed": {**FUSION["fixed"], "tip": {"alpha": 60.0}}}, "fusion.fixed.tip.alpha"),
    ({"fixed": {**FUSION["fixed"], "semobridge": {"lambda1": 1.5, "lambda2": 0, "lambda3": 0}}},
     "fusion.fixed.semobridge.lambda1"),
    ({"fixed": {**FUSION["fixed"], "ape": {"alpha": "big"}}}, "fusion.fixed.ape.alpha"),
    ({"ranges": {**FUSION["ranges"], "semobridge": {"lambda1": [0, 2], "lambda2": [0, 1], "lambda3": [0, 1]}}},
     "fusion.ranges.semobridge.lambda1"),
    ({"ranges": {**FUSION["ranges"], "tip": {"alpha": [5.0, 1.0]}}}, "fusion.ranges.tip.alpha"),
    ({"search": {"trials": 0, "grid": 1, "seed": 0}}, "fusion.search"),
])
def test_bad_fusion_params_name_the_key(change, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        cfg(**change)


# ----------------------------------------------------------------------------- on the demo repo


def _demo_16_shot(demo_repo) -> tuple[float, dict]:
    metrics = json.loads((demo_repo / "reports" / "metrics.json").read_text())["shapes"]["demo"]
    at16 = {m: metrics[m]["shots_16"]["mean"] for m in FEW_SHOT}
    print(f"\n16-shot test top-1 (mean of 3 seeds): zero-shot {metrics['zeroshot']['test_acc']:.2f}, "
          + ", ".join(f"{m} {a:.2f}" for m, a in at16.items()))
    return metrics["zeroshot"]["test_acc"], at16


@pytest.mark.slow
def test_demo_16_shots_few_shot_methods_beat_zero_shot(demo_repo, record_property):
    zs, at16 = _demo_16_shot(demo_repo)
    record_property("margins_over_zero_shot", {m: round(a - zs, 4) for m, a in at16.items()})
    assert all(acc > zs for acc in at16.values()), (zs, at16)


@pytest.mark.slow
def test_demo_16_shots_semobridge_at_least_ncm(demo_repo, record_property):
    _, at16 = _demo_16_shot(demo_repo)
    margin = at16["semobridge"] - at16["ncm"]
    record_property("semobridge_minus_ncm", round(margin, 4))
    print(f"SeMoBridge - NCM at 16 shots: {margin:+.2f} points")
    assert margin >= 0, (at16["semobridge"], at16["ncm"])


@pytest.mark.slow
def test_demo_fusion_param_reruns_fuse_only(demo_repo):
    params_file = demo_repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["fusion"]["mode"] = "fixed"
    params["fusion"]["fixed"]["tip"]["alpha"] = 2.5
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = run(["dvc", "repro"], demo_repo).stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert "fuse" in ran and ran <= {"fuse", "report"}, ran
        picks = json.loads((demo_repo / "reports" / "fusion.json").read_text())
        assert picks["mode"] == "fixed"
        assert picks["shapes"]["demo"]["tip"]["shot_2-seed_3"]["weights"] == {"alpha": 2.5}
    finally:
        params_file.write_text(original)
        run(["dvc", "repro"], demo_repo)
