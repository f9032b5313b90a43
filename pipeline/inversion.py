"""Cross-the-Gap's modality inversion (METHODS.md §6): pseudo-tokens optimised through a frozen tower.

OTI (image -> text): one pseudo-word per image, placed at the placeholder of "a photo of £", trained so the
text feature matches the image's cached projected feature; the result is a *text* feature of the image.
OVI (text -> image): one pseudo visual token per prompt, repeated over every patch position (nearest
interpolation for R > 1 tokens), CLS prefixed, through the vision tower; the result is an *image* feature
of the prompt. Loss 1 - cos; AdamW; every row starts from its own seeded N(0, 0.02) draw.

The loss is a sum over the batch, not the reference's mean: each row's gradient is then its own term,
so a row's tokens do not depend on which rows share its batch (AdamW is per element), and a resumed run
equals an uninterrupted one. Adam is scale-invariant up to its eps, so the step size is the reference's.
Targets are the cached features; the towers run in float32.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer, text_global_pool
from tqdm import tqdm

from pipeline import inversion_store
from pipeline.config import ParamsError, is_a, need
from pipeline.features import Features
from pipeline.models import LoadedModel
from pipeline.store import ShardedWriter

PLACEHOLDER = "£"   # Cross-the-Gap's placeholder word; its embedding is replaced by the pseudo-token
INIT_STD = 0.02
METHODS = ("oti", "ovi")
BATCHES_PER_SHARD = 4   # a killed run loses at most this many batches


class InversionError(ValueError):
    """A model, store or request that modality inversion cannot work with."""


@dataclass(frozen=True)
class Settings:
    """`inversion.<oti|ovi>` in params.yaml."""
    tokens: int
    steps: int
    lr: float
    weight_decay: float
    batch: int
    seed: int
    template: str | None = None        # oti: the sentence holding the placeholder
    splits: tuple[str, ...] = ()       # oti: which image rows are inverted


def settings(params: dict, method: str, dataset: str, splits) -> Settings:
    """Validated `inversion.<method>` with `inversion.overrides.<dataset>.<method>` merged over it;
    `splits` are the known split names."""
    section = need(params, "inversion", dict, "")
    mine = need(section, "overrides", dict, "inversion").get(dataset) or {}
    if not isinstance(mine, dict) or not set(mine) <= set(METHODS) or not all(isinstance(v, dict) for v in mine.values()):
        raise ParamsError(f"params.yaml: 'inversion.overrides.{dataset}' = {mine!r} should map some of "
                          f"{list(METHODS)} to settings")
    where = f"inversion.{method}" + (f" (with inversion.overrides.{dataset})" if method in mine else "")
    sec = {**need(section, method, dict, "inversion"), **mine.get(method, {})}
    lr = float(need(sec, "lr", (int, float), where, minimum=0))
    if lr == 0:
        raise ParamsError(f"params.yaml: '{where}.lr' = {sec['lr']!r} should be > 0")
    common = dict(tokens=need(sec, "tokens", int, where, minimum=1), steps=need(sec, "steps", int, where, minimum=0),
                  lr=lr, weight_decay=float(need(sec, "weight_decay", (int, float), where, minimum=0)),
                  batch=need(sec, "batch", int, where, minimum=1), seed=need(sec, "seed", int, where, minimum=0))
    if method == "ovi":
        return Settings(**common)
    template = need(sec, "template", str, where)
    if template.count("{}") != 1:
        raise ParamsError(f"params.yaml: '{where}.template' = {template!r} should contain '{{}}' exactly once")
    chosen = need(sec, "splits", list, where)
    if not chosen or not all(is_a(s, str) and s in splits for s in chosen):
        raise ParamsError(f"params.yaml: '{where}.splits' = {chosen!r} should be a non-empty list of {list(splits)}")
    return Settings(**common, template=template, splits=tuple(chosen))


# ----------------------------------------------------------------------------- towers with pseudo-tokens


class TextWithTokens:
    """The text tower of a loaded model, with R pseudo-words at the placeholders of one sentence."""

    def __init__(self, m: LoadedModel, template: str, n_tokens: int, device: str):
        encode = getattr(m.tokenizer, "encode", None)
        if encode is None:
            raise InversionError(f"OTI needs open_clip's SimpleTokenizer; this model has {type(m.tokenizer).__name__}")
        ids = encode(PLACEHOLDER)
        if len(ids) != 1:
            raise InversionError(f"the placeholder {PLACEHOLDER!r} is {len(ids)} tokens for this tokenizer, not 1")
        self.ids = m.tokenizer([template.format(" ".join([PLACEHOLDER] * n_tokens))]).to(device)   # (1, L)
        self.slots = self.ids[0] == ids[0]
        if int(self.slots.sum()) != n_tokens:
            raise InversionError(f"template {template!r} does not fit {n_tokens} placeholder(s) in the "
                                 f"{self.ids.shape[1]}-token context")
        self.model, self.W = m.trunk, m.W_txt.to(device)
        self.width = self.model.token_embedding.weight.shape[1]

    def __call__(self, pseudo: torch.Tensor) -> torch.Tensor:
        """(B, R, width) pseudo-words -> (B, D) projected text features (as open_clip's encode_text)."""
        return encode_text_with_tokens(self.model, self.W, self.ids.expand(len(pseudo), -1), self.slots, pseudo)


def encode_text_with_tokens(model: torch.nn.Module, W: torch.Tensor, ids: torch.Tensor, slots: torch.Tensor,
                            tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text of token ids (B, L) with the embeddings at the (L,) bool `slots` replaced by
    `tokens` (B, R, width), then `@ W` (the split-off text projection): (B, D). Gradients reach `tokens`."""
    x = model.token_embedding(ids).clone()
    x[:, slots] = tokens.to(x.dtype)
    x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
    x = text_global_pool(model.ln_final(x), ids, model.text_pool_type,
                         eos_token_id=getattr(model, "text_eos_id", None))
    return x @ W


class ImageWithTokens:
    """The vision tower of a loaded model (ViT), fed R pseudo visual tokens in place of the patch embeddings."""

    def __init__(self, m: LoadedModel, device: str):
        visual = m.trunk.visual
        if not isinstance(visual, VisionTransformer):
            raise InversionError(f"OVI needs a ViT vision tower; this model has {type(visual).__name__}")
        self.visual, self.W = visual, m.W_img.to(device)
        self.width = visual.class_embedding.shape[0]
        self.n_patches = visual.positional_embedding.shape[0] - 1

    def __call__(self, pseudo: torch.Tensor) -> torch.Tensor:
        """(B, R, width) pseudo visual tokens -> (B, D) projected image features."""
        v, R = self.visual, pseudo.shape[1]
        # nearest interpolation of R tokens onto the patch grid, as F.interpolate(mode="nearest") indexes
        patches = pseudo[:, torch.arange(self.n_patches, device=pseudo.device) * R // self.n_patches]
        x = torch.cat([v.class_embedding.expand(len(pseudo), 1, -1), patches], dim=1) + v.positional_embedding
        x = v.transformer(v.ln_pre(v.patch_dropout(x)))
        pooled, _ = v._pool(x)
        return pooled @ self.W


# ----------------------------------------------------------------------------- optimisation


def initial_tokens(rows: np.ndarray, n_tokens: int, width: int, seed: int) -> torch.Tensor:
    """(len(rows), R, width) N(0, INIT_STD) draws, each from a generator seeded by (seed, row)."""
    return torch.from_numpy(np.stack([
        np.random.default_rng([seed, int(r)]).standard_normal((n_tokens, width)) for r in rows
    ]).astype(np.float32) * INIT_STD)


def invert(encode, targets: torch.Tensor, rows: np.ndarray, cfg: Settings, width: int) -> dict[str, np.ndarray]:
    """Optimise one pseudo-token set per target row (targets (B, D), rows their ids for the seeding).

    Returns tokens (B, R, width), emb (B, D) = encode(tokens) of the last step, cos (B, 2) = cosine to the
    target at the initialisation and at the end.
    """
    target = F.normalize(targets.float(), dim=-1)
    tokens = initial_tokens(rows, cfg.tokens, width, cfg.seed).to(target.device).requires_grad_(True)
    opt = torch.optim.AdamW([tokens], lr=cfg.lr, weight_decay=cfg.weight_decay)
    with torch.enable_grad():
        for step in range(cfg.steps + 1):
            cos = (F.normalize(encode(tokens), dim=-1) * target).sum(-1)
            if step == 0:
                cos_init = cos.detach()
            if step == cfg.steps:
                break
            opt.zero_grad(set_to_none=True)
            (1 - cos).sum().backward()
            opt.step()
    with torch.no_grad():
        emb = encode(tokens)
    final = (F.normalize(emb, dim=-1) * target).sum(-1)
    return {"tokens": tokens.detach().cpu().numpy(), "emb": emb.cpu().numpy(),
            "cos": torch.stack([cos_init, final], 1).cpu().numpy()}


def write(method: str, m: LoadedModel, feats: Features, cfg: Settings, dest: Path, staging: Path,
          prov: dict, device: str = "cpu", progress: bool = True) -> None:
    """Invert every target row of `method` into `dest` (via `staging`, resuming its finished shards)."""
    rows, labels, target = inversion_store.targets(method, feats, cfg.splits)
    encode = (TextWithTokens(m, cfg.template, cfg.tokens, device) if method == "oti"
              else ImageWithTokens(m, device))
    n = len(rows)
    arrays = {f"{method}/tokens": ((n, cfg.tokens, encode.width), "float32"),
              f"{method}/emb": ((n, target.shape[1]), "float32"), f"{method}/cos": ((n, 2), "float32")}
    small = {f"{method}/row": rows.astype(np.int64), f"{method}/label": labels.astype(np.int32)}
    writer = ShardedWriter(staging, prov, arrays, small, shard_rows=cfg.batch * BATCHES_PER_SHARD)
    pending = writer.pending()
    bar = tqdm(total=writer.pending_rows(), unit="row",
               desc=f"{method} {dest.parent.parent.name}-{dest.parent.name}", disable=not progress)
    for shard in pending:
        start, stop = writer.shard_range(shard)
        parts = []
        for i in range(start, stop, cfg.batch):
            j = min(i + cfg.batch, stop)
            parts.append(invert(encode, torch.as_tensor(target[i:j], device=device), rows[i:j], cfg, encode.width))
            bar.update(j - i)
        writer.write_shard(shard, {f"{method}/{k}": np.concatenate([p[k] for p in parts]) for k in parts[0]})
    bar.close()
    writer.finalize(dest)
