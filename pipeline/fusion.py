"""Logit fusion and vectorised hyper-parameter search on validation (DESIGN.md §7).

Every search scores thousands of trials with batched tensor ops:

* `search_batched`: any parametrised logit family. A `build(params)` callable maps a (t, P) chunk of
  parameter rows to (t, N, C) val logits by broadcasting; non-linear knobs such as the sharpness
  inside exp() go here (e.g. SeMoBridge's smoothness, alpha, beta, gamma, lambda1..3, see
  `pipeline.methods.semobridge.semobridge_builder`); `linear_builder` is linear fusion, one einsum
  per chunk of trials.
* `search_space`: random rows in a box, then batched refinement rounds around the best rows; what
  `adapt` (SeMoBridge's knobs) and `fuse` (every method's linear weights) run.

Both take val arrays only, so the test split cannot influence the choice; a `build` callable must
likewise close over val tensors only. Ties go to the first best trial (row order), like the
reference loops' strict `acc > best`. Accuracies are fractions in [0, 1].
"""

from typing import Callable

import torch

from pipeline.config import SearchConfig

# Elements of the largest batched intermediate per chunk (~128 MB in float32); shared by the grid searches.
ELEMENT_BUDGET = 2**25
# On CPU, ~2^18 elements (1 MB) per intermediate keeps a builder's temporaries in L2: ELEMENT_BUDGET
# measured 2-4x slower on 2 cores.
CPU_CHUNK_ELEMENTS = 2**18


def chunk_for(elements_per_trial: int, device) -> int:
    """Trials per batched call: the one chunk policy of every search (adapt, fuse, bench)."""
    budget = CPU_CHUNK_ELEMENTS if torch.device(device).type == "cpu" else ELEMENT_BUDGET
    return max(1, budget // max(1, elements_per_trial))


def fuse(components: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum of (N, C) component logits; `weights` must name exactly the components."""
    if not components:
        raise ValueError("components must be a non-empty dict name -> (N, C) logits")
    if set(weights) != set(components):
        raise ValueError(f"weights keys {sorted(weights)} must equal components keys {sorted(components)}")
    shapes = {tuple(v.shape) for v in components.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"components must all be (N, C) with one shape, got shapes {sorted(shapes)}")
    return sum(float(weights[name]) * logits for name, logits in components.items())


def sample_weights(
    space: dict[str, tuple[float, float]], n: int, seed: int, grid: int | None = None
) -> torch.Tensor:
    """(T, M) trial rows, columns in `space` key order: a full grid, then n uniform random rows.

    grid: points per axis (linspace low..high, itertools.product order, first key slowest); None
    for no grid. n: uniform samples in [low, high) from a torch generator seeded with `seed`.
    T = grid**M + n.
    """
    if not isinstance(space, dict) or not space:
        raise ValueError(f"space must be a non-empty dict name -> (low, high), got {space!r}")
    for name, bounds in space.items():
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or not float(bounds[0]) <= float(bounds[1]):
            raise ValueError(f"space[{name!r}] must be (low, high) with low <= high, got {bounds!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if grid is not None and (not isinstance(grid, int) or isinstance(grid, bool) or grid < 2):
        raise ValueError(f"grid must be None or an int >= 2, got {grid!r}")
    if n == 0 and grid is None:
        raise ValueError("n is 0 and grid is None: no trials requested")
    low = torch.tensor([float(b[0]) for b in space.values()])
    high = torch.tensor([float(b[1]) for b in space.values()])
    rows = []
    if grid is not None:
        axes = [torch.linspace(lo, hi, grid) for lo, hi in zip(low.tolist(), high.tolist())]
        rows.append(torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(space)))
    if n:
        gen = torch.Generator().manual_seed(seed)
        rows.append(low + (high - low) * torch.rand(n, len(space), generator=gen))
    return torch.cat(rows)


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(..., N, C) logits, (N,) labels -> (...) int64 number of top-1 hits (argmax, first max wins)."""
    if logits.ndim < 2 or logits.shape[-2] != labels.shape[0]:
        raise ValueError(
            f"logits (..., N, C) and labels (N,) disagree: {tuple(logits.shape)} vs {tuple(labels.shape)}"
        )
    return (logits.argmax(dim=-1) == labels.to(logits.device)).sum(dim=-1)


def search_batched(
    build: Callable[[torch.Tensor], torch.Tensor],
    params: torch.Tensor,
    val_labels: torch.Tensor,
    chunk: int | None = None,
) -> tuple[int, torch.Tensor]:
    """Score every parameter row on val: `build(params[a:b])` -> (b-a, N, C) val logits.

    Returns (index of the first best row, (T,) val accuracy per row, on the CPU). chunk: rows per build
    call; None picks it with `chunk_for`. `build` must only see val data.
    """
    if params.ndim != 2 or params.shape[0] == 0:
        raise ValueError(f"params must be (T, P) with T > 0, got shape {tuple(params.shape)}")
    if val_labels.ndim != 1 or val_labels.numel() == 0:
        raise ValueError(f"val_labels must be a non-empty (N,) tensor, got shape {tuple(val_labels.shape)}")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None or a positive int, got {chunk!r}")
    # the first row also tells the per-trial size of build's output, which sets the chunk
    first = build(params[:1])
    step = chunk or chunk_for(first[0].numel(), first.device)
    counts = [count_correct(first, val_labels)]
    for start in range(1, params.shape[0], step):
        counts.append(count_correct(build(params[start : start + step]), val_labels))
    counts = torch.cat(counts)
    if counts.shape[0] != params.shape[0]:
        raise ValueError(f"build returned {counts.shape[0]} trials for {params.shape[0]} parameter rows")
    return int(torch.argmax(counts)), (counts.double() / val_labels.shape[0]).cpu()


def search_space(
    build: Callable[[torch.Tensor], torch.Tensor],
    space: dict[str, tuple[float, float]],
    val_labels: torch.Tensor,
    cfg: SearchConfig,
) -> tuple[torch.Tensor, float, int]:
    """Random search in `space`, then batched local refinement around the best rows found so far.

    Stage 1 scores `cfg.trials` uniform rows (plus a `cfg.grid` grid). Each refinement round draws
    `cfg.per_round` Gaussian perturbations of the `cfg.top` best rows so far (first-best order), with a
    standard deviation of `cfg.radius` of each range, shrunk by `cfg.shrink` every round, clipped to the
    range, and scores them in one batched pass. A later row wins only with a strictly higher accuracy,
    so ties keep the earlier choice. Seeded: the same config gives the same result.
    Returns (best row (P,), its val accuracy, rows scored).
    """
    rows = sample_weights(space, cfg.trials, cfg.seed, cfg.grid or None)
    _, accs = search_batched(build, rows, val_labels)
    low = torch.tensor([float(b[0]) for b in space.values()])
    high = torch.tensor([float(b[1]) for b in space.values()])
    gen = torch.Generator().manual_seed(cfg.seed + 1)   # a stream apart from stage 1's
    sigma = cfg.radius * (high - low)
    for _ in range(cfg.rounds):
        order = torch.sort(accs, descending=True, stable=True).indices[: cfg.top]
        centres = rows[order].repeat(-(-cfg.per_round // len(order)), 1)[: cfg.per_round]
        moved = centres + sigma * torch.randn(centres.shape, generator=gen, dtype=centres.dtype)
        candidates = torch.minimum(torch.maximum(moved, low), high)
        _, cand_accs = search_batched(build, candidates, val_labels)
        rows, accs = torch.cat([rows, candidates]), torch.cat([accs, cand_accs])
        sigma = sigma * cfg.shrink
    best = int(torch.argmax(accs))
    return rows[best], float(accs[best]), len(rows)


def linear_builder(components: torch.Tensor, offset=0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Linear fusion for `search_batched`: (T, M) weight rows -> (T, N, C) logits offset + sum_m w_m comp_m,
    with (M, N, C) stacked components and an optional fixed (N, C) offset (a base at weight 1)."""
    def build(weights: torch.Tensor) -> torch.Tensor:
        if weights.ndim != 2 or weights.shape[1] != components.shape[0]:
            raise ValueError(f"weight rows must be (T, {components.shape[0]}), got shape {tuple(weights.shape)}")
        return offset + torch.einsum("tm,mnc->tnc", weights.to(components), components)
    return build
