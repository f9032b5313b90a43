"""SeMoBridge-T (METHODS.md §4): the bridge P and a class bias trained on the cached few-shot set.

Shapes as in `pipeline.methods.semobridge`: shots (C, K', D) raw projected embeddings; P (D, d_t),
initialised at pinv(W_txt, atol); bias (C, d_t), zero-initialised, added to the shots' f P only (never
to a val/test query); W_txt (d_t, D); the text-norm scale s is fixed. Training is full batch over all
C K' shots (`pipeline.train.fit`, AdamW with Dassl's linear warm-up); the step kept is the best val
accuracy of the fused logits at the fixed `select` knobs (the reference's INIT values); then the same
val search as the training-free variant runs on the trained bridge. The kept P and bias are the draw's
checkpoint (`pipeline.train.TrainedFit`), stored by `adapt` under `semobridge_t/<draw>/checkpoint/`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline import config, train
from pipeline.fusion import count_correct
from pipeline.methods import semobridge
from pipeline.methods.cosine import class_prototypes, normalize
from pipeline.methods.semobridge import PARAM_NAMES, SeMoBridge, semobridge_builder, semobridge_cosines

LOSS_WEIGHTS = ("image_text", "consistency", "bias_norm")


@dataclass(frozen=True)
class LossWeights:
    """L = image_text L_img + (1 - image_text) (L_txtp + L_txte) / 2 + consistency L_cons + bias_norm L_bias."""
    image_text: float
    consistency: float
    bias_norm: float


def loss_terms(shots: torch.Tensor, P: torch.Tensor, bias: torch.Tensor, W_txt: torch.Tensor, s,
               text_protos: torch.Tensor, eos_protos: torch.Tensor, logit_scale: float) -> dict[str, torch.Tensor]:
    """The five scalar losses of §4.3 (cross-entropies target = own class, mean over rows).

    img: logit_scale * cos(each raw shot, bridged prototypes G̃); txtp: cos(G̃, text prototypes T̃ (C, D));
    txte: cos(EOS-space prototypes H̃, EOS text prototypes (C, d_t)); cons: cos(each bridged shot, G̃);
    bias: variance of the per-class bias norms. Cosines without a temperature except in img.
    """
    C, K = shots.shape[:2]
    eos = semobridge.pseudo_eos(shots, P, W_txt, s, bias.unsqueeze(1))   # (C, K, d_t)
    bridged = eos @ W_txt                                                   # (C, K, D)
    G, H = normalize(bridged.mean(dim=1)), normalize(eos.mean(dim=1))
    own, each = torch.arange(C, device=shots.device), torch.arange(C, device=shots.device).repeat_interleave(K)
    norms = bias.norm(dim=1)
    return {
        "img": F.cross_entropy(logit_scale * normalize(shots).flatten(0, 1) @ G.T, each),
        "txtp": F.cross_entropy(G @ text_protos.T, own),
        "txte": F.cross_entropy(H @ eos_protos.T, own),
        "cons": F.cross_entropy(normalize(bridged).flatten(0, 1) @ G.T, each),
        "bias": ((norms - norms.mean()) ** 2).mean(),
    }


def total_loss(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    return (w.image_text * terms["img"] + (1 - w.image_text) * (terms["txtp"] + terms["txte"]) / 2
            + w.consistency * terms["cons"] + w.bias_norm * terms["bias"])


def select_hits(draw, shots: torch.Tensor, text_protos: torch.Tensor, bridge_state, bias: torch.Tensor,
                select: torch.Tensor) -> int:
    """Correct val rows of the draw's fused logits at the fixed knobs `select` (1, 7): the score of a step."""
    cosines = semobridge_cosines(draw.q_val, shots, text_protos, *bridge_state, bias)
    return int(count_correct(semobridge_builder(cosines)(select), draw.y_val)[0])


@dataclass(frozen=True)
class SeMoBridgeTConfig:
    """`methods.semobridge_t` (METHODS.md §4)."""
    atol: float
    extra_shots: dict
    search: config.SearchConfig   # the val search after training, as SeMoBridge's
    recipe: config.TrainRecipe
    losses: LossWeights
    select: tuple[float, ...]     # fixed knobs (PARAM_NAMES order) that score each step on val


class SeMoBridgeT(SeMoBridge):
    """SeMoBridge with P and the class bias trained on the shots; same components and weights."""
    name, label, block = "semobridge_t", "SeMoBridge-T", "semobridge_t"
    knobs = SeMoBridge.knobs + ("best_step", "train_seconds")
    measured = ("train_seconds",)

    def config(self, section, where, arch):
        base = super().config(section, where, arch)
        losses = config.need(section, "losses", dict, where)
        w = LossWeights(*(float(config.need(losses, k, (int, float), f"{where}.losses", minimum=0,
                                            maximum=1 if k == "image_text" else None)) for k in LOSS_WEIGHTS))
        select = config.need(section, "select", dict, where)
        knobs = tuple(float(config.need(select, k, (int, float), f"{where}.select", minimum=0)) for k in PARAM_NAMES)
        return SeMoBridgeTConfig(base.atol, base.extra_shots, base.search, config.train_recipe(section, where),
                                 w, knobs)

    def setup(self, inputs, cfg):
        return super().setup(inputs, cfg), class_prototypes(inputs.tensor(inputs.feats.text_pre))

    def fit(self, inputs, draw, state, cfg):
        (P0, W_txt, s), eos_protos = state
        shots = self.shots(inputs, draw, cfg)
        P, bias = P0.clone(), torch.zeros(shots.shape[0], P0.shape[1], device=P0.device)
        select = torch.tensor([cfg.select])

        def loss(_gen):
            terms = loss_terms(shots, P, bias, W_txt, s, inputs.protos, eos_protos, inputs.feats.logit_scale)
            return total_loss(terms, cfg.losses)

        def val_hits() -> int:   # val rows only, knobs fixed: the step choice never sees test
            return select_hits(draw, shots, inputs.protos, (P, W_txt, s), bias, select)

        done = train.fit([P, bias], loss, cfg.recipe, val_hits, desc=f"{self.name} {draw.key}")
        record = {"extra_shots": self.extra_mode(inputs, draw, cfg), "best_step": done.best_step,
                  "steps": cfg.recipe.steps, "train_seconds": round(done.seconds, 3),
                  "select_val_acc": round(100 * done.best_score / len(draw.y_val), 4)}
        fit = semobridge.searched(inputs, draw, shots, (P, W_txt, s), cfg, bias, extra=record)
        # the kept P and bias, and the items of the shots they trained on (their views per `extra_shots`)
        items = torch.from_numpy(inputs.feats.item[draw.idx])
        return train.TrainedFit(fit.choice, fit.components, {"P": P, "bias": bias, "items": items},
                                train.settings_record(cfg))


METHOD = SeMoBridgeT()
