"""SeMoBridge, training-free (METHODS.md §3): image embeddings bridged into the text side.

Shapes: projected image embeddings f are (..., D) raw rows; few-shot sets are (C, K', D) (K'
includes augmented copies); W_txt is (d_t, D) applied as e @ W_txt; text prototypes are (C, D)
unit rows. Sharpness and fusion parameters are searched on val in one batched pass through
`semobridge_builder` + `pipeline.fusion.search_batched` (random rows from
`pipeline.fusion.sample_weights(SEARCH_SPACE, ...)` replace the reference's Optuna TPE).
"""

from dataclasses import dataclass
from typing import Callable

import torch

from pipeline import config
from pipeline.fusion import search_space
from pipeline.methods.ape import kl_divergence
from pipeline.methods.contract import Fit, Method
from pipeline.methods.cosine import normalize
from pipeline.methods.tip_adapter import percent, sharpen

# The linear weights of z1, z2, z3, in [0, 1] (§3.5); fuse searches them, adapt searches them with the rest.
WEIGHTS = {"lambda1": (0.0, 1.0), "lambda2": (0.0, 1.0), "lambda3": (0.0, 1.0)}
# The reference's Optuna ranges (§3.5); column order of parameter rows, as the reference's param_names.
SEARCH_SPACE = {"smoothness": (0.0, 1.5), "alpha": (0.0, 10.0), "beta": (0.0, 10.0), "gamma": (0.0, 10.0), **WEIGHTS}
PARAM_NAMES = tuple(SEARCH_SPACE)
EXTRA_SHOTS = ("none", "hflip", "views")


def bridge_matrix(W_txt: torch.Tensor, atol: float = 0.3) -> torch.Tensor:
    """(D, d_t) pseudo-inverse of W_txt with singular values <= atol treated as zero (rtol 0)."""
    if W_txt.ndim != 2:
        raise ValueError(f"W_txt must be a (d_t, D) matrix, got shape {tuple(W_txt.shape)}")
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    return torch.linalg.pinv(W_txt, atol=atol, rtol=0.0)


def text_scale(eos_pre: torch.Tensor) -> torch.Tensor:
    """(C, P, d_t) raw EOS features per class and prompt -> s = mean_c || mean_p e_{c,p} ||."""
    if eos_pre.ndim != 3:
        raise ValueError(f"eos_pre must be (C, P, d_t), got shape {tuple(eos_pre.shape)}")
    return eos_pre.mean(dim=1).norm(dim=-1).mean()


def bridge(f: torch.Tensor, P: torch.Tensor, W_txt: torch.Tensor, s) -> torch.Tensor:
    """(..., D) raw image embeddings -> (..., D) bridged embeddings f̂ = s * normalize(f P) @ W_txt."""
    if P.shape != W_txt.shape[::-1] or f.shape[-1] != P.shape[0]:
        raise ValueError(
            f"shapes disagree: f {tuple(f.shape)}, P {tuple(P.shape)} (want (D, d_t)), W_txt {tuple(W_txt.shape)}"
        )
    return (s * normalize(f @ P)) @ W_txt


def class_divergence(shot_protos: torch.Tensor, text_protos: torch.Tensor) -> torch.Tensor:
    """(C,) D_c = log2((1 + 1e-6) / (p_c[c] + 1e-6)), p_c = softmax_j(F̃_c · T̃_j) (APE's KL, per class)."""
    if shot_protos.ndim != 2 or shot_protos.shape != text_protos.shape:
        raise ValueError(
            "shot_protos and text_protos must both be (C, D), "
            f"got {tuple(shot_protos.shape)} and {tuple(text_protos.shape)}"
        )
    return kl_divergence(shot_protos.unsqueeze(1), text_protos)[:, 0]


def semobridge_cosines(
    query: torch.Tensor,
    shots: torch.Tensor,
    text_protos: torch.Tensor,
    P: torch.Tensor,
    W_txt: torch.Tensor,
    s,
) -> dict[str, torch.Tensor]:
    """The three (N, C) cosine maps the logits sharpen, paired as the reference code pairs them.

    "c1": q · T̃ (zero-shot); "c2": q · G̃ (raw query vs bridged few-shot prototypes, for beta/z2);
    "c3": q̂ · F̃ (bridged query vs raw few-shot prototypes, for gamma/z3); also "divergence" (C,),
    the D_c of the class weights. q = normalize(query); F̃ = normalised mean of raw shots;
    G̃ = normalised mean of bridged shots; q̂ = normalised bridged query.
    """
    if shots.ndim != 3 or text_protos.shape != (shots.shape[0], shots.shape[2]):
        raise ValueError(
            f"shots must be (C, K', D) and text_protos (C, D), "
            f"got {tuple(shots.shape)} and {tuple(text_protos.shape)}"
        )
    raw_protos = normalize(shots.mean(dim=1))
    bridged_protos = normalize(bridge(shots, P, W_txt, s).mean(dim=1))
    q = normalize(query)
    return {
        "c1": q @ text_protos.T,
        "c2": q @ bridged_protos.T,
        "c3": normalize(bridge(query, P, W_txt, s)) @ raw_protos.T,
        "divergence": class_divergence(raw_protos, text_protos),
    }


def semobridge_terms(
    cosines: dict[str, torch.Tensor], smoothness, alpha, beta, gamma
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z1, z2, z3 of §3.4 from `semobridge_cosines` output.

    z1 = exp(-alpha (1 - c1)); z2 = exp(-beta (1 - c2)) w; z3 = exp(-gamma (1 - c3)) w, with
    w_c = exp(smoothness D_c). Parameters are floats -> (N, C) terms, or (T,) tensors -> (T, N, C)
    terms (one per parameter row, for batched search).
    """

    def col(p):
        p = torch.as_tensor(p, dtype=cosines["c1"].dtype, device=cosines["c1"].device)
        return p.view(-1, 1, 1) if p.ndim == 1 else p

    w = torch.exp(col(smoothness) * cosines["divergence"])  # broadcasts over queries
    return (
        sharpen(cosines["c1"], col(alpha)),
        sharpen(cosines["c2"], col(beta)) * w,
        sharpen(cosines["c3"], col(gamma)) * w,
    )


def semobridge_builder(cosines: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map (T, 7) parameter rows (columns PARAM_NAMES) to (T, N, C) fused logits, for `search_batched`.

    Pass val cosines only when searching.
    """

    def build(params: torch.Tensor) -> torch.Tensor:
        if params.ndim != 2 or params.shape[1] != len(PARAM_NAMES):
            raise ValueError(
                f"params must be (T, {len(PARAM_NAMES)}) with columns {PARAM_NAMES}, got {tuple(params.shape)}"
            )
        params = params.to(cosines["c1"])
        z1, z2, z3 = semobridge_terms(cosines, *params[:, :4].unbind(dim=1))  # each (T, N, C)
        lam1, lam2, lam3 = params[:, 4:, None, None].unbind(dim=1)
        return lam1 * z1 + lam2 * z2 + lam3 * z3

    return build


@dataclass(frozen=True)
class SeMoBridgeConfig:
    """`methods.semobridge` (METHODS.md §3)."""
    atol: float          # singular values of W_txt at or below it are dropped by the bridge
    extra_shots: str     # none | hflip (+1 flipped copy per shot) | views (+n_views augmented copies)
    search: config.SearchConfig   # random rows in SEARCH_SPACE, then refinement rounds, all batched on val


class SeMoBridge(Method):
    """SeMoBridge, training-free: lambda1 z1 + lambda2 z2 + lambda3 z3, all seven knobs chosen on val."""
    name, label, block = "semobridge", "SeMoBridge", "semobridge"
    weights = WEIGHTS
    knobs = ("smoothness", "alpha", "beta", "gamma", "shots_per_class")

    def config(self, section, where, arch):
        return SeMoBridgeConfig(float(config.need(section, "atol", (int, float), where, minimum=0)),
                                config.need(section, "extra_shots", str, where, choices=EXTRA_SHOTS),
                                config.search(section, where))

    def needs(self, cfg):
        return set() if cfg.extra_shots == "none" else {"views"}

    def setup(self, inputs, cfg):
        W_txt = inputs.tensor(inputs.feats.W_txt)
        return bridge_matrix(W_txt, cfg.atol), W_txt, text_scale(inputs.tensor(inputs.feats.text_pre))

    def shots(self, inputs, draw, cfg) -> torch.Tensor:
        """(C, K', D) few-shot set: the raw shots plus `extra_shots` copies, K' = K (E + 1)."""
        parts = [inputs.tensor(inputs.feats.emb[draw.idx]).unsqueeze(2)]
        if cfg.extra_shots == "hflip":
            parts.append(inputs.tensor(inputs.views.flip[draw.view_rows]).unsqueeze(2))
        elif cfg.extra_shots == "views":
            parts.append(inputs.tensor(inputs.views.emb[draw.view_rows]))
        return torch.cat(parts, dim=2).flatten(1, 2)

    def fit(self, inputs, draw, state, cfg):
        shots = self.shots(inputs, draw, cfg)
        cosines = lambda query: semobridge_cosines(query, shots, inputs.protos, *state)
        row, acc, scored = search_space(semobridge_builder(cosines(draw.q_val)), SEARCH_SPACE, draw.y_val, cfg.search)
        chosen = dict(zip(PARAM_NAMES, row.tolist()))
        choice = {**chosen, "val_acc": percent(acc), "extra_shots": cfg.extra_shots,
                  "shots_per_class": int(shots.shape[1]), "rows_scored": scored}

        def components(split):
            z = semobridge_terms(cosines(inputs.query[split]), *(chosen[k] for k in PARAM_NAMES[:4]))
            return dict(zip(WEIGHTS, z))
        return Fit(choice, components)


METHOD = SeMoBridge()
