"""SpectralGCD's loss terms (pipeline/gcd_losses.py) against float64 hand computations in plain loops on
tiny batches (B = 4 images x 2 views, C = 3 classes, K = 5 concepts), and the combiner's bookkeeping:
which rows each term reads, the total, the teacher's missing gradient."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.gcd_losses import (LossConfig, cluster_distill, info_nce, kd_forward, kd_reverse, memax,
                                 spectral_gcd_loss, supcon, teacher_temperature)
from pipeline.gcd_model import GCDOutput, SpectralGCDNet

B, C, K, D = 4, 3, 5, 6
LABELLED = torch.tensor([True, False, True, True])
LABELS = torch.tensor([2, 1, 0, 2])


def rand(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def log_softmax(z):
    return z - z.max() - math.log(np.exp(z - z.max()).sum())


def close(a, b):
    return np.isclose(float(a), float(b), rtol=1e-10, atol=1e-12)


# ---- hand computations: numpy float64, one row / pair at a time -------------------------------------

def hand_kl(p_rows, q_rows):
    """mean over rows of sum_k p log(p / q) for logit rows p_rows, q_rows."""
    total = 0.0
    for zp, zq in zip(p_rows, q_rows):
        p, q = softmax(zp), softmax(zq)
        total += sum(p[k] * math.log(p[k] / q[k]) for k in range(len(p)))
    return total / len(p_rows)


def hand_ce(rows, targets):
    return sum(-log_softmax(z)[y] for z, y in zip(rows, targets)) / len(rows)


def hand_cluster(logits, teacher_temp, student_temp, n_views=2):
    b = len(logits) // n_views
    total, pairs = 0.0, 0
    for t in range(n_views):
        for v in range(n_views):
            if v == t:
                continue
            term = 0.0
            for i in range(b):
                q = softmax(logits[t * b + i] / teacher_temp)
                log_p = log_softmax(logits[v * b + i] / student_temp)
                term += -sum(q[c] * log_p[c] for c in range(len(q)))
            total += term / b
            pairs += 1
    return total / pairs


def hand_memax(logits, student_temp):
    mean = sum(softmax(z / student_temp) for z in logits) / len(logits)
    entropy = -sum(p * math.log(p) for p in mean)
    return math.log(len(mean)) - entropy


def cos(u, v):
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def hand_info_nce(proj, temperature):
    n, b = len(proj), len(proj) // 2
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        denom = sum(math.exp(cos(proj[i], proj[k]) / temperature) for k in range(n) if k != i)
        total += -math.log(math.exp(cos(proj[i], proj[pos]) / temperature) / denom)
    return total / n


def hand_supcon(proj, labels, temperature, base):
    """proj (B_l, V, d) normalised; anchors are every (image, view)."""
    rows = [(proj[i, v], labels[i]) for v in range(proj.shape[1]) for i in range(len(proj))]
    total = 0.0
    for a, (fa, ya) in enumerate(rows):
        denom = sum(math.exp(fa @ fk / temperature) for k, (fk, _) in enumerate(rows) if k != a)
        logs = [math.log(math.exp(fa @ fp / temperature) / denom)
                for p, (fp, yp) in enumerate(rows) if p != a and yp == ya]
        total += -(temperature / base) * sum(logs) / len(logs)
    return total / len(rows)


# ---- each term ----------------------------------------------------------------------------------------

def test_kd_directions_against_hand_kl():
    s, t = rand(2 * B, K, seed=1, scale=3), rand(2 * B, K, seed=2, scale=3)
    fwd, rev = kd_forward(s, t), kd_reverse(s, t)
    assert close(fwd, hand_kl(t.numpy(), s.numpy()))        # forward = KL(teacher || student)
    assert close(rev, hand_kl(s.numpy(), t.numpy()))        # reverse = KL(student || teacher)
    assert not close(fwd, rev)                               # the directions differ ...
    assert close(kd_forward(t, s), rev) and close(kd_reverse(t, s), fwd)   # ... and swap with the inputs
    assert close(kd_forward(s, s), 0.0)


def test_kd_teacher_gets_no_gradient_and_both_directions_reach_the_student():
    for loss in (kd_forward, kd_reverse):
        s = rand(B, K, seed=1, scale=3).requires_grad_(True)
        t = rand(B, K, seed=2, scale=3).requires_grad_(True)
        loss(s, t).backward()
        assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_cluster_distill_against_hand_loop():
    logits = rand(2 * B, C, seed=3).tanh()                   # cosine-like values in [-1, 1]
    for temp in (0.07, 0.04):
        assert close(cluster_distill(logits, temp, 0.1), hand_cluster(logits.numpy(), temp, 0.1))
    three = rand(3 * B, C, seed=4).tanh()                    # 6 ordered view pairs, still their mean
    assert close(cluster_distill(three, 0.05, 0.1, n_views=3), hand_cluster(three.numpy(), 0.05, 0.1, 3))


def test_cluster_distill_targets_are_detached():
    logits = rand(2 * B, C, seed=3).tanh().requires_grad_(True)
    cluster_distill(logits, 0.07).backward()
    # the gradient of sum_v' -q_v' log p_v with q constant: (p_v - q_v') / (student_temp x pairs x B)
    z = logits.detach()
    p = torch.softmax(z / 0.1, -1)
    q = torch.softmax(z / 0.07, -1)
    expected = (p - q.roll(B, dims=0)) / (0.1 * 2 * B)
    torch.testing.assert_close(logits.grad, expected)


def test_memax_against_hand_and_its_range():
    logits = rand(2 * B, C, seed=5).tanh()
    value = memax(logits, 0.1)
    assert close(value, hand_memax(logits.numpy(), 0.1))
    assert value >= 0
    # a batch whose mean prediction is uniform (each class predicted equally often) gives 0
    balanced = torch.eye(C, dtype=torch.float64).repeat(2, 1)
    assert close(memax(balanced, 0.1), 0.0)
    # all rows the same one-hot-ish prediction: close to log C
    assert memax(torch.tensor([[1.0, -1.0, -1.0]] * 4, dtype=torch.float64), 0.01) > math.log(C) - 1e-6


def test_info_nce_against_hand_loop():
    proj = rand(2 * B, 7, seed=6)
    for temperature in (1.0, 0.5):
        assert close(info_nce(proj, 2, temperature), hand_info_nce(proj.numpy(), temperature))


def test_supcon_against_hand_loop():
    proj = torch.nn.functional.normalize(rand(B, 2, 7, seed=7), dim=-1)
    labels = torch.tensor([0, 1, 0, 2])
    assert close(supcon(proj, labels), hand_supcon(proj.numpy(), labels.numpy(), 0.07, 0.07))
    assert close(supcon(proj, labels, 0.5, 0.07), hand_supcon(proj.numpy(), labels.numpy(), 0.5, 0.07))
    empty = supcon(proj[:0], labels[:0])
    assert float(empty) == 0.0


def test_teacher_temperature_schedule():
    values = [teacher_temperature(e) for e in range(200)]
    assert values[0] == 0.07                                 # first
    assert math.isclose(values[1], 0.07 - 0.03 / 29)          # linspace(0.07, 0.04, 30)
    assert math.isclose(values[29], 0.04)                     # the 30th value already reaches 0.04
    assert values[30] == values[199] == 0.04                  # then constant, to the last
    assert all(a >= b for a, b in zip(values, values[1:]))    # it falls: the targets sharpen
    with pytest.raises(ValueError, match="epoch"):
        teacher_temperature(200)
    with pytest.raises(ValueError, match="epoch"):
        teacher_temperature(-1)
    with pytest.raises(ValueError, match="warmup_epochs"):
        teacher_temperature(0, warmup_epochs=30, epochs=10)


def test_loss_config_refuses_bad_values():
    with pytest.raises(ValueError, match="sup_weight"):
        LossConfig(sup_weight=1.5)
    with pytest.raises(ValueError, match="student_temp"):
        LossConfig(student_temp=0.0)
    with pytest.raises(ValueError, match="warmup_teacher_temp_epochs"):
        LossConfig(epochs=10)


# ---- the combiner -------------------------------------------------------------------------------------

def batch(seed=0):
    net = SpectralGCDNet(rand(K, D, seed=10).float(), D, C, width=8, head=dict(nlayers=2, hidden=16,
                                                                                bottleneck=4), seed=seed)
    views = torch.randn(2, B, D, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():                                     # move the adapter off zero
        net.adapter.linear.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(12))
    teacher = torch.randn(B, K, generator=torch.Generator().manual_seed(13)) * 20
    return net, torch.cat([views[0], views[1]]), teacher


CFG = LossConfig(memax_weight=2.0, kd_weight=1.0, epochs=50)


def test_each_term_of_the_combiner_against_hand_loops_on_its_rows():
    net, x, teacher = batch()
    out = net(x)
    terms = {k: v.detach() for k, v in spectral_gcd_loss(out, LABELS, LABELLED, 3, CFG, teacher).items()}
    assert set(terms) == {"cls", "cluster", "memax", "con", "supcon", "kd_forward", "kd_reverse", "total"}
    logits = out.logits.detach().double().numpy()
    proj = out.proj.detach().double().numpy()
    s = out.concepts.detach().double().numpy()
    rows = np.flatnonzero(LABELLED.numpy())
    both = np.concatenate([rows, rows + B])                   # labelled rows of view 0 then of view 1
    y = LABELS.numpy()[rows]

    assert np.isclose(float(terms["cls"]), hand_ce(logits[both] / 0.1, np.tile(y, 2)), rtol=1e-5)
    temp = teacher_temperature(3, 0.07, 0.04, 30, 50)
    assert np.isclose(float(terms["cluster"]), hand_cluster(logits, temp, 0.1), rtol=1e-5)
    assert np.isclose(float(terms["memax"]), hand_memax(logits, 0.1), rtol=1e-5, atol=1e-7)
    assert np.isclose(float(terms["con"]), hand_info_nce(proj, 1.0), rtol=1e-5)
    sup = np.stack([proj[rows], proj[rows + B]], axis=1)
    sup /= np.linalg.norm(sup, axis=-1, keepdims=True)
    assert np.isclose(float(terms["supcon"]), hand_supcon(sup, y, 0.07, 0.07), rtol=1e-5)
    t2 = np.concatenate([teacher.numpy(), teacher.numpy()]).astype(np.float64)   # same teacher, both views
    assert np.isclose(float(terms["kd_forward"]), hand_kl(t2, s), rtol=1e-5)
    assert np.isclose(float(terms["kd_reverse"]), hand_kl(s, t2), rtol=1e-5)


def test_total_is_the_formula_of_the_returned_terms():
    net, x, teacher = batch()
    cfg = replace(CFG, sup_weight=0.3, kd_weight=0.5)
    for t in (teacher, None):
        terms = spectral_gcd_loss(net(x), LABELS, LABELLED, 0, cfg, t)
        w = cfg.sup_weight
        expected = ((1 - w) * (terms["cluster"] + cfg.memax_weight * terms["memax"]) + w * terms["cls"]
                    + (1 - w) * terms["con"] + w * terms["supcon"])
        if t is not None:
            expected = expected + cfg.kd_weight * (terms["kd_forward"] + terms["kd_reverse"])
        else:
            assert "kd_forward" not in terms and "kd_reverse" not in terms
        torch.testing.assert_close(terms["total"], expected)


def grads(net):
    return [p.grad.clone() for p in net.parameters() if p.requires_grad]


def test_labels_of_unlabelled_rows_never_reach_the_loss():
    results = []
    for unlabelled_label in (1, 0, -1, 999):                 # even invalid ids are fine: never read
        net, x, teacher = batch()
        labels = LABELS.clone()
        labels[~LABELLED] = unlabelled_label
        terms = spectral_gcd_loss(net(x), labels, LABELLED, 5, CFG, teacher)
        terms["total"].backward()
        results.append(({k: v.detach() for k, v in terms.items()}, grads(net)))
    first_terms, first_grads = results[0]
    for terms, g in results[1:]:
        assert all(torch.equal(terms[k], first_terms[k]) for k in first_terms)
        assert all(torch.equal(a, b) for a, b in zip(g, first_grads))
    # a labelled label does matter
    net, x, teacher = batch()
    labels = LABELS.clone()
    labels[0] = 0
    assert not torch.equal(spectral_gcd_loss(net(x), labels, LABELLED, 5, CFG, teacher)["cls"],
                           first_terms["cls"])


def test_teacher_logits_receive_no_gradient_and_the_adapter_does():
    net, x, teacher = batch()
    teacher.requires_grad_(True)
    spectral_gcd_loss(net(x), LABELS, LABELLED, 0, CFG, teacher)["total"].backward()
    assert teacher.grad is None
    assert net.adapter.linear.weight.grad.abs().sum() > 0
    assert net.head.last_layer.parametrizations.weight.original0.grad is None


def test_kd_gives_the_zero_init_adapter_a_gradient():
    """At W = 0 the student is the frozen one; KD must still move W (METHODS.md §15.1.7 b)."""
    net, x, teacher = batch()
    with torch.no_grad():
        net.adapter.linear.weight.zero_()
    out = net(x)
    terms = spectral_gcd_loss(out, LABELS, LABELLED, 0, CFG, teacher)
    (terms["kd_forward"] + terms["kd_reverse"]).backward()
    assert net.adapter.linear.weight.grad.abs().sum() > 0


def test_simgcd_output_has_no_kd_and_refuses_a_teacher():
    net, x, teacher = batch()
    out = net(x)
    plain = GCDOutput(concepts=None, proj=out.proj, logits=out.logits)
    terms = spectral_gcd_loss(plain, LABELS, LABELLED, 0, CFG)
    assert "kd_forward" not in terms
    with pytest.raises(ValueError, match="concepts"):
        spectral_gcd_loss(plain, LABELS, LABELLED, 0, CFG, teacher)


def test_no_labelled_rows_gives_zero_supervised_terms():
    net, x, teacher = batch()
    terms = spectral_gcd_loss(net(x), LABELS, torch.zeros(B, dtype=torch.bool), 0, CFG, teacher)
    assert terms["cls"].item() == 0.0 and terms["supcon"].item() == 0.0
    assert torch.isfinite(terms["total"])
    terms["total"].backward()


def test_combiner_refuses_bad_shapes():
    net, x, teacher = batch()
    out = net(x)
    with pytest.raises(ValueError, match="labelled"):
        spectral_gcd_loss(out, LABELS, LABELLED.int(), 0, CFG)
    with pytest.raises(ValueError, match="rows"):
        spectral_gcd_loss(out, LABELS[:3], LABELLED[:3], 0, CFG)
    with pytest.raises(ValueError, match="teacher_logits"):
        spectral_gcd_loss(out, LABELS, LABELLED, 0, CFG, teacher[:, :3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        spectral_gcd_loss(out, torch.tensor([5, 1, 0, 2]), LABELLED, 0, CFG)
