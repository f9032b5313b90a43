"""pipeline.spectral_filter against an independent numpy reference (np.cov + np.linalg.eigh, METHODS.md
§15.1.3), on synthetic logits whose variance sits in a known subset of concepts."""

import numpy as np
import pytest
import torch

from pipeline import spectral_filter as sf
from pipeline.spectral_filter import auto_route, spectral_filter

TAU = 0.01


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: threads only add synchronisation (and thrash when the cores are busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mixture(n, k0, signal, rank=6, seed=0, dtype=np.float64):
    """Logits = cosine / TAU. The `signal` columns hold a rank-`rank` mixture (cosine 0.25 +- 0.02 along
    random factors); of the rest, half are constant (cosine 0.15) and half constant plus 1e-5 noise.
    Returns (logits, signal column indices, constant, tiny-noise)."""
    rng = np.random.default_rng(seed)
    cols = rng.permutation(k0)
    sig, rest = np.sort(cols[:signal]), cols[signal:]
    const, tiny = np.sort(rest[: len(rest) // 2]), np.sort(rest[len(rest) // 2:])
    cos = np.full((n, k0), 0.15)
    factors = rng.dirichlet(np.ones(rank) * 0.3, size=n) @ rng.standard_normal((rank, signal))
    cos[:, sig] = 0.25 + 0.02 * factors / factors.std()
    cos[:, tiny] += 1e-5 * rng.standard_normal((n, len(tiny)))
    return (cos / TAU).astype(dtype), sig, const, tiny


def reference(logits, beta_e, beta_c):
    """The steps of §15.1.3 written out with numpy in float64, the reference's way."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lam, vec = np.linalg.eigh(np.cov(p, rowvar=False))
    lam, vec = lam[::-1], vec[:, ::-1]
    k_e = int(np.searchsorted(np.cumsum(lam) / lam.sum(), beta_e)) + 1
    s = (vec[:, :k_e] ** 2) @ lam[:k_e]
    order = np.argsort(-s, kind="stable")
    k_c = int(np.searchsorted(np.cumsum(s[order]) / s.sum(), beta_c)) + 1
    return {"k_e": k_e, "k_c": k_c, "keep": order[:k_c], "scores": s, "lam": lam}


def check_matches(got, ref, score_tol):
    assert (got.k_e, got.k_c) == (ref["k_e"], ref["k_c"])
    assert set(got.keep.tolist()) == set(ref["keep"].tolist())
    assert np.abs(got.scores - ref["scores"]).max() <= score_tol * ref["scores"].max()
    # sum_j s_j = the sum of the top k_e eigenvalues, brute force from the reference spectrum
    assert got.scores.sum() == pytest.approx(ref["lam"][:got.k_e].sum(), rel=score_tol)


@pytest.mark.parametrize("n, k0", [(500, 240), (150, 320)], ids=["N>K0", "N<K0"])
def test_routes_match_the_numpy_reference(n, k0):
    logits, sig, const, tiny = mixture(n, k0, signal=40)
    ref = reference(logits, 0.95, 0.99)
    for route in ("exact", "gram", "truncated", "auto"):
        got = spectral_filter(logits, route=route)
        assert got.route == (auto_route(n, k0) if route == "auto" else route)
        check_matches(got, ref, 1e-6 if got.route == "truncated" else 1e-9)
        np.testing.assert_array_equal(got.keep[:10], ref["keep"][:10])


def test_keeps_the_variance_carrying_concepts_and_drops_constant_ones():
    logits, sig, const, tiny = mixture(400, 300, signal=40)
    got = spectral_filter(logits)
    z = np.exp(logits - logits.max(1, keepdims=True))
    var = (z / z.sum(1, keepdims=True)).var(0, ddof=1)
    assert set(got.keep.tolist()) <= set(sig.tolist())
    assert set(np.flatnonzero(var >= 0.01 * var.sum()).tolist()) <= set(got.keep.tolist())   # 1%+ of it
    flat = np.r_[const, tiny]
    assert got.scores[flat].max() < 1e-6 * got.scores.max()
    # the kept concepts hold beta_c of the importance, one fewer would not
    share = np.cumsum(np.sort(got.scores)[::-1]) / got.scores.sum()
    assert share[got.k_c - 1] >= 0.99 > share[got.k_c - 2]


def test_float32_routes_agree_with_the_float64_reference():
    logits, *_ = mixture(600, 400, signal=60, seed=1)
    ref = reference(logits, 0.95, 0.99)
    for route in ("exact", "gram", "truncated"):
        check_matches(spectral_filter(logits.astype(np.float32), route=route), ref, 1e-4)


def test_truncated_grows_its_krylov_basis_and_verifies_k_e(monkeypatch):
    """Blocks of 16 columns force several growth steps and checks before the basis is complete."""
    monkeypatch.setattr(sf, "_BLOCK", 16)
    logits, *_ = mixture(700, 500, signal=80, rank=12, seed=2)
    ref = reference(logits, 0.95, 0.99)
    got = spectral_filter(logits, route="truncated")
    assert got.route == "truncated" and got.info["dims"] < 500 and len(got.info["checks"]) >= 2
    check_matches(got, ref, 1e-7)
    assert got.total == pytest.approx(ref["lam"].sum(), rel=1e-10)        # trace, no eigen-decomposition
    np.testing.assert_allclose(got.eigenvalues[:got.k_e], ref["lam"][:got.k_e], rtol=1e-6)
    assert np.all(got.eigenvalues <= ref["lam"][:len(got.eigenvalues)] * (1 + 1e-9))   # Ritz: lower bounds


@pytest.mark.parametrize("beta_e, beta_c", [(0.5, 0.9), (0.99, 0.5), (1.0, 1.0), (0.8, 0.999)])
def test_thresholds_follow_their_formulas(beta_e, beta_c):
    logits, *_ = mixture(300, 200, signal=50, rank=10, seed=3)
    ref = reference(logits, beta_e, beta_c)
    for route in ("exact", "gram", "truncated"):
        got = spectral_filter(logits, beta_e, beta_c, route=route)
        if beta_e < 1:          # at beta_e = 1, k_e is the numerical rank: round-off decides it
            check_matches(got, ref, 1e-7)
        else:
            assert got.k_e >= 45 and got.k_c == len(got.keep)


def test_auto_falls_back_to_the_full_route_when_k_e_is_large(monkeypatch):
    monkeypatch.setattr(sf, "AUTO_FULL_MAX", 0)
    monkeypatch.setattr(sf, "_BLOCK", 16)
    noise = np.random.default_rng(4).standard_normal((300, 200)) * 2    # flat spectrum: k_e near rank
    got = spectral_filter(noise)
    ref = reference(noise, 0.95, 0.99)
    assert got.route == "exact" and ref["k_e"] > 200 // 3
    assert got.info["truncated_gave_up"]["cap"] == 200 // 3
    check_matches(got, ref, 1e-8)
    assert auto_route(300, 200) == "truncated" and auto_route(100, 200, beta_e=1.0) == "gram"


def test_auto_rule():
    assert auto_route(50_000, 22_131) == "truncated"
    assert auto_route(1_000, 22_131) == "gram"
    assert auto_route(50_000, 2_000) == "exact"
    assert auto_route(50_000, 22_131, beta_e=1.0) == "exact"


def test_inputs_are_not_modified_and_tensors_read_only_arrays_work():
    logits, *_ = mixture(200, 150, signal=30, seed=5, dtype=np.float32)
    before = logits.copy()
    a = spectral_filter(logits, route="exact")
    np.testing.assert_array_equal(logits, before)
    b = spectral_filter(torch.from_numpy(logits).requires_grad_(), route="gram")
    frozen = logits.copy()
    frozen.flags.writeable = False
    c = spectral_filter(frozen, route="truncated")
    for other in (b, c):
        assert (other.k_e, other.k_c) == (a.k_e, a.k_c)
        np.testing.assert_allclose(other.scores, a.scores, atol=1e-5 * a.scores.max())


@pytest.mark.parametrize("kwargs, match", [
    ({"beta_e": 0.0}, r"beta_e .* got 0\.0"), ({"beta_e": 1.5}, r"beta_e .* got 1\.5"),
    ({"beta_e": float("nan")}, "beta_e"), ({"beta_e": True}, "beta_e"), ({"beta_e": "0.9"}, "beta_e"),
    ({"beta_c": -0.1}, r"beta_c .* got -0\.1"), ({"beta_c": 2}, r"beta_c .* got 2"),
    ({"route": "svd"}, r"unknown route 'svd' \(known: auto, exact, gram, truncated\)"),
])
def test_bad_parameters(kwargs, match):
    logits, *_ = mixture(20, 10, signal=5)
    with pytest.raises(ValueError, match=match):
        spectral_filter(logits, **kwargs)


def test_bad_logits():
    with pytest.raises(ValueError, match=r"2-D .* shape \(10,\)"):
        spectral_filter(np.zeros(10))
    with pytest.raises(ValueError, match=r"2-D .* shape \(2, 3, 4\)"):
        spectral_filter(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="at least 2 rows .* N = 1"):
        spectral_filter(np.zeros((1, 5)))
    for bad in (np.nan, np.inf, -np.inf):
        logits, *_ = mixture(20, 10, signal=5)
        logits[7, 3] = bad
        with pytest.raises(ValueError, match="non-finite .* row 7, column 3"):
            spectral_filter(logits)
    with pytest.raises(ValueError, match="total variance 0"):
        spectral_filter(np.full((30, 8), 3.0))
