"""Method modules checked against closed forms, explicit loops and linear-algebra identities."""

import itertools

import numpy as np
import pytest
import torch

from pipeline import metrics
from pipeline.methods import ape, isoclip, ncm, semobridge, tip_adapter

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen(seed), dtype=F64))[0]


def planted(sigmas: list[float], d_t: int, D: int, seed: int = 0):
    """W_txt = A diag(sigmas) B^T with known factors (A: d_t x r, B: D x r)."""
    r = len(sigmas)
    A, B = orthonormal(d_t, r, seed), orthonormal(D, r, seed + 1)
    return A @ torch.diag(torch.tensor(sigmas, dtype=F64)) @ B.T, A, B


# ----------------------------------------------------------------------------- SeMoBridge


SIGMAS = [2.0, 1.4, 0.9, 0.5, 0.25, 0.1]  # the last two fall under atol = 0.3


@pytest.mark.parametrize("d_t, D", [(6, 6), (6, 9)])
def test_bridge_is_scaled_projection_onto_kept_right_singular_directions(d_t, D):
    W, _, B = planted(SIGMAS, d_t, D)
    kept = torch.tensor(SIGMAS, dtype=F64) > 0.3
    f = torch.randn(7, D, generator=gen(3), dtype=F64)
    s = 2.5
    out = semobridge.bridge(f, semobridge.bridge_matrix(W, atol=0.3), W, s)
    Bk, sk = B[:, kept], torch.tensor(SIGMAS, dtype=F64)[kept]
    # ||f P|| = ||f B_k diag(1/sigma_k)|| since A_k has orthonormal columns
    scale = s / (f @ Bk / sk).norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, scale * (f @ Bk @ Bk.T))


def test_spectrum_helpers_on_planted_values():
    W, _, _ = planted(SIGMAS, 6, 9)
    W_img = torch.randn(5, 9, generator=gen(7), dtype=F64)
    s_txt, s_psi = metrics.projection_spectra(W_img.numpy(), W.numpy())
    np.testing.assert_allclose(s_txt, SIGMAS, rtol=1e-12)
    assert int((s_txt <= 0.3).sum()) == 2 and int((s_txt <= 0.05).sum()) == 0
    np.testing.assert_allclose(s_psi, np.linalg.svd((W_img @ W.T).numpy(), compute_uv=False), rtol=1e-10, atol=1e-12)
    assert metrics.numerical_rank(np.array([3.0, 1.0, 1e-3, 1e-9])) == 3


def test_bridge_preserves_direction_when_nothing_is_truncated():
    W, _, _ = planted([2.0, 1.5, 1.0, 0.8, 0.5], 5, 5)
    f = torch.randn(4, 5, generator=gen(4)).to(torch.float32)
    out = semobridge.bridge(f, semobridge.bridge_matrix(W.float()), W.float(), 7.0)
    torch.testing.assert_close(unit(out), unit(f), atol=1e-5, rtol=1e-5)


def test_pinv_identities_on_kept_subspace():
    W, A, B = planted(SIGMAS, 6, 9)
    P = semobridge.bridge_matrix(W, atol=0.3)
    Ak, Bk, sk = A[:, :4], B[:, :4], torch.tensor(SIGMAS[:4], dtype=F64)
    torch.testing.assert_close(P @ W @ P, P)
    torch.testing.assert_close(W @ P @ W, Ak @ torch.diag(sk) @ Bk.T)
    torch.testing.assert_close(P @ W, Bk @ Bk.T)  # symmetric projector in the D space
    torch.testing.assert_close(W @ P, Ak @ Ak.T)


def test_text_scale_is_mean_norm_of_class_mean_eos():
    eos = torch.tensor([[[3.0, 0.0], [3.0, 8.0]], [[0.0, 1.0], [0.0, -3.0]]])  # means (3, 4), (0, -1)
    assert semobridge.text_scale(eos).item() == pytest.approx((5.0 + 1.0) / 2)


def kl_one_hot_loop(rows: torch.Tensor, row_labels: list[int], text: torch.Tensor) -> torch.Tensor:
    """Per row: sum_j L_j log2((L_j + 1e-6) / (p_j + 1e-6)), p = softmax_j(row . text_j), L one-hot."""
    out = []
    for row, c in zip(rows, row_labels):
        p = torch.softmax(row @ text.T, dim=0)
        L = torch.zeros(len(text), dtype=rows.dtype)
        L[c] = 1.0
        out.append(sum(L[j] * torch.log2((L[j] + 1e-6) / (p[j] + 1e-6)) for j in range(len(text))))
    return torch.stack(out)


def test_class_divergence_matches_explicit_kl():
    protos = unit(torch.randn(5, 8, generator=gen(5), dtype=F64))
    text = unit(torch.randn(5, 8, generator=gen(6), dtype=F64))
    torch.testing.assert_close(semobridge.class_divergence(protos, text), kl_one_hot_loop(protos, range(5), text))


def test_semobridge_terms_are_paired_as_in_the_reference_code():
    C, K, D = 3, 4, 6
    W, _, B = planted(SIGMAS, 6, D, seed=7)
    Bk = B[:, :4]
    shots = torch.randn(C, K, D, generator=gen(8), dtype=F64) * 3
    query = torch.randn(5, D, generator=gen(9), dtype=F64)
    text = unit(torch.randn(C, D, generator=gen(10), dtype=F64))
    s = 1.7
    cos = semobridge.semobridge_cosines(query, shots, text, semobridge.bridge_matrix(W), W, s)

    # independent: the bridge is a per-sample rescaled projection onto span(B_k) (test above), and
    # directions are all that matter after normalisation -- except inside the bridged-shot mean,
    # where each shot carries weight s / ||f P||.
    def bridged(f):
        return s * (f @ Bk) @ Bk.T / (f @ Bk / torch.tensor(SIGMAS[:4], dtype=F64)).norm(dim=-1, keepdim=True)

    raw_protos = [unit(shots[c].mean(0)) for c in range(C)]
    bridged_protos = [unit(bridged(shots[c]).mean(0)) for c in range(C)]
    div = kl_one_hot_loop(torch.stack(raw_protos), range(C), text)
    rows = [(0.3, 2.0, 5.0, 9.0, 0.2, 0.5, 0.9), (1.2, 7.0, 0.5, 3.0, 1.0, 0.0, 0.1)]
    built = semobridge.semobridge_builder(cos)(torch.tensor(rows, dtype=F64))
    for t, (sm, a, b, g, l1, l2, l3) in enumerate(rows):
        expected = torch.zeros(len(query), C, dtype=F64)
        for n, f in enumerate(query):
            q, q_hat = unit(f), unit(bridged(f))
            for c in range(C):
                w = torch.exp(sm * div[c])
                z1 = torch.exp(-a * (1 - q @ text[c]))
                z2 = torch.exp(-b * (1 - q @ bridged_protos[c])) * w  # raw query vs bridged prototypes
                z3 = torch.exp(-g * (1 - q_hat @ raw_protos[c])) * w  # bridged query vs raw prototypes
                expected[n, c] = l1 * z1 + l2 * z2 + l3 * z3
        torch.testing.assert_close(built[t], expected)
        z1, z2, z3 = semobridge.semobridge_terms(cos, sm, a, b, g)   # what adapt stores per component
        torch.testing.assert_close(l1 * z1 + l2 * z2 + l3 * z3, expected)


# ----------------------------------------------------------------------------- APE


def test_ape_criterion_matches_reference_quadruple_loop():
    C, K, D, w0, w1 = 4, 3, 8, 0.7, 0.3
    text = unit(torch.randn(C, D, generator=gen(11), dtype=F64))
    keys = unit(torch.randn(C, K, D, generator=gen(12), dtype=F64))
    feats = torch.cat([text[:, None], keys], dim=1)
    sim_sum, count = torch.zeros(D, dtype=F64), 0
    for i in range(C):
        for j in range(C):
            for m in range(K + 1):
                for n in range(K + 1):
                    if i != j:
                        sim_sum += feats[i, m] * feats[j, n]
                        count += 1
    var = torch.from_numpy(np.var(text.numpy(), axis=0, ddof=1))
    expected = -w0 * sim_sum / count + w1 * var
    torch.testing.assert_close(ape.channel_criterion(text, keys, w0, w1), expected)
    chosen = ape.select_channels(text, keys, 3, w0, w1)
    assert sorted(chosen.tolist()) == sorted(np.argsort(-expected.numpy())[:3].tolist())


def ape_problem(seed: int, C: int = 4, K: int = 3, D: int = 10, N: int = 60):
    """Weak text prototypes (near a common direction) and informative keys, so the cache terms and
    their sharpness decide accuracy and the search grids are far from flat."""
    centres = unit(torch.randn(C, D, generator=gen(seed), dtype=F64))
    common = unit(torch.randn(D, generator=gen(seed + 5), dtype=F64))
    text = unit(common + 0.06 * (centres + torch.randn(C, D, generator=gen(seed + 4), dtype=F64)))
    keys = unit(centres[:, None] + 0.5 * torch.randn(C, K, D, generator=gen(seed + 1), dtype=F64))
    labels = torch.randint(0, C, (N,), generator=gen(seed + 2))
    query = 2.0 * (centres[labels] + 0.35 * torch.randn(N, D, generator=gen(seed + 3), dtype=F64))
    return query, labels, text, keys


def one_hot_values(C: int, K: int) -> torch.Tensor:
    L = torch.zeros(C * K, C, dtype=F64)
    for c in range(C):
        L[c * K : (c + 1) * K, c] = 1.0
    return L


def ape_reference_logits(query, text, keys, channels, alpha, beta, gamma):
    """§8.2 with explicit (CK x C) one-hot values and a per-key KL loop."""
    C, K, _ = keys.shape
    q = unit(query)
    q_r, keys_r, text_r = unit(q[:, channels]), unit(keys.reshape(C * K, -1)[:, channels]), unit(text[:, channels])
    L = one_hot_values(C, K)
    div = kl_one_hot_loop(keys_r, [i // K for i in range(C * K)], text_r)
    soft_values = L * torch.exp(gamma * div)[:, None]
    return 100 * q @ text.T + alpha * torch.exp(-beta * (1 - q_r @ keys_r.T)) @ soft_values


def test_ape_logits_match_explicit_formula():
    query, _, text, keys = ape_problem(20)
    channels = ape.select_channels(text, keys, 6, 0.5, 0.5)
    got = 100 * unit(query) @ text.T + 1.3 * ape.ape_cache_affinity(query, text, keys, channels, beta=4.0, gamma=0.6)
    torch.testing.assert_close(got, ape_reference_logits(query, text, keys, channels, 1.3, 4.0, 0.6))


def brute_force_search(logits_fn, labels, grids):
    """The reference loops: nested in grid order, strict '>' against a running best starting at 0."""
    best_acc, best = 0.0, None
    for values in itertools.product(*grids):
        acc = (logits_fn(*values).argmax(1) == labels).double().mean().item()
        if acc > best_acc:
            best_acc, best = acc, values
    return best, best_acc


@pytest.mark.parametrize("budget", [None, 37])
def test_ape_search_equals_brute_force(monkeypatch, budget):
    if budget is not None:  # force chunking over betas and queries
        monkeypatch.setattr(tip_adapter, "ELEMENT_BUDGET", budget)
    query, labels, text, keys = ape_problem(30)
    channels = ape.select_channels(text, keys, 6, 0.5, 0.5)
    scales = (9.0, 4.0, 1.5)
    betas = [0.1 + i * (9.0 - 0.1) / 7 for i in range(7)]
    alphas = [0.1 + i * (4.0 - 0.1) / 4 for i in range(4)]
    gammas = [i * 1.5 / 3 for i in range(3)]
    best, best_acc = brute_force_search(
        lambda b, a, g: ape_reference_logits(query, text, keys, channels, a, b, g), labels, [betas, alphas, gammas]
    )
    got = ape.ape_search(query, labels, text, keys, channels, scales, gamma_steps=3, beta_steps=7, alpha_steps=4)
    assert (got["beta"], got["alpha"], got["gamma"]) == pytest.approx(best)
    assert got["val_acc"] == pytest.approx(best_acc)
    assert got["acc_grid"].shape == (7, 4, 3)
    assert got["acc_grid"].max() - got["acc_grid"].min() > 0.1 and best != (betas[0], alphas[0], gammas[0])


# ----------------------------------------------------------------------------- Tip-Adapter


def test_cache_keys_normalise_the_mean_of_raw_views():
    views = torch.tensor([[[[4.0, 0.0], [0.0, 1.0]]]])  # one class, one shot, two views of unequal norm
    torch.testing.assert_close(tip_adapter.cache_keys(views), unit(torch.tensor([[[2.0, 0.5]]])))


def test_search_grid_is_the_reference_grid():
    assert tip_adapter.search_grid(2.1, 4) == pytest.approx([0.1, 0.6, 1.1, 1.6])
    assert tip_adapter.search_grid(1.0, 4, start=0.0) == pytest.approx([0.0, 0.25, 0.5, 0.75])


def tip_reference_logits(query, text, keys, alpha, beta):
    C, K, D = keys.shape
    q = unit(query)
    return 100 * q @ text.T + alpha * torch.exp(-beta * (1 - q @ keys.reshape(C * K, D).T)) @ one_hot_values(C, K)


def test_tip_cache_affinity_matches_the_formula():
    query, _, text, keys = ape_problem(40)
    zero_shot = 100 * unit(query) @ text.T
    expected = tip_reference_logits(query, text, keys, 2.0, 5.5)
    torch.testing.assert_close(zero_shot + 2.0 * tip_adapter.cache_affinity(query, keys, 5.5), expected)


@pytest.mark.parametrize("budget", [None, 29])
def test_tip_search_equals_brute_force(monkeypatch, budget):
    if budget is not None:
        monkeypatch.setattr(tip_adapter, "ELEMENT_BUDGET", budget)
    query, labels, text, keys = ape_problem(50)
    betas = [0.1 + i * (12.0 - 0.1) / 9 for i in range(9)]
    alphas = [0.1 + i * (5.0 - 0.1) / 5 for i in range(5)]
    best, best_acc = brute_force_search(
        lambda b, a: tip_reference_logits(query, text, keys, a, b), labels, [betas, alphas]
    )
    got = tip_adapter.tip_search(query, labels, text, keys, 12.0, 5.0, beta_steps=9, alpha_steps=5)
    assert (got["beta"], got["alpha"]) == pytest.approx(best)
    assert got["val_acc"] == pytest.approx(best_acc)
    assert int((got["acc_grid"] == got["acc_grid"].max()).sum()) > 1  # a tie: the first best must win


# ----------------------------------------------------------------------------- NCM


def test_ncm_logits_are_cosines_to_unit_prototypes():
    protos = unit(torch.tensor([[5.0, 0.5], [1 / 3, 7 / 3]]))
    query = torch.tensor([[0.3, 1.0], [3.0, 0.0]])
    expected = torch.tensor([[(0.3 * p[0] + p[1]) / (0.09 + 1) ** 0.5 for p in protos], [p[0] for p in protos]])
    torch.testing.assert_close(ncm.ncm_logits(query, protos), expected)
    assert ncm.ncm_logits(query, protos).argmax(1).tolist() == [1, 0]


# ----------------------------------------------------------------------------- IsoCLIP


def iso_weights(d_v: int, d_t: int, D: int, seed: int = 60):
    return torch.randn(d_v, D, generator=gen(seed), dtype=F64), torch.randn(d_t, D, generator=gen(seed + 1), dtype=F64)


def test_iso_basis_is_the_orthonormal_middle_band():
    W_img, W_txt = iso_weights(12, 8, 8)
    U_k, V_k = isoclip.iso_basis(W_img, W_txt, k_top=2, k_bottom=3)
    assert U_k.shape == (12, 3) and V_k.shape == (8, 3)
    torch.testing.assert_close(U_k.T @ U_k, torch.eye(3, dtype=F64))
    torch.testing.assert_close(V_k.T @ V_k, torch.eye(3, dtype=F64))
    U, S, Vt = np.linalg.svd((W_img @ W_txt.T).numpy(), full_matrices=False)
    assert np.all(np.diff(S) < 0)  # distinct values: the band's projector is unique
    torch.testing.assert_close(U_k @ U_k.T, torch.from_numpy(U[:, 2:5] @ U[:, 2:5].T))
    torch.testing.assert_close(V_k @ V_k.T, torch.from_numpy(Vt[2:5].T @ Vt[2:5]))
    excluded = np.concatenate([U[:, :2], U[:, 5:]], axis=1)  # exactly k_top + k_bottom = 5 directions
    assert excluded.shape[1] == 5
    torch.testing.assert_close(U_k.T @ torch.from_numpy(excluded), torch.zeros(3, 5, dtype=F64))


def test_iso_with_no_cut_equals_plain_projection_when_psi_spans_range_of_w_img():
    W_img, W_txt = iso_weights(12, 8, 8)  # rank(Psi) = 8 = rank(W_img)
    U, V = isoclip.iso_basis(W_img, W_txt, 0, 0)
    x = torch.randn(5, 12, generator=gen(61), dtype=F64)
    torch.testing.assert_close(x @ isoclip.iso_image_projector(W_img, U), x @ W_img)
    torch.testing.assert_close(isoclip.iso_text_projector(W_txt, V), W_txt)  # V is square orthogonal


def test_iso_with_no_cut_is_projection_onto_range_of_psi_in_general():
    W_img, W_txt = iso_weights(12, 4, 8)  # r = 4 < rank(W_img) = 8
    U, _ = isoclip.iso_basis(W_img, W_txt, 0, 0)
    psi = (W_img @ W_txt.T).numpy()
    proj = torch.from_numpy(psi @ np.linalg.pinv(psi))  # orthogonal projector onto range(Psi)
    x = torch.randn(5, 12, generator=gen(62), dtype=F64)
    torch.testing.assert_close(x @ isoclip.iso_image_projector(W_img, U), x @ proj @ W_img)
    assert not torch.allclose(x @ isoclip.iso_image_projector(W_img, U), x @ W_img)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k_top": 5, "k_bottom": 3}, "must be < r = 8"),
        ({"k_top": -1, "k_bottom": 0}, "k_top"),
        ({"k_top": 0, "k_bottom": 1.5}, "k_bottom"),
        ({"k_top": 1, "k_bottom": 1, "img_bias": torch.full((8,), 0.1)}, "bias"),
    ],
)
def test_iso_basis_rejects_bad_arguments(kwargs, message):
    W_img, W_txt = iso_weights(12, 8, 8)
    with pytest.raises(ValueError, match=message):
        isoclip.iso_basis(W_img, W_txt, **kwargs)


def test_iso_basis_accepts_zero_bias():
    W_img, W_txt = iso_weights(12, 8, 8)
    U, _ = isoclip.iso_basis(W_img, W_txt, 1, 1, img_bias=torch.zeros(8))
    assert U.shape == (12, 6)
