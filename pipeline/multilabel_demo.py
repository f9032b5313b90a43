"""The multi-label demo CLIP for RE-tune (METHODS.md §15.4): the demo CLIP fine-tuned on the multi-label world
(`pipeline.multilabel_world`), whose captions state absences ("no square"), so that RE-tune's negative prompts
mean something to it. A `model_zoo` entry with `data.world: multilabel`, built by the `retune_model` stage.

It is not a `pipeline.demo` world: a caption here describes a subset of labels, not a class, so batches are
random images rather than one image per class, and two identical captions in a batch (likely among short ones)
are both positives of each other's image (soft targets), not false negatives. Otherwise demo.train's recipe:
symmetric InfoNCE at a fixed logit scale, AdamW, linear warm-up then cosine decay, seeded.
"""

from dataclasses import dataclass, fields

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import demo
from pipeline import multilabel_world as mw
from pipeline.config import Model, ParamsError, entry as zoo_entry, need

WORLD = "multilabel"


@dataclass(frozen=True)
class Recipe:
    steps: int = 300
    lr: float = 5e-4
    warmup: int = 20
    weight_decay: float = 0.1
    logit_scale: float = 50.0
    batch: int = 64          # random images per step
    seed: int = 0


@dataclass(frozen=True)
class Entry:
    """`model_zoo.<name>` of the multi-label world."""
    model: Model             # arch, source and init: what models.save writes into the card
    count: int               # fine-tuning renders (split train of the world, seed `seed`)
    seed: int
    p_present: float         # probability that each label's object is drawn
    mention: float           # probability that a caption states each absent label
    blur: float
    recipe: Recipe


def is_entry(params: dict, name: str) -> bool:
    """Whether `model_zoo.<name>` is a multi-label demo entry (its `data.world` is `multilabel`)."""
    cfg = zoo_entry(params.get("model_zoo"), name, "model_zoo")
    return isinstance(cfg.get("data"), dict) and cfg["data"].get("world") == WORLD


def entry(params: dict, name: str) -> Entry:
    """Validated `model_zoo.<name>`: arch, source demo, init (the demo checkpoint it starts from), data {world:
    multilabel, seed, count, p_present, mention, blur} and train (Recipe's fields)."""
    cfg, where = zoo_entry(params.get("model_zoo"), name, "model_zoo"), f"model_zoo.{name}"
    _known(cfg, where, ("arch", "source", "init", "data", "train"))
    need(cfg, "source", str, where, choices=("demo",))
    data, train = need(cfg, "data", dict, where), need(cfg, "train", dict, where)
    at = f"{where}.data"
    _known(data, at, ("world", "seed", "count", "p_present", "mention", "blur"))
    need(data, "world", str, at, choices=(WORLD,))
    prob = lambda key: float(need(data, key, (int, float), at, minimum=0, maximum=1))
    types = {f.name: f.type for f in fields(Recipe)}
    _known(train, f"{where}.train", tuple(types))
    recipe = Recipe(**{k: need(train, k, (int, float) if types[k] in (float, "float") else int, f"{where}.train",
                               minimum=0) for k in train})
    if recipe.batch < 2 or recipe.steps < 1:
        raise ParamsError(f"params.yaml: '{where}.train' needs batch >= 2 and steps >= 1 (got {recipe})")
    return Entry(Model(need(cfg, "arch", str, where), "demo", data_world=WORLD, init=need(cfg, "init", str, where)),
                 count=need(data, "count", int, at, minimum=1), seed=need(data, "seed", int, at, minimum=0),
                 p_present=prob("p_present"), mention=prob("mention"),
                 blur=float(need(data, "blur", (int, float), at, minimum=0)), recipe=recipe)


def _known(section: dict, where: str, known: tuple) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key '{where}.{unknown[0]}' (known: {sorted(known)})")


def render(cfg: Entry) -> tuple[torch.Tensor, list[mw.MultiScene]]:
    """The fine-tuning images (count, 3, 64, 64) uint8 and what each shows."""
    pairs = [mw.sample(cfg.seed, "train", i, cfg.p_present, cfg.blur) for i in range(cfg.count)]
    pixels = torch.from_numpy(np.stack([np.asarray(img) for img, _ in pairs])).permute(0, 3, 1, 2).contiguous()
    return pixels, [scene for _, scene in pairs]


def clip_loss(img: torch.Tensor, txt: torch.Tensor, tokens: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric InfoNCE of (B, D) image and text features at logit scale `scale`, where the texts with equal
    `tokens` are all positives of each other's images (the target row spread evenly over them)."""
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()
    target = same / same.sum(1, keepdim=True)
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def finetune(cfg: Entry, pixels: torch.Tensor, scenes: list[mw.MultiScene], init: dict,
             progress: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """demo-clip from the state dict `init`, trained `cfg.recipe.steps` steps on captions drawn afresh each step;
    the model (eval mode) and the loss of every step. Deterministic for fixed inputs."""
    r = cfg.recipe
    demo.register_configs()
    torch.manual_seed(r.seed)
    model = open_clip.create_model(cfg.model.arch, pretrained=None)
    model.load_state_dict(init, strict=True)
    tokenizer = open_clip.get_tokenizer(cfg.model.arch)
    x = demo._normalise(pixels, model)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(r.logit_scale)))
    model.logit_scale.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=r.lr, weight_decay=r.weight_decay,
                            fused=True)   # as pipeline/demo.py: the embedding's update in one kernel
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / max(r.warmup, 1))
                                              * 0.5 * (1 + np.cos(np.pi * t / r.steps)))
    gen, rng = torch.Generator().manual_seed(r.seed), np.random.default_rng(r.seed)
    model.train()
    losses = []
    for _ in tqdm(range(r.steps), desc="fine-tune multi-label demo CLIP", disable=not progress):
        pick = torch.randperm(len(x), generator=gen)[:r.batch]
        tokens = tokenizer([mw.caption(scenes[i], rng, cfg.mention) for i in pick.tolist()])
        loss = clip_loss(model.encode_image(x[pick]), model.encode_text(tokens), tokens, r.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses
