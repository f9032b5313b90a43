"""Classification accuracy and modality-gap measures."""

import numpy as np
import torch

from pipeline.methods.cosine import normalize


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(dim=-1) == labels).float().mean() * 100)


def modality_gap(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """Distance between the centroids of L2-normalised image and text embeddings (Liang et al., 2022)."""
    img = normalize(torch.as_tensor(image_emb, dtype=torch.float32).reshape(-1, image_emb.shape[-1]))
    txt = normalize(torch.as_tensor(text_emb, dtype=torch.float32).reshape(-1, text_emb.shape[-1]))
    return float((img.mean(0) - txt.mean(0)).norm())


def projection_spectra(W_img: np.ndarray, W_txt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (float64, descending) of W_txt, which the bridge inverts, and of the inter-modal
    operator Psi = W_img W_txt^T, whose directions IsoCLIP cuts."""
    W_img, W_txt = torch.as_tensor(W_img).double(), torch.as_tensor(W_txt).double()
    return torch.linalg.svdvals(W_txt).numpy(), torch.linalg.svdvals(W_img @ W_txt.T).numpy()


def numerical_rank(s: np.ndarray) -> int:
    """Singular values above s_max * len(s) * float32 eps: the rank the float32 stores can resolve."""
    return int((s > s.max() * len(s) * np.finfo(np.float32).eps).sum())
