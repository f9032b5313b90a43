"""Named text sets (pipeline/textsets.py): dictionary files, cleaning, the class-name merge, encoding against
open_clip's encode_text, a killed encode that resumes, and the demo dictionary."""

import numpy as np
import pytest
import torch

from pipeline import models, shapes, textsets
from pipeline.store import StoreError, open_store


@pytest.fixture(scope="module")
def m(random_demo_dir):
    return models.load(random_demo_dir)


def test_csv_dictionary_reads_the_classname_column(tmp_path):
    path = tmp_path / "dict.csv"
    path.write_text("id,ClassName\n0,sea_lion\n1,NA\n2,tree\n")
    assert textsets.read_names(path) == ["sea_lion", "NA", "tree"]   # "NA" stays a name, not a missing value


def test_csv_without_classname_column_is_refused(tmp_path):
    path = tmp_path / "dict.csv"
    path.write_text("id,name\n0,tree\n")
    with pytest.raises(textsets.TextSetError, match=r"dict\.csv: no 'ClassName' column"):
        textsets.read_names(path)


def test_text_file_has_one_name_a_line_and_a_missing_file_is_named(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("tree\nred car\n")
    assert textsets.read_names(path) == ["tree", "red car"]
    with pytest.raises(textsets.TextSetError, match="absent.txt does not exist"):
        textsets.read_names(tmp_path / "absent.txt")


def test_clean_drops_empty_and_case_insensitive_duplicates_and_counts_them(caplog):
    got = textsets.clean(["Sea_Lion", " ", "sea lion", "tree", "TREE", "car"], "where")
    assert got == ["Sea Lion", "tree", "car"]
    assert "dropped 1 empty and 2 duplicate names (3 kept)" in caplog.text
    with pytest.raises(textsets.TextSetError, match="where: no names left"):
        textsets.clean(["", "  "], "where")


def test_class_names_are_appended_unless_present_case_insensitively():
    names, rows = textsets.with_classes(["tree", "Red Circle", "car"], ["red circle", "blue star"])
    assert names == ["tree", "Red Circle", "car", "blue star"]
    assert rows.tolist() == [1, 3]


def test_demo_dictionary_distractors_never_share_a_word_with_a_caption():
    caption_words = {w.strip(".") for t in shapes.CAPTION_TEMPLATES for w in t.split()} | {
        w for c in shapes.classnames() for w in c.split()} | {"and", "on"}
    pool = textsets.distractor_pool()
    assert len(pool) == len(set(pool)) == 240
    assert not {w for d in pool for w in d.split()} & caption_words
    assert textsets.demo_distractors(5) == textsets.demo_distractors(5) != textsets.demo_distractors(5, seed=1)
    assert set(shapes.classnames()) <= set(textsets.demo_vocabulary())


def test_encode_matches_encode_text_and_resumes_after_a_kill(m, tmp_path, monkeypatch):
    names = [f"name {i}" for i in range(7)]
    prov = textsets.provenance(m.card, "fp32", "toy", names, "a photo of a {} .")
    dest, staging = tmp_path / "toy.zarr", tmp_path / "staging" / "toy.zarr"
    real, calls = textsets.encode_prompts, []

    def dies_on_second_shard(model, prompts, device, precision):
        calls.append(prompts)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, prompts, device, precision)

    monkeypatch.setattr(textsets, "encode_prompts", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        textsets.encode(m, names, "a photo of a {} .", dest, staging, prov, shard_rows=3, progress=False)
    assert not dest.exists()
    monkeypatch.setattr(textsets, "encode_prompts", lambda *a: calls.append(a[1]) or real(*a))
    textsets.encode(m, names, "a photo of a {} .", dest, staging, prov, shard_rows=3, progress=False)
    assert calls[2][0] == "a photo of a name 3 ."          # the resumed run started at the second shard
    got_names, emb = textsets.load(dest, textsets.expected(m.card, "toy"))
    assert got_names == names
    with torch.no_grad():
        ref = m.trunk.encode_text(m.tokenizer([f"a photo of a {n} ." for n in names])) @ m.W_txt
    np.testing.assert_allclose(emb, ref.numpy(), atol=1e-5)
    assert open_store(dest).attrs["provenance"]["names_sha256"] == textsets.names_sha256(names)


def test_a_store_of_another_set_is_refused(m, tmp_path):
    names = ["a", "b"]
    dest = tmp_path / "s.zarr"
    textsets.encode(m, names, "{}", dest, tmp_path / "st.zarr", textsets.provenance(m.card, "fp32", "s", names, "{}"),
                    progress=False)
    with pytest.raises(Exception, match="text_set"):
        textsets.load(dest, textsets.expected(m.card, "other"))


def test_teacher_and_student_sets_must_hold_the_same_names():
    textsets.check_same_names("d", {"demo": ["a", "b"], "teacher": ["a", "b"]})
    with pytest.raises(StoreError, match=r"text set 'd': demo has 2 names and teacher 3, first difference at name 2"):
        textsets.check_same_names("d", {"demo": ["a", "b"], "teacher": ["a", "b", "c"]})
    with pytest.raises(StoreError, match="first difference at name 1"):
        textsets.check_same_names("d", {"demo": ["a", "b"], "teacher": ["a", "x"]})
