"""The multi-label demo world (pipeline/multilabel_world.py): deterministic, presence rate as asked, objects
drawn only where present, and captions that state exactly the present objects and some absences."""

import numpy as np

from pipeline import multilabel_world as mw


def test_sampling_is_deterministic_and_split_dependent():
    a, sa = mw.sample(0, "train", 3)
    b, sb = mw.sample(0, "train", 3)
    c, _ = mw.sample(0, "test", 3)
    assert sa == sb and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_presence_rate_follows_p_present():
    y = mw.label_matrix([mw.sample(0, "train", i, p_present=0.3)[1] for i in range(2000)])
    assert y.shape == (2000, len(mw.LABELS))
    assert np.allclose(y.mean(axis=0), 0.3, atol=0.04)


def test_an_image_with_nothing_present_is_the_background_alone():
    rng = np.random.default_rng(5)
    background = rng.normal(128, 30, size=(64, 64, 3)).clip(0, 255).astype(np.uint8)
    img, scene = mw.render(np.random.default_rng(5), p_present=0.0)
    assert scene.present == (False,) * len(mw.LABELS)
    assert np.array_equal(np.asarray(img), background)
    full, _ = mw.render(np.random.default_rng(5), p_present=1.0)
    assert (np.asarray(full) != background).any(axis=-1).mean() > 0.05   # five objects drawn over it


def test_captions_name_every_present_object_and_only_absent_ones_as_absent():
    rng = np.random.default_rng(0)
    for i in range(200):
        _, scene = mw.sample(1, "train", i)
        text = mw.caption(scene, rng, mention_absent=1.0)
        for label, present in zip(mw.LABELS, scene.present):
            assert (f"no {label}" in text) == (not present), text
            assert (f" {label}" in text.replace(f"no {label}", "")) == present, text
    assert mw.caption(mw.MultiScene((None,) * 5), rng, 0.0) == "a photo of an empty background."
    assert mw.caption(mw.MultiScene((0, None, None, 2, None)), rng, 0.0) == "a photo of a red circle and a blue star."
