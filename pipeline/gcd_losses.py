"""SpectralGCD's training losses (METHODS.md §15.1.4), one small function per term plus the combiner.

Read from miccunifi/SpectralGCD `spectralgcd.py:train` and `model.py` (SimGCD's `DistillLoss`,
`info_nce_logits`, `SupConLoss`); our own code, checked against hand computations in
`tests/test_gcd_losses.py`. Row layout everywhere: the views concatenated, [view0 rows; view1 rows],
as the reference's `torch.cat(images, dim=0)` builds them.

Details of the reference worth knowing:
- "forward" KD is KL(teacher || student), "reverse" KL(student || teacher), `batchmean` over all 2B rows,
  the teacher's cached logits repeated for both views; weight 1 each, no 0.5 factor (unlike KDPL).
- The cluster loss averages over the n_views (n_views - 1) ordered view pairs (`total_loss /= n_loss_terms`).
- The teacher temperature *falls* 0.07 -> 0.04 (sharper targets) over `np.linspace(.., warmup_epochs)`,
  so epoch 0 gets 0.07 and epoch warmup_epochs - 1 already gets 0.04.
- memax = log C - H(mean softmax(logits / 0.1)) over all rows (>= 0, 0 when the mean is uniform); it is
  added to the cluster loss, so it is scaled by memax_weight and then by (1 - sup_weight).
- cls and supcon use only the labelled rows of every view; cluster, memax, con and KD use all rows.
- Labels of unlabelled rows are never read: only `labels[labelled]` enters any term.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# The reference scripts' per-dataset memax weights (scripts/train_all_datasets.sh; argparse default 2).
MEMAX_WEIGHTS = {"cub": 2.0, "scars": 2.0, "aircraft": 1.0, "cifar10": 1.0, "cifar100": 4.0, "imagenet_100": 1.0}


@dataclass(frozen=True)
class LossConfig:
    """The reference defaults (spectralgcd.py argparse and scripts/train_*.sh)."""
    sup_weight: float = 0.35                # w: (1 - w) unsupervised terms, w supervised ones
    memax_weight: float = 1.0               # lambda_me; per dataset: cub 2, scars 2, aircraft 1, cifar10 1,
                                            # cifar100 4, imagenet_100 1 (MEMAX_WEIGHTS)
    student_temp: float = 0.1               # logits / 0.1 in cls, cluster and memax
    warmup_teacher_temp: float = 0.07       # cluster-loss teacher temperature at epoch 0 ...
    teacher_temp: float = 0.04              # ... falling linearly to this one ...
    warmup_teacher_temp_epochs: int = 30    # ... over this many epochs, then constant
    con_temp: float = 1.0                   # info_nce (SimGCD's default, not 0.07)
    supcon_temp: float = 0.07
    supcon_base_temp: float = 0.07
    kd_weight: float = 1.0                  # on each of kd_forward and kd_reverse (reference: 1)
    epochs: int = 200

    def __post_init__(self):
        if not 0 <= self.sup_weight <= 1:
            raise ValueError(f"sup_weight should be in [0, 1], got {self.sup_weight}")
        for name in ("student_temp", "warmup_teacher_temp", "teacher_temp", "con_temp", "supcon_temp",
                     "supcon_base_temp"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} should be > 0, got {getattr(self, name)}")
        for name in ("memax_weight", "kd_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} should be >= 0, got {getattr(self, name)}")
        if not 1 <= self.epochs or not 0 <= self.warmup_teacher_temp_epochs <= self.epochs:
            raise ValueError(f"need 0 <= warmup_teacher_temp_epochs ({self.warmup_teacher_temp_epochs}) "
                             f"<= epochs ({self.epochs}) and epochs >= 1")


def _rows_per_view(n: int, n_views: int, what: str) -> int:
    if n_views < 2 or n % n_views:
        raise ValueError(f"{what} should have n_views ({n_views} >= 2) x B rows, got {n}")
    return n // n_views


def kd_forward(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_T || p_S), summed over concepts and averaged over rows ('batchmean'); (n, K) logits already
    / tau. The teacher is a frozen cache: detached, so it never receives a gradient."""
    return F.kl_div(F.log_softmax(student_logits, dim=-1), F.log_softmax(teacher_logits.detach(), dim=-1),
                    log_target=True, reduction="batchmean")


def kd_reverse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_S || p_T), 'batchmean'; the gradient reaches the student through the target side."""
    return F.kl_div(F.log_softmax(teacher_logits.detach(), dim=-1), F.log_softmax(student_logits, dim=-1),
                    log_target=True, reduction="batchmean")


def teacher_temperature(epoch: int, warmup_from: float = 0.07, to: float = 0.04, warmup_epochs: int = 30,
                        epochs: int = 200) -> float:
    """The reference's schedule: np.linspace(warmup_from, to, warmup_epochs) for epochs 0..warmup-1 (so
    epoch 0 -> warmup_from, epoch warmup-1 -> to), then `to`. The reference indexes an array of length
    `epochs`; an epoch outside [0, epochs) is refused here (numpy would wrap a negative one)."""
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"need 0 <= warmup_epochs ({warmup_epochs}) <= epochs ({epochs})")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch should be in [0, {epochs}), got {epoch}")
    if epoch < warmup_epochs:
        return float(np.linspace(warmup_from, to, warmup_epochs)[epoch])
    return float(to)


def cluster_distill(logits: torch.Tensor, teacher_temp: float, student_temp: float = 0.1,
                    n_views: int = 2) -> torch.Tensor:
    """SimGCD's DistillLoss (self-distillation across views) on (n_views B, C) cosine logits.

    q_v = softmax(logits_v.detach() / teacher_temp); the loss is the mean, over the ordered view pairs
    v' != v, of mean_b[-q_v' . log_softmax(logits_v / student_temp)]."""
    _rows_per_view(len(logits), n_views, "logits")
    student = (logits / student_temp).chunk(n_views)
    teacher = F.softmax(logits.detach() / teacher_temp, dim=-1).chunk(n_views)
    terms = [-(q * F.log_softmax(student[v], dim=-1)).sum(-1).mean()
             for t, q in enumerate(teacher) for v in range(n_views) if v != t]
    return sum(terms) / len(terms)


def memax(logits: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """Mean-entropy maximisation: log C - H(mean over rows of softmax(logits / student_temp)), over all
    rows of all views (reference: `-sum(log(p ** -p)) + log(C)`)."""
    p = F.softmax(logits / student_temp, dim=-1).mean(dim=0)
    return torch.special.xlogy(p, p).sum() + math.log(p.shape[-1])


def info_nce(proj: torch.Tensor, n_views: int = 2, temperature: float = 1.0) -> torch.Tensor:
    """SimCLR on (n_views B, d) projections, as `info_nce_logits` + CrossEntropyLoss: cosines of the
    normalised rows, self-similarity dropped, the positives (the other views of the same image) in the
    first columns, then the negatives, / temperature, target column 0. With n_views > 2 only the first
    positive is the target (the reference's construction; it hard-codes B = n / 2, i.e. 2 views)."""
    n = len(proj)
    b = _rows_per_view(n, n_views, "proj")
    f = F.normalize(proj, dim=1)
    ids = torch.arange(b, device=proj.device).repeat(n_views)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=proj.device)
    same = (ids[:, None] == ids[None, :])[off_diagonal].view(n, n - 1)
    sim = (f @ f.T)[off_diagonal].view(n, n - 1)
    logits = torch.cat([sim[same].view(n, -1), sim[~same].view(n, -1)], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=proj.device))


def supcon(proj: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
           base_temperature: float = 0.07) -> torch.Tensor:
    """SupConLoss (contrast_mode 'all') on (B_l, n_views, d) normalised projections of labelled images.

    Every one of the n_views B_l rows is an anchor; its positives are the other rows with its label (its
    own other views included), its denominator every row but itself; the loss is
    -(temperature / base_temperature) x mean over anchors of the mean log-probability of the positives.
    No labelled rows: 0 (still on the graph); the reference would give NaN."""
    if proj.ndim != 3 or labels.shape != proj.shape[:1]:
        raise ValueError(f"proj should be (B_l, n_views, d) and labels (B_l,), got {tuple(proj.shape)} "
                         f"and {tuple(labels.shape)}")
    if len(proj) == 0:
        return proj.sum() * 0.0
    n_views = proj.shape[1]
    feats = torch.cat(torch.unbind(proj, dim=1), dim=0)          # [view0 rows; view1 rows; ...]
    rows = labels.repeat(n_views)
    logits = feats @ feats.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(len(feats), dtype=torch.bool, device=proj.device)
    positive = (rows[:, None] == rows[None, :]) & not_self
    log_prob = logits - torch.log((logits.exp() * not_self).sum(1, keepdim=True))
    mean_pos = (positive * log_prob).sum(1) / positive.sum(1)
    return -(temperature / base_temperature) * mean_pos.mean()


def spectral_gcd_loss(out, labels: torch.Tensor, labelled: torch.Tensor, epoch: int, cfg: LossConfig,
                      teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every term and the total for one batch of B images.

    `out` is a `pipeline.gcd_model.GCDOutput` of the net on the views concatenated ([view0; view1] rows,
    n_views B in all); `labels` (B,) class ids, read only where `labelled` (B,) bool is True;
    `teacher_logits` (B, K) the cached teacher concept logits (/ tau), the same for every view. KD terms
    appear only when both `out.concepts` and `teacher_logits` are given. Returns cls, cluster, memax,
    con, supcon, [kd_forward, kd_reverse] and
    total = (1-w)(cluster + memax_weight memax) + w cls + (1-w) con + w supcon + kd_weight (kd_f + kd_r).
    """
    labels, labelled = torch.as_tensor(labels), torch.as_tensor(labelled)
    b = len(labelled)
    if labelled.dtype != torch.bool or labelled.ndim != 1 or labels.shape != labelled.shape:
        raise ValueError(f"labels and labelled should be (B,) with labelled bool, got {tuple(labels.shape)} "
                         f"and {tuple(labelled.shape)} {labelled.dtype}")
    if b == 0 or out.logits.ndim != 2 or len(out.logits) % b or len(out.proj) != len(out.logits):
        raise ValueError(f"out should hold n_views x B = n_views x {b} rows of logits and proj, got "
                         f"{tuple(out.logits.shape)} and {tuple(out.proj.shape)}")
    n, n_classes = out.logits.shape
    n_views = n // b
    _rows_per_view(n, n_views, "out.logits")
    rows = labelled.nonzero().squeeze(1).to(out.logits.device)
    known = labels.to(out.logits.device)[rows]                   # the only labels any term sees
    if len(known) and not (0 <= int(known.min()) and int(known.max()) < n_classes):
        raise ValueError(f"labelled rows' labels should be in [0, {n_classes}), got "
                         f"[{int(known.min())}, {int(known.max())}]")

    per_view = out.logits.view(n_views, b, n_classes)
    if len(known):
        cls = F.cross_entropy(per_view[:, rows].reshape(-1, n_classes) / cfg.student_temp,
                              known.repeat(n_views))
    else:                                                        # reference: NaN; 0 keeps the graph
        cls = out.logits.sum() * 0.0
    temp = teacher_temperature(epoch, cfg.warmup_teacher_temp, cfg.teacher_temp,
                               cfg.warmup_teacher_temp_epochs, cfg.epochs)
    terms = {
        "cls": cls,
        "cluster": cluster_distill(out.logits, temp, cfg.student_temp, n_views),
        "memax": memax(out.logits, cfg.student_temp),
        "con": info_nce(out.proj, n_views, cfg.con_temp),
        "supcon": supcon(F.normalize(out.proj.view(n_views, b, -1)[:, rows].transpose(0, 1), dim=-1), known,
                         cfg.supcon_temp, cfg.supcon_base_temp),
    }
    w = cfg.sup_weight
    total = ((1 - w) * (terms["cluster"] + cfg.memax_weight * terms["memax"]) + w * terms["cls"]
             + (1 - w) * terms["con"] + w * terms["supcon"])

    if teacher_logits is not None:
        if out.concepts is None:
            raise ValueError("teacher_logits given but out.concepts is None (a SimGCD net has no concept "
                             "logits to distil into)")
        if teacher_logits.shape != (b, out.concepts.shape[1]):
            raise ValueError(f"teacher_logits should be (B, K) = ({b}, {out.concepts.shape[1]}), got "
                             f"{tuple(teacher_logits.shape)}")
        teacher = teacher_logits.to(out.concepts).repeat(n_views, 1)   # same targets for every view
        terms["kd_forward"] = kd_forward(out.concepts, teacher)
        terms["kd_reverse"] = kd_reverse(out.concepts, teacher)
        total = total + cfg.kd_weight * (terms["kd_forward"] + terms["kd_reverse"])
    terms["total"] = total
    return terms
