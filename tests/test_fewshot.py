"""Few-shot draws against an independent transcription of the datasets README rule."""

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from pipeline.fewshot import draw_fewshot
from pipeline.layout import draw_key

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SPLITS = {
    "eurosat": "split_zhou_EuroSAT.json",
    "caltech101": "split_zhou_Caltech101.json",
    "dtd": "split_zhou_DescribableTextures.json",
}


def load_split(name: str) -> dict:
    path = DATASETS / name / SPLITS[name]
    if not path.exists():
        pytest.skip(f"shared split file {path} not present")
    return json.loads(path.read_text())


def manifest_from_split(split: dict) -> pd.DataFrame:
    """Train rows first, then val, then test, each in split-file order; item = row number."""
    rows = [
        (path, label, classname, name)
        for name in ("train", "val", "test")
        for path, label, classname in split[name]
    ]
    frame = pd.DataFrame(rows, columns=["path", "label", "classname", "split"])
    frame.insert(0, "item", range(len(frame)))
    return frame


def readme_rule(entries: list, k: int) -> list[int]:
    """README: group by label in first-appearance order, random.sample(items, K) per label.

    Uses the global `random` stream, seeded by the caller; entries are (item, label) pairs."""
    order, groups = [], {}
    for item, label in entries:
        if label not in groups:
            order.append(label)
            groups[label] = []
        groups[label].append(item)
    out = []
    for label in order:
        out += random.sample(groups[label], k)
    return out


def indexed(split: dict) -> tuple[list, list]:
    n_train = len(split["train"])
    train = [(i, e[1]) for i, e in enumerate(split["train"])]
    val = [(n_train + i, e[1]) for i, e in enumerate(split["val"])]
    return train, val


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_train_draws_match_readme_rule_and_full_val(name):
    split = load_split(name)
    train, val = indexed(split)
    shots, seeds = [1, 4, 16], [1, 2, 3]
    draws = draw_fewshot(manifest_from_split(split), shots, seeds)
    assert set(draws) == {draw_key(k, s) for k in shots for s in seeds}
    n_classes = len({label for _, label in train})
    for k in shots:
        for s in seeds:
            random.seed(s)
            expected = readme_rule(train, k)
            d = draws[draw_key(k, s)]
            assert (d["shots"], d["seed"]) == (k, s)
            assert d["train"] == expected
            assert len(d["train"]) == n_classes * k
            assert d["val"] == [item for item, _ in val]
    json.dumps(draws)  # must be serialisable as is


@pytest.mark.parametrize("name", ["dtd", "caltech101"])
def test_coop_val_continues_the_train_stream(name):
    split = load_split(name)
    train, val = indexed(split)
    draws = draw_fewshot(manifest_from_split(split), [2, 8], [1, 3], val_protocol="coop")
    for k in (2, 8):
        for s in (1, 3):
            random.seed(s)
            expected_train = readme_rule(train, k)
            expected_val = readme_rule(val, min(k, 4))
            d = draws[draw_key(k, s)]
            assert d["train"] == expected_train
            assert d["val"] == expected_val


def test_global_random_state_untouched():
    frame = toy_manifest({0: 5, 1: 5})
    random.seed(123)
    before = random.random()
    random.seed(123)
    draw_fewshot(frame, [2], [7])
    assert random.random() == before


def toy_manifest(counts: dict[int, int]) -> pd.DataFrame:
    rows = [(label, f"class{label}", "train") for label, n in counts.items() for _ in range(n)]
    rows += [(label, f"class{label}", "val") for label in counts for _ in range(2)]
    frame = pd.DataFrame(rows, columns=["label", "classname", "split"])
    frame.insert(0, "item", range(100, 100 + len(frame)))
    frame.insert(1, "path", [f"img{i}.jpg" for i in range(len(frame))])
    return frame


def test_too_few_images_raises_with_class_count_and_k():
    frame = toy_manifest({0: 5, 1: 2})
    with pytest.raises(ValueError, match=r"'class1'.*has 2 train images.*shots=3"):
        draw_fewshot(frame, [3], [1])


def test_repeat_samples_with_replacement_like_tip_adapter():
    frame = toy_manifest({0: 5, 1: 2})
    d = draw_fewshot(frame, [3], [4], repeat=True)[draw_key(3, 4)]
    random.seed(4)
    items0 = [100 + i for i in range(5)]
    items1 = [105, 106]
    expected = random.sample(items0, 3) + random.choices(items1, k=3)
    assert d["train"] == expected
    assert len(d["train"]) == 6


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"shots": [0], "seeds": [1]}, "shots"),
        ({"shots": 4, "seeds": [1]}, "shots"),
        ({"shots": [True], "seeds": [1]}, "shots"),
        ({"shots": [1, 1], "seeds": [1]}, "shots"),
        ({"shots": [1], "seeds": [1.0]}, "seeds"),
        ({"shots": [1], "seeds": []}, "seeds"),
        ({"shots": [1], "seeds": [1], "val_protocol": "half"}, "val_protocol"),
    ],
)
def test_bad_arguments_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        draw_fewshot(toy_manifest({0: 3}), **kwargs)


def test_manifest_without_required_column():
    with pytest.raises(ValueError, match="split"):
        draw_fewshot(toy_manifest({0: 3}).drop(columns="split"), [1], [1])
