"""SeMoBridge, training-free (METHODS.md §3): image embeddings bridged into the text side.

Shapes: projected image embeddings f are (..., D) raw rows; few-shot sets are (C, K', D) (K'
includes augmented copies); W_txt is (d_t, D) applied as e @ W_txt; text prototypes are (C, D)
unit rows. Sharpness and fusion parameters are searched on val in one batched pass through
`semobridge_builder` + `pipeline.fusion.search_batched` (random rows from
`pipeline.fusion.sample_weights(SEARCH_SPACE, ...)` replace the reference's Optuna TPE).
"""

import re
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
EXTRA_SHOTS = ("none", "hflip", "views")   # or an int n: the first n cached views


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


def pseudo_eos(f: torch.Tensor, P: torch.Tensor, W_txt: torch.Tensor, s, bias=0.0) -> torch.Tensor:
    """(..., D) raw image embeddings -> (..., d_t) pseudo EOS tokens ê = s * normalize(f P + bias).

    bias: SeMoBridge-T's class bias, broadcast against f P (few-shot images only; 0 elsewhere)."""
    if P.shape != W_txt.shape[::-1] or f.shape[-1] != P.shape[0]:
        raise ValueError(
            f"shapes disagree: f {tuple(f.shape)}, P {tuple(P.shape)} (want (D, d_t)), W_txt {tuple(W_txt.shape)}"
        )
    return s * normalize(f @ P + bias)


def bridge(f: torch.Tensor, P: torch.Tensor, W_txt: torch.Tensor, s, bias=0.0) -> torch.Tensor:
    """(..., D) raw image embeddings -> (..., D) bridged embeddings f̂ = s * normalize(f P + bias) @ W_txt."""
    return pseudo_eos(f, P, W_txt, s, bias) @ W_txt


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
    shot_bias: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The three (N, C) cosine maps the logits sharpen, paired as the reference code pairs them.

    "c1": q · T̃ (zero-shot); "c2": q · G̃ (raw query vs bridged few-shot prototypes, for beta/z2);
    "c3": q̂ · F̃ (bridged query vs raw few-shot prototypes, for gamma/z3); also "divergence" (C,),
    the D_c of the class weights. q = normalize(query); F̃ = normalised mean of raw shots;
    G̃ = normalised mean of bridged shots; q̂ = normalised bridged query. shot_bias: (C, d_t)
    SeMoBridge-T class bias, added to the shots' f P only; queries are always bridged without it.
    """
    if shots.ndim != 3 or text_protos.shape != (shots.shape[0], shots.shape[2]):
        raise ValueError(
            f"shots must be (C, K', D) and text_protos (C, D), "
            f"got {tuple(shots.shape)} and {tuple(text_protos.shape)}"
        )
    raw_protos = normalize(shots.mean(dim=1))
    bias = 0.0 if shot_bias is None else shot_bias.unsqueeze(1)
    bridged_protos = normalize(bridge(shots, P, W_txt, s, bias).mean(dim=1))
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


def extra_shots_table(section: dict, where: str) -> dict:
    """`extra_shots` as {shot count or None (every count): mode}: one mode, or a table `shot_<K>` -> mode as
    SeMoBridge's dataset configs set it (METHODS.md §4.5). A mode is none | hflip (+1 flipped copy per shot)
    | views (+ every cached view) | an int n (+ the first n cached views). Keys are `shot_<K>`, not bare
    ints: DVC's params reader takes int keys for list indices and fails."""
    value = config.need(section, "extra_shots", (str, int, dict), where)
    table = value if isinstance(value, dict) else {None: value}
    parsed = {}
    for key, mode in table.items():
        shots = key if key is None else (int(key[5:]) if re.fullmatch(r"shot_[1-9][0-9]*", str(key)) else 0)
        if shots == 0 or not (mode in EXTRA_SHOTS or config.is_a(mode, int) and mode >= 1):
            raise config.ParamsError(
                f"params.yaml: '{where}.extra_shots' = {value!r} should be a mode or a table shot_<K> -> mode, "
                f"a mode being one of {list(EXTRA_SHOTS)} or a number of views >= 1")
        parsed[shots] = mode
    return parsed


@dataclass(frozen=True)
class SeMoBridgeConfig:
    """`methods.semobridge` (METHODS.md §3)."""
    atol: float          # singular values of W_txt at or below it are dropped by the bridge
    extra_shots: dict    # shot count (None: every count) -> mode, see `extra_shots_table`
    search: config.SearchConfig   # random rows in SEARCH_SPACE, then refinement rounds, all batched on val


class SeMoBridge(Method):
    """SeMoBridge, training-free: lambda1 z1 + lambda2 z2 + lambda3 z3, all seven knobs chosen on val."""
    name, label, block = "semobridge", "SeMoBridge", "semobridge"
    weights = WEIGHTS
    knobs = ("smoothness", "alpha", "beta", "gamma", "shots_per_class")

    def config(self, section, where, arch):
        return SeMoBridgeConfig(float(config.need(section, "atol", (int, float), where, minimum=0)),
                                extra_shots_table(section, where), config.search(section, where))

    def needs(self, cfg):
        return {"views"} if any(mode != "none" for mode in cfg.extra_shots.values()) else set()

    def setup(self, inputs, cfg):
        W_txt = inputs.tensor(inputs.feats.W_txt)
        return bridge_matrix(W_txt, cfg.atol), W_txt, text_scale(inputs.tensor(inputs.feats.text_pre))

    def extra_mode(self, inputs, draw, cfg):
        """This draw's `extra_shots` mode (by its shot count K)."""
        K, where = draw.idx.shape[1], f"params.yaml: 'methods.{self.block}.extra_shots'"
        mode = cfg.extra_shots.get(None, cfg.extra_shots.get(K))
        if mode is None:
            raise config.ParamsError(f"{where} has no entry shot_{K} (entries: "
                                     f"{[f'shot_{k}' for k in sorted(cfg.extra_shots)]})")
        if isinstance(mode, int) and mode > inputs.views.emb.shape[1]:
            raise config.ParamsError(f"{where} asks for {mode} views at {K} shots but views.zarr holds "
                                     f"{inputs.views.emb.shape[1]} per shot (views.n_views)")
        return mode

    def shots(self, inputs, draw, cfg) -> torch.Tensor:
        """(C, K', D) few-shot set: the raw shots plus this draw's `extra_shots` copies, K' = K (E + 1)."""
        mode = self.extra_mode(inputs, draw, cfg)
        parts = [inputs.tensor(inputs.feats.emb[draw.idx]).unsqueeze(2)]
        if mode == "hflip":
            parts.append(inputs.tensor(inputs.views.flip[draw.view_rows]).unsqueeze(2))
        elif mode != "none":
            views = inputs.views.emb[draw.view_rows]   # (C, K, V, D)
            parts.append(inputs.tensor(views if mode == "views" else views[:, :, :mode]))
        return torch.cat(parts, dim=2).flatten(1, 2)

    def fit(self, inputs, draw, state, cfg):
        return searched(inputs, draw, self.shots(inputs, draw, cfg), state, cfg, extra={
            "extra_shots": self.extra_mode(inputs, draw, cfg)})


def searched(inputs, draw, shots: torch.Tensor, bridge_state, cfg, shot_bias=None, *, extra: dict) -> Fit:
    """The seven knobs searched on the draw's val rows for one bridge (P, W_txt, s) and shot set; the
    components are z1..z3 at the chosen knobs; `extra` joins the recorded choice. Shared by SeMoBridge and
    SeMoBridge-T."""
    cosines = lambda query: semobridge_cosines(query, shots, inputs.protos, *bridge_state, shot_bias)
    row, acc, scored = search_space(semobridge_builder(cosines(draw.q_val)), SEARCH_SPACE, draw.y_val, cfg.search)
    chosen = dict(zip(PARAM_NAMES, row.tolist()))
    choice = {**chosen, "val_acc": percent(acc), "shots_per_class": int(shots.shape[1]), "rows_scored": scored,
              **extra}

    def components(split):
        z = semobridge_terms(cosines(inputs.query[split]), *(chosen[k] for k in PARAM_NAMES[:4]))
        return dict(zip(WEIGHTS, z))
    return Fit(choice, components)


METHOD = SeMoBridge()
