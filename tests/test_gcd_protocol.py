"""GCD class splits and the labelled draw against independent re-implementations of the reference's
rules; the SSB reader and its safe unpickler against fixture and malicious pickles."""

import _codecs
import builtins
import os
import pickle

import numpy as np
import pytest

from pipeline import gcd_protocol, safe_pickle

NAMES = [f"class{i}" for i in range(10)]


def names(n):
    return [f"c{i}" for i in range(n)]


# ---- old_classes ----------------------------------------------------------------------------------

def test_old_classes_by_name_count_and_fraction():
    np.testing.assert_array_equal(gcd_protocol.old_classes(["class7", "class2", "class4"], NAMES), [2, 4, 7])
    np.testing.assert_array_equal(gcd_protocol.old_classes(3, NAMES), [0, 1, 2])
    np.testing.assert_array_equal(gcd_protocol.old_classes(np.int64(9), NAMES), np.arange(9))
    np.testing.assert_array_equal(gcd_protocol.old_classes(0.5, NAMES), np.arange(5))
    np.testing.assert_array_equal(gcd_protocol.old_classes(0.34, NAMES), np.arange(3))   # round(3.4)
    np.testing.assert_array_equal(gcd_protocol.old_classes(0.25, NAMES), np.arange(2))   # round(2.5): half to even
    assert gcd_protocol.old_classes(2, NAMES).dtype == np.int64


@pytest.mark.parametrize("protocol, n, n_old", [("cifar10", 10, 5), ("cifar100", 100, 80), ("imagenet100", 100, 50)])
def test_named_protocols(protocol, n, n_old):
    np.testing.assert_array_equal(gcd_protocol.old_classes(protocol, names(n)), np.arange(n_old))
    with pytest.raises(ValueError, match=f"protocol '{protocol}' has {n} classes, the dataset has {n + 1}"):
        gcd_protocol.old_classes(protocol, names(n + 1))


def test_imagenet100_needs_the_subset_not_imagenet_1k():
    with pytest.raises(ValueError, match=r"has 100 classes, the dataset has 1000 \(ImageNet-100 is the 100-class"):
        gcd_protocol.old_classes("imagenet100", names(1000))


def test_imagenet100_classes_is_the_reference_draw_and_leaves_global_state_alone():
    state = np.random.get_state()
    try:
        np.random.seed(0)                                   # the reference, on the global generator
        expected = np.sort(np.random.choice(range(1000), size=(100,), replace=False))
        np.random.seed(123)
        before = np.random.get_state()[1].copy()
        got = gcd_protocol.imagenet100_classes()
        np.testing.assert_array_equal(np.random.get_state()[1], before)
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got)) == 100 and got.min() >= 0 and got.max() < 1000


@pytest.mark.parametrize("spec, message", [
    (["class1", "dog", "cat"], r"old class names \['dog', 'cat'\] are not among the dataset's 10 classes "
                               r"\(e.g. \['class0', 'class1', 'class2', 'class3', 'class4'\]\)"),
    (["class1", "class1"], r"old class names repeat: \['class1'\]"),
    ([], "makes 0 of the 10 classes old"),
    (NAMES, "makes 10 of the 10 classes old"),
    (0, "spec = 0 old classes should be from 1 to 9"),
    (10, "spec = 10 old classes should be from 1 to 9"),
    (-2, "spec = -2 old classes should be from 1 to 9"),
    (True, "not a bool"),
    (0.0, r"should be a fraction in \(0, 1\)"),
    (1.0, r"should be a fraction in \(0, 1\)"),
    (0.04, "makes 0 of the 10 classes old"),             # round(0.4) = 0
    (0.96, "makes 10 of the 10 classes old"),            # round(9.6) = 10
    ("cifar1000", "unknown GCD protocol 'cifar1000'"),
    ({"osr": "x.pkl"}, r"a dict spec should be \{'ssb'"),
    ([1, 2], "should be a list of class names, an int"),
])
def test_bad_old_class_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        gcd_protocol.old_classes(spec, NAMES)


# ---- SSB splits -----------------------------------------------------------------------------------

def ssb_split(as_numpy=True):
    """A 12-class split in the SSB format (plus the extra pairs key the CUB / Aircraft files carry)."""
    wrap = np.array if as_numpy else list
    return {"known_classes": wrap([7, 0, 3, 11, 5, 1]),
            "unknown_classes": {"Easy": wrap([2, 9]), "Medium": wrap([4]), "Hard": wrap([10, 6, 8])},
            "closed_set_open_set_pairs": {"Easy": [(0, 2)], "Medium": [], "Hard": [(7, 10)]}}


@pytest.mark.parametrize("protocol", [2, None])
@pytest.mark.parametrize("as_numpy", [True, False])
def test_ssb_pickle_is_read_back(tmp_path, protocol, as_numpy):
    path = tmp_path / "toy_osr_splits.pkl"
    path.write_bytes(pickle.dumps(ssb_split(as_numpy), protocol=protocol))
    loaded = safe_pickle.load(path)
    for key in ("Easy", "Medium", "Hard"):
        np.testing.assert_array_equal(loaded["unknown_classes"][key], ssb_split()["unknown_classes"][key])
    np.testing.assert_array_equal(gcd_protocol.old_classes({"ssb": path}, names(12)), [0, 1, 3, 5, 7, 11])


def test_ssb_class_count_and_format_are_checked(tmp_path):
    path = tmp_path / "split.pkl"
    path.write_bytes(pickle.dumps(ssb_split()))
    with pytest.raises(ValueError, match="should be the dataset's 13 class indices, each once; got 6 known "
                                         r"\+ 6 unknown \(12 distinct\)"):
        gcd_protocol.old_classes({"ssb": path}, names(13))
    split = ssb_split()
    split["unknown_classes"]["Easy"] = np.array([2, 7])       # 7 is also known, 9 missing
    path.write_bytes(pickle.dumps(split))
    with pytest.raises(ValueError, match=r"each once; got 6 known \+ 6 unknown \(11 distinct\)"):
        gcd_protocol.old_classes({"ssb": path}, names(12))
    split = ssb_split()
    del split["unknown_classes"]["Medium"]
    path.write_bytes(pickle.dumps(split))
    with pytest.raises(ValueError, match="should hold a dict with 'known_classes' and 'unknown_classes'"):
        gcd_protocol.old_classes({"ssb": path}, names(12))
    split = ssb_split()
    split["known_classes"] = np.array([7.0, 0, 3, 11, 5, 1])
    path.write_bytes(pickle.dumps(split))
    with pytest.raises(ValueError, match="known_classes should hold integer class indices, got float64"):
        gcd_protocol.old_classes({"ssb": path}, names(12))


# ---- labelled_rows --------------------------------------------------------------------------------

def reference_subsample(rows, labels, old, prop):
    """The reference's steps on a dataset held in row order: keep the old-class rows (`subsample_classes`),
    then `subsample_instances`: global seed 0, int(prop * len) positions without replacement."""
    ordered = sorted(zip(rows.tolist(), labels.tolist()))
    old_dataset = [r for r, c in ordered if c in set(old.tolist())]
    state = np.random.get_state()
    try:
        np.random.seed(0)
        picks = np.random.choice(range(len(old_dataset)), replace=False, size=(int(prop * len(old_dataset)),))
    finally:
        np.random.set_state(state)
    return sorted(old_dataset[i] for i in picks)


def toy_train(seed=0, n=600, n_classes=12):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(n_classes).repeat(3), rng.integers(0, n_classes, n - 3 * n_classes)])
    rows = rng.permutation(np.arange(5, 5 + 2 * n, 2))        # sparse row ids, not in order
    return labels, rows


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.7, 0.29, 1.0])
def test_labelled_rows_is_the_reference_draw(fraction):
    labels, rows = toy_train()
    old = np.arange(6)
    got = gcd_protocol.labelled_rows(labels, rows, old, fraction)
    assert got.tolist() == reference_subsample(rows, labels, old, fraction)
    n_old = int(np.isin(labels, old).sum())
    assert len(got) == int(fraction * n_old)                  # floor of the float product: 0.29 * 100 -> 28


def test_labelled_rows_ignore_the_training_seed_and_never_label_new_rows():
    labels, rows = toy_train()
    old = np.array([1, 4, 5, 9])
    draws = []
    for training_seed in (0, 1, 2):
        np.random.seed(training_seed)
        draws.append(gcd_protocol.labelled_rows(labels, rows, old))
    assert all(np.array_equal(d, draws[0]) for d in draws)
    label_of = dict(zip(rows.tolist(), labels.tolist()))
    assert {label_of[r] for r in draws[0].tolist()} == set(old.tolist())
    assert not np.array_equal(gcd_protocol.labelled_rows(labels, rows, old, seed=1), draws[0])


def test_fraction_one_labels_every_old_row():
    labels, rows = toy_train()
    old = np.arange(8)
    np.testing.assert_array_equal(gcd_protocol.labelled_rows(labels, rows, old, 1.0), np.sort(rows[labels < 8]))


def test_the_draw_does_not_depend_on_the_order_rows_are_given():
    labels, rows = toy_train()
    order = np.random.default_rng(3).permutation(len(rows))
    np.testing.assert_array_equal(gcd_protocol.labelled_rows(labels, rows, np.arange(6)),
                                  gcd_protocol.labelled_rows(labels[order], rows[order], np.arange(6)))


def test_an_unlabelled_old_class_is_named():
    labels, rows = np.array([0] * 20 + [1, 2, 2]), np.arange(23)    # class 1: one row of the 21 old ones
    assert reference_subsample(rows, labels, np.array([0, 1]), 0.1) == [8, 13]   # int(2.1) = 2, both class 0
    with pytest.raises(ValueError, match=r"old class 1 gets no labelled row \(1 train rows; fraction 0.1 of the "
                                         r"21 old-class rows labels 2\); 1 old classes are unlabelled: \[1\]"):
        gcd_protocol.labelled_rows(labels, rows, [0, 1], 0.1)
    with pytest.raises(ValueError, match=r"old class 3 gets no labelled row \(0 train rows"):
        gcd_protocol.labelled_rows(labels, rows, [0, 3], 0.5)


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, True, "0.5"])
def test_fraction_outside_zero_one(fraction):
    labels, rows = toy_train()
    with pytest.raises(ValueError, match=r"should be in \(0, 1\]"):
        gcd_protocol.labelled_rows(labels, rows, np.arange(6), fraction)


def test_bad_rows_and_old():
    with pytest.raises(ValueError, match="rows should be distinct row indices; 1 repeat"):
        gcd_protocol.labelled_rows(np.array([0, 1, 0]), np.array([3, 3, 4]), [0])
    with pytest.raises(ValueError, match="labels and rows should be integer arrays of one shape"):
        gcd_protocol.labelled_rows(np.array([0, 1]), np.array([3, 4, 5]), [0])
    with pytest.raises(ValueError, match="old should be a non-empty 1-D array of class indices"):
        gcd_protocol.labelled_rows(np.array([0, 1]), np.array([3, 4]), [])


# ---- safe_pickle ----------------------------------------------------------------------------------

PLAIN = {"ints": [1, -2, 2 ** 70], "floats": (1.5, float("inf")), "text": "héllo", "raw": b"\x00\xff",
         "buffer": bytearray(b"ab"), "set": {1, 2}, "frozen": frozenset({"a"}), "complex": 1 - 2j, "none": None,
         "flags": [True, False], "slice": slice(1, 9, 2), "range": range(3, 7),
         "f32": np.ones((2, 3), np.float32), "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
         "struct": np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), "strings": np.array(["ab", "c"]),
         "days": np.array(["2020-01-01"], dtype="datetime64[D]"), "scalar": np.int64(7), "half": np.float16(0.5),
         "yes": np.bool_(True), "dtype": np.dtype(">u2"), "objects": np.array([1, "a", None], dtype=object)}


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.flags.f_contiguous == b.flags.f_contiguous \
            and np.array_equal(a, b) if a.dtype != object else a.tolist() == b.tolist()
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips(tmp_path, protocol):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(PLAIN, protocol=protocol))
    assert _equal(PLAIN, safe_pickle.load(path))


def test_numpy_1x_module_paths_load(tmp_path):
    # numpy 1.x wrote `numpy.core.multiarray`; protocol 0 spells globals as text, so rewrite them.
    data = pickle.dumps({"a": np.arange(4), "s": np.float64(2.5)}, protocol=0)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "old_numpy.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = safe_pickle.load(path)
    np.testing.assert_array_equal(loaded["a"], np.arange(4))
    assert loaded["s"] == np.float64(2.5) and type(loaded["s"]) is np.float64


class _Call:
    """Pickles as a call of `fn(*args)`, as a malicious file would."""
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("protocol", [0, 2, None])
@pytest.mark.parametrize("make, refused", [
    (lambda marker: _Call(os.system, f"echo pwned > {marker}"), f"{os.name}.system"),
    (lambda marker: _Call(builtins.eval, f"open({str(marker)!r}, 'w').close()"), "builtins.eval"),
    (lambda marker: _Call(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
    (lambda marker: _Call(getattr, "text", "upper"), "builtins.getattr"),
])
def test_malicious_pickles_are_refused_before_anything_runs(tmp_path, protocol, make, refused):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"known_classes": [0], "payload": make(marker)}, protocol=protocol))
    with pytest.raises(safe_pickle.UnsafePickleError, match=f"refusing to load {refused} from {path}: only plain "
                                                            "containers, numbers, strings and numpy arrays"):
        safe_pickle.load(path)
    with pytest.raises(safe_pickle.UnsafePickleError):
        gcd_protocol.old_classes({"ssb": path}, names(2))
    assert not marker.exists()


def test_codecs_encode_is_admitted_only_for_latin1(tmp_path):
    path = tmp_path / "codec.pkl"
    path.write_bytes(pickle.dumps(_Call(_codecs.encode, "uryyb", "rot13"), protocol=2))
    with pytest.raises(safe_pickle.UnsafePickleError, match="encoding 'rot13': only latin1"):
        safe_pickle.load(path)
