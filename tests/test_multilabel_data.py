"""RE-tune's datasets in prepare (pipeline/multilabel_data.py): the demo world's manifest against its renders,
a CheXpert-layout CSV dataset (Path column, label columns, uncertain and blank cells by policy) built in a temp
folder, and the bad inputs named by file, line and column."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import multilabel_data as mld
from pipeline import multilabel_world as mw
from pipeline.config import ParamsError
from pipeline.datasets import DatasetError

LABELS = ["Atelectasis", "Cardiomegaly", "Edema"]
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding," + ",".join(LABELS)


def chexpert(root, rows_by_split, missing=()):
    """CheXpert-v1.0-small/{train,valid,test}.csv under `root`, one 8x8 PNG per listed path (except `missing`);
    a row is (patient, label cells as written)."""
    base = root / "CheXpert-v1.0-small"
    for split, rows in rows_by_split.items():
        lines = [HEADER]
        for i, cells in enumerate(rows):
            path = f"CheXpert-v1.0-small/{split}/patient{i:05d}/study1/view1_frontal.png"
            lines.append(f"{path},Female,60,Frontal,AP,," + ",".join(cells))
            if path not in missing:
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(root / path)
        (base / f"{split}.csv").parent.mkdir(parents=True, exist_ok=True)
        (base / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


ROWS = {"train": [["1", "0", "-1"], ["", "1.0", "0"], ["0", "-1", ""]],
        "valid": [["1", "0", "0"]],
        "test": [["0", "1", "1"], ["-1", "", "1"]]}


def params(root, **extra):
    entry = {"kind": "multilabel_csv", "root": str(root), "labels": LABELS, "policy": "zeros",
             "splits": {"train": "CheXpert-v1.0-small/train.csv", "val": "CheXpert-v1.0-small/valid.csv",
                        "test": "CheXpert-v1.0-small/test.csv"}, **extra}
    return {"data": {"cx": entry}}


@pytest.mark.parametrize("policy,expected", [
    ("zeros", [[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]]),
    ("ones", [[1, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1]]),
    ({"uncertain": "ignore", "blank": "ignore"},
     [[1, 0, None], [None, 1, 0], [0, None, None], [1, 0, 0], [0, 1, 1], [None, None, 1]]),
])
def test_a_chexpert_layout_becomes_a_manifest_with_the_label_matrix(tmp_path, policy, expected):
    root = chexpert(tmp_path / "raw", ROWS)
    cfg = mld.dataset(params(root, policy=policy), "cx")
    assert cfg.kind == "multilabel_csv" and cfg.labels == tuple(LABELS) and cfg.path_column == "Path"
    frame = mld.prepare(cfg, tmp_path / "data" / "cx", tmp_path)
    assert frame["split"].tolist() == ["train"] * 3 + ["val"] + ["test"] * 2
    assert frame["item"].tolist() == list(range(6)) and (frame["label"] == -1).all()
    assert frame["path"].iloc[3] == "CheXpert-v1.0-small/valid/patient00000/study1/view1_frontal.png"
    want = np.array([[np.nan if v is None else v for v in row] for row in expected], np.float32)
    np.testing.assert_array_equal(mld.label_matrix(frame, LABELS), want)
    written = pd.read_parquet(tmp_path / "data" / "cx" / "manifest.parquet")
    np.testing.assert_array_equal(mld.label_matrix(written, LABELS), want)
    info = json.loads((tmp_path / "data" / "cx" / "dataset.json").read_text())
    assert info["labels"] == LABELS and info["root"] == str(root) and info["counts"] == {"train": 3, "val": 1, "test": 2}
    assert info["manifest_sha256"] == mld.digest(written)
    assert info["positives"]["test"] == dict(zip(LABELS, np.nansum(want[4:], 0).astype(int).tolist()))


def test_the_digest_covers_the_label_cells():
    frame = mld.manifest(["a.png", "b.png"], ["train", "test"], np.eye(2, 3), ["x", "y", "z"])
    other = frame.copy()
    other.loc[1, "label:y"] = 0.0
    assert mld.digest(frame) != mld.digest(other)


@pytest.mark.parametrize("rows,needle", [
    ({**ROWS, "train": [["1", "0", "2"], ["x", "0", "0"]]},
     r"train.csv: 2 label cell\(s\) not one of 1, 0, -1 \(uncertain\) or blank .*line 2, column 'Edema': '2'; "
     r"line 3, column 'Atelectasis': 'x'"),
])
def test_a_bad_label_cell_is_named_by_file_line_and_column(tmp_path, rows, needle):
    root = chexpert(tmp_path, rows)
    with pytest.raises(DatasetError, match=needle):
        mld.prepare(mld.dataset(params(root), "cx"), tmp_path / "out", tmp_path)


def test_a_label_absent_from_the_csv_is_named(tmp_path):
    root = chexpert(tmp_path, ROWS)
    with pytest.raises(DatasetError, match=r"train.csv: no column 'Pneumonia'; the CSV's columns: \['Path', "):
        mld.prepare(mld.dataset(params(root, labels=["Atelectasis", "Pneumonia"]), "cx"), tmp_path / "out", tmp_path)


def test_a_missing_image_is_named(tmp_path):
    gone = "CheXpert-v1.0-small/test/patient00001/study1/view1_frontal.png"
    root = chexpert(tmp_path, ROWS, missing=(gone,))
    with pytest.raises(DatasetError, match=rf"test.csv: 1 of 2 image paths are not files under {tmp_path}: '{gone}'"):
        mld.prepare(mld.dataset(params(root), "cx"), tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()


def test_an_image_in_two_splits_is_refused(tmp_path):
    root = chexpert(tmp_path, ROWS)
    train = (root / "CheXpert-v1.0-small" / "train.csv").read_text()
    (root / "CheXpert-v1.0-small" / "valid.csv").write_text(train)
    with pytest.raises(DatasetError, match=r"3 image path\(s\) listed twice"):
        mld.prepare(mld.dataset(params(root), "cx"), tmp_path / "out", tmp_path)


@pytest.mark.parametrize("change,needle", [
    ({"policy": "maybe"}, r"'data.cx.policy' = 'maybe' should be one of \['zeros', 'ones', 'ignore'\]"),
    ({"labels": []}, r"'data.cx.labels' = \[\] should be distinct column names"),
    ({"labels": ["Edema", "Edema"]}, r"'data.cx.labels' = \['Edema', 'Edema'\] should be distinct"),
    ({"split": "x"}, r"unknown key 'data.cx.split'"),
    ({"splits": {"train": "a.csv", "val": "b.csv"}}, r"missing key 'data.cx.splits.test'"),
])
def test_bad_csv_params_name_the_key(tmp_path, change, needle):
    with pytest.raises(ParamsError, match=needle):
        mld.dataset(params(tmp_path, **change), "cx")


def test_the_demo_kind_renders_the_world_and_its_label_matrix(tmp_path):
    p = {"data": {"ml": {"kind": "multilabel", "seed": 3, "blur": 1.0, "p_present": 0.5,
                         "count": {"train": 6, "val": 2, "test": 4}}}}
    assert mld.is_multilabel(p, "ml") and not mld.is_multilabel({"data": {"s": {"kind": "shapes"}}}, "s")
    cfg = mld.dataset(p, "ml")
    frame = mld.prepare(cfg, tmp_path / "data" / "ml", tmp_path)
    assert frame["split"].value_counts().to_dict() == {"train": 6, "test": 4, "val": 2}
    row = frame.iloc[7]   # val image 1
    img, scene = mw.sample(3, "val", 1, 0.5, 1.0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "data" / "ml" / row["path"])), np.asarray(img))
    np.testing.assert_array_equal(mld.label_matrix(frame, mw.LABELS)[7], np.array(scene.present, np.float32))
    info = json.loads((tmp_path / "data" / "ml" / "dataset.json").read_text())
    assert info["labels"] == list(mw.LABELS) and info["root"] == "data/ml" and "policy" not in info
    with pytest.raises(ParamsError, match=r"'data.ml.p_present' = 2 should be <= 1"):
        mld.dataset({"data": {"ml": {**p["data"]["ml"], "p_present": 2}}}, "ml")
    with pytest.raises(DatasetError, match=r"no label column\(s\) \['label:x'\]"):
        mld.label_matrix(frame, ["x"])
