"""CoOp / KDPL prompt learning (pipeline/prompt_learner.py, pipeline/prompt_train.py): the learner against
open_clip's own encode_text, the losses against float64 hand computations, top-K by brute force, the
Dassl schedule, labels never read by KDPL, a killed run that resumes bit-identically, bad input, and a
ModifiedResNet model (only the text tower is in the loop)."""

import dataclasses
import itertools
import json
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet

from pipeline import config, models
from pipeline import prompt_train as pt
from pipeline.prompt_learner import (PromptError, PromptLearner, class_features, cosine_logits, kdpl_loss,
                                     top_k_candidates)

NAMES = ["red circle", "blue star", "green square", "yellow triangle"]
OTHER_WORDS = "the big red small"          # four one-token words: a non-initial context made of real words
FAST = pt.PromptTrainConfig(epochs=3, batch=8, lr=5e-4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny matrices: a second thread only adds contention on a busy 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def m(random_demo_dir):
    return models.load(random_demo_dir)


@pytest.fixture(scope="module")
def learner(m):
    return PromptLearner(m)


def zero_shot(m, template: str, names) -> torch.Tensor:
    with torch.no_grad():
        return m.trunk.encode_text(m.tokenizer([template.format(n) for n in names])) @ m.W_txt


def word_context(m, words: str) -> torch.Tensor:
    ids = m.tokenizer.encode(words)
    assert len(ids) == 4
    return m.trunk.token_embedding.weight[ids].detach().clone()


def separable(learner, m, n=32, views=2, seed=0):
    """Image features of class c = the text feature of c under another context, plus noise: a context
    exists that classifies them all, and the initial one does not (labels c = i mod 4)."""
    target = class_features(learner, word_context(m, OTHER_WORDS), NAMES)
    labels = np.arange(n) % len(NAMES)
    noise = np.random.default_rng(seed).standard_normal((n, views, target.shape[1]))
    feats = target[labels][:, None] + 0.02 * np.linalg.norm(target, axis=1).mean() * noise
    return feats.astype(np.float32), labels


def teacher_inputs(n=20, views=2, dim=24, n_cls=len(NAMES), seed=1):
    g = np.random.default_rng(seed)
    text = g.standard_normal((n_cls, dim)).astype(np.float32)
    labels = g.integers(n_cls, size=n)
    feats = text[labels][:, None] + 0.8 * g.standard_normal((n, views, dim))
    return feats.astype(np.float32), text, labels


# ----------------------------------------------------------------------------- the learner


def test_zero_epochs_give_the_zero_shot_features_and_logits(m, learner):
    images = np.random.default_rng(0).standard_normal((6, 1, learner.dim)).astype(np.float32)
    learned = pt.train(learner, dataclasses.replace(FAST, epochs=0), NAMES, images, labels=np.arange(6) % 4,
                       progress=False)
    assert np.array_equal(learned.ctx, learner.init_ctx.numpy()) and learned.history == []
    got = class_features(learner, learned.ctx, NAMES)
    want = zero_shot(m, "a photo of a {}.", NAMES)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    x = torch.as_tensor(images[:, 0])
    torch.testing.assert_close(cosine_logits(x, torch.as_tensor(got), m.logit_scale),
                               cosine_logits(x, want, m.logit_scale), atol=1e-4, rtol=0)


def test_a_context_of_other_real_words_equals_encode_text_of_those_words(m, learner):
    ctx = torch.nn.Parameter(word_context(m, OTHER_WORDS))
    names = NAMES + ["cat_dog"]                                   # "_" reads as " ", as in CoOp
    got = learner(ctx, learner.prompts(names))
    want = zero_shot(m, OTHER_WORDS + " {}.", [n.replace("_", " ") for n in names])
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=0)
    got.sum().backward()
    assert ctx.grad is not None and bool((ctx.grad.norm(dim=1) > 0).all())


def test_init_words_must_be_n_ctx_tokens(m):
    with pytest.raises(PromptError, match=r"n_ctx = 3, but the init words 'a photo of a' are 4 tokens"):
        PromptLearner(m, n_ctx=3)
    assert PromptLearner(m, n_ctx=2, ctx_init="a_photo").n_ctx == 2


def test_a_class_prompt_longer_than_the_context_is_refused(learner):
    long = "very " * 9 + "long name"          # 11 tokens + 4 context + '.' + SOS + EOS = 18 > 16
    with pytest.raises(PromptError, match=r"class 'very .* long name' is 11 tokens: .* needs 18 tokens .* context "
                                          r"length 16"):
        learner.prompts(["cat", long])


# ----------------------------------------------------------------------------- losses


def _log_softmax64(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def test_each_kl_term_matches_a_float64_hand_computation():
    g = np.random.default_rng(3)
    s, t = g.standard_normal((5, 7)) * 4, g.standard_normal((5, 7)) * 4
    loss, forward, reverse = kdpl_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    log_s, log_t = _log_softmax64(s), _log_softmax64(t)
    want_forward = (np.exp(log_t) * (log_t - log_s)).sum(1).mean()        # KL(p_T || p_S), batchmean
    want_reverse = (np.exp(log_s) * (log_s - log_t)).sum(1).mean()        # KL(p_S || p_T)
    assert float(forward) == pytest.approx(want_forward, abs=1e-5)
    assert float(reverse) == pytest.approx(want_reverse, abs=1e-5)
    assert float(loss) == pytest.approx(0.5 * want_forward + 0.5 * want_reverse, abs=1e-5)


def test_the_teacher_receives_no_gradient(learner):
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    kdpl_loss(student, teacher)[0].backward()
    assert teacher.grad is None and student.grad is not None
    # nor do cached teacher features handed to training as tensors that track gradients
    t_views, t_text, _ = teacher_inputs()
    t_views, t_text = torch.tensor(t_views, requires_grad=True), torch.tensor(t_text, requires_grad=True)
    s_views = np.random.default_rng(0).standard_normal((20, 2, learner.dim)).astype(np.float32)
    pt.train(learner, dataclasses.replace(FAST, method="kdpl", epochs=2), NAMES, s_views, teacher_views=t_views,
             teacher_text=t_text, progress=False)
    assert t_views.grad is None and t_text.grad is None


def test_kdpl_never_reads_labels(learner):
    t_views, t_text, labels = teacher_inputs()
    s_views = np.random.default_rng(0).standard_normal((20, 2, learner.dim)).astype(np.float32)
    cfg = dataclasses.replace(FAST, method="kdpl")
    run = lambda lab: pt.train(learner, cfg, NAMES, s_views, labels=lab, teacher_views=t_views, teacher_text=t_text,
                               progress=False)
    base = run(labels)
    assert not np.array_equal(base.ctx, learner.init_ctx.numpy())
    for other in (np.random.default_rng(5).permutation(labels), None):
        again = run(other)
        assert np.array_equal(again.ctx, base.ctx) and again.history == base.history


def test_top_k_keeps_the_names_of_highest_batch_mean_teacher_probability():
    g = np.random.default_rng(7)
    for _ in range(5):
        logits = g.standard_normal((3, 7)) * 3
        mean = np.exp(_log_softmax64(logits)).mean(0)
        for k in (1, 3, 6, 7):
            best = max(itertools.combinations(range(7), k), key=lambda s: mean[list(s)].sum())    # brute force
            got = top_k_candidates(torch.tensor(logits, dtype=torch.float32), k).tolist()
            assert got == list(best) == sorted(np.argpartition(mean, -k)[-k:].tolist())


def test_kdpl_ca_runs_the_student_on_the_top_k_candidates_only(learner, monkeypatch):
    t_views, t_text, _ = teacher_inputs(n_cls=6)
    names = NAMES + ["purple cross", "white ring"]
    s_views = np.random.default_rng(0).standard_normal((20, 2, learner.dim)).astype(np.float32)
    sizes, real = [], PromptLearner.__call__
    monkeypatch.setattr(PromptLearner, "__call__", lambda self, ctx, ids: sizes.append(len(ids)) or real(self, ctx, ids))
    learned = pt.train(learner, dataclasses.replace(FAST, method="kdpl", epochs=2, top_k=2), names, s_views,
                       teacher_views=t_views, teacher_text=t_text, progress=False)
    assert sizes == [2] * 4 and np.isfinite(learned.history).all()      # 2 epochs x 20 // 8 batches


def test_lr_follows_dassl_constant_warmup_then_a_recounted_cosine():
    cfg = pt.PromptTrainConfig()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(cfg.epochs))   # Dassl's successor, from 0
    assert pt.lr_at(0, cfg) == cfg.warmup_lr == 1e-5
    for epoch in range(1, cfg.epochs):
        assert pt.lr_at(epoch, cfg) == pytest.approx(cosine.get_last_lr()[0], rel=1e-9)
        opt.step()
        cosine.step()
    assert pt.lr_at(1, cfg) == cfg.lr and pt.lr_at(cfg.epochs - 1, cfg) == pytest.approx(
        cfg.lr * (1 + math.cos(math.pi * 48 / 50)) / 2)


def test_coop_loss_decreases_on_a_separable_problem(m, learner):
    feats, labels = separable(learner, m)
    learned = pt.train(learner, dataclasses.replace(FAST, epochs=8), NAMES, feats, labels=labels, progress=False)
    assert learned.history[-1] < learned.history[0] - 0.2, learned.history
    flat = torch.as_tensor(feats.reshape(-1, feats.shape[-1]))
    accuracy = lambda ctx: float((cosine_logits(flat, torch.as_tensor(class_features(learner, ctx, NAMES)), 1)
                                  .argmax(1).numpy() == np.repeat(labels, feats.shape[1])).mean())
    assert accuracy(learner.init_ctx) < 0.5 and accuracy(learned.ctx) > 0.9


# ----------------------------------------------------------------------------- resuming


class Killed(Exception):
    """Stands for the process dying after an epoch's checkpoint."""


def test_a_killed_run_resumes_to_the_uninterrupted_result(m, learner, tmp_path):
    feats, labels = separable(learner, m, n=20)          # 2 batches of 8 per epoch, 4 rows dropped
    cfg = dataclasses.replace(FAST, epochs=4)
    full = pt.train(learner, cfg, NAMES, feats, labels=labels, progress=False)
    path = tmp_path / "ctx.pt"

    def dies_after_epoch_1(epoch, loss):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        pt.train(learner, cfg, NAMES, feats, labels=labels, checkpoint=path, on_epoch=dies_after_epoch_1,
                 progress=False)
    with pytest.raises(PromptError, match=r"unfinished run \(2 of 4 epochs\)"):
        pt.load_context(path)
    ran = []
    resumed = pt.train(learner, cfg, NAMES, feats, labels=labels, checkpoint=path,
                       on_epoch=lambda e, loss: ran.append(e), progress=False)
    assert ran == [2, 3], "finished epochs were recomputed"
    assert np.array_equal(resumed.ctx, full.ctx) and resumed.history == full.history
    saved = pt.load_context(path)
    assert np.array_equal(saved.ctx, full.ctx) and saved.settings["config"]["epochs"] == 4
    assert not path.with_name("ctx.pt.tmp").exists()
    ran.clear()                                           # a finished run is not trained again
    assert np.array_equal(pt.train(learner, cfg, NAMES, feats, labels=labels, checkpoint=path,
                                   on_epoch=lambda e, loss: ran.append(e), progress=False).ctx, full.ctx) and ran == []
    # a checkpoint of other settings is not resumed but overwritten
    other = dataclasses.replace(cfg, seed=2)
    again = pt.train(learner, other, NAMES, feats, labels=labels, checkpoint=path, progress=False)
    assert np.array_equal(again.ctx, pt.train(learner, other, NAMES, feats, labels=labels, progress=False).ctx)
    assert pt.load_context(path).settings["config"]["seed"] == 2


def test_an_unreadable_checkpoint_is_refused_by_the_reader_and_retrained_over(m, learner, tmp_path):
    feats, labels = separable(learner, m, n=16)
    cfg = dataclasses.replace(FAST, epochs=1)
    path = tmp_path / "ctx.pt"
    path.write_bytes(b"cut short")
    with pytest.raises(PromptError, match="is not a prompt-learning checkpoint"):
        pt.load_context(path)
    got = pt.train(learner, cfg, NAMES, feats, labels=labels, checkpoint=path, progress=False)
    assert np.array_equal(got.ctx, pt.train(learner, cfg, NAMES, feats, labels=labels, progress=False).ctx)
    assert np.array_equal(pt.load_context(path).ctx, got.ctx)


# ----------------------------------------------------------------------------- bad input


def test_teacher_and_student_class_lists_must_have_the_same_length(learner):
    t_views, t_text, _ = teacher_inputs(n_cls=5)
    s_views = np.zeros((20, 2, learner.dim), np.float32)
    with pytest.raises(PromptError, match="the teacher has 5 class text features, the student 4 class names"):
        pt.train(learner, dataclasses.replace(FAST, method="kdpl"), NAMES, s_views, teacher_views=t_views,
                 teacher_text=t_text, progress=False)


def test_class_agnostic_refuses_an_empty_name_list_and_k_above_it(learner):
    t_views, t_text, _ = teacher_inputs()
    s_views = np.zeros((20, 2, learner.dim), np.float32)
    kdpl = dataclasses.replace(FAST, method="kdpl", top_k=5)
    with pytest.raises(PromptError, match="name list is empty"):
        pt.train(learner, kdpl, [], s_views, teacher_views=t_views, teacher_text=t_text[:0], progress=False)
    with pytest.raises(PromptError, match=r"top_k = 5 should be an int in \[1, 4\], the number of candidate names"):
        pt.train(learner, kdpl, NAMES, s_views, teacher_views=t_views, teacher_text=t_text, progress=False)
    with pytest.raises(PromptError, match="candidate name list is empty"):
        top_k_candidates(torch.zeros(3, 0), 1)
    with pytest.raises(PromptError, match=r"top_k = 8 should be an int in \[1, 7\]"):
        top_k_candidates(torch.zeros(3, 7), 8)
    with pytest.raises(PromptError, match="no class names"):
        learner.prompts([])


@pytest.mark.parametrize("change, match", [
    ({"method": "cocoop"}, r"method = 'cocoop' should be one of \['coop', 'kdpl'\]"),
    ({"top_k": 10}, r"top_k = 10 is KDPL-CA's; method 'coop' uses every class"),
    ({"batch": 0}, r"batch = 0 should be an int >= 1"),
    ({"epochs": True}, r"epochs = True should be an int"),
    ({"lr": 0}, r"lr = 0 should be > 0"),
])
def test_bad_settings_are_named(change, match):
    with pytest.raises(PromptError, match=match):
        pt.PromptTrainConfig(**change)


def test_bad_features_are_refused(learner):
    feats = np.zeros((4, 2, learner.dim), np.float32)
    with pytest.raises(PromptError, match=r"expected \(N, V, 64\)"):
        pt.train(learner, FAST, NAMES, feats[:, :, :10], labels=np.zeros(4, int), progress=False)
    with pytest.raises(PromptError, match="CoOp trains on labels"):
        pt.train(learner, FAST, NAMES, feats, progress=False)
    with pytest.raises(PromptError, match=r"class indices in \[0, 4\)"):
        pt.train(learner, FAST, NAMES, feats, labels=np.array([0, 1, 2, 4]), progress=False)
    with pytest.raises(PromptError, match="KDPL distils from a teacher"):
        pt.train(learner, dataclasses.replace(FAST, method="kdpl"), NAMES, feats, progress=False)


# ----------------------------------------------------------------------------- a ResNet image tower


TINY_RN = {"embed_dim": 64, "quick_gelu": False,
           "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def test_prompt_learning_runs_with_a_modified_resnet_image_tower(tmp_path):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-rn-test.json").write_text(json.dumps(TINY_RN))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    models.save(open_clip.create_model("tiny-rn-test", pretrained=None), config.Model("tiny-rn-test", "random"),
                tmp_path / "model")
    rn = models.load(tmp_path / "model")
    assert isinstance(rn.trunk.visual, ModifiedResNet)
    with torch.no_grad():
        images = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        feats = (rn.trunk.encode_image(images) @ rn.W_img + rn.b_img).reshape(8, 2, -1)
    learner = PromptLearner(rn)
    learned = pt.train(learner, dataclasses.replace(FAST, epochs=2), NAMES, feats, labels=np.arange(8) % 4,
                       progress=False)
    assert np.isfinite(learned.history).all() and not np.array_equal(learned.ctx, learner.init_ctx.numpy())
    np.testing.assert_allclose(class_features(learner, learner.init_ctx, NAMES),
                               zero_shot(rn, "a photo of a {}.", NAMES).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["coop", "kdpl"])
def test_a_full_batch_first_loss_is_the_objective_at_the_students_logit_scale(m, learner, method):
    # one batch of all N images, each at its seeded view: the first loss is at the initial context
    s_views = np.random.default_rng(0).standard_normal((20, 3, learner.dim)).astype(np.float32)
    t_views, t_text, labels = teacher_inputs(views=3)
    cfg = dataclasses.replace(FAST, method=method, epochs=1, batch=20)
    got = pt.train(learner, cfg, NAMES, s_views, labels=labels, teacher_views=t_views, teacher_text=t_text,
                   progress=False).history[0]
    rng = np.random.default_rng([cfg.seed, 0])
    order = rng.permutation(20)
    view = rng.integers(3, size=20)[order]
    student = cosine_logits(torch.as_tensor(s_views[order, view]),
                            torch.as_tensor(class_features(learner, learner.init_ctx, NAMES)), m.logit_scale)
    if method == "coop":
        want = F.cross_entropy(student, torch.as_tensor(labels[order]))
    else:
        teacher = cosine_logits(torch.as_tensor(t_views[order, view]), torch.as_tensor(t_text), m.logit_scale)
        want = kdpl_loss(student, teacher)[0]
    assert got == pytest.approx(float(want), abs=1e-5)
