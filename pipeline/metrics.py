"""Classification accuracy and modality-gap measures."""

import numpy as np
import torch

from pipeline.methods.zeroshot import normalize


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(dim=-1) == labels).float().mean() * 100)


def modality_gap(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """Distance between the centroids of L2-normalised image and text embeddings (Liang et al., 2022)."""
    img = normalize(torch.as_tensor(image_emb, dtype=torch.float32).reshape(-1, image_emb.shape[-1]))
    txt = normalize(torch.as_tensor(text_emb, dtype=torch.float32).reshape(-1, text_emb.shape[-1]))
    return float((img.mean(0) - txt.mean(0)).norm())
