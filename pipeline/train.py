"""The one training loop of methods that learn on cached features (DESIGN.md §7b).

Full batch (the caller's `loss_fn` sees every cached row), AdamW with a linear warm-up, seeded, on
whatever device the parameters live on, with a tqdm bar on a terminal. With a `score` (a val-only
accuracy), the kept parameters are those of the best step, step 0 being the initial parameters, so
zero steps return the initialisation untouched and training can never lose to it on val.
A trained method returns a `TrainedFit`: its kept parameters (the checkpoint) and the settings that
produced them, which `adapt` writes into logits.zarr with its logits, in the same atomic store write,
beside the store's provenance (the features, model checkpoint digest and draws it trained on).
"""

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from pipeline.config import TrainRecipe
from pipeline.methods.contract import Fit


@dataclass
class TrainedFit(Fit):
    """A trained method's `Fit` plus its checkpoint: name -> the kept step's tensor, and `params`, the
    method's settings as JSON (`settings_record`)."""
    checkpoint: dict[str, torch.Tensor] = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def settings_record(cfg) -> dict:
    """A method's frozen settings (a dataclass) as the JSON a checkpoint records: tuples become lists and
    mapping keys strings (None -> "null"), as JSON writes them."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def checkpoint_array(method: str, key: str, name: str) -> str:
    """Name of one checkpoint tensor in logits.zarr, e.g. 'semobridge_t/shot_16-seed_1/checkpoint/P'."""
    return f"{method}/{key}/checkpoint/{name}"


def warmup_lr(step: int, recipe: TrainRecipe) -> float:
    """Learning rate of 0-based step `step`: Dassl's LinearWarmupScheduler followed by a constant rate,
    i.e. `warmup_min_lr` at step 0, lr * step / warmup for 0 < step < warmup, then lr."""
    if step >= recipe.warmup:
        return recipe.lr
    return recipe.warmup_min_lr if step == 0 else recipe.lr * step / recipe.warmup


@dataclass
class Trained:
    losses: list[float]      # loss before each step's update
    best_step: int           # number of updates behind the kept parameters (0: the initialisation)
    best_score: float | None
    seconds: float


def fit(params: list[torch.Tensor], loss_fn: Callable[[torch.Generator], torch.Tensor], recipe: TrainRecipe,
        score: Callable[[], float] | None = None, desc: str = "train") -> Trained:
    """Minimise `loss_fn(generator)` over `params` (leaf tensors, updated in place) for `recipe.steps`
    steps. `score()` is evaluated after every step (and before the first); the parameters of the first
    best score are written back at the end. Without `score` the last step's parameters stay."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(recipe.seed)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    snapshot = lambda: [p.detach().clone() for p in params]

    def scored() -> float:
        with torch.no_grad():
            return score()

    best_score, best_step, best = (scored(), 0, snapshot()) if score else (None, recipe.steps, None)
    losses = []
    for step in tqdm(range(recipe.steps), desc=desc, leave=False, disable=None):
        for group in opt.param_groups:
            group["lr"] = warmup_lr(step, recipe)
        with torch.enable_grad():   # callers may run under no_grad (benchmarks, inference code)
            loss = loss_fn(gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if score:
            value = scored()
            if value > best_score:   # strict: ties keep the earlier step
                best_score, best_step, best = value, step + 1, snapshot()
    with torch.no_grad():
        for p, b in zip(params, best or ()):
            p.copy_(b)
    for p in params:
        p.requires_grad_(False)
    return Trained(losses, best_step, best_score, time.perf_counter() - start)
