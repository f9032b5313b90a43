"""Tip-Adapter, training-free (METHODS.md §7).

Shapes: few-shot views are (C, K, V, D) raw projected embeddings (class-major, V augmented views
per shot); cache keys are (C, K, D) unit vectors. The one-hot value matrix L (CK x C) of the paper
is implicit: `A @ L` is a sum over each class's K keys.
"""

from dataclasses import dataclass

import torch

from pipeline import config
from pipeline.fusion import ELEMENT_BUDGET, count_correct
from pipeline.methods.contract import Fit, Method
from pipeline.methods.cosine import normalize, zeroshot_logits


def sharpen(cos: torch.Tensor, sharpness) -> torch.Tensor:
    """Tip's affinity kernel exp(-sharpness * (1 - cos)); sharpness broadcasts against cos."""
    return torch.exp(-sharpness * (1.0 - cos))


def cache_keys(views: torch.Tensor) -> torch.Tensor:
    """(C, K, V, D) raw view embeddings -> (C, K, D) keys: normalised mean of the raw views."""
    if views.ndim != 4:
        raise ValueError(f"views must be (C, K, V, D), got shape {tuple(views.shape)}")
    return normalize(views.mean(dim=2))


def check_cache(query: torch.Tensor, keys: torch.Tensor, text_protos: torch.Tensor | None = None) -> None:
    """Raise ValueError unless query is (N, D), keys (C, K, D) and text_protos (if given) (C, D)."""
    if keys.ndim != 3:
        raise ValueError(f"keys must be (C, K, D), got shape {tuple(keys.shape)}")
    if query.ndim != 2 or query.shape[1] != keys.shape[2]:
        raise ValueError(f"query must be (N, {keys.shape[2]}), got shape {tuple(query.shape)}")
    if text_protos is not None and text_protos.shape != (keys.shape[0], keys.shape[2]):
        raise ValueError(
            f"text_protos must be ({keys.shape[0]}, {keys.shape[2]}) to match keys, got {tuple(text_protos.shape)}"
        )


def key_cosines(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(N, D) raw queries x (C, K, D) unit keys -> (N, C, K) cosines q̄·F_{c,k}."""
    check_cache(query, keys)
    return torch.einsum("nd,ckd->nck", normalize(query), keys)


def cache_affinity(
    query: torch.Tensor, keys: torch.Tensor, beta: float, value_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, C) cache term exp(-beta (1 - q̄ F^T)) (L ⊙ w), without the residual weight alpha.

    value_weights: optional (C, K) per-key scaling of the one-hot values (APE's KL weights);
    None means plain one-hot values (Tip-Adapter).
    """
    aff = sharpen(key_cosines(query, keys), beta)
    if value_weights is not None:
        if value_weights.shape != keys.shape[:2]:
            raise ValueError(f"value_weights must be {tuple(keys.shape[:2])}, got {tuple(value_weights.shape)}")
        aff = aff * value_weights
    return aff.sum(dim=-1)


def search_grid(scale: float, steps: int, start: float = 0.1) -> list[float]:
    """The reference grid [start + i (scale - start) / steps for i < steps] (scale itself excluded).

    Tip/APE beta and alpha use start=0.1; APE's gamma grid i * scale / steps is start=0.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return [i * (scale - start) / steps + start for i in range(steps)]


def cache_grid_counts(
    zs_logits: torch.Tensor,
    cosines: torch.Tensor,
    value_weights: torch.Tensor,
    betas: list[float],
    alphas: list[float],
    labels: torch.Tensor,
) -> torch.Tensor:
    """Correct-prediction counts of zs + alpha * sum_k exp(-beta (1 - cos)) w_g over a full grid.

    zs_logits (N, C), cosines (N, C, K), value_weights (G, C, K) (one row per value weighting, e.g.
    APE's gamma grid; a single row of ones for Tip), labels (N,). Returns int64 (B, A, G) counts for
    betas x alphas x value rows. The exp is evaluated once per beta and broadcast over alphas and
    value rows; chunks over betas and queries keep intermediates within the fusion memory budget.
    """
    n, c, k = cosines.shape
    if zs_logits.shape != (n, c) or labels.shape != (n,) or value_weights.shape[1:] != (c, k):
        raise ValueError(
            f"inconsistent shapes: zs_logits {tuple(zs_logits.shape)}, cosines {tuple(cosines.shape)}, "
            f"value_weights {tuple(value_weights.shape)}, labels {tuple(labels.shape)}"
        )
    beta_t = torch.as_tensor(betas, dtype=cosines.dtype, device=cosines.device)
    alpha_t = torch.as_tensor(alphas, dtype=cosines.dtype, device=cosines.device).view(-1, 1, 1, 1)
    g = value_weights.shape[0]
    per_beta_query = alpha_t.shape[0] * g * c + c * k + g * c
    q_step = min(n, max(1, ELEMENT_BUDGET // per_beta_query))
    b_step = max(1, ELEMENT_BUDGET // (q_step * per_beta_query))
    counts = torch.zeros(len(betas), alpha_t.shape[0], g, dtype=torch.int64, device=cosines.device)
    for q0 in range(0, n, q_step):
        cos_q, zs_q, lab_q = cosines[q0 : q0 + q_step], zs_logits[q0 : q0 + q_step], labels[q0 : q0 + q_step]
        for b0 in range(0, len(betas), b_step):
            kernel = sharpen(cos_q, beta_t[b0 : b0 + b_step].view(-1, 1, 1, 1))  # (b, n, C, K)
            aff = torch.einsum("bnck,gck->bgnc", kernel, value_weights)
            logits = zs_q + alpha_t * aff[:, None]  # (b, A, G, n, C)
            counts[b0 : b0 + b_step] += count_correct(logits, lab_q)
    return counts


def tip_search(
    query: torch.Tensor,
    labels: torch.Tensor,
    text_protos: torch.Tensor,
    keys: torch.Tensor,
    beta_scale: float,
    alpha_scale: float,
    beta_steps: int = 200,
    alpha_steps: int = 20,
) -> dict:
    """Tip's exhaustive (beta, alpha) search on val (§7.2); first best in beta-major order wins.

    query/labels must be the val split. Returns {"beta", "alpha", "val_acc", "acc_grid" (B, A)}.
    """
    check_cache(query, keys, text_protos)
    betas, alphas = search_grid(beta_scale, beta_steps), search_grid(alpha_scale, alpha_steps)
    ones = torch.ones(1, *keys.shape[:2], dtype=keys.dtype, device=keys.device)
    counts = cache_grid_counts(
        zeroshot_logits(query, text_protos, 100.0), key_cosines(query, keys), ones, betas, alphas, labels
    )[..., 0]
    return grid_best(counts, {"beta": betas, "alpha": alphas}, labels.shape[0])


def grid_best(counts: torch.Tensor, grids: dict[str, list[float]], num_queries: int) -> dict:
    """First best cell of a full grid of hit counts, row-major = the reference loop-nesting order.

    counts has one axis per entry of `grids`, in order. Returns the chosen value per grid name,
    "val_acc" (fraction) and "acc_grid" (accuracy of every cell).
    """
    if tuple(counts.shape) != tuple(len(v) for v in grids.values()):
        raise ValueError(f"counts shape {tuple(counts.shape)} does not match grid sizes of {list(grids)}")
    best = rest = int(torch.argmax(counts.flatten()))
    chosen = {}
    for name, values in reversed(grids.items()):
        rest, i = divmod(rest, len(values))
        chosen[name] = values[i]
    acc = counts.double() / num_queries
    return {**{name: chosen[name] for name in grids}, "val_acc": float(acc.flatten()[best]), "acc_grid": acc}


def percent(fraction) -> float:
    """A val accuracy fraction as the percentage the logits attrs record."""
    return round(100 * float(fraction), 4)


@dataclass(frozen=True)
class TipConfig:
    """`methods.tip`: the (beta, alpha) grid (METHODS.md §7.2)."""
    scales: tuple[float, float]   # S_beta, S_alpha
    steps: tuple[int, int]


class TipAdapter(Method):
    """Tip-Adapter: zero-shot logits + alpha * cache affinity; beta chosen on val jointly with alpha."""
    name, label, block, base = "tip", "Tip-Adapter", "tip", True
    weights = {"alpha": (0.0, 50.0)}   # Tip's alpha grids reach S_alpha <= 50 (§7.2)
    knobs = ("beta",)

    def config(self, section, where, arch):
        return TipConfig(config.numbers(section, "scales", where, 2, positive=True),
                         config.int_list(section, "steps", where, n=2))

    def needs(self, cfg):
        return {"views"}

    def fit(self, inputs, draw, state, cfg):
        keys = cache_keys(inputs.tensor(inputs.views.emb[draw.view_rows]))   # (C, K, D) from (C, K, V, D)
        best = tip_search(draw.q_val, draw.y_val, inputs.protos, keys, *cfg.scales, *cfg.steps)
        choice = {"beta": best["beta"], "alpha": best["alpha"], "val_acc": percent(best["val_acc"])}
        return Fit(choice, lambda s: {"alpha": cache_affinity(inputs.query[s], keys, best["beta"])})


METHOD = TipAdapter()
