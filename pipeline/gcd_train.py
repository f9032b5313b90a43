"""Training SpectralGCD (and the SimGCD-style head) on cached features (METHODS.md §15.1.4-15.1.5, 15.1.7 b).

The reference trains the student's last ViT block on two fresh augmentations per image; here the student
is frozen, each step takes two distinct views of the image out of the V cached ones (`gcd_views.zarr`), and
a zero-initialised residual adapter is what the KD terms train. The sampler, optimiser and schedule are the
reference's: a WeightedRandomSampler (labelled weight 1, unlabelled |L|/|U|, N draws with replacement),
SGD with momentum, a cosine schedule stepped per epoch to lr * min_lr_factor, and the last epoch is kept.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from pipeline.gcd_config import GCDConfig
from pipeline.gcd_inputs import GCDInputs
from pipeline.gcd_losses import spectral_gcd_loss
from pipeline.gcd_model import SimGCDNet, SpectralGCDNet


@dataclass
class Trained:
    net: torch.nn.Module
    history: list[dict]     # per epoch: the mean of each loss term


def build(method: str, inputs: GCDInputs, keep: np.ndarray, cfg: GCDConfig, seed: int) -> torch.nn.Module:
    """SpectralGCD on the kept concepts, or the SimGCD-style head on the image feature."""
    n_classes, dim = len(inputs.classnames), inputs.student_emb.shape[1]
    head = {k: v for k, v in cfg.head.items() if k != "width"}
    if method == "spectralgcd":
        return SpectralGCDNet(torch.from_numpy(inputs.student_concepts[keep]), dim, n_classes,
                              width=cfg.head.get("width", 768), head=head, tau=cfg.tau, seed=seed)
    return SimGCDNet(dim, n_classes, head=head, seed=seed)


def _optimiser(net: torch.nn.Module, cfg: GCDConfig):
    adapter = list(net.adapter.parameters())
    ids = {id(p) for p in adapter}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    t = cfg.train
    opt = torch.optim.SGD([{"params": adapter, "lr": t.lr_adapter}, {"params": rest, "lr": t.lr}],
                          momentum=t.momentum, weight_decay=t.weight_decay)
    f = t.min_lr_factor
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: f + (1 - f) * 0.5 * (1 + math.cos(math.pi * e / t.epochs)))
    return opt, sched


def _epoch_rows(labelled: np.ndarray, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    """The reference's sampler: N weighted draws with replacement, cut into full batches (drop_last)."""
    n_l = int(labelled.sum())
    weights = torch.where(torch.from_numpy(labelled), 1.0, n_l / max(1, len(labelled) - n_l))
    rows = torch.multinomial(weights, len(labelled), replacement=True, generator=gen)
    return list(rows[: len(rows) // batch * batch].split(batch))


def _two_views(rows: torch.Tensor, n_views: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two distinct cached view indices per row."""
    first = torch.randint(n_views, (len(rows),), generator=gen)
    second = (first + torch.randint(1, n_views, (len(rows),), generator=gen)) % n_views
    return first, second


def train(method: str, inputs: GCDInputs, keep: np.ndarray, cfg: GCDConfig, seed: int, device: str = "cpu",
          progress: bool = True) -> Trained:
    """Train one net for `cfg.train.epochs`; labels reach the loss only through the labelled rows."""
    torch.manual_seed(seed)
    net = build(method, inputs, keep, cfg, seed).to(device)
    opt, sched = _optimiser(net, cfg)
    gen = torch.Generator().manual_seed(seed)
    views = torch.from_numpy(inputs.student_views).to(device)
    target = torch.from_numpy(inputs.target[inputs.train]).to(device)
    labelled = torch.from_numpy(inputs.labelled).to(device)
    teacher = torch.from_numpy(inputs.teacher_logits[:, keep]).to(device) if method == "spectralgcd" else None
    history = []
    bar = tqdm(range(cfg.train.epochs), desc=f"{method} seed {seed}", disable=not progress)
    for epoch in bar:
        net.train()
        sums: dict[str, float] = {}
        batches = _epoch_rows(inputs.labelled, cfg.train.batch, gen)
        for rows in batches:
            v0, v1 = _two_views(rows, views.shape[1], gen)
            rows = rows.to(device)
            out = net(torch.cat([views[rows, v0.to(device)], views[rows, v1.to(device)]]))
            terms = spectral_gcd_loss(out, target[rows], labelled[rows], epoch, cfg.loss,
                                      None if teacher is None else teacher[rows])
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        sched.step()
        history.append({k: v / max(1, len(batches)) for k, v in sums.items()})
        bar.set_postfix(loss=f"{history[-1].get('total', float('nan')):.3f}")
    return Trained(net.eval(), history)


def predict(net: torch.nn.Module, emb: np.ndarray, device: str = "cpu", batch: int = 4096) -> np.ndarray:
    """Predicted cluster (argmax of the head's logits) of each row of cached test-transform features."""
    with torch.no_grad():
        return torch.cat([net(torch.from_numpy(emb[i:i + batch]).to(device)).logits.argmax(1).cpu()
                          for i in range(0, len(emb), batch)]).numpy()
