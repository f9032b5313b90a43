"""SAM-CZSL's learned heads on cached tokens (issue 9); both train through `pipeline.train.fit`, and the
caller's `score` (a val-only metric) picks the kept step.

- SA head: a residual linear map of the text features, t -> t + t W with W (D, D) at zero, so zero steps
  give training-free SA exactly; shared by the composition, attribute and object texts. Loss
  L_c + L_a + L_o: cross-entropy of SA's scores (`czsl_methods.sparse_alignment`) over the seen
  compositions, the attributes and the objects of the train images.
- VAC (visual adaptive condensation): a learnable query through K pre-LayerNorm blocks (cross-attention
  over all L+1 cached tokens, then an MLP, each residual), then a readout attention over the tokens whose
  values are the tokens themselves, gives one visual feature, scored by cosine (times logit_scale)
  against the SA head's texts, which stay frozen. Loss (1 - a) L_base + a KL(p_SA || p_VAC):
  L_base is L_c + L_a + L_o of VAC's scores, the KL over the seen compositions, with the trained SA's
  train scores as a fixed teacher.

Choices where the paper is silent: a linear text head rather than a soft prompt (the text tower is not
run on cached features); one head for the three text sets; MLP width 4 D; torch's default init under the
recipe's seed, the query N(0, 0.02^2); each step draws `batch` train images without replacement from
fit's generator (0: the full batch); the readout's values are the raw tokens, so the feature is a
condensation of cached visual tokens, never a vector the MLP invents (on the tests' synthetic problem,
2 blocks, 300 steps: val AUC 0.34 this way, 0.32 with the residual stream as the feature).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import TrainRecipe
from pipeline.czsl_methods import CZSLInputs, sparse_alignment
from pipeline.fusion import chunk_for
from pipeline.methods.cosine import normalize
from pipeline.train import Trained, fit


@dataclass(frozen=True)
class Targets:
    """The train images and their targets: seen-composition index, attribute, object (on the inputs' device)."""
    rows: torch.Tensor
    pair: torch.Tensor
    attr: torch.Tensor
    obj: torch.Tensor
    seen_pairs: torch.Tensor      # (S,) indices of the seen pairs: the columns L_c and the KL range over


def targets(inputs: CZSLInputs) -> Targets:
    device = inputs.tokens.device
    rows = inputs.rows("train")
    labels = np.asarray(inputs.labels)[rows]
    seen_pairs = np.flatnonzero(inputs.seen)
    position = np.cumsum(inputs.seen) - 1          # pair index -> its index among the seen pairs
    ids = np.asarray(inputs.pair_ids)[labels]
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)
    return Targets(as_tensor(rows), as_tensor(position[labels]), as_tensor(ids[:, 0]), as_tensor(ids[:, 1]),
                   as_tensor(seen_pairs))


def draw(gen: torch.Generator, n: int, size: int, device) -> torch.Tensor:
    """Indices into the n train images of one step: `size` without replacement, all when size is 0 or >= n."""
    if size == 0 or size >= n:
        return torch.arange(n, device=device)
    return torch.randperm(n, generator=gen)[:size].to(device)


def base_loss(logits: tuple, t: Targets, idx: torch.Tensor) -> torch.Tensor:
    """L_c + L_a + L_o of (seen-composition, attribute, object) logits of the train images `idx`."""
    return sum(F.cross_entropy(z, y[idx]) for z, y in zip(logits, (t.pair, t.attr, t.obj)))


def head(W: torch.Tensor, *texts: torch.Tensor) -> tuple:
    """`texts` through the residual head t + t W."""
    return tuple(x + x @ W for x in texts)


def train_head(inputs: CZSLInputs, recipe: TrainRecipe, batch: int, score) -> tuple[torch.Tensor, Trained]:
    """The SA head's W and fit's record; `score(W)` is the val metric evaluated after every step."""
    t = targets(inputs)
    width = inputs.comp_text.shape[1]
    W = torch.zeros(width, width, device=inputs.tokens.device)

    def loss_fn(gen):
        idx = draw(gen, len(t.rows), batch, W.device)
        tokens = inputs.tokens[t.rows[idx]]
        texts = head(W, inputs.comp_text[t.seen_pairs], inputs.attr_text, inputs.obj_text)
        return base_loss(tuple(sparse_alignment(tokens, x, inputs.logit_scale) for x in texts), t, idx)

    trained = fit([W], loss_fn, recipe, score=lambda: score(W), desc="czsl sa head")
    return W, trained


class Block(nn.Module):
    """Pre-LayerNorm cross-attention of the query on the tokens, then an MLP; both residual."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_query, self.ln_tokens, self.ln_mlp = (nn.LayerNorm(width) for _ in range(3))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.ln_tokens(tokens)
        x = x + self.attn(self.ln_query(x), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.ln_mlp(x))


class VAC(nn.Module):
    """A learnable query condensing (n, L+1, D) tokens into (n, D): `blocks` cross-attention blocks refine the
    query, then a readout attention of it over the tokens, with the tokens themselves as values, makes the
    feature a convex combination of cached tokens."""

    def __init__(self, width: int, blocks: int, heads: int, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):   # seeded init that leaves the global stream alone
            torch.manual_seed(seed)
            self.query = nn.Parameter(0.02 * torch.randn(width))
            self.blocks = nn.ModuleList(Block(width, heads) for _ in range(blocks))
            self.ln_query, self.ln_tokens = nn.LayerNorm(width), nn.LayerNorm(width)
            self.keys = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.query.expand(len(tokens), 1, -1)
        for block in self.blocks:
            x = block(x, tokens)
        logits = self.keys(self.ln_tokens(tokens)) @ self.ln_query(x).transpose(1, 2) / tokens.shape[-1] ** 0.5
        return (logits.softmax(1) * tokens).sum(1)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """forward over chunks of images, for scoring whole splits within the search memory budget."""
        step = chunk_for(4 * tokens.shape[1] * tokens.shape[2], tokens.device)
        return torch.cat([self(tokens[s:s + step]) for s in range(0, len(tokens), step)])


def vac_logits(features: torch.Tensor, texts: tuple, scale: float) -> tuple:
    """logit_scale * cos of (n, D) VAC features with each of `texts`."""
    return tuple(scale * normalize(features) @ normalize(x).T for x in texts)


def train_vac(inputs: CZSLInputs, texts: tuple, teacher: torch.Tensor, recipe: TrainRecipe, batch: int,
              blocks: int, heads: int, alpha: float, score) -> tuple[VAC, Trained]:
    """VAC trained on the train images: `texts` the SA head's (composition, attribute, object) texts,
    `teacher` (n_train, S) SA logits over the seen pairs; `score(model)` the val metric after every step."""
    t = targets(inputs)
    texts = tuple(x.detach() for x in texts)
    teacher = teacher.detach()
    model = VAC(inputs.tokens.shape[-1], blocks, heads, recipe.seed).to(inputs.tokens.device)

    def loss_fn(gen):
        idx = draw(gen, len(t.rows), batch, inputs.tokens.device)
        feats = model(inputs.tokens[t.rows[idx]])
        logits = vac_logits(feats, (texts[0][t.seen_pairs], texts[1], texts[2]), inputs.logit_scale)
        kl = F.kl_div(logits[0].log_softmax(-1), teacher[idx].log_softmax(-1), log_target=True,
                      reduction="batchmean")
        return (1 - alpha) * base_loss(logits, t, idx) + alpha * kl

    model.eval()   # no dropout anywhere; eval keeps MultiheadAttention on one code path in loss and score
    trained = fit(list(model.parameters()), loss_fn, recipe, score=lambda: score(model), desc="czsl vac")
    return model, trained
