"""The CZSL loader on a tiny dataset written in ExplainableML/czsl's format, and each bad input it refuses."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import czsl_data, czsl_eval, datasets

TRAIN = ["red cat", "red dog", "blue cat"]
VAL = ["red cat", "green dog"]                 # green dog: unseen, val only
TEST = ["red dog", "blue dog"]                 # blue dog: unseen, test only
ROWS = [("red_cat/0.png", "red", "cat", "train"),
        ("red_dog/0.png", "red", "dog", "train"),
        ("blue_cat/0.png", "blue", "cat", "train"),
        ("red_cat/1.png", "red", "cat", "val"),
        ("green_dog/0.png", "green", "dog", "val"),
        ("red_dog/1.png", "red", "dog", "test"),
        ("blue_dog/0.png", "blue", "dog", "test"),
        # Left out, as the reference does (and their images need not exist):
        ("green_cat/0.png", "green", "cat", "test"),   # pair in no split file
        ("blue_cat/1.png", "blue", "cat", "NA"),       # set NA
        ("NA_dog/0.png", "NA", "dog", "train")]        # attr NA
KEPT = 7


def write_czsl(root, train=TRAIN, val=VAL, test=TEST, rows=ROWS):
    """Pair files, a torch-saved metadata list and PNGs for the rows kept, in the released layout."""
    split_dir = root / "compositional-split-natural"
    split_dir.mkdir(parents=True)
    for name, pairs in (("train", train), ("val", val), ("test", test)):
        (split_dir / f"{name}_pairs.txt").write_text("".join(f"{p}\n" for p in pairs))
    torch.save([dict(image=i, attr=a, obj=o, set=s) for i, a, o, s in rows],
               root / "metadata_compositional-split-natural.t7")
    for k, (image, *_) in enumerate(rows[:KEPT]):
        (root / "images" / image).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), 30 * k, np.uint8)).save(root / "images" / image)
    return root


def test_pairs_and_manifest(tmp_path):
    data = czsl_data.load(write_czsl(tmp_path))
    assert data.attrs == ("blue", "green", "red") and data.objs == ("cat", "dog")
    pairs = [("blue", "cat"), ("blue", "dog"), ("green", "dog"), ("red", "cat"), ("red", "dog")]
    assert data.pairs == tuple(pairs)
    assert data.split_pairs == {"train": (("red", "cat"), ("red", "dog"), ("blue", "cat")),
                                "val": (("red", "cat"), ("green", "dog")),
                                "test": (("red", "dog"), ("blue", "dog"))}
    assert data.seen == data.split_pairs["train"]
    assert data.dropped == 3

    m = data.manifest
    assert list(m.columns) == datasets.COLUMNS + ["attr", "obj"]
    assert m["item"].tolist() == list(range(KEPT))
    assert m["path"].tolist() == [f"images/{r[0]}" for r in ROWS[:KEPT]]
    assert m["split"].tolist() == [r[3] for r in ROWS[:KEPT]]
    assert m["label"].tolist() == [pairs.index((r[1], r[2])) for r in ROWS[:KEPT]]
    assert m["classname"].tolist() == [f"{r[1]} {r[2]}" for r in ROWS[:KEPT]]
    assert [(data.attrs[a], data.objs[o]) for a, o in zip(m["attr"], m["obj"])] == [r[1:3] for r in ROWS[:KEPT]]
    datasets.check_images(m, tmp_path)   # the CoOp manifests' image check reads these paths too


def test_rows_follow_split_order_not_metadata_order(tmp_path):
    rows = [ROWS[5], ROWS[3], ROWS[0], ROWS[6], ROWS[4], ROWS[1], ROWS[2]]
    data = czsl_data.load(write_czsl(tmp_path, rows=rows + ROWS[KEPT:]))
    assert data.manifest["path"].tolist() == [f"images/{r[0]}" for r in (rows[2], rows[5], rows[6],
                                                                          rows[1], rows[4], rows[0], rows[3])]


def test_closed_and_open_world_protocols(tmp_path):
    data = czsl_data.load(write_czsl(tmp_path))
    closed = data.protocol("test")
    # Scored: the test pairs (red dog, blue dog) and the seen ones (red cat, red dog, blue cat); not green dog.
    np.testing.assert_array_equal(closed.scored, [True, True, False, True, True])
    np.testing.assert_array_equal(closed.seen, [True, False, False, True, True])
    np.testing.assert_array_equal(closed.rows, [5, 6])
    np.testing.assert_array_equal(closed.labels, [4, 1])                    # red dog, blue dog
    np.testing.assert_array_equal(closed.pair_ids, [[0, 0], [0, 1], [1, 1], [2, 0], [2, 1]])

    opened = data.protocol("test", open_world=True)
    assert opened.scored is None
    assert opened.pairs == tuple((a, o) for a in data.attrs for o in data.objs)   # the reference's product order
    assert [opened.pairs[k] for k in opened.labels] == [("red", "dog"), ("blue", "dog")]
    np.testing.assert_array_equal(opened.seen, [p in data.seen for p in opened.pairs])
    np.testing.assert_array_equal(opened.pair_ids, [[a, o] for a in range(3) for o in range(2)])

    with pytest.raises(ValueError, match="'dev' should be one of"):
        data.protocol("dev")


def test_protocol_feeds_the_evaluator(tmp_path):
    data = czsl_data.load(write_czsl(tmp_path))
    p = data.protocol("val")
    # Val images: red cat (seen), green dog (unseen). Scores favour each true pair: both right at bias 0.
    scores = np.where(np.arange(len(p.pairs)) == p.labels[:, None], 2.0, 0.0)
    r = czsl_eval.evaluate(scores, p.labels, p.pair_ids, p.seen, p.scored)
    assert (r.unbiased.seen, r.unbiased.unseen, r.unbiased.attr, r.unbiased.obj) == (1, 1, 1, 1)


def _pairs_file(root, split):
    return root / "compositional-split-natural" / f"{split}_pairs.txt"


@pytest.mark.parametrize("relative, message", [
    ("compositional-split-natural/val_pairs.txt", r"pairs file .*val_pairs.txt not found; expected one 'attr obj'"),
    ("metadata_compositional-split-natural.t7", r"metadata file .*split-natural.t7 not found; expected a torch-saved"),
])
def test_missing_files_are_named(tmp_path, relative, message):
    root = write_czsl(tmp_path)
    (root / relative).unlink()
    with pytest.raises(datasets.DatasetError, match=message):
        czsl_data.load(root)


@pytest.mark.parametrize("test_pairs, message", [
    (["red dog", "purple dog"], r"test_pairs.txt: pair 'purple dog' names attribute 'purple', which no row"),
    (["red dog", "blue cow"], r"test_pairs.txt: pair 'blue cow' names object 'cow', which no row"),
    (["red dog", "light blue dog"], r"test_pairs.txt: line 2 = 'light blue dog' should be two words"),
    ([], r"test_pairs.txt: no pairs"),
])
def test_bad_pairs_files_are_named(tmp_path, test_pairs, message):
    with pytest.raises(datasets.DatasetError, match=message):
        czsl_data.load(write_czsl(tmp_path, test=test_pairs))


def test_non_utf8_pairs_file_is_named(tmp_path):
    root = write_czsl(tmp_path)
    _pairs_file(root, "train").write_bytes(b"red \xff\n")
    with pytest.raises(datasets.DatasetError, match=r"train_pairs.txt: not UTF-8"):
        czsl_data.load(root)


@pytest.mark.parametrize("rows, message", [
    (ROWS[:3] + [("x.png", "red", "cat", "dev")],
     r"row 3 has set 'dev'; expected one of \['train', 'val', 'test', 'NA'\]"),
    (ROWS[:3] + [dict(image="x.png", attr="red", obj="cat")], r"row 3 = .* should map each of \['image', 'attr'"),
])
def test_bad_metadata_rows_are_named(tmp_path, rows, message):
    root = write_czsl(tmp_path)
    torch.save([dict(zip(czsl_data.METADATA_KEYS, r)) if isinstance(r, tuple) else r for r in rows],
               root / "metadata_compositional-split-natural.t7")
    with pytest.raises(datasets.DatasetError, match=message):
        czsl_data.load(root)


def test_unreadable_metadata_is_named(tmp_path):
    root = write_czsl(tmp_path)
    (root / "metadata_compositional-split-natural.t7").write_bytes(b"truncated")
    with pytest.raises(datasets.DatasetError, match=r"split-natural.t7: cannot be read by torch.load"):
        czsl_data.load(root)
    torch.save({"image": "x.png"}, root / "metadata_compositional-split-natural.t7")
    with pytest.raises(datasets.DatasetError, match=r"\.t7: holds a dict; expected a torch-saved list"):
        czsl_data.load(root)


def test_missing_images_of_kept_rows_are_named(tmp_path):
    root = write_czsl(tmp_path)
    (root / "images" / "green_dog" / "0.png").unlink()
    (root / "images" / "blue_dog" / "0.png").unlink()
    with pytest.raises(datasets.DatasetError) as err:
        czsl_data.load(root)
    text = str(err.value)
    assert "2 of 7 kept rows name missing images" in text
    assert "row 4: " in text and "green_dog/0.png" in text and "row 6: " in text
