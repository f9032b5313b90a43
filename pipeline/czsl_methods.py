"""SAM-CZSL's training-free parts on cached arrays (issue 9): its inputs, the CLS zero-shot baseline,
Sparse Alignment (SA), the p(c) + p(a) p(o) composition, the val-chosen fusion and the gap diagnostics.

Paper: Zhang et al., "Bridging the Modality Gap in Compositional Zero-Shot Learning via Sparse Alignment
and Unimodal Memory Bank" (CVPR 2026; no public code; openreview version "One Patch, One Text", SAC).
CLIP stays frozen: every score is computed from `CZSLInputs`. The learned heads live in
`pipeline.czsl_train`, the memory bank in `pipeline.czsl_memory`, the entry point in `pipeline.czsl_sam`.

Choices where the paper (as we could read it) is silent:
- SA scores a composition by the max over patch tokens (CLS excluded) of the cosine, times `logit_scale`;
  the attribute and object scores take the same route with the attribute- and object-only texts.
- Fusion: each module's composition, attribute and object logits are summed with one weight per module
  (the memory bank has no primitive scores), searched on val in [0, 1] by `pipeline.fusion.search_space`
  on val top-1 pair accuracy (the world's unscored pairs masked), and composed as p(c) + p(a) p(o).
- RMG is Schrodi et al.'s Relative Modality Gap ("Two Effects, One Trigger", ICLR 2025), the measure of
  the information-imbalance account of the gap SAM builds on, over matched (visual feature, text of the
  image's composition) pairs; the centroid gap is Liang et al.'s ||mean(x) - mean(y)|| on the same pairs.
"""

from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.config import SearchConfig
from pipeline.fusion import chunk_for, search_space
from pipeline.layout import SPLIT_CODES
from pipeline.methods.cosine import normalize, zeroshot_logits

TENSORS = ("tokens", "comp_text", "attr_text", "obj_text")
FUSION_RANGE = (0.0, 1.0)   # each module's weight; the weight also sets its softmax temperature


@dataclass(frozen=True)
class CZSLInputs:
    """The cached arrays SAM-CZSL runs on, for N images, L patches, P pairs (attr x obj), A attrs, O objs."""
    tokens: torch.Tensor         # (N, L+1, D) projected output tokens: 0 = CLS (the image embedding), 1.. patches
    comp_text: torch.Tensor      # (P, D) "a photo of {attr} {obj}" for every pair
    attr_text: torch.Tensor      # (A, D) attribute-only prompts
    obj_text: torch.Tensor       # (O, D) object-only prompts
    pair_ids: np.ndarray         # (P, 2) attr and obj index of each pair
    labels: np.ndarray           # (N,) each image's pair
    split: np.ndarray            # (N,) 0 train, 1 val, 2 test (pipeline.layout.SPLIT_CODES)
    seen: np.ndarray             # (P,) bool: a train pair
    logit_scale: float
    closed: dict | None = None   # "val" / "test" -> (P,) bool closed-world mask (split pairs + seen); None: open only

    def __post_init__(self):
        for name in TENSORS:
            object.__setattr__(self, name, torch.as_tensor(getattr(self, name), dtype=torch.float32))
        n, width = self.tokens.shape[0], self.tokens.shape[-1]
        p = len(self.comp_text)
        if self.tokens.ndim != 3 or self.tokens.shape[1] < 2:
            raise ValueError(f"tokens should be (N, L+1, D) with L >= 1 patches, got {tuple(self.tokens.shape)}")
        for name in TENSORS[1:]:
            if getattr(self, name).ndim != 2 or getattr(self, name).shape[1] != width:
                raise ValueError(f"{name} should be (rows, {width}), got {tuple(getattr(self, name).shape)}")
        pair_ids = np.asarray(self.pair_ids)
        if pair_ids.shape != (p, 2) or (pair_ids[:, 0] >= len(self.attr_text)).any() \
                or (pair_ids[:, 1] >= len(self.obj_text)).any():
            raise ValueError(f"pair_ids should be ({p}, 2) attr / obj indices, got shape {pair_ids.shape}")
        for name, shape in (("labels", (n,)), ("split", (n,)), ("seen", (p,))):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"{name} should have shape {shape}, got {np.shape(getattr(self, name))}")
        if not np.asarray(self.seen)[np.asarray(self.labels)[self.rows("train")]].all():
            raise ValueError("every train image's pair should be seen")
        for split, mask in (self.closed or {}).items():
            if split not in ("val", "test") or np.shape(mask) != (p,) or not np.asarray(mask)[self.seen].all():
                raise ValueError(f"closed[{split!r}] should be a (P,) bool mask over val/test holding every seen pair")

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.split) == SPLIT_CODES[split])

    def worlds(self, split: str) -> dict:
        """World name -> the evaluator's `scored` mask for `split` (None: every pair)."""
        return {"open": None, **({"closed": np.asarray(self.closed[split])} if self.closed else {})}

    def to(self, device) -> "CZSLInputs":
        return replace(self, **{name: getattr(self, name).to(device) for name in TENSORS})


def zero_shot(inputs: CZSLInputs, rows) -> torch.Tensor:
    """(n, P) logit_scale * cos(CLS, composition text) of images `rows`."""
    return zeroshot_logits(inputs.tokens[rows, 0], normalize(inputs.comp_text), inputs.logit_scale)


def sparse_alignment(tokens: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """(n, T) scale * max over patches of cos(patch, text) for (n, L+1, D) tokens and (T, D) texts.
    Chunked over images so that the (chunk, L, T) cosines stay within the search budget; differentiable
    (the max routes the gradient to the winning patch)."""
    text = normalize(text)
    step = chunk_for(tokens.shape[1] * len(text), tokens.device)
    best = [(normalize(tokens[s:s + step, 1:]) @ text.T).amax(dim=1) for s in range(0, len(tokens), step)]
    return scale * torch.cat(best)


def aligned_patches(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(n, D) the patch token of each image that SA aligns with its own (n, D) text row (max cosine)."""
    cos = torch.einsum("nld,nd->nl", normalize(tokens[:, 1:]), normalize(text))
    return tokens[torch.arange(len(tokens), device=tokens.device), 1 + cos.argmax(1)]


def masked(logits: torch.Tensor, scored) -> torch.Tensor:
    """Logits with the pairs outside `scored` (a (P,) bool mask, None for all) at -inf."""
    if scored is None:
        return logits
    return logits.masked_fill(~torch.as_tensor(scored, device=logits.device), float("-inf"))


def compose(pair_logits, attr_logits, obj_logits, pair_ids, scored=None) -> torch.Tensor:
    """(..., N, P) p(c) + p(a) p(o): p(c) a softmax over the scored pairs of (..., N, P) `pair_logits`,
    p(a) and p(o) softmaxes of (..., N, A) and (..., N, O) primitive logits; 0 on unscored pairs."""
    ids = torch.as_tensor(pair_ids, device=pair_logits.device)
    primitive = attr_logits.softmax(-1)[..., ids[:, 0]] * obj_logits.softmax(-1)[..., ids[:, 1]]
    score = masked(pair_logits, scored).softmax(-1) + primitive
    return score if scored is None else score * torch.as_tensor(scored, device=score.device)


def fusion_builder(components: dict, pair_ids, scored):
    """For `search_space`: (T, M) weight rows (columns in sorted name order) -> (T, N, P) composed scores of
    the weighted sums of `components`, name -> (pair, attr, obj) logits, or (pair,) for a module without
    primitive scores (it adds nothing to p(a), p(o))."""
    names = sorted(components)
    first = next(c for c in components.values() if len(c) == 3)
    stacked = [torch.stack([c[k] if len(c) > k else torch.zeros_like(first[k]) for c in map(components.get, names)])
               for k in range(3)]                                          # (M, N, P), (M, N, A), (M, N, O)

    def build(weights: torch.Tensor) -> torch.Tensor:
        return compose(*(torch.tensordot(weights.to(s), s, dims=1) for s in stacked), pair_ids, scored)
    return names, build


def choose_weights(components: dict, labels, pair_ids, scored, search: SearchConfig):
    """Weights name -> w in FUSION_RANGE of `components` (as `fusion_builder`, val logits only) maximising
    val top-1 pair accuracy of the composed score. Returns (weights, val accuracy, trials scored)."""
    names, build = fusion_builder(components, pair_ids, scored)
    labels = torch.as_tensor(labels, device=components[names[0]][0].device)
    best, accuracy, trials = search_space(build, {n: FUSION_RANGE for n in names}, labels, search)
    return dict(zip(names, best.tolist())), accuracy, trials


def fuse(components: dict, weights: dict, pair_ids, scored) -> torch.Tensor:
    """(N, P) composed score of `components` at `weights` (as `choose_weights` scores a trial)."""
    names, build = fusion_builder(components, pair_ids, scored)
    return build(torch.tensor([[weights[n] for n in names]]))[0]


def relative_gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """Schrodi et al.'s RMG of matched (N, D) rows x_i <-> y_i, with d(u, v) = 1 - cos(u, v):
    M / (M + intra), M = mean_i d(x_i, y_i), intra = the mean of d over ordered pairs i != j within x and
    within y (1 / (2N(N-1)) of their sum). sum_{i != j} cos = ||sum_i u_i||^2 - N for unit rows, so no N x N."""
    x, y = normalize(x.double()), normalize(y.double())
    n = len(x)
    if n < 2:
        raise ValueError(f"RMG needs at least 2 matched pairs, got {n}")
    match = (1 - (x * y).sum(-1)).mean()
    intra_cos = sum((u.sum(0).square().sum() - n) / (n * (n - 1)) for u in (x, y)) / 2
    intra = 1 - intra_cos
    return float(match / (match + intra))


def centroid_gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """||mean(normalised x) - mean(normalised y)|| (Liang et al.'s modality gap vector's length)."""
    return float((normalize(x.double()).mean(0) - normalize(y.double()).mean(0)).norm())


def gaps(x: torch.Tensor, y: torch.Tensor) -> dict:
    return {"rmg": relative_gap(x, y), "centroid": centroid_gap(x, y)}

