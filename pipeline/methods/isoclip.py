"""IsoCLIP: drop the top and bottom singular directions of the inter-modal operator (METHODS.md §5).

Shapes: W_img (d_v, D) and W_txt (d_t, D), applied as x @ W; pre-projection features x_v (N, d_v)
and EOS features e (N, d_t) are raw. Psi = W_img W_txt^T (d_v, d_t) with reduced SVD U S V^T,
r = min(d_v, d_t), singular values descending; the kept band is indices [k_top, r - k_bottom).
"""

from dataclasses import dataclass

import numpy as np
import torch

from pipeline import config
from pipeline.layout import SPLIT_CODES
from pipeline.methods.contract import Fit, Method
from pipeline.methods.cosine import normalize
from pipeline.methods.ncm import class_means, ncm_logits


def iso_basis(
    W_img: torch.Tensor,
    W_txt: torch.Tensor,
    k_top: int,
    k_bottom: int,
    img_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_k (d_v, k), V_k (d_t, k)): singular vectors of Psi kept after dropping k_top + k_bottom.

    img_bias: the image projection's bias if it has one; a nonzero bias (ModifiedResNet's affine
    attnpool.c_proj) is refused, because the operator Psi only describes a linear projector.
    """
    if img_bias is not None and bool((img_bias != 0).any()):
        raise ValueError(
            "IsoCLIP needs a bias-free linear image projection (ViT visual.proj); got a nonzero img_bias "
            "(affine projection, e.g. ResNet attnpool.c_proj)"
        )
    if W_img.ndim != 2 or W_txt.ndim != 2 or W_img.shape[1] != W_txt.shape[1]:
        raise ValueError(
            f"W_img (d_v, D) and W_txt (d_t, D) must share D, got {tuple(W_img.shape)} and {tuple(W_txt.shape)}"
        )
    r = min(W_img.shape[0], W_txt.shape[0])
    for name, k in (("k_top", k_top), ("k_bottom", k_bottom)):
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"{name} must be a non-negative int, got {k!r}")
    if k_top + k_bottom >= r:
        raise ValueError(f"k_top + k_bottom = {k_top + k_bottom} must be < r = {r} to keep any direction")
    U, _, Vh = torch.linalg.svd(W_img @ W_txt.T, full_matrices=False)
    return U[:, k_top : r - k_bottom], Vh[k_top : r - k_bottom].T


def iso_image_projector(W_img: torch.Tensor, U_k: torch.Tensor) -> torch.Tensor:
    """(d_v, D) modified image projector U_k U_k^T W_img."""
    return U_k @ (U_k.T @ W_img)


def iso_text_projector(W_txt: torch.Tensor, V_k: torch.Tensor) -> torch.Tensor:
    """(d_t, D) modified text projector V_k V_k^T W_txt."""
    return V_k @ (V_k.T @ W_txt)


def iso_embed(pre: torch.Tensor, W_iso: torch.Tensor) -> torch.Tensor:
    """Raw pre-projection features (N, d) -> unit IsoCLIP embeddings normalize(pre @ W_iso)."""
    return normalize(pre @ W_iso)


PROTOTYPES = ("shots", "train")


@dataclass(frozen=True)
class IsoNCMConfig:
    """`methods.isoclip`: the band per arch, and where IsoNCM's class prototypes come from."""
    band: config.Band
    prototypes: str    # shots: the K-shot draw | train: every train image (IsoCLIP's own protocol, §5.5)


class IsoNCM(Method):
    """NCM on IsoCLIP-projected pre-projection features: prototypes and queries both through W_iso."""
    name, label, block = "isoncm", "IsoCLIP-NCM", "isoclip"

    def config(self, section, where, arch):
        return IsoNCMConfig(config.band(section, arch, where, "'isoncm' from methods.enabled"),
                            config.need(section, "prototypes", str, where, choices=PROTOTYPES))

    def setup(self, inputs, cfg):
        feats = inputs.feats
        U_k, _ = iso_basis(inputs.tensor(feats.W_img), inputs.tensor(feats.W_txt), cfg.band.k_top, cfg.band.k_bottom,
                           None if feats.b_img is None else inputs.tensor(feats.b_img))
        W_iso = iso_image_projector(inputs.tensor(feats.W_img), U_k)
        query = {s: inputs.tensor(feats.pre[r]) @ W_iso for s, r in inputs.rows.items()}
        if cfg.prototypes == "shots":
            return W_iso, query, None
        train = np.flatnonzero(feats.split == SPLIT_CODES["train"])
        label = torch.from_numpy(feats.label[train].astype(np.int64)).to(inputs.device)
        try:
            means = class_means(inputs.tensor(feats.pre[train]), label, inputs.num_classes)
        except ValueError as exc:
            raise ValueError(f"methods.isoclip.prototypes = 'train' but {exc} in the train split") from None
        return W_iso, query, iso_embed(means, W_iso)

    def fit(self, inputs, draw, state, cfg):
        W_iso, query, train_centres = state
        centres = (iso_embed(inputs.tensor(inputs.feats.pre[draw.idx]).mean(dim=1), W_iso)
                   if train_centres is None else train_centres)
        return Fit({}, lambda s: {"logits": ncm_logits(query[s], centres)})


METHOD = IsoNCM()
