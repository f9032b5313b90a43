"""CoOp and KDPL training of a `PromptLearner`'s context on cached image features (METHODS.md §15.2).

Inputs: the student's projected image features of V fixed augmented views per training image (N, V, D);
for KDPL also the teacher's features of the same views (N, V, D_t) and its fixed class (or candidate-name)
text features (C, D_t), in the order of the student's class names. Each epoch visits every image once in a
seeded random order with one of its V views drawn per image (both from (seed, epoch)), in batches of
`batch`; the last partial batch is dropped, as Dassl's train loader does when N >= batch.
SGD (momentum, weight decay, no Nesterov) with the rate set once per epoch as Dassl does: the constant
warm-up rate for `warmup_epochs`, then CosineAnnealingLR(T_max=epochs) counted from 0 after the warm-up
(Dassl's WARMUP_RECOUNT=True), so epoch e >= w trains at lr (1 + cos(pi (e - w) / epochs)) / 2 and the last
epoch does not reach 0.

CoOp: cross-entropy of logit_scale * cos(image, class text). KDPL: 0.5 KL(p_T || p_S) + 0.5 KL(p_S || p_T),
reduction batchmean, p = softmax of the logits, the teacher's also at the *student's* logit scale
(§15.2.1); labels are never read. KDPL-CA (`top_k`): per batch only the K candidates of highest batch-mean
teacher probability get student prompts, and both distributions are over those K.
The towers run in float32 (the reference: fp16).

Resumable: given a `checkpoint` path, the context, optimiser state and loss history are written there
atomically at every epoch boundary with `complete: False`, and at the end with `complete: True`. A run that
finds a checkpoint of the same inputs and settings continues after its last finished epoch and ends
bit-identical to an uninterrupted run; a checkpoint of other inputs or settings is overwritten.
"""

import dataclasses
import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.prompt_learner import PromptError, PromptLearner, check_top_k, coop_loss, cosine_logits, kdpl_loss, \
    top_k_candidates

METHODS = ("coop", "kdpl")
FORMAT = 1


@dataclass(frozen=True)
class PromptTrainConfig:
    """One CoOp / KDPL run; the defaults are the reference's (CoOp configs `*_ctxv1`, Dassl defaults)."""
    method: str = "coop"          # "coop" (labels, cross-entropy) or "kdpl" (teacher, symmetric KL)
    epochs: int = 50
    batch: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5       # Dassl WARMUP_TYPE "constant": this rate during the warm-up epochs
    top_k: int | None = None      # KDPL-CA: candidates kept per batch (the reference: 1000); None: all
    seed: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise PromptError(f"method = {self.method!r} should be one of {list(METHODS)}")
        for name, low in (("epochs", 0), ("batch", 1), ("warmup_epochs", 0), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise PromptError(f"{name} = {value!r} should be an int >= {low}")
        for name in ("lr", "momentum", "weight_decay", "warmup_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise PromptError(f"{name} = {value!r} should be a finite number >= 0")
        if self.lr == 0 or self.momentum >= 1:
            raise PromptError(f"lr = {self.lr!r} should be > 0 and momentum = {self.momentum!r} < 1")
        if self.top_k is not None:
            if self.method != "kdpl":
                raise PromptError(f"top_k = {self.top_k!r} is KDPL-CA's; method {self.method!r} uses every class")
            if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
                raise PromptError(f"top_k = {self.top_k!r} should be None or an int >= 1")


@dataclass
class Learned:
    ctx: np.ndarray          # (n_ctx, width) float32, the learned context
    history: list[float]     # mean batch loss of each epoch
    settings: dict           # the config, n_ctx and ctx_init that produced it


def lr_at(epoch: int, cfg: PromptTrainConfig) -> float:
    """Learning rate of 0-based `epoch` under Dassl's constant warm-up + cosine (see the module docstring)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs)) / 2


# ----------------------------------------------------------------------------- inputs


def _features(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise PromptError(f"{what} hold non-finite values")
    return t


def _inputs(learner: PromptLearner, cfg: PromptTrainConfig, n_cls: int, views, labels, teacher_views,
            teacher_text) -> dict[str, torch.Tensor]:
    """The validated CPU tensors a method trains on (KDPL: no labels)."""
    if n_cls == 0:
        raise PromptError("the class (candidate) name list is empty")
    views = _features(views, "student image features")
    if views.ndim != 3 or 0 in views.shape or views.shape[2] != learner.dim:
        raise PromptError(f"student image features of shape {tuple(views.shape)}, expected (N, V, {learner.dim}) "
                          f"with N, V >= 1")
    n, v = views.shape[:2]
    if cfg.method == "coop":
        if labels is None:
            raise PromptError("CoOp trains on labels: pass labels (N,)")
        labels = torch.as_tensor(np.asarray(labels)).long()
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= n_cls:
            raise PromptError(f"labels should be (N,) = ({n},) class indices in [0, {n_cls})")
        return {"views": views, "labels": labels}
    if teacher_views is None or teacher_text is None:
        raise PromptError("KDPL distils from a teacher: pass teacher_views (N, V, D_t) and teacher_text (C, D_t)")
    teacher_views, teacher_text = _features(teacher_views, "teacher image features"), _features(teacher_text,
                                                                                               "teacher text features")
    if teacher_views.ndim != 3 or teacher_views.shape[:2] != (n, v):
        raise PromptError(f"teacher image features of shape {tuple(teacher_views.shape)}, expected the student's "
                          f"views ({n}, {v}, D_t)")
    if teacher_text.ndim != 2 or teacher_text.shape[0] != n_cls:
        raise PromptError(f"the teacher has {teacher_text.shape[0] if teacher_text.ndim else 0} class text features, "
                          f"the student {n_cls} class names: both must list the same classes in the same order")
    if teacher_text.shape[1] != teacher_views.shape[2]:
        raise PromptError(f"teacher text features are {teacher_text.shape[1]}-d, its image features "
                          f"{teacher_views.shape[2]}-d")
    check_top_k(cfg.top_k or n_cls, n_cls)
    return {"views": views, "teacher_views": teacher_views, "teacher_text": teacher_text}


def _settings(learner: PromptLearner, cfg: PromptTrainConfig) -> dict:
    return {"config": dataclasses.asdict(cfg), "n_ctx": learner.n_ctx, "ctx_init": learner.ctx_init}


def _fingerprint(learner: PromptLearner, cfg: PromptTrainConfig, classnames: Sequence[str],
                 inputs: dict[str, torch.Tensor]) -> str:
    """sha256 of everything a run's result depends on: settings, names, model text side, input features."""
    h = hashlib.sha256(json.dumps({**_settings(learner, cfg), "classnames": [str(c) for c in classnames],
                                   "logit_scale": learner.logit_scale,
                                   "shapes": {k: list(t.shape) for k, t in inputs.items()}}, sort_keys=True).encode())
    for t in (learner.init_ctx.cpu(), learner.W.cpu(), *(inputs[k] for k in sorted(inputs))):
        h.update(np.ascontiguousarray(t.numpy()).data)
    return h.hexdigest()


# ----------------------------------------------------------------------------- checkpoints


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read(path: Path) -> dict | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):   # absent, cut short, foreign
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT else None


def load_context(path: Path) -> Learned:
    """The learned context of a finished run's checkpoint; refuses an unfinished or unreadable one."""
    state = _read(Path(path))
    if state is None:
        raise PromptError(f"{path} is not a prompt-learning checkpoint")
    if not state["complete"]:
        raise PromptError(f"{path} is an unfinished run ({state['epoch']} of {state['settings']['config']['epochs']} "
                          f"epochs): run the training again to finish it")
    return Learned(state["ctx"].numpy(), list(state["history"]), state["settings"])


# ----------------------------------------------------------------------------- training


def _coop(learner: PromptLearner, ids: torch.Tensor, data: dict) -> Callable:
    views, labels = data["views"], data["labels"]

    def loss(ctx, rows, view):
        logits = cosine_logits(views[rows, view], learner(ctx, ids), learner.logit_scale)
        return coop_loss(logits, labels[rows])
    return loss


def _kdpl(learner: PromptLearner, ids: torch.Tensor, data: dict, k: int) -> Callable:
    views, teacher_views, teacher_text = data["views"], data["teacher_views"], data["teacher_text"]

    def loss(ctx, rows, view):
        with torch.no_grad():
            teacher = cosine_logits(teacher_views[rows, view], teacher_text, learner.logit_scale)
        keep = top_k_candidates(teacher, k)
        student = cosine_logits(views[rows, view], learner(ctx, ids[keep]), learner.logit_scale)
        return kdpl_loss(student, teacher[:, keep])[0]
    return loss


def train(learner: PromptLearner, cfg: PromptTrainConfig, classnames: Sequence[str], views, *, labels=None,
          teacher_views=None, teacher_text=None, checkpoint: Path | None = None,
          on_epoch: Callable[[int, float], None] | None = None, progress: bool = True) -> Learned:
    """Learn the context on cached features (see the module docstring); `on_epoch(epoch, loss)` runs after
    each finished epoch (and its checkpoint). KDPL ignores `labels`; CoOp ignores the teacher."""
    inputs = _inputs(learner, cfg, len(classnames), views, labels, teacher_views, teacher_text)
    ids = learner.prompts(classnames)
    settings = _settings(learner, cfg)
    fingerprint = _fingerprint(learner, cfg, classnames, inputs) if checkpoint else None
    data = {k: t.to(learner.device) for k, t in inputs.items()}
    loss_of = _coop(learner, ids, data) if cfg.method == "coop" else _kdpl(learner, ids, data, cfg.top_k or len(ids))

    ctx = torch.nn.Parameter(learner.init_ctx.clone())
    opt = torch.optim.SGD([ctx], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history, start = [], 0
    state = _read(Path(checkpoint)) if checkpoint else None
    if state is not None and state.get("fingerprint") == fingerprint:
        with torch.no_grad():
            ctx.copy_(state["ctx"])
        opt.load_state_dict(state["optimizer"])
        history, start = list(state["history"]), state["epoch"]
        if state["complete"]:
            return Learned(state["ctx"].numpy(), history, settings)

    def save(epoch: int, complete: bool) -> None:
        _save(Path(checkpoint), {"format": FORMAT, "fingerprint": fingerprint, "complete": complete, "epoch": epoch,
                                 "settings": settings, "ctx": ctx.detach().cpu().clone(),
                                 "optimizer": opt.state_dict(), "history": list(history)})

    n, n_views = data["views"].shape[:2]
    size = min(cfg.batch, n)
    bar = tqdm(total=cfg.epochs, initial=start, unit="epoch", desc=cfg.method, disable=not progress)
    with torch.enable_grad(), bar:
        for epoch in range(start, cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch])
            order, view = rng.permutation(n), rng.integers(n_views, size=n)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch, cfg)
            total = 0.0
            for b in range(n // size):
                rows = order[b * size:(b + 1) * size]
                loss = loss_of(ctx, torch.as_tensor(rows, device=learner.device),
                               torch.as_tensor(view[rows], device=learner.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
            history.append(total / (n // size))
            if checkpoint:
                save(epoch + 1, complete=False)
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
            if on_epoch is not None:
                on_epoch(epoch, history[-1])
    if checkpoint:
        save(cfg.epochs, complete=True)
    return Learned(ctx.detach().cpu().numpy().copy(), history, settings)
