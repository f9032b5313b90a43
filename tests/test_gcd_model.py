"""The SpectralGCD / SimGCD nets on cached features (pipeline/gcd_model.py): the zero-init adapter
reproduces the frozen student, the DINO head's logits are cosines with a magnitude that never trains,
the head is initialised and wired as the reference's, and seeded builds are identical."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.gcd_model import DINOHead, ResidualAdapter, SimGCDNet, SpectralGCDNet

K, D, C, WIDTH = 5, 6, 3, 8
HEAD = dict(nlayers=3, hidden=16, bottleneck=4)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def spectral(seed=0):
    return SpectralGCDNet(rand(K, D, seed=1), D, C, width=WIDTH, head=HEAD, seed=seed)


def test_adapter_starts_as_the_identity_and_trains():
    adapter = ResidualAdapter(D)
    x = rand(4, D)
    assert torch.equal(adapter(x), x) and torch.equal(adapter.linear.weight, torch.zeros(D, D))
    assert adapter.linear.bias is None
    adapter(x).pow(2).sum().backward()
    assert adapter.linear.weight.grad.abs().sum() > 0


def test_zero_init_concepts_equal_the_frozen_students_exactly():
    net, x, text = spectral(), rand(4, D, seed=2) * 3, rand(K, D, seed=1)
    frozen = F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).T / 0.01
    out = net(x)
    assert torch.equal(out.concepts, frozen)
    assert out.concepts.shape == (4, K) and out.proj.shape == (4, 4) and out.logits.shape == (4, C)
    # ln_t acts on the RAW concept logits, and the head on ln_t's output
    proj, logits = net.head(net.ln_t(frozen))
    assert torch.equal(out.logits, logits) and torch.equal(out.proj, proj)
    # once the adapter moves, S moves
    with torch.no_grad():
        net.adapter.linear.weight.fill_(0.1)
    assert not torch.allclose(net(x).concepts, frozen)


def test_head_logits_are_cosines_with_the_class_directions():
    head = DINOHead(WIDTH, C, **HEAD, seed=3)
    x = rand(5, WIDTH, seed=4) * 7
    _, logits = head(x)
    v = head.directions.detach().double().numpy()
    xs = x.double().numpy()
    expected = np.array([[xs[i] @ v[c] / np.linalg.norm(xs[i]) / np.linalg.norm(v[c]) for c in range(C)]
                         for i in range(len(xs))])
    np.testing.assert_allclose(logits.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert logits.abs().max() <= 1 + 1e-6


def test_head_magnitude_is_one_and_never_trains():
    head = DINOHead(WIDTH, C, **HEAD, seed=3)
    g = head.last_layer.parametrizations.weight.original0
    assert g.shape == (C, 1) and torch.equal(g, torch.ones(C, 1)) and not g.requires_grad
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    v0 = head.directions.detach().clone()
    x = rand(6, WIDTH, seed=5)
    for _ in range(3):
        h, logits = head(x)
        loss = -(logits / 0.1).log_softmax(-1)[:, 0].mean() + h.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(g, torch.ones(C, 1)) and g.grad is None
    assert not torch.equal(head.directions, v0)              # the directions did train
    # the effective weight rows stay unit-norm, so the logits stay cosines
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(C))


def test_head_layout_and_init_follow_the_reference():
    head = DINOHead(64, C, nlayers=3, hidden=512, bottleneck=32, seed=0)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "GELU", "Linear", "GELU", "Linear"]        # no BatchNorm
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 512), (512, 512), (512, 32)]
    for m in linears:
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
        assert abs(float(m.weight.detach().std()) - 0.02) < 0.002
    assert head.last_layer.bias is None
    # the classifier keeps nn.Linear's default init: U(+-1/sqrt(in)) (kaiming_uniform a = sqrt 5)
    assert head.directions.abs().max() <= 1 / math.sqrt(64) and head.directions.std() > 0.05
    one = DINOHead(64, C, nlayers=1, bottleneck=32)
    assert [type(m).__name__ for m in one.mlp] == ["Linear"] and one.mlp[0].out_features == 32


def test_seeded_builds_are_identical_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = spectral(seed=7), spectral(seed=7), spectral(seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    gen_a = SimGCDNet(D, C, head=HEAD, seed=torch.Generator().manual_seed(4)).state_dict()
    gen_b = SimGCDNet(D, C, head=HEAD, seed=4).state_dict()
    assert all(torch.equal(gen_a[k], gen_b[k]) for k in gen_a)


def test_simgcd_net_has_no_concepts_and_a_zero_init_adapter():
    net = SimGCDNet(D, C, head=HEAD, seed=0)
    x = rand(4, D, seed=2)
    out = net(x)
    assert out.concepts is None and out.proj.shape == (4, 4) and out.logits.shape == (4, C)
    proj, logits = net.head(x)                                # the adapter is the identity at init
    assert torch.equal(out.logits, logits) and torch.equal(out.proj, proj)


def test_nets_refuse_bad_inputs():
    with pytest.raises(ValueError, match="student_concepts"):
        SpectralGCDNet(rand(K, D + 1), D, C, width=WIDTH, head=HEAD)
    with pytest.raises(ValueError, match="unknown head key"):
        SpectralGCDNet(rand(K, D), D, C, width=WIDTH, head=dict(hidden_dim=16))
    with pytest.raises(ValueError, match="image_features"):
        spectral()(rand(4, D + 1))
    with pytest.raises(ValueError, match="image_features"):
        SimGCDNet(D, C, head=HEAD)(rand(4))
    with pytest.raises(TypeError, match="seed"):
        SimGCDNet(D, C, head=HEAD, seed=1.5)
