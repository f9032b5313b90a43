"""The trainable parts of SpectralGCD and of a SimGCD-style baseline on a frozen, cached student CLIP
(METHODS.md §15.1.4, §15.1.7 b).

The reference (miccunifi/SpectralGCD `model.py`, `spectralgcd.py:train`) fine-tunes the student's last
vision block; here the student is frozen and its image features come from a cache, so the only thing
that can move the student's concept logits S is a residual adapter x + W x with W zero-initialised:
the first step reproduces the frozen student exactly, and the KD terms (constants otherwise) get a
trainable parameter. The rest follows the reference:

    S = normalize(adapter(f_S(x))) @ normalize(g_S(C))^T / tau      (n, K), tau = 0.01
    h, logits = DINOHead(ln_t(S))                                    ln_t = Linear(K, width), RAW S

Construction is seeded (an int or a `torch.Generator`) and leaves the global RNG untouched, so two
builds with the same seed are identical whatever ran before.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

HEAD_KEYS = ("nlayers", "hidden", "bottleneck")


@dataclass(frozen=True)
class GCDOutput:
    """What both nets return for n rows (the views concatenated, [view0 rows; view1 rows])."""
    concepts: torch.Tensor | None   # (n, K) student concept logits S, already / tau; None for SimGCD
    proj: torch.Tensor              # (n, bottleneck) the head's MLP projection h (not normalised)
    logits: torch.Tensor            # (n, C) cosine-classifier logits in [-1, 1] (not / student_temp)


def generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU generator: `seed` itself if it is one, else a fresh one seeded with it."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed should be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def default_linear_init(linear: nn.Linear, gen: torch.Generator) -> None:
    """PyTorch's own nn.Linear init (kaiming_uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))), drawn from
    `gen`: what the reference's `ln_t` and the head's last layer keep, since they are not re-initialised."""
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=gen)
    if linear.bias is not None:
        bound = 1 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0.0
        nn.init.uniform_(linear.bias, -bound, bound, generator=gen)


class ResidualAdapter(nn.Module):
    """x + W x, W (dim, dim) without bias and zero at init, so a fresh adapter is the identity exactly."""

    def __init__(self, dim: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):   # keep the global RNG as it was: W is zeroed anyway
            self.linear = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x)


class DINOHead(nn.Module):
    """The reference's DINOHead with use_bn=False, norm_last_layer=True.

    MLP (projection h): Linear(in, hidden), GELU, (nlayers - 2) x [Linear(hidden, hidden), GELU],
    Linear(hidden, bottleneck) (nlayers = 1: one Linear(in, bottleneck)); weights trunc_normal(std 0.02),
    biases 0. Classifier: a weight-normalised Linear(in, out, bias=False) applied to normalize(x), NOT to
    h, with its magnitude `original0` fixed at 1 and frozen, so the logits are cosines between the input
    and each class direction `original1[c]`. The classifier keeps PyTorch's default Linear init, as in
    the reference (it is built after `self.apply(_init_weights)` there).
    """

    def __init__(self, in_dim: int, out_dim: int, nlayers: int = 3, hidden: int = 2048, bottleneck: int = 256,
                 seed: int | torch.Generator = 0):
        super().__init__()
        gen = generator(seed)
        nlayers = max(nlayers, 1)
        with torch.random.fork_rng(devices=[]):   # nn.Linear draws from the global RNG; we re-init below
            if nlayers == 1:
                self.mlp = nn.Sequential(nn.Linear(in_dim, bottleneck))
            else:
                layers = [nn.Linear(in_dim, hidden), nn.GELU()]
                for _ in range(nlayers - 2):
                    layers += [nn.Linear(hidden, hidden), nn.GELU()]
                layers.append(nn.Linear(hidden, bottleneck))
                self.mlp = nn.Sequential(*layers)
            last = nn.Linear(in_dim, out_dim, bias=False)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02, generator=gen)
                nn.init.zeros_(layer.bias)
        default_linear_init(last, gen)
        self.last_layer = weight_norm(last)   # weight = original0 * original1 / ||original1|| (per row)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)

    @property
    def directions(self) -> torch.Tensor:
        """(out, in) the class directions v_c (un-normalised `original1`)."""
        return self.last_layer.parametrizations.weight.original1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, in) -> (h (n, bottleneck), logits (n, out) = cos(x, v_c))."""
        return self.mlp(x), self.last_layer(F.normalize(x, dim=-1))


def head_kwargs(head: dict | None) -> dict:
    """The DINOHead size keys, refusing unknown ones (a typo would silently build the default head)."""
    head = dict(head or {})
    unknown = sorted(set(head) - set(HEAD_KEYS))
    if unknown:
        raise ValueError(f"unknown head key(s) {unknown} (known: {list(HEAD_KEYS)})")
    return head


def check_features(image_features: torch.Tensor, dim: int) -> None:
    if image_features.ndim != 2 or image_features.shape[1] != dim:
        raise ValueError(f"image_features should be (n, {dim}), got {tuple(image_features.shape)}")


class SpectralGCDNet(nn.Module):
    """Adapter -> student concept logits S over K concepts -> ln_t (on the raw S) -> DINOHead.

    `student_concepts` (K, D) are the student's text features of the (filtered) concepts, cached and
    fixed: stored normalised as a buffer. `width` is ln_t's output and the head's input (768 in the
    reference), `tau` the concept-logit temperature shared with the teacher cache (0.01).
    """

    def __init__(self, student_concepts: torch.Tensor, student_dim: int, n_classes: int, width: int = 768,
                 head: dict | None = None, tau: float = 0.01, seed: int | torch.Generator = 0):
        super().__init__()
        concepts = torch.as_tensor(student_concepts)
        if concepts.ndim != 2 or concepts.shape[1] != student_dim or len(concepts) == 0:
            raise ValueError(f"student_concepts should be (K, {student_dim}) with K >= 1, "
                             f"got {tuple(concepts.shape)}")
        if not tau > 0:
            raise ValueError(f"tau should be > 0, got {tau}")
        gen = generator(seed)
        self.tau = float(tau)
        self.adapter = ResidualAdapter(student_dim)
        self.register_buffer("concept_text", F.normalize(concepts.detach().float(), dim=-1))
        with torch.random.fork_rng(devices=[]):
            self.ln_t = nn.Linear(len(concepts), width)
        default_linear_init(self.ln_t, gen)
        self.head = DINOHead(width, n_classes, **head_kwargs(head), seed=gen)

    def concept_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """(n, D) cached student image features -> (n, K) S = cos(adapter(x), g_S(c)) / tau."""
        check_features(image_features, self.concept_text.shape[1])
        x = self.adapter(image_features.to(self.concept_text.dtype))
        return F.normalize(x, dim=-1) @ self.concept_text.T / self.tau

    def forward(self, image_features: torch.Tensor) -> GCDOutput:
        s = self.concept_logits(image_features)
        proj, logits = self.head(self.ln_t(s))
        return GCDOutput(concepts=s, proj=proj, logits=logits)


class SimGCDNet(nn.Module):
    """The SimGCD-style baseline: the same DINOHead directly on the (adapted) student image feature, no
    concepts and so no KD terms.

    SimGCD fine-tunes the backbone's last block; with a frozen cached student that is impossible, so
    this net keeps the same zero-initialised residual adapter in front of the head: both methods then
    train a comparable (D, D) map on the image feature plus the head, and differ only in the concept
    bottleneck (and KD). The head's input width is the cached feature's width D (512 for ViT-B/16
    projected features, where SimGCD used the 768-d CLS token).
    """

    def __init__(self, student_dim: int, n_classes: int, head: dict | None = None,
                 seed: int | torch.Generator = 0):
        super().__init__()
        gen = generator(seed)
        self.dim = student_dim
        self.adapter = ResidualAdapter(student_dim)
        self.head = DINOHead(student_dim, n_classes, **head_kwargs(head), seed=gen)

    def forward(self, image_features: torch.Tensor) -> GCDOutput:
        check_features(image_features, self.dim)
        x = self.adapter(image_features.to(self.adapter.linear.weight.dtype))
        proj, logits = self.head(x)
        return GCDOutput(concepts=None, proj=proj, logits=logits)
