"""Cosine-similarity building blocks every method shares (METHODS.md §2.3)."""

import torch


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension."""
    return x / x.norm(dim=-1, keepdim=True)


def class_prototypes(text_emb: torch.Tensor) -> torch.Tensor:
    """(C, P, D) raw projected prompt embeddings -> (C, D): normalise each prompt, average, renormalise."""
    return normalize(normalize(text_emb).mean(dim=1))


def zeroshot_logits(image_emb: torch.Tensor, prototypes: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """(N, D) raw image embeddings x (C, D) unit prototypes -> (N, C) scaled cosines."""
    return scale * normalize(image_emb) @ prototypes.T
