"""APE, training-free: channel selection + KL-weighted Tip cache (METHODS.md §8).

Shapes follow `tip_adapter`: text prototypes (C, D) unit rows, cache keys (C, K, D) unit rows.
"""

from dataclasses import dataclass

import torch

from pipeline import config
from pipeline.methods.contract import Fit, Method
from pipeline.methods.cosine import normalize, zeroshot_logits
from pipeline.methods.tip_adapter import (
    cache_affinity,
    cache_grid_counts,
    cache_keys,
    check_cache,
    grid_best,
    key_cosines,
    percent,
    search_grid,
)

# Smoothing constant of APE's KL term.
_EPS = 1e-6


def channel_criterion(text_protos: torch.Tensor, keys: torch.Tensor, w0: float, w1: float) -> torch.Tensor:
    """(D,) criterion J_d = -w0 sim_d + w1 var_d (§8.1), in closed form.

    sim_d averages g_{i,m,d} g_{j,n,d} over class pairs i != j and all members m, n of the stacks
    g_c = [text_c, keys_c] (K + 1 rows); with S_i = sum_m g_i and S = sum_i S_i the pair sum is
    S*S - sum_i S_i*S_i. var_d is the unbiased variance of the text prototypes across classes
    (torch.var, as in the reference).
    """
    check_cache(text_protos, keys, text_protos)
    c, k, _ = keys.shape
    if c < 2:
        raise ValueError(f"channel_criterion needs at least 2 classes, got C={c}")
    # float64: S*S - sum_i S_i*S_i cancels heavily when C*K is large (ImageNet: 17,000 rows)
    stacks = torch.cat([text_protos.unsqueeze(1), keys], dim=1).double()  # (C, K+1, D)
    per_class = stacks.sum(dim=1)
    total = per_class.sum(dim=0)
    sim = (total * total - (per_class * per_class).sum(dim=0)) / (c * (c - 1) * (k + 1) ** 2)
    return (-w0 * sim + w1 * text_protos.double().var(dim=0)).to(text_protos.dtype)


def select_channels(
    text_protos: torch.Tensor, keys: torch.Tensor, num_channels: int, w0: float, w1: float
) -> torch.Tensor:
    """(Q,) indices of the num_channels channels with the largest criterion (`torch.topk` order)."""
    dim = keys.shape[-1]
    if not isinstance(num_channels, int) or not 0 < num_channels <= dim:
        raise ValueError(f"num_channels must be an int in [1, {dim}], got {num_channels!r}")
    return torch.topk(channel_criterion(text_protos, keys, w0, w1), num_channels).indices


def refine(x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Restrict the last dimension to `channels` and renormalise each row."""
    return normalize(x[..., channels])


def kl_divergence(keys_ref: torch.Tensor, text_ref: torch.Tensor) -> torch.Tensor:
    """(C, K) per-key divergence D = sum_j L_j log2((L_j + eps) / (p_j + eps)), p = softmax_j(F'·T'_j).

    With one-hot L only the own-class term survives: log2((1 + eps) / (p_c + eps)). Plain cosines
    feed the softmax (no temperature), as in the reference.
    """
    c, k, _ = keys_ref.shape
    probs = torch.softmax(torch.einsum("ckq,jq->ckj", keys_ref, text_ref), dim=-1)
    own = probs.gather(-1, torch.arange(c, device=keys_ref.device).view(c, 1, 1).expand(c, k, 1))[..., 0]
    return torch.log2((1.0 + _EPS) / (own + _EPS))


def ape_cache_affinity(
    query: torch.Tensor,
    text_protos: torch.Tensor,
    keys: torch.Tensor,
    channels: torch.Tensor,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """(N, C) APE cache term exp(-beta (1 - q' F'^T)) (L ⊙ exp(gamma D)) on the refined channels."""
    check_cache(query, keys, text_protos)
    keys_ref = refine(keys, channels)
    weights = torch.exp(gamma * kl_divergence(keys_ref, refine(text_protos, channels)))
    return cache_affinity(refine(query, channels), keys_ref, beta, weights)


def ape_search(
    query: torch.Tensor,
    labels: torch.Tensor,
    text_protos: torch.Tensor,
    keys: torch.Tensor,
    channels: torch.Tensor,
    scales: tuple[float, float, float],
    gamma_steps: int = 20,
    beta_steps: int = 200,
    alpha_steps: int = 20,
) -> dict:
    """APE's exhaustive (beta, alpha, gamma) search on val (§8.3), first best in that loop order.

    scales = (S_beta, S_alpha, S_gamma); beta and alpha grids start at 0.1, gamma's at 0.
    query/labels must be the val split. Returns {"beta", "alpha", "gamma", "val_acc", "acc_grid" (B, A, G)}.
    """
    check_cache(query, keys, text_protos)
    betas = search_grid(scales[0], beta_steps)
    alphas = search_grid(scales[1], alpha_steps)
    gammas = search_grid(scales[2], gamma_steps, start=0.0)
    keys_ref = refine(keys, channels)
    div = kl_divergence(keys_ref, refine(text_protos, channels))
    gamma_t = torch.as_tensor(gammas, dtype=div.dtype, device=div.device).view(-1, 1, 1)
    counts = cache_grid_counts(
        zeroshot_logits(query, text_protos, 100.0),
        key_cosines(refine(query, channels), keys_ref),
        torch.exp(gamma_t * div),
        betas,
        alphas,
        labels,
    )
    return grid_best(counts, {"beta": betas, "alpha": alphas, "gamma": gammas}, labels.shape[0])


@dataclass(frozen=True)
class APEConfig:
    """`methods.ape` (METHODS.md §8): channels kept, criterion weights, the (beta, alpha, gamma) grid."""
    channels: int | float            # a fraction in (0, 1] of the embedding width, or a count
    w: tuple[float, float]           # criterion -w0 sim + w1 var
    scales: tuple[float, float, float]   # S_beta, S_alpha, S_gamma
    steps: tuple[int, int, int]          # beta, alpha, gamma steps

    def channel_count(self, dim: int) -> int:
        q = max(1, round(self.channels * dim)) if isinstance(self.channels, float) else self.channels
        if q > dim:
            raise config.ParamsError(f"params.yaml: 'methods.ape.channels' = {self.channels} exceeds the "
                                     f"embedding width {dim}")
        return q


class APE(Method):
    """APE: zero-shot logits + alpha * KL-weighted cache on the selected channels; beta, gamma chosen on val."""
    name, label, block, base = "ape", "APE", "ape", True
    weights = {"alpha": (0.0, 50.0)}   # APE's alpha grids reach S_alpha <= 50 (§8.3)
    knobs = ("beta", "gamma", "channels")

    def config(self, section, where, arch):
        channels = config.need(section, "channels", (int, float), where)
        if (isinstance(channels, float) and not 0 < channels <= 1) or (isinstance(channels, int) and channels < 1):
            raise config.ParamsError(f"params.yaml: '{where}.channels' = {channels!r} should be a fraction in "
                                     f"(0, 1] of the embedding width or a channel count >= 1")
        w = config.numbers(section, "w", where, 2)
        if min(w) < 0:
            raise config.ParamsError(f"params.yaml: '{where}.w' = {list(w)!r} should be two numbers >= 0")
        return APEConfig(channels, w, config.numbers(section, "scales", where, 3, positive=True),
                         config.int_list(section, "steps", where, n=3))

    def needs(self, cfg):
        return {"views"}

    def fit(self, inputs, draw, state, cfg):
        keys = cache_keys(inputs.tensor(inputs.views.emb[draw.view_rows]))
        channels = select_channels(inputs.protos, keys, cfg.channel_count(keys.shape[-1]), *cfg.w)
        n_beta, n_alpha, n_gamma = cfg.steps
        best = ape_search(draw.q_val, draw.y_val, inputs.protos, keys, channels, cfg.scales, n_gamma, n_beta, n_alpha)
        choice = {**{k: best[k] for k in ("beta", "alpha", "gamma")}, "val_acc": percent(best["val_acc"]),
                  "channels": int(channels.numel())}
        return Fit(choice, lambda s: {"alpha": ape_cache_affinity(inputs.query[s], inputs.protos, keys, channels,
                                                                  best["beta"], best["gamma"])})


METHOD = APE()
