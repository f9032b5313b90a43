"""SAM-CZSL's entry point (issue 9): `config` parses the `czsl:` params block, `run` scores every module on
val and test, closed and open world, from `pipeline.czsl_methods.CZSLInputs`, and returns JSON-ready results.

    czsl:
      head:   {steps, lr, warmup, warmup_min_lr, weight_decay, seed, batch}   # SA's residual text head
      vac:    {steps, lr, warmup, warmup_min_lr, weight_decay, seed, batch, blocks, heads, alpha}
      memory: {size, entropy, order, seed}   # prototypes per pair, gate in [0, 1], manifest | shuffle
      fusion: {trials, seed, refine: {rounds, per_round, top, radius, shrink}}   # pipeline.config.search

Modules: zero_shot (CLS), sa (training-free), sa_head, vac, memory (pseudo-labels and entropies from the
trained model's cross-modal logits, SA head + VAC), fused (sa_head + vac + memory, weights chosen on val
per world, composed as p(c) + p(a) p(o)). The kept step of each trained head is the one of best val AUC
(a choice: AUC sums up the whole seen / unseen curve), in the closed world when `inputs.closed` is given,
otherwise the open world. Test never enters a choice.
"""

from dataclasses import dataclass

import numpy as np
import torch

from pipeline import czsl_eval
from pipeline.config import ParamsError, SearchConfig, TrainRecipe, need, search, train_recipe
from pipeline.czsl_memory import ORDERS, init_bank, pseudo_labels, stream, stream_order
from pipeline.czsl_methods import (CZSLInputs, aligned_patches, choose_weights, fuse, gaps, sparse_alignment,
                                   zero_shot)
from pipeline.czsl_train import head, train_head, train_vac, vac_logits

RECIPE = ("steps", "lr", "warmup", "warmup_min_lr", "weight_decay", "seed")
SECTIONS = {"head": (*RECIPE, "batch"), "vac": (*RECIPE, "batch", "blocks", "heads", "alpha"),
            "memory": ("size", "entropy", "order", "seed"), "fusion": ("trials", "seed", "refine")}
OTHER_KEYS = ("splits", "prompts")   # read by pipeline.czsl_inputs.split_settings and config.primitive_templates
EVAL_SPLITS = ("val", "test")
METRICS = ("seen", "unseen", "hm", "auc")


@dataclass(frozen=True)
class HeadConfig:
    recipe: TrainRecipe
    batch: int          # train images per step (0: all)


@dataclass(frozen=True)
class VACConfig:
    recipe: TrainRecipe
    batch: int
    blocks: int         # K cross-attention blocks
    heads: int          # attention heads; must divide the embedding width
    alpha: float        # weight of KL(SA || VAC) against L_base


@dataclass(frozen=True)
class MemoryConfig:
    size: int           # prototypes per composition
    entropy: float      # a query is inserted only below this normalised entropy
    order: str          # test-stream order: manifest | shuffle
    seed: int           # of the shuffle


@dataclass(frozen=True)
class SAMConfig:
    head: HeadConfig
    vac: VACConfig
    memory: MemoryConfig
    fusion: SearchConfig


def config(params: dict) -> SAMConfig:
    """Validated `czsl` block; every error names the key, its value and what was expected."""
    section = need(params, "czsl", dict, "")
    blocks = {}
    for name, keys in SECTIONS.items():
        block = blocks[name] = need(section, name, dict, "czsl")
        unknown = sorted(set(block) - set(keys))
        if unknown:
            raise ParamsError(f"params.yaml: unknown keys {unknown} under 'czsl.{name}' (known: {list(keys)})")
    unknown = sorted(set(section) - set(SECTIONS) - set(OTHER_KEYS))
    if unknown:
        raise ParamsError(f"params.yaml: unknown keys {unknown} under 'czsl' (known: {[*SECTIONS, *OTHER_KEYS]})")
    h, v, m = blocks["head"], blocks["vac"], blocks["memory"]
    return SAMConfig(
        HeadConfig(train_recipe(h, "czsl.head"), need(h, "batch", int, "czsl.head", minimum=0)),
        VACConfig(train_recipe(v, "czsl.vac"), need(v, "batch", int, "czsl.vac", minimum=0),
                  need(v, "blocks", int, "czsl.vac", minimum=1), need(v, "heads", int, "czsl.vac", minimum=1),
                  float(need(v, "alpha", (int, float), "czsl.vac", minimum=0, maximum=1))),
        MemoryConfig(need(m, "size", int, "czsl.memory", minimum=1),
                     float(need(m, "entropy", (int, float), "czsl.memory", minimum=0, maximum=1)),
                     need(m, "order", str, "czsl.memory", choices=ORDERS),
                     need(m, "seed", int, "czsl.memory", minimum=0)),
        search(blocks["fusion"], "czsl.fusion"))


def summary(r: czsl_eval.CZSLResult) -> dict:
    """Best seen / unseen / HM over the bias sweep, AUC, and attr / obj accuracy at bias 0."""
    return {"seen": r.best_seen, "unseen": r.best_unseen, "hm": r.best_hm, "auc": r.auc,
            "attr": r.unbiased.attr, "obj": r.unbiased.obj}


def metrics(result: dict) -> dict:
    """The DVC metric of a `run` result: test seen / unseen / HM / AUC per module and world."""
    return {name: {world: {k: per_split["test"][k] for k in METRICS} for world, per_split in per_world.items()}
            for name, per_world in result["modules"].items()}


def run(inputs: CZSLInputs, cfg: SAMConfig, device) -> dict:
    """Every module's val / test metrics per world, the fused result and its weights, RMG and centroid gaps
    (test images), training records and memory insertions; plain JSON types."""
    width = inputs.tokens.shape[-1]
    if width % cfg.vac.heads:
        raise ParamsError(f"params.yaml: 'czsl.vac.heads' = {cfg.vac.heads} should divide the embedding width {width}")
    x = inputs.to(device)
    rows = {s: x.rows(s) for s in ("train", *EVAL_SPLITS)}
    labels = {s: np.asarray(x.labels)[r] for s, r in rows.items()}
    tokens = {s: _take(x.tokens, r) for s, r in rows.items()}
    scale = x.logit_scale
    select = x.worlds("val").get("closed")
    columns = torch.as_tensor(np.flatnonzero(select if select is not None else np.ones(len(x.seen), bool)),
                              device=x.tokens.device)

    def val_auc(scores: torch.Tensor) -> float:
        return czsl_eval.evaluate(scores.cpu().numpy(), labels["val"], x.pair_ids, x.seen, select).auc

    def head_auc(W: torch.Tensor) -> float:   # SA on the selection world's pairs only: the others are not scored
        scores = torch.zeros(len(rows["val"]), len(x.seen), device=W.device)
        scores[:, columns] = sparse_alignment(tokens["val"], head(W, x.comp_text[columns])[0], scale)
        return val_auc(scores)

    with torch.no_grad():
        W, head_fit = train_head(x, cfg.head.recipe, cfg.head.batch, head_auc)
        texts = head(W, x.comp_text, x.attr_text, x.obj_text)
        teacher = sparse_alignment(tokens["train"], texts[0][torch.as_tensor(x.seen, device=W.device)], scale)
        vac_auc = lambda m: val_auc(vac_logits(m.features(tokens["val"]), texts[:1], scale)[0])
        vac, vac_fit = train_vac(x, texts, teacher, cfg.vac.recipe, cfg.vac.batch, cfg.vac.blocks, cfg.vac.heads,
                                 cfg.vac.alpha, vac_auc)
        feats = {s: vac.features(t) for s, t in tokens.items()}
        vac_out = {s: vac_logits(f, texts, scale) for s, f in feats.items()}
        sa_head = {s: tuple(sparse_alignment(tokens[s], text, scale) for text in texts) for s in EVAL_SPLITS}
        # the memory's pseudo-labels: the trained model's cross-modal prediction, SA head + VAC
        predictor = {"train": sparse_alignment(tokens["train"], texts[0], scale) + vac_out["train"][0],
                     **{s: sa_head[s][0] + vac_out[s][0] for s in EVAL_SPLITS}}
        scores = {"zero_shot": {s: zero_shot(x, rows[s]) for s in EVAL_SPLITS},
                  "sa": {s: sparse_alignment(tokens[s], x.comp_text, scale) for s in EVAL_SPLITS},
                  "sa_head": {s: sa_head[s][0] for s in EVAL_SPLITS},
                  "vac": {s: vac_out[s][0] for s in EVAL_SPLITS}}

        out = {"modules": {}, "fusion": {}, "memory": {"order": cfg.memory.order, "inserted": {}}}
        for world in x.worlds("val"):
            scored = {s: x.worlds(s)[world] for s in EVAL_SPLITS}
            memory = {s: _memory(x, cfg.memory, tokens, labels, predictor, s, scored[s]) for s in EVAL_SPLITS}
            parts = {s: {"sa_head": sa_head[s], "vac": vac_out[s], "memory": memory[s][:1]} for s in EVAL_SPLITS}
            weights, val_top1, trials = choose_weights(parts["val"], labels["val"], x.pair_ids, scored["val"],
                                                       cfg.fusion)
            fused = {s: fuse(parts[s], weights, x.pair_ids, scored[s]) for s in EVAL_SPLITS}
            per_module = {**scores, "memory": {s: m[0] for s, m in memory.items()}, "fused": fused}
            for name, per_split in per_module.items():
                out["modules"].setdefault(name, {})[world] = {
                    s: summary(czsl_eval.evaluate(per_split[s].cpu().numpy(), labels[s], x.pair_ids, x.seen, scored[s]))
                    for s in EVAL_SPLITS}
            out["fusion"][world] = {"weights": weights, "val_top1": val_top1, "trials": trials}
            out["memory"]["inserted"][world] = {s: m[2] for s, m in memory.items()}
            if world == "open":
                test_bank = memory["test"][1]

        y = torch.as_tensor(labels["test"], device=x.tokens.device)
        cls, raw, tuned = tokens["test"][:, 0], x.comp_text[y], texts[0][y]
        out["gaps"] = {"zero_shot": gaps(cls, raw), "sa": gaps(aligned_patches(tokens["test"], raw), raw),
                       "sa_head": gaps(aligned_patches(tokens["test"], tuned), tuned),
                       "vac": gaps(feats["test"], tuned), "memory": gaps(cls, test_bank.centroids()[y])}
    out["train"] = {name: {"seconds": f.seconds, "best_step": f.best_step, "best_val_auc": f.best_score}
                    for name, f in (("sa_head", head_fit), ("vac", vac_fit))}
    return out


def _memory(x: CZSLInputs, cfg: MemoryConfig, tokens: dict, labels: dict, predictor: dict, split: str, scored):
    """The bank's (scores, final bank, insertions) along `split`'s stream, from the train-initialised bank."""
    _, train_keys = pseudo_labels(predictor["train"], scored)
    bank = init_bank(tokens["train"][:, 0], labels["train"], train_keys, x.comp_text, cfg.size)
    pseudo, entropy = pseudo_labels(predictor[split], scored)
    order = stream_order(len(labels[split]), cfg.order, cfg.seed)
    return stream(bank, tokens[split][:, 0], pseudo, entropy, cfg.entropy, x.logit_scale, order)


def _take(tokens: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """tokens[rows]: a view when the rows are one contiguous run (CZSLData's manifest orders the splits),
    so the (N, L+1, D) cache is not copied per split."""
    if len(rows) and (np.diff(rows) == 1).all():
        return tokens[rows[0]:rows[-1] + 1]
    return tokens[torch.as_tensor(rows, device=tokens.device)]
