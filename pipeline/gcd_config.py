"""`gcd` params, validated for one dataset (`gcd.overrides.<dataset>` merged over each block)."""

from dataclasses import dataclass

from pipeline.config import ParamsError, ViewRecipe, is_a, merged_block, need, numbers, views
from pipeline.gcd_losses import LossConfig
from pipeline.spectral_filter import ROUTES


@dataclass(frozen=True)
class Protocol:
    old: object           # gcd_protocol.old_classes spec
    labelled: float       # share of old-class train rows that are labelled
    seed: int             # of that one draw (every training seed shares it)


@dataclass(frozen=True)
class Train:
    epochs: int
    batch: int
    lr: float             # DINO head and ln_t
    lr_adapter: float     # the residual adapter (the reference's backbone block lr)
    momentum: float
    weight_decay: float
    min_lr_factor: float  # cosine to lr * this


@dataclass(frozen=True)
class GCDConfig:
    dictionary: str
    protocol: Protocol
    views: ViewRecipe
    tau: float
    beta_e: float
    beta_c: float
    route: str
    head: dict
    train: Train
    loss: LossConfig
    seeds: tuple[int, ...]
    kmeans_iters: int
    kmeans_redo: int


def _number(sec, key, where, *, positive=True, maximum=None) -> float:
    value = float(need(sec, key, (int, float), where, minimum=0, maximum=maximum))
    if positive and value == 0:
        raise ParamsError(f"params.yaml: '{where}.{key}' = {sec[key]!r} should be > 0")
    return value


def _protocol(section: dict, dataset: str) -> Protocol:
    table = need(section, "protocol", dict, "gcd")
    where = f"gcd.protocol.{dataset}"
    if dataset not in table or not isinstance(table[dataset], dict):
        raise ParamsError(f"params.yaml: no mapping '{where}' (old classes, labelled share, seed) for this "
                          f"dataset (known: {sorted(table)})")
    sec = table[dataset]
    old = need(sec, "old", (list, int, float, str, dict), where)
    return Protocol(old, _number(sec, "labelled", where, maximum=1), need(sec, "seed", int, where, minimum=0))


def config(params: dict, dataset: str) -> GCDConfig:
    section = need(params, "gcd", dict, "")
    filt, fwhere = merged_block(section, "gcd", "filter", dataset)
    head, hwhere = merged_block(section, "gcd", "head", dataset)
    for key in head:
        need(head, key, int, hwhere, minimum=1)
    tr, twhere = merged_block(section, "gcd", "train", dataset)
    train = Train(need(tr, "epochs", int, twhere, minimum=1), need(tr, "batch", int, twhere, minimum=2),
                  _number(tr, "lr", twhere), _number(tr, "lr_adapter", twhere, positive=False),
                  _number(tr, "momentum", twhere, positive=False, maximum=1),
                  _number(tr, "weight_decay", twhere, positive=False),
                  _number(tr, "min_lr_factor", twhere, positive=False, maximum=1))
    ls, lwhere = merged_block(section, "gcd", "loss", dataset)
    temps = numbers(ls, "teacher_temp", lwhere, 2, positive=True)
    warm = need(ls, "teacher_temp_epochs", int, lwhere, minimum=0)
    if warm > train.epochs:
        raise ParamsError(f"params.yaml: '{lwhere}.teacher_temp_epochs' = {warm} exceeds {twhere}.epochs = {train.epochs}")
    loss = LossConfig(sup_weight=_number(ls, "sup_weight", lwhere, positive=False, maximum=1),
                      memax_weight=_number(ls, "memax_weight", lwhere, positive=False),
                      warmup_teacher_temp=temps[0], teacher_temp=temps[1], warmup_teacher_temp_epochs=warm,
                      epochs=train.epochs)
    seeds = need(section, "seeds", list, "gcd")
    if not seeds or not all(is_a(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ParamsError(f"params.yaml: 'gcd.seeds' = {seeds!r} should be distinct non-negative ints")
    km = need(section, "kmeans", dict, "gcd")
    return GCDConfig(
        dictionary=need(section, "dictionary", str, "gcd"), protocol=_protocol(section, dataset),
        views=views(params, "gcd.views", min_views=2), tau=_number(section, "tau", "gcd"),
        beta_e=_number(filt, "beta_e", fwhere, maximum=1), beta_c=_number(filt, "beta_c", fwhere, maximum=1),
        route=need(filt, "route", str, fwhere, choices=ROUTES), head=dict(head), train=train, loss=loss,
        seeds=tuple(seeds), kmeans_iters=need(km, "niter", int, "gcd.kmeans", minimum=1),
        kmeans_redo=need(km, "nredo", int, "gcd.kmeans", minimum=1))
