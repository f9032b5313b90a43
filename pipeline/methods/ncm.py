"""Nearest class mean on image embeddings (METHODS.md §3.3, §5.5 "ncm")."""

import torch

from pipeline.methods.zeroshot import normalize, zeroshot_logits


def class_means(emb: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, D) raw embeddings with (N,) int labels in [0, C) -> (C, D) per-class means of the raw rows.

    Raw (un-normalised) rows are averaged, as every reference does for few-shot prototypes.
    """
    if emb.ndim != 2:
        raise ValueError(f"emb must be (N, D), got shape {tuple(emb.shape)}")
    if labels.shape != emb.shape[:1]:
        raise ValueError(f"labels must be ({emb.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or (labels.numel() and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"labels must be ints in [0, {num_classes}), got {labels.dtype} values")
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {empty} have no samples; every class needs at least one")
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype, device=emb.device)
    sums.index_add_(0, labels, emb)
    return sums / counts.unsqueeze(1).to(emb.dtype)


def ncm_prototypes(emb: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, D) unit prototypes: the normalised mean of each class's raw embeddings."""
    return normalize(class_means(emb, labels, num_classes))


def ncm_logits(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(N, D) raw queries x (C, D) unit prototypes -> (N, C) cosine similarities (no temperature)."""
    return zeroshot_logits(query, prototypes, scale=1.0)
