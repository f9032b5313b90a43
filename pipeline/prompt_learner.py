"""CoOp's prompt learner (METHODS.md §15.2.3) on a loaded open_clip model's text tower.

n_ctx context vectors, shared by every class (CSC=False), live in token-embedding space and replace the
embeddings of the init words in "{init words} {class}." (CoOp's class position "end", with its "."), so
class k's prompt is [SOS] ctx_1 .. ctx_n [class tokens] [.] [EOS]. Initialised from the init words' own
embeddings, the text features are exactly encode_text of "a photo of a {class}.". The class tokens, ".",
EOS and the positional embeddings stay fixed; the whole text tower runs in the loop through open_clip's
own modules (`inversion.encode_text_with_tokens`, shared with OTI), then `@ W_txt`. Only the text tower
is used, so any image tower (ViT or ModifiedResNet) works: image features come from the cache.
Class names read "_" as " ", as CoOp's do.

The objectives on its logits live here too: CoOp's cross-entropy, KDPL's symmetric KL (teacher detached)
and KDPL-CA's top-K candidate selection; `pipeline.prompt_train` runs them.
"""

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.inversion import encode_text_with_tokens
from pipeline.models import LoadedModel

N_CTX = 4
CTX_INIT = "a photo of a"
EVAL_BATCH = 256   # prompts per text-tower call in `class_features`


class PromptError(ValueError):
    """Prompts, features or settings that prompt learning cannot work with."""


class PromptLearner:
    """The frozen text tower of `m` with n_ctx learnable context tokens before each class name."""

    def __init__(self, m: LoadedModel, n_ctx: int = N_CTX, ctx_init: str = CTX_INIT, device: str | None = None):
        encode = getattr(m.tokenizer, "encode", None)
        if encode is None:
            raise PromptError(f"prompt learning needs open_clip's SimpleTokenizer; this model has "
                              f"{type(m.tokenizer).__name__}")
        self.model, self.tokenizer, self.logit_scale = m.trunk, m.tokenizer, m.logit_scale
        self.device = torch.device(device) if device else m.trunk.positional_embedding.device
        self.W = m.W_txt.to(self.device)
        self.context_length = m.trunk.positional_embedding.shape[0]
        self.width = m.trunk.token_embedding.weight.shape[1]
        self.n_ctx, self.ctx_init = n_ctx, ctx_init.replace("_", " ")
        self.init_ids = encode(self.ctx_init)
        if n_ctx < 1 or len(self.init_ids) != n_ctx:
            raise PromptError(f"n_ctx = {n_ctx}, but the init words {ctx_init!r} are {len(self.init_ids)} "
                              f"tokens: they must be n_ctx tokens, one per context vector")
        with torch.no_grad():
            self.init_ctx = m.trunk.token_embedding.weight[self.init_ids].detach().clone().to(self.device)
        self.slots = torch.zeros(self.context_length, dtype=torch.bool, device=self.device)
        self.slots[1:1 + n_ctx] = True   # position 0 is SOS

    @property
    def dim(self) -> int:
        """D, the width of the projected text features."""
        return self.W.shape[1]

    def prompts(self, classnames: Sequence[str]) -> torch.Tensor:
        """(C, L) token ids of "{init words} {class}." per class; the context slots are positions 1..n_ctx."""
        if len(classnames) == 0:
            raise PromptError("no class names to build prompts for")
        names = [str(c).replace("_", " ") for c in classnames]
        texts = [f"{self.ctx_init} {name}." for name in names]
        for name, text in zip(names, texts):
            used = len(self.tokenizer.encode(text)) + 2          # + SOS and EOS
            if used > self.context_length:
                raise PromptError(
                    f"class {name!r} is {len(self.tokenizer.encode(name))} tokens: its prompt {text!r} needs "
                    f"{used} tokens (with {self.n_ctx} context tokens, '.', SOS and EOS), more than the "
                    f"model's context length {self.context_length}")
        ids = self.tokenizer(texts, context_length=self.context_length).to(self.device)
        if not (ids[:, 1:1 + self.n_ctx] == torch.tensor(self.init_ids, device=self.device)).all():
            raise PromptError(f"the tokenizer merged the init words {self.ctx_init!r} with a class name")
        return ids

    def __call__(self, ctx: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Context (n_ctx, width) and prompts (C, L) from `prompts` -> (C, D) projected text features."""
        if ctx.shape != (self.n_ctx, self.width):
            raise PromptError(f"context of shape {tuple(ctx.shape)}, expected ({self.n_ctx}, {self.width})")
        return encode_text_with_tokens(self.model, self.W, ids, self.slots, ctx.expand(len(ids), -1, -1))


def class_features(learner: PromptLearner, ctx, classnames: Sequence[str], batch: int = EVAL_BATCH) -> np.ndarray:
    """(C, D) float32 projected text features (not normalised) of any class list under a learned context
    (n_ctx, width), e.g. base and novel classes for evaluation against cached image features."""
    ctx = torch.as_tensor(ctx).detach().to(learner.device, torch.float32)
    ids = learner.prompts(classnames)
    with torch.no_grad():
        return torch.cat([learner(ctx, ids[i:i + batch]) for i in range(0, len(ids), batch)]).float().cpu().numpy()


def cosine_logits(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, D) image and (C, D) text features -> (B, C) logits scale * cos."""
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return scale * image @ text.T


# ----------------------------------------------------------------------------- losses


def coop_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CoOp: mean cross-entropy of (B, C) logits against (B,) labels."""
    return F.cross_entropy(logits, labels)


def kl_batchmean(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of (B, C) log-probabilities, summed over C, averaged over B (torch's "batchmean")."""
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def kdpl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KDPL's (loss, KL(p_T || p_S), KL(p_S || p_T)) of (B, K) logits, loss = 0.5 forward + 0.5 reverse.
    The teacher is detached: no gradient reaches it."""
    log_t = F.log_softmax(teacher_logits.detach(), dim=-1)
    log_s = F.log_softmax(student_logits, dim=-1)
    forward, reverse = kl_batchmean(log_t, log_s), kl_batchmean(log_s, log_t)
    return 0.5 * forward + 0.5 * reverse, forward, reverse


def check_top_k(k: int, n: int) -> None:
    """Refuse an empty candidate list, or K outside [1, n]."""
    if n == 0:
        raise PromptError("the candidate name list is empty")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise PromptError(f"top_k = {k!r} should be an int in [1, {n}], the number of candidate names")


def top_k_candidates(teacher_logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted ascending) of the k columns of (B, C) teacher logits with the highest batch-mean
    softmax probability: the set KDPL's `argpartition(p, -k)[-k:]` keeps."""
    n = teacher_logits.shape[1]
    check_top_k(k, n)
    if k == n:
        return torch.arange(n, device=teacher_logits.device)
    mean = F.softmax(teacher_logits.detach().float(), dim=-1).mean(0)
    return torch.topk(mean, k).indices.sort().values
