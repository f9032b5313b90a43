"""Every registered method honours the contract (pipeline/methods/contract.py), checked on a toy store:
declared components with the right shapes, finite logits, choices made on val only, bad input named."""

import copy

import numpy as np
import pytest

from pipeline import adapt, config
from pipeline.methods import REGISTRY
from test_adapt import C, METHODS, PER_CLASS, decided, toy_features, toy_fewshot, toy_views

pytestmark = pytest.mark.timeout(120)
NAMES = sorted(REGISTRY)


class ToyPrompts:
    """Stands in for prompt@'s store: per (method, draw) class text features near the zero-shot prompts."""

    def __init__(self, feats):
        self.text_emb = feats.text_emb.mean(axis=1)

    def text(self, method: str, key: str) -> np.ndarray:
        noise = np.random.default_rng(sum(map(ord, method + key))).normal(size=self.text_emb.shape)
        return (self.text_emb + 0.1 * noise).astype(np.float32)


def run_one(name: str, feats=None, views_of=None):
    feats = feats or toy_features()
    fewshot = toy_fewshot()
    settings = config.methods({"methods": {**METHODS, "enabled": [name]}}, "toy-arch", "toy", REGISTRY)
    views = toy_views(views_of or feats, fewshot)
    return fewshot, adapt.run(feats, fewshot, views, settings, prompts=ToyPrompts(feats))


@pytest.fixture(scope="module")
def runs():
    return {name: run_one(name) for name in NAMES}


def test_registry_names_are_the_modules_names():
    assert list(REGISTRY) == ["zeroshot", "ncm", "isoncm", "tip", "ape", "semobridge", "semobridge_t", "coop", "kdpl",
                              "kdpl_ca"]
    for name, method in REGISTRY.items():
        assert method.name == name and method.label
        assert set(method.knobs).isdisjoint(method.weights)
        assert set(method.measured) <= set(method.knobs)


@pytest.mark.parametrize("name", NAMES)
def test_declared_components_have_every_draw_and_split(name, runs):
    fewshot, (arrays, attrs) = runs[name]
    method = REGISTRY[name]
    keys = list(fewshot["draws"]) if method.per_draw else ["all"]
    n = {"val": PER_CLASS["val"] * C, "test": PER_CLASS["test"] * C}
    expected = {f"{name}/{k}/{c}/{s}" for k in keys for c in method.component_names for s in ("val", "test")}
    # a trained method's checkpoint (pipeline.train.checkpoint_array) sits beside its components, not among them
    mine = {a for a in arrays if a.startswith(f"{name}/") and "/checkpoint/" not in a}
    assert mine == expected
    for a in mine:
        assert arrays[a].shape == (n[a.rsplit("/", 1)[1]], C) and np.isfinite(arrays[a]).all(), a
    assert attrs["methods"] == [name]


@pytest.mark.parametrize("name", NAMES)
def test_choices_and_val_logits_ignore_the_test_rows(name, runs):
    fewshot, (arrays, attrs) = runs[name]
    feats = toy_features()
    other = copy.deepcopy(feats)
    test = other.split == 2
    rng = np.random.default_rng(7)
    other.emb[test] = rng.normal(size=other.emb[test].shape).astype(np.float32)
    other.pre[test] = rng.normal(size=other.pre[test].shape).astype(np.float32)
    _, (arrays2, attrs2) = run_one(name, other, views_of=feats)
    assert decided(attrs2["choices"]) == decided(attrs["choices"])
    for a, value in arrays.items():
        if a.endswith("/val"):
            np.testing.assert_array_equal(arrays2[a], value, err_msg=a)
    changed = [a for a in arrays if a.startswith(f"{name}/") and a.endswith("/test")
               and not np.array_equal(arrays2[a], arrays[a])]
    assert changed, "test logits should follow the test rows"


@pytest.mark.parametrize("name", NAMES)
def test_chosen_knobs_are_recorded_with_their_val_accuracy(name, runs):
    fewshot, (_, attrs) = runs[name]
    method = REGISTRY[name]
    if not method.knobs:
        assert name not in attrs["choices"]
        return
    for key in fewshot["draws"]:
        choice = attrs["choices"][name][key]
        assert set(method.knobs) | set(method.weights) | {"val_acc"} <= set(choice)
        assert 0 <= choice["val_acc"] <= 100


@pytest.mark.parametrize("name", NAMES)
def test_nan_in_an_input_is_named(name):
    feats = toy_features()
    feats.emb[5, 2] = np.nan
    with pytest.raises(adapt.InputError, match=r"'emb' has 1 rows with NaN or inf \(first row 5\)"):
        run_one(name, feats)


@pytest.mark.parametrize("name", [n for n in NAMES if "views" in REGISTRY[n].needs(
    config.methods({"methods": {**METHODS, "enabled": [n]}}, "toy-arch", "toy", REGISTRY).settings[n])])
def test_missing_views_are_named(name):
    feats, fewshot = toy_features(), toy_fewshot()
    settings = config.methods({"methods": {**METHODS, "enabled": [name]}}, "toy-arch", "toy", REGISTRY)
    with pytest.raises(adapt.InputError, match=rf"\['{name}'\] need augmented views"):
        adapt.run(feats, fewshot, None, settings)


@pytest.mark.parametrize("name", [n for n in NAMES if "prompts" in REGISTRY[n].needs(
    config.methods({"methods": {**METHODS, "enabled": [n]}}, "toy-arch", "toy", REGISTRY).settings[n])])
def test_missing_prompts_are_named(name):
    feats, fewshot = toy_features(), toy_fewshot()
    settings = config.methods({"methods": {**METHODS, "enabled": [name]}}, "toy-arch", "toy", REGISTRY)
    with pytest.raises(adapt.InputError, match=rf"\['{name}'\] need learned prompts \(prompt@'s store\)"):
        adapt.run(feats, fewshot, toy_views(feats, fewshot), settings)
