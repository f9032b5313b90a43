"""Nearest class mean on projected image embeddings (METHODS.md §3.3, §5.5 "ncm")."""

import torch

from pipeline.methods.contract import Fit, Method
from pipeline.methods.cosine import normalize, zeroshot_logits


def class_means(emb: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, D) raw embeddings with (N,) int labels in [0, C) -> (C, D) per-class means of the raw rows."""
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no samples")
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype, device=emb.device).index_add_(0, labels, emb)
    return sums / counts.unsqueeze(1).to(emb)


def ncm_logits(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(N, D) raw queries x (C, D) unit prototypes -> (N, C) cosine similarities (no temperature)."""
    return zeroshot_logits(query, prototypes, scale=1.0)


class NCM(Method):
    name, label = "ncm", "NCM"

    def fit(self, inputs, draw, state, cfg):
        centres = normalize(inputs.tensor(inputs.feats.emb[draw.idx]).mean(dim=1))   # (C, K, D) shots
        return Fit({}, lambda s: {"logits": ncm_logits(inputs.query[s], centres)})


METHOD = NCM()
