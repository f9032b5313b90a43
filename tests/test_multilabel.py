"""Labels CSVs (pipeline.multilabel): the uncertain / blank policies, and each bad input's error naming the
file, the line and the column."""

import math

import numpy as np
import pytest

from pipeline.config import ParamsError
from pipeline.datasets import DatasetError
from pipeline.multilabel import CHEXPERT_COMPETITION, Policy, policy_of, read_labels_csv

# CheXpert's header (train.csv), competition labels among the others.
HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Atelectasis,Cardiomegaly,Consolidation,Edema,"
          "Pleural Effusion")
ROWS = [  # Atelectasis .. Pleural Effusion: 1, 0, -1, blank and the float spellings
    "p/a.jpg,Female,68,Frontal,AP,,1,0,-1,,1.0",
    "p/b.jpg,Male,40,Lateral,,1.0,0.0,-1.0,,1,0",
    "p/c.jpg,Male,55,Frontal,PA,,,,,0,-1",
]


def write(tmp_path, lines, name="train.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_policies_map_uncertain_and_blank(tmp_path):
    csv = write(tmp_path, [HEADER, *ROWS])
    n = math.nan
    expected = {  # rows of Y per policy; uncertain cells are (0,2) (1,1) (2,4), blanks (0,3) (1,2) (2,0..2)
        "zeros": [[1, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]],
        "ones": [[1, 0, 1, 0, 1], [0, 1, 0, 1, 0], [0, 0, 0, 0, 1]],
        "ignore": [[1, 0, n, 0, 1], [0, n, 0, 1, 0], [0, 0, 0, 0, n]],
    }
    for policy, rows in expected.items():
        paths, Y = read_labels_csv(csv, "Path", CHEXPERT_COMPETITION, policy)
        assert paths == ["p/a.jpg", "p/b.jpg", "p/c.jpg"] and Y.dtype == np.float32 and Y.shape == (3, 5)
        np.testing.assert_array_equal(Y, np.array(rows, dtype=np.float32), err_msg=policy)
    _, Y = read_labels_csv(csv, "Path", CHEXPERT_COMPETITION, {"uncertain": "ones", "blank": "ignore"})
    np.testing.assert_array_equal(Y, np.array([[1, 0, 1, n, 1], [0, 1, n, 1, 0], [n, n, n, 0, 1]], dtype=np.float32))
    _, Y = read_labels_csv(csv, "Path", CHEXPERT_COMPETITION, {"blank": "ignore"})   # uncertain: zeros
    assert Y[0, 2] == 0 and math.isnan(Y[0, 3])


def test_columns_follow_the_labels_order_and_other_columns_are_ignored(tmp_path):
    csv = write(tmp_path, [HEADER, *ROWS])
    _, Y = read_labels_csv(csv, "Path", ["Pleural Effusion", "Atelectasis"], "zeros")
    np.testing.assert_array_equal(Y, [[1, 1], [0, 0], [0, 0]])


def test_a_bad_cell_names_the_file_line_and_column(tmp_path):
    csv = write(tmp_path, [HEADER, ROWS[0], "p/b.jpg,Male,40,Lateral,,,0,2,,1,0", ROWS[2],
                           "p/d.jpg,Male,1,Frontal,AP,,yes,0,0,0,0.5"])
    with pytest.raises(DatasetError) as err:
        read_labels_csv(csv, "Path", CHEXPERT_COMPETITION, "zeros")
    msg = str(err.value)
    assert str(csv) in msg and "3 label cell(s)" in msg
    assert "line 3, column 'Cardiomegaly': '2'" in msg
    assert "line 5, column 'Atelectasis': 'yes'" in msg and "line 5, column 'Pleural Effusion': '0.5'" in msg


def test_a_label_absent_from_the_csv_lists_its_columns(tmp_path):
    csv = write(tmp_path, [HEADER, *ROWS])
    with pytest.raises(DatasetError, match=r"no column 'Pneumothorax'.*the CSV's columns: \['Path', 'Sex'") as err:
        read_labels_csv(csv, "Path", ["Edema", "Pneumothorax"], "zeros")
    assert str(csv) in str(err.value)
    with pytest.raises(DatasetError, match="no column 'path'"):
        read_labels_csv(csv, "path", ["Edema"], "zeros")


def test_missing_images_name_the_first_few_and_the_count(tmp_path):
    names = [f"img/{i}.jpg" for i in range(8)]
    csv = write(tmp_path, ["Path,Edema"] + [f"{p},1" for p in names])
    (tmp_path / "img").mkdir()
    for p in names[:2]:
        (tmp_path / p).write_bytes(b"x")
    with pytest.raises(DatasetError) as err:
        read_labels_csv(csv, "Path", ["Edema"], "zeros", root=tmp_path)
    msg = str(err.value)
    assert str(csv) in msg and f"6 of 8 image paths are not files under {tmp_path}" in msg
    assert "'img/2.jpg'" in msg and "'img/6.jpg'" in msg and "'img/7.jpg'" not in msg and msg.endswith(", ...")
    for p in names[2:]:
        (tmp_path / p).write_bytes(b"x")
    paths, _ = read_labels_csv(csv, "Path", ["Edema"], "zeros", root=tmp_path)
    assert paths == names


def test_ragged_rows_empty_paths_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match=r"line 3 has 2 fields, the header has 3"):
        read_labels_csv(write(tmp_path, ["Path,Edema,Atelectasis", "a.jpg,1,0", "b.jpg,1"]), "Path", ["Edema"])
    with pytest.raises(DatasetError, match=r"line 2, column 'Path': empty image path"):
        read_labels_csv(write(tmp_path, ["Path,Edema", ",1"]), "Path", ["Edema"])
    with pytest.raises(DatasetError, match="header only"):
        read_labels_csv(write(tmp_path, ["Path,Edema"]), "Path", ["Edema"])
    with pytest.raises(DatasetError, match="empty file"):
        read_labels_csv(write(tmp_path, []), "Path", ["Edema"])
    with pytest.raises(DatasetError, match="no such labels CSV"):
        read_labels_csv(tmp_path / "absent.csv", "Path", ["Edema"])
    with pytest.raises(DatasetError, match="'Edema' appears 2 times"):
        read_labels_csv(write(tmp_path, ["Path,Edema,Edema", "a.jpg,1,0"]), "Path", ["Edema"])


def test_bad_policies():
    assert policy_of("ignore") == Policy("ignore", "zeros")
    assert policy_of({"uncertain": "ones", "blank": "ignore"}) == Policy("ones", "ignore")
    for bad in ("U-Ones", {"uncertain": "one"}, {"unsure": "ones"}, {}, 1):
        with pytest.raises(ValueError, match="should be one of"):
            policy_of(bad)
    with pytest.raises(ParamsError, match=r"'retune.policy' = 'U-Ones' should be one of"):
        policy_of("U-Ones", where="retune.policy")
