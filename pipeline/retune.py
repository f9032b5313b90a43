"""RE-tune on cached features (METHODS.md §15.3): image and text adapters trained with a prompt-difference
BCE loss, in the reference's five scenarios; the metrics are in `pipeline.retune_eval`.

- Adapters: "mlp" = Linear(d, 2d) -> ReLU -> Linear(2d, d) on each side, "linear" = Linear(d, d) on each
  side, "shared" = one MLP for both sides (the same module). Construction is seeded. The zero-shot bound uses
  identity adapters, so its features pass unchanged (the raw embeddings are evaluated).
- Logits: v = A_I(x), t_c+- = mean_j A_T(e(prompt+-_cj)) (adapter before the mean);
  l_c = cos(v, t_c+) - cos(v, t_c-) in [-2, 2], no temperature.
- Loss: BCEWithLogits(l, y) averaged over batch x active labels; NaN targets and the labels a task does not
  train are masked out. A batch with no active target takes no step.
- Scenarios: zeroshot (no task), joint (one task: all rows, all labels), data_incremental (P contiguous,
  unshuffled chunks of near-equal size, all labels), class_incremental (task t: the t-th of len(order)
  contiguous chunks, label order[t] only: the reference's "class-pos-neg"), label_incremental (task t: chunk t,
  labels order[0..t]). The training loop and runner are in `pipeline.retune_train`.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ParamsError, need
from pipeline.retune_eval import RULES

ADAPTERS = ("mlp", "linear", "shared")
SCENARIOS = ("zeroshot", "joint", "data_incremental", "class_incremental", "label_incremental")


@dataclass(frozen=True)
class TrainConfig:
    """Per-task training (the reference's defaults)."""
    batch: int = 6144
    epochs: int = 10          # per task
    lr: float = 1e-4          # Adam, no weight decay
    seed: int = 27            # adapter construction and batch order
    eval_batch: int = 1024


@dataclass(frozen=True)
class RetuneConfig:
    scenario: str = "joint"
    adapter: str = "mlp"
    score: str = "positive"          # the headline AUROC rule (both are reported)
    parts: int = 5                   # data_incremental: P
    order: tuple[str, ...] | None = None   # class / label incremental: label names; None: the data's order
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        for name, choices in (("scenario", SCENARIOS), ("adapter", ADAPTERS), ("score", RULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"RetuneConfig.{name} = {getattr(self, name)!r} should be one of {list(choices)}")


def parse_config(section: dict, where: str, labels: Sequence[str]) -> RetuneConfig:
    """RetuneConfig from a params section (keys: scenario, adapter, score, parts, order, batch, epochs, lr,
    seed, eval_batch; absent ones take the defaults); `labels` are the dataset's, which `order` must name."""
    known = ("scenario", "adapter", "score", "parts", "order", *(f.name for f in dataclasses.fields(TrainConfig)))
    if not isinstance(section, dict):
        raise ParamsError(f"params.yaml: '{where}' = {section!r} should be a mapping")
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key '{where}.{unknown[0]}' (known: {sorted(known)})")
    base, tbase = RetuneConfig(), TrainConfig()
    get = lambda key, kind, default, **kw: need(section, key, kind, where, **kw) if key in section else default
    train = TrainConfig(batch=get("batch", int, tbase.batch, minimum=1),
                        epochs=get("epochs", int, tbase.epochs, minimum=0),
                        lr=float(get("lr", (int, float), tbase.lr, minimum=0)),
                        seed=get("seed", int, tbase.seed, minimum=0),
                        eval_batch=get("eval_batch", int, tbase.eval_batch, minimum=1))
    if train.lr <= 0:
        raise ParamsError(f"params.yaml: '{where}.lr' = {section['lr']!r} should be > 0")
    order = section.get("order")
    if order is not None:
        label_columns(order, labels, f"{where}.order")
        order = tuple(order)
    return RetuneConfig(scenario=get("scenario", str, base.scenario, choices=SCENARIOS),
                        adapter=get("adapter", str, base.adapter, choices=ADAPTERS),
                        score=get("score", str, base.score, choices=RULES),
                        parts=get("parts", int, base.parts, minimum=1), order=order, train=train)


def label_columns(order, labels: Sequence[str], where: str = "order") -> list[int]:
    """Column indices of the label names in `order` (non-empty, distinct, each a known label)."""
    if not isinstance(order, (list, tuple)) or not order or not all(isinstance(o, str) for o in order):
        raise ParamsError(f"params.yaml: '{where}' = {order!r} should be a non-empty list of label names "
                          f"from {list(labels)}")
    for name in order:
        if name not in labels:
            raise ParamsError(f"params.yaml: '{where}' names unknown label {name!r} (labels: {list(labels)})")
    if len(set(order)) != len(order):
        raise ParamsError(f"params.yaml: '{where}' = {list(order)} names a label twice")
    return [list(labels).index(o) for o in order]


# ----------------------------------------------------------------------------- model and loss

def _adapter(kind: str, dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim, dim)
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))


class RetuneModel(nn.Module):
    """Image and text adapters; `kind` one of ADAPTERS, or "identity" (the zero-shot bound)."""

    def __init__(self, kind: str, dim: int, seed: int = 0):
        super().__init__()
        if kind not in (*ADAPTERS, "identity"):
            raise ValueError(f"adapter {kind!r} should be one of {[*ADAPTERS, 'identity']}")
        self.kind = kind
        with torch.random.fork_rng(devices=[]):   # seeded, and the caller's global RNG is left as it was
            torch.manual_seed(seed)
            if kind == "identity":
                self.image, self.text = nn.Identity(), nn.Identity()
            else:
                self.image = _adapter("linear" if kind == "linear" else "mlp", dim)
                self.text = self.image if kind == "shared" else _adapter(kind, dim)

    def prompts(self, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, J, d) prompt embeddings -> (C, d) unit means of the adapted prompts, positive and negative."""
        mean = lambda e: F.normalize(self.text(e.reshape(-1, e.shape[-1])).reshape(e.shape).mean(dim=1), dim=-1)
        return mean(pos), mean(neg)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos(A_I(x), t_c+) and cos(A_I(x), t_c-), each (B, C)."""
        v = F.normalize(self.image(x), dim=-1)
        t_pos, t_neg = self.prompts(pos, neg)
        return v @ t_pos.T, v @ t_neg.T


def batch_loss(model: RetuneModel, x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
               active: torch.Tensor) -> torch.Tensor | None:
    """BCEWithLogits of l = cos+ - cos- against y (B, C), averaged over the known cells of the active label
    columns (`active`: (C,) bool); None when the batch has no such cell."""
    mask = active[None, :] & ~torch.isnan(y)
    count = int(mask.sum())
    if count == 0:
        return None
    cos_pos, cos_neg = model(x, pos, neg)
    per = F.binary_cross_entropy_with_logits(cos_pos - cos_neg, torch.where(mask, y, 0.0), reduction="none")
    return (per * mask).sum() / count


# ----------------------------------------------------------------------------- scenarios

@dataclass(frozen=True)
class Task:
    name: str
    start: int                 # rows [start, stop) of the train set
    stop: int
    labels: tuple[int, ...]    # label columns the loss sees


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [start, stop) ranges covering range(n) in order, sizes differing by at most one (the
    first n % parts one longer); the reference cut ceil(n / parts) rows per chunk, the last one shorter."""
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} train rows into {parts} non-empty chunks")
    bounds = np.cumsum([0] + [n // parts + (i < n % parts) for i in range(parts)]).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def plan(cfg: RetuneConfig, n_rows: int, labels: Sequence[str]) -> list[Task]:
    """The tasks of `cfg.scenario`, in order (none for zeroshot)."""
    every = tuple(range(len(labels)))
    if cfg.scenario == "zeroshot":
        return []
    if cfg.scenario == "joint":
        return [Task("joint", 0, n_rows, every)]
    if cfg.scenario == "data_incremental":
        return [Task(f"part {i + 1}/{cfg.parts}", a, b, every) for i, (a, b) in enumerate(chunks(n_rows, cfg.parts))]
    order = label_columns(list(cfg.order or labels), labels)
    tasks = []
    for t, (a, b) in enumerate(chunks(n_rows, len(order))):
        cols = (order[t],) if cfg.scenario == "class_incremental" else tuple(order[:t + 1])
        tasks.append(Task(("" if cfg.scenario == "class_incremental" or t == 0 else "+") + labels[order[t]], a, b, cols))
    return tasks
