"""The multi-label demo world (pipeline/multilabel_world.py): deterministic, presence rate as asked, objects
drawn only where present, and captions that state exactly the present objects and some absences."""

import numpy as np
import open_clip

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


def test_captions_state_only_the_truth_and_fit_the_demo_context():
    from pipeline import demo

    demo.register_configs()
    tokenizer = open_clip.get_tokenizer("demo-clip")
    rng = np.random.default_rng(0)
    absences = 0
    for i in range(300):
        _, scene = mw.sample(1, "train", i)
        text = mw.caption(scene, rng, mention_absent=1.0)
        assert len(tokenizer.encode(text)) <= mw.BUDGET, text   # + start and end = the 16-token context
        body = text[len(next(p for p in sorted(mw.PREFIXES, key=len, reverse=True) if text.startswith(p))):-1]
        for clause in body.split(", "):
            words = clause.split()
            if words[0] == "no":
                assert not scene.present[mw.LABELS.index(words[1])], text
                absences += 1
            elif clause != "an empty background":
                assert scene.present[mw.LABELS.index(words[-1])], text
                assert len(words) == 2 or list(mw.COLOURS)[scene.colours[mw.LABELS.index(words[-1])]] == words[1]
    assert absences > 300   # absences survive the budget (about 3 per image are absent)


def test_caption_parts_and_dropping_by_budget():
    rng = np.random.default_rng(0)
    assert {mw.caption(mw.MultiScene((None,) * 5), rng, 0.0) for _ in range(40)} == {
        p + "an empty background." for p in mw.PREFIXES}
    every = mw.MultiScene((0, 1, 2, 3, 4))
    tokens = lambda t: len(t.replace(",", " ,").replace(".", " .").split())
    texts = [mw.caption(every, rng, 0.0, colour=1.0, budget=8) for _ in range(40)]
    assert all(tokens(t) <= 8 for t in texts)
    # no prefix: two 3-token clauses, the comma and the period fill 8; after "a photo of" only one fits
    assert {t.count(",") for t in texts if not t.startswith(("a photo", "a picture", "an image"))} == {1}
    assert {t.count(",") for t in texts if t.startswith(("a photo", "a picture", "an image"))} == {0}
    assert all("no " not in t for t in texts)
