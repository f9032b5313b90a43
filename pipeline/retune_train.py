"""RE-tune's training loop and scenario runner on cached features (METHODS.md §15.3.3-15.3.4); the model,
loss, config and task plans are in `pipeline.retune`, the metrics in `pipeline.retune_eval`.

Adam (lr 1e-4 by default, no weight decay), one optimiser for the whole scenario (its state carries over from
task to task, as the reference's), `epochs` per task, the task's rows reshuffled every epoch by a generator
seeded with `seed`, the last short batch kept. Only the batch is copied (and moved to the device), so memory
beyond the cached rows is bounded by the batch. After every task the whole test set is scored for all labels
(zeroshot: once, with identity adapters).
"""

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from pipeline import runtime
from pipeline.retune import RetuneConfig, RetuneModel, Task, TrainConfig, batch_loss, plan
from pipeline.retune_eval import RULES, auroc_matrix, evaluate, forgetting

@dataclass
class RetuneData:
    """Cached inputs of one run: image features (float32, not necessarily unit norm), targets (float32, NaN =
    ignored, `pipeline.multilabel`) and the prompt embeddings of each label, all of width d."""
    labels: tuple[str, ...]
    train_x: np.ndarray        # (N, d)
    train_y: np.ndarray        # (N, C)
    test_x: np.ndarray         # (M, d)
    test_y: np.ndarray         # (M, C)
    pos: np.ndarray            # (C, J, d): J positive prompts per label
    neg: np.ndarray            # (C, J', d)

    def __post_init__(self):
        self.labels = tuple(self.labels)
        C, d = len(self.labels), self.train_x.shape[-1] if self.train_x.ndim == 2 else None
        shapes = {k: getattr(self, k).shape for k in ("train_x", "train_y", "test_x", "test_y", "pos", "neg")}
        ok = (d is not None and self.test_x.shape[1:] == (d,) and self.train_y.shape == (len(self.train_x), C)
              and self.test_y.shape == (len(self.test_x), C) and self.pos.ndim == self.neg.ndim == 3
              and self.pos.shape[0] == self.neg.shape[0] == C and self.pos.shape[2] == self.neg.shape[2] == d)
        if not ok:
            raise ValueError(f"RetuneData for {C} labels {list(self.labels)}: shapes {shapes} should be train_x "
                             "(N, d), train_y (N, C), test_x (M, d), test_y (M, C), pos / neg (C, J, d)")


def _tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)


def train_task(model: RetuneModel, opt: torch.optim.Optimizer, data: RetuneData, task: Task, cfg: TrainConfig,
               gen: torch.Generator, device, progress: bool = True) -> list[float | None]:
    """`cfg.epochs` epochs over the task's rows, reshuffled each epoch; the mean batch loss of each epoch
    (weighted by batch rows; None for an epoch without an active target)."""
    pos, neg = _tensor(data.pos, device), _tensor(data.neg, device)
    active = torch.zeros(len(data.labels), dtype=torch.bool, device=device)
    active[list(task.labels)] = True
    model.train()
    losses = []
    for _ in tqdm(range(cfg.epochs), desc=f"RE-tune {task.name}", leave=False, disable=None if progress else True):
        order = torch.randperm(task.stop - task.start, generator=gen).numpy() + task.start
        total, rows_seen = 0.0, 0
        for i in range(0, len(order), cfg.batch):
            rows = order[i:i + cfg.batch]
            loss = batch_loss(model, _tensor(data.train_x[rows], device), _tensor(data.train_y[rows], device),
                              pos, neg, active)
            if loss is None:
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, rows_seen = total + float(loss.detach()) * len(rows), rows_seen + len(rows)
        losses.append(total / rows_seen if rows_seen else None)
    return losses


@torch.no_grad()
def cosines(model: RetuneModel, x: np.ndarray, pos: np.ndarray, neg: np.ndarray, batch: int = 1024,
            device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """cos+ and cos- of every row of x, (N, C) each, in batches."""
    model.eval()
    p, n = _tensor(pos, device), _tensor(neg, device)
    parts = [model(_tensor(x[i:i + batch], device), p, n) for i in range(0, len(x), batch)]
    return tuple(torch.cat([part[k] for part in parts]).double().cpu().numpy() for k in (0, 1))


@dataclass
class RetuneResult:
    config: RetuneConfig
    labels: tuple[str, ...]
    tasks: list[Task]
    evaluations: list[dict]               # on the test set after each task (zeroshot: one, untrained)
    losses: list[list[float | None]]      # per task, the mean loss of each epoch
    seconds: float
    model: RetuneModel = field(repr=False)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks] or ["zero-shot"]

    def matrix(self, rule: str | None = None) -> list[list[float | None]]:
        """Task x label test AUROC under `rule` (default: the config's)."""
        return auroc_matrix(self.evaluations, self.labels, rule or self.config.score)

    def report(self) -> dict:
        """JSON-ready: config, tasks, every evaluation, the final metrics under both rules, the AUROC
        matrices and forgetting under both rules, losses and seconds."""
        last = self.evaluations[-1]
        return {
            "scenario": self.config.scenario, "score": self.config.score, "labels": list(self.labels),
            "config": json_ready(dataclasses.asdict(self.config)),
            "tasks": [{"name": t.name, "rows": [t.start, t.stop], "labels": [self.labels[c] for c in t.labels]}
                      for t in self.tasks],
            "task_names": self.task_names,
            "final": {"auroc_macro": {r: last["auroc"][r]["macro"] for r in RULES},
                      "auroc_weighted": {r: last["auroc"][r]["weighted"] for r in RULES},
                      "f1_macro": last["f1_macro"], "subset_accuracy": last["subset_accuracy"],
                      "auroc_undefined": last["auroc"][RULES[0]]["undefined"]},
            "auroc_matrix": {r: self.matrix(r) for r in RULES},
            "forgetting": {r: forgetting(self.matrix(r), self.labels) for r in RULES},
            "after_task": self.evaluations, "losses": self.losses, "seconds": round(self.seconds, 3),
        }


def json_ready(obj):
    """Tuples -> lists, recursively (asdict keeps tuples)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    return [json_ready(v) for v in obj] if isinstance(obj, (list, tuple)) else obj


def run(cfg: RetuneConfig, data: RetuneData, device=None, progress: bool = True) -> RetuneResult:
    """Train `cfg.scenario` on data's train rows and evaluate on its test rows after every task."""
    start, device = time.perf_counter(), device or runtime.device()
    tasks = plan(cfg, len(data.train_x), data.labels)
    model = RetuneModel("identity" if cfg.scenario == "zeroshot" else cfg.adapter, data.train_x.shape[1],
                        cfg.train.seed).to(device)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=0.0) if tasks else None
    score = lambda: evaluate(data.test_y, *cosines(model, data.test_x, data.pos, data.neg, cfg.train.eval_batch,
                                                   device), data.labels)
    evaluations, losses = ([] if tasks else [score()]), []
    for task in tasks:
        losses.append(train_task(model, opt, data, task, cfg.train, gen, device, progress))
        evaluations.append(score())
    return RetuneResult(cfg, data.labels, tasks, evaluations, losses, time.perf_counter() - start, model.cpu())
