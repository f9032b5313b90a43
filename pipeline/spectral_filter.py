"""SpectralGCD's spectral filtering of a concept dictionary (METHODS.md §15.1.3): which of the K0 concepts
carry the variance of the teacher's softmaxed concept logits over a dataset. No labels are used.

Given T (N images x K0 concepts, cosine / tau with tau = 0.01 already applied):

1. P = row softmax of T; X = P - column means of P; Sigma = X^T X / (N - 1) (K0 x K0).
2. Eigenpairs (lambda_i, V_i) of Sigma by descending lambda. k_e = searchsorted(cumsum(lambda) / total,
   beta_e) + 1, with numpy's default side="left": the fewest eigenvalues whose share of the total reaches
   beta_e (a share exactly equal to beta_e counts as reached). total = sum(lambda) = trace(Sigma).
3. s_j = sum_{i <= k_e} lambda_i V_ji^2 (so sum_j s_j = sum_{i <= k_e} lambda_i); concepts by descending s
   (ties by ascending index); k_c = searchsorted(cumsum(s_sorted) / sum(s), beta_c) + 1 the same way.
   The kept concepts are the first k_c in that order.

Routes (all give the same k_e, k_c and kept concepts, up to exact ties and float round-off):

- ``exact``: Sigma (one K0 x K0 matrix, built from row blocks of the logits: no N x K0 working copy) and
  ``torch.linalg.eigh``. The reference's route; total = the sum of the K0 computed eigenvalues. While
  eigh runs, LAPACK (syevd) holds its eigenvector output and workspace beside Sigma, about 4 K0 x K0
  floats in all; Sigma is freed when it returns and only the top k_e eigenvectors are kept.
- ``gram``: the N x N Gram matrix G = X X^T / (N - 1) has Sigma's non-zero eigenvalues; for an eigenvector
  u of G, lambda V_j^2 = (X^T u)_j^2 / (N - 1), so s needs no division by lambda. Exact; cheaper when
  N < K0 (it materialises X, N x K0, which is then smaller than one K0 x K0 matrix).
- ``truncated``: total = trace(Sigma) = the sum of the column variances, computed without any eigen-
  decomposition, so only the leading eigenpairs are needed. They come from block Krylov (block Lanczos
  with full re-orthogonalisation, blocks of 128 columns started in the range of X^T) with Rayleigh-Ritz
  (float64, over row chunks) on the whole basis each time it has grown by a quarter; Sigma is applied as
  X^T (X V) / (N - 1) (X materialised, N x K0; nothing K0 x K0 is formed). Ritz values are lower bounds,
  and so are their cumulative sums (Ky Fan's maximum principle), so once cumsum(theta)_k >= beta_e *
  total, k_e <= k is certain. k = k_e is accepted when k <= 3/4 of the basis, every top-k residual
  ||Sigma v - theta v|| is below 1e-4 theta_1 (1e-8 for float64 logits; float32 products floor near
  1e-5), and cumsum(theta)_{k-1} + sum_{i<k} ||r_i|| < beta_e * total: each Ritz value lies within its
  residual norm of an eigenvalue, and taking these to be the top ones (no eigenvalue missed by the
  random start: the usual assumption of Krylov methods, not a proof) makes that sum an upper bound of
  the true cumsum_{k-1}. tests/test_spectral_filter.py and bench.spectral_filter check the result
  against the exact routes. A basis spanning the range of X^T is exact; if it gets there unverified,
  the full route (below) runs instead. ``eigenvalues`` holds the Ritz values of the final basis (the
  first k_e verified). The basis ends near 2.5-3 k_e columns: the cost grows with k_e, not with K0^2.
- ``auto``: when min(N, K0) <= AUTO_FULL_MAX (a full eigh of that size takes a second or two) or
  beta_e = 1 (the whole spectrum counts: k_e is then the numerical rank, which round-off decides), the
  full route: ``gram`` if N < K0, else ``exact``. Otherwise ``truncated``, switching to the full route
  (recorded in `Filtered.route`, the attempt in `info["truncated_gave_up"]`) when the basis would pass
  min(N, K0) / 3 columns, i.e. k_e above ~min(N, K0) / 8: its passes over X then cost 4/3 N K0 min(N, K0)
  flops, about the full route's product, so the full route is cheaper from there. Why, measured on 2
  cores (bench.spectral_filter; the figures are in reports/bench/spectral_filter.json, on synthetic
  CLIP-like logits): truncated was faster than exact from K0 = 4,096 up (N = 50,000) and than gram from
  N = 5,000 up (K0 = 22,131; about even there), with the same kept concepts. LAPACK's eigh grows as
  ~K0^3 (about a minute at K0 = 8,192, a quarter of an hour or more extrapolated to 22,131) and the
  covariance product as 2 N K0^2 flops, while the truncated route costs ~4 N K0 flops per basis column.

Precision: float64 logits run in float64; anything else in float32 (as the reference) for the N x K0 and
K0 x K0 arrays, with column means, variances (Chan's merge, float64) and all cumulative sums in float64;
X is centred with float64 means before any product, so near-constant columns do not cancel.
Memory: the caller's logits are never modified; softmax and centring run in row blocks of about 16 MiB.
The gram and truncated routes hold X (N x K0, in the working dtype) beside the logits.
"""

import time
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch

ROUTES = ("auto", "exact", "gram", "truncated")
# auto: the largest min(N, K0) decomposed in full (eigh of 2,048 x 2,048 float32: ~1 s on 2 cores).
AUTO_FULL_MAX = 2048
BLOCK_ELEMENTS = 1 << 22          # row block of the softmax / centring passes (16 MiB in float32)
_BLOCK, _GROW, _SPARE = 128, 1.25, 0.25       # truncated: Krylov block, check schedule, spare columns
_TOL = {torch.float32: 1e-4, torch.float64: 1e-8}   # truncated: max residual / theta_1 to accept


@dataclass(frozen=True)
class Filtered:
    """The result of `spectral_filter`.

    keep: int64 (k_c,), the kept concept indices in descending importance. scores: float64 (K0,), s for
    every concept. eigenvalues: float64, descending, those computed (K0 for exact, N for gram, the final
    Ritz block for truncated). total: the sum the eigenvalue shares are taken of (trace of Sigma).
    info: "seconds" per stage; for truncated also "dims" (basis columns), "passes" (blocks pushed through
    X^T (X V)) and "checks" (per Rayleigh-Ritz: basis size, share of the total captured, and once it
    reaches beta_e the k, max residual / theta_1 and the verification margin / total).
    """
    keep: np.ndarray
    scores: np.ndarray
    k_e: int
    k_c: int
    eigenvalues: np.ndarray
    route: str
    total: float
    info: dict


def spectral_filter(logits, beta_e: float = 0.95, beta_c: float = 0.99, route: str = "auto") -> Filtered:
    """Spectral filtering of the concept columns of `logits` (N x K0, numpy array or torch tensor; the
    computation runs on a tensor's device). See the module docstring for the steps and routes.

    Raises ValueError for a beta outside (0, 1] (naming `beta_e` / `beta_c`), an unknown route, logits that
    are not 2-D or have fewer than 2 rows or no column, a NaN/inf value, or zero total variance.
    """
    for name, beta in (("beta_e", beta_e), ("beta_c", beta_c)):
        if isinstance(beta, bool) or not isinstance(beta, Real) or not 0 < float(beta) <= 1:
            raise ValueError(f"{name} must be a number in (0, 1], got {beta!r}")
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r} (known: {', '.join(ROUTES)})")
    shape = tuple(logits.shape) if hasattr(logits, "shape") else np.shape(logits)
    if len(shape) != 2:
        raise ValueError(f"logits must be 2-D (N images x K0 concepts), got shape {shape}")
    n, k0 = shape
    if n < 2:
        raise ValueError(f"logits needs at least 2 rows (the covariance divides by N - 1), got N = {n}")
    if k0 < 1:
        raise ValueError("logits has no concept column (K0 = 0)")
    if isinstance(logits, torch.Tensor):
        logits = logits.detach()
    elif not isinstance(logits, np.ndarray):
        logits = np.asarray(logits)
    dtype = torch.float64 if logits.dtype in (np.float64, torch.float64) else torch.float32
    device = logits.device if isinstance(logits, torch.Tensor) else torch.device("cpu")
    beta_e, beta_c = float(beta_e), float(beta_c)

    full = "gram" if n < k0 else "exact"
    cap = None
    if route == "auto":
        route, cap = auto_route(n, k0, beta_e), min(n, k0) // 3
    clock = _Clock()
    x = None if route == "exact" else torch.empty((n, k0), dtype=dtype, device=device)
    mean, var = _column_stats(logits, dtype, device, x)
    _check_total(float(var.sum()))
    clock.lap("softmax_centre")
    found, info = None, {}
    if route == "truncated":
        total = float(var.sum())
        found, info = _truncated(x, total, beta_e, n - 1, cap)
        clock.lap("krylov")
        if found is None:
            route = full        # k_e too large for the block method (auto's cap) or not verified
            info = {"truncated_gave_up": info}
    if found is not None:
        values, contrib = found
    elif route == "exact":
        if x is None:           # blocks recomputed from the logits: no N x K0 copy
            blocks = _centred_blocks(logits, mean, dtype, device)
        else:                   # auto's fallback, X already in memory
            step = max(1, BLOCK_ELEMENTS // k0)
            blocks = (x[i:i + step] for i in range(0, n, step))
        held = [_covariance(blocks, k0, n - 1)]
        del x, blocks
        clock.lap("covariance")
        values, contrib = _exact(held, beta_e)
        clock.lap("eigh")
        total = float(values.sum())
    else:
        values, contrib = _gram(x, n - 1, beta_e, clock)
        total = float(values.sum())
    _check_total(total)
    k_e = _count(values, total, beta_e)
    scores = contrib(k_e)
    order = np.argsort(-scores, kind="stable")
    k_c = _count(scores[order], float(scores.sum()), beta_c)
    clock.lap("scores")
    return Filtered(keep=order[:k_c].astype(np.int64), scores=scores, k_e=k_e, k_c=k_c, eigenvalues=values,
                    route=route, total=total, info={**info, "seconds": clock.laps})


def auto_route(n: int, k0: int, beta_e: float = 0.95) -> str:
    """The route "auto" starts with for N x K0 logits (module docstring): the full decomposition (gram if
    N < K0, else exact) when min(N, K0) <= AUTO_FULL_MAX or beta_e == 1, else truncated."""
    if min(n, k0) <= AUTO_FULL_MAX or beta_e == 1:
        return "gram" if n < k0 else "exact"
    return "truncated"


class _Clock:
    """Seconds per named stage (perf_counter laps), recorded in `Filtered.info["seconds"]`."""

    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self._last, 4)
        self._last = now


def _count(values: np.ndarray, total: float, beta: float) -> int:
    """searchsorted(cumsum(values) / total, beta) + 1 (side left), at most len(values)."""
    ratio = np.cumsum(values, dtype=np.float64) / total
    return int(min(np.searchsorted(ratio, beta) + 1, len(values)))


def _check_total(total: float) -> None:
    if not total > 0:
        raise ValueError("every concept column is constant after the softmax (total variance 0): "
                         "nothing to filter")


def _blocks(logits, dtype, device):
    """(start, stop, softmax of rows start:stop in `dtype`) over row blocks of about BLOCK_ELEMENTS."""
    n, k0 = logits.shape
    step = max(1, BLOCK_ELEMENTS // k0)
    for start in range(0, n, step):
        stop = min(n, start + step)
        part = logits[start:stop]
        block = (part.to(device=device, dtype=dtype) if isinstance(part, torch.Tensor)
                 else torch.tensor(part, dtype=dtype))   # a copy: read-only or memory-mapped inputs are fine
        bad = ~torch.isfinite(block)
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"logits has non-finite values ({int(bad.sum())} in rows {start}:{stop}; "
                             f"first at row {start + i}, column {j})")
        yield start, stop, torch.softmax(block, dim=1)


def _column_stats(logits, dtype, device, out):
    """Column means and variances (ddof 1) of P, float64, by Chan's pairwise merge over row blocks.
    With `out` (N x K0), P is written there and then centred in place."""
    k0 = logits.shape[1]
    count = 0
    mean = torch.zeros(k0, dtype=torch.float64, device=device)
    m2 = torch.zeros_like(mean)
    for start, stop, p in _blocks(logits, dtype, device):
        if out is not None:
            out[start:stop] = p
        p64 = p.to(torch.float64)
        b = stop - start
        bmean = p64.mean(0)
        bm2 = p64.sub_(bmean).square_().sum(0)                 # in place: one float64 block at a time
        delta = bmean - mean
        mean += delta * (b / (count + b))
        m2 += bm2 + delta ** 2 * (count * b / (count + b))
        count += b
        del p64
    if out is not None:
        shift = mean.to(dtype)
        step = max(1, BLOCK_ELEMENTS // k0)
        for start in range(0, count, step):
            out[start:start + step] -= shift
    return mean, m2 / (count - 1)


def _centred_blocks(logits, mean, dtype, device):
    """Row blocks of X = P - mean, recomputed from the logits (no N x K0 copy)."""
    shift = mean.to(dtype)
    for _, _, p in _blocks(logits, dtype, device):
        p -= shift
        yield p


def _covariance(blocks, k0, n1):
    """Sigma = sum over row blocks of X_b^T X_b, divided by n1: the one K0 x K0 matrix."""
    sigma = None
    for p in blocks:
        if sigma is None:
            sigma = torch.zeros((k0, k0), dtype=p.dtype, device=p.device)
        sigma.addmm_(p.T, p)
    sigma /= n1
    return sigma


def _exact(held, beta_e):
    """Full eigh of Sigma, passed as the only item of `held` and freed as soon as eigh returns. Returns
    (eigenvalues descending, contributions: k -> s over the top-k eigenpairs)."""
    sigma = held.pop()
    values, vectors = torch.linalg.eigh(sigma)
    del sigma
    values = values.flip(0).to(torch.float64).cpu().numpy()
    k_e = _count(values, float(values.sum()), beta_e)
    top = vectors[:, -k_e:].flip(1).to(torch.float64)     # only the top k_e columns are kept
    del vectors
    lam = torch.as_tensor(values[:k_e], device=top.device)

    def contrib(k):
        return ((top[:, :k] ** 2) @ lam[:k]).cpu().numpy()
    return values, contrib


def _gram(x, n1, beta_e, clock):
    """Eigenpairs of G = X X^T / (N - 1); s_j = sum_i (X^T u_i)_j^2 / (N - 1)."""
    g = x @ x.T
    g /= n1
    clock.lap("gram")
    values, u = torch.linalg.eigh(g)
    del g
    clock.lap("eigh")
    values = values.flip(0).to(torch.float64).cpu().numpy()
    k_e = _count(values, float(values.sum()), beta_e)
    z = (x.T @ u[:, -k_e:].flip(1)).to(torch.float64)   # K0 x k_e
    del u

    def contrib(k):
        return ((z[:, :k] ** 2).sum(1) / n1).cpu().numpy()
    return values, contrib


def _project_out(q: torch.Tensor, basis: list) -> torch.Tensor:
    """q minus its components along the orthonormal blocks of `basis` (classical Gram-Schmidt, twice)."""
    for _ in range(2):
        for b in basis:
            q = q - b @ (b.T @ q)
    return q


def _truncated(x, total, beta_e, n1, max_dims):
    """The leading eigenpairs of Sigma = X^T X / n1, enough for k_e at beta_e of `total`, by block Krylov
    (block Lanczos with full re-orthogonalisation; blocks of _BLOCK columns started in the range of X^T)
    and Rayleigh-Ritz on the whole basis each time it has grown by _GROW. Returns ((Ritz values,
    contributions) or None, info): None when the basis would pass `max_dims` columns, or spans the range
    of X^T without verifying (the caller then takes a full route)."""
    n, k0 = x.shape
    rank = min(n - 1, k0)                        # X is centred: rank <= N - 1
    gen = torch.Generator().manual_seed(0)
    start = lambda cols: x.T @ torch.randn((n, cols), generator=gen, dtype=x.dtype).to(x.device)
    eps = 1e3 * torch.finfo(x.dtype).eps
    basis, images, trail = [], [], []
    dims, check, complete = 0, 2 * _BLOCK, False
    q = _next_block(start(min(rank, _BLOCK)), [], eps)
    while True:
        w = x.T @ (x @ q)
        w /= n1                                  # Sigma q: one pass over X
        basis.append(q)
        images.append(w)
        dims += q.shape[1]
        complete = complete or dims >= rank
        if dims >= check or complete:
            check = int(dims * _GROW)
            found = _ritz(basis, images, total, beta_e, complete, trail, _TOL[x.dtype])
            if found is not None or complete:
                return found, {"dims": dims, "passes": len(basis), "checks": trail}
        cols = min(_BLOCK, rank - dims)
        if max_dims is not None and dims + cols > max_dims:
            return None, {"dims": dims, "passes": len(basis), "checks": trail, "cap": max_dims}
        q = _next_block(w[:, :cols], basis, eps)
        if q is None:                            # the Krylov space is invariant: restart in the range
            q = _next_block(start(cols), basis, eps)
        if q is None:                            # the basis spans the range of X^T: Rayleigh-Ritz is exact
            complete, check = True, 0
            q = torch.empty((k0, 0), dtype=x.dtype, device=x.device)


def _next_block(c, basis, eps):
    """An orthonormal basis of the numerically independent part of c orthogonal to `basis` (singular
    values above eps times c's largest column norm), or None when nothing is left."""
    u, sv, _ = torch.linalg.svd(_project_out(c, basis), full_matrices=False)
    keep = sv > eps * float(torch.linalg.vector_norm(c, dim=0).max())
    if not bool(keep.any()):
        return None
    return torch.linalg.qr(_project_out(u[:, keep], basis)).Q    # orthogonal to `basis` to round-off


def _ritz(basis, images, total, beta_e, complete, trail, tol):
    """Rayleigh-Ritz on the basis; (Ritz values, contributions) once k_e is verified, else None. Runs in
    float64 over row chunks, so no float64 copy of the whole basis is held."""
    k0, dims = basis[0].shape[0], sum(b.shape[1] for b in basis)
    step = max(1, (1 << 24) // dims)                          # two float64 chunks of 128 MiB

    def chunks():
        for r in range(0, k0, step):
            yield (torch.cat([b[r:r + step] for b in basis], 1).to(torch.float64),
                   torch.cat([w[r:r + step] for w in images], 1).to(torch.float64))
    h = sum(kc.T @ ac for kc, ac in chunks())
    theta, s = torch.linalg.eigh((h + h.T) / 2)
    theta, s = theta.flip(0), s.flip(1)
    cum = torch.cumsum(theta, 0)
    trail.append({"dims": dims, "captured": round(float(cum[-1]) / total, 6)})
    target = beta_e * total
    if float(cum[-1]) < target:                               # Ritz sums are lower bounds: grow
        return None
    k = _count(theta.cpu().numpy(), total, beta_e)
    if not complete and k > dims * (1 - _SPARE):
        return None
    sk, v, res2 = s[:, :k], [], 0.0
    for kc, ac in chunks():                                   # Ritz vectors and residual norms
        v.append(kc @ sk)
        res2 = res2 + ((ac @ sk - v[-1] * theta[:k]) ** 2).sum(0)
    v, res = torch.cat(v), res2.sqrt()
    below = float(cum[k - 2]) if k >= 2 else 0.0
    bound = float(res[:k - 1].sum())
    trail[-1].update(k=k, max_residual=float(res.max() / theta[0]), margin=(target - below - bound) / total)
    if not (float(res.max()) <= tol * float(theta[0]) and below + bound < target):
        return None
    lam = theta[:k]

    def contrib(kk):
        return ((v[:, :kk] ** 2) @ lam[:kk]).cpu().numpy()
    return theta.cpu().numpy(), contrib
