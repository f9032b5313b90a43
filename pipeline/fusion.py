"""Logit fusion and vectorised hyper-parameter search on validation (DESIGN.md §7).

Two search entry points, both scoring thousands of trials with batched tensor ops:

* `search`: linear fusion. Trial t scores `sum_m W[t, m] * component_m`; the components are fixed
  (N, C) logits (e.g. zero-shot, a Tip cache term, NCM). One einsum per chunk of trials.
* `search_batched`: any parametrised logit family. A `build(params)` callable maps a (t, P) chunk of
  parameter rows to (t, N, C) val logits by broadcasting; non-linear knobs such as the sharpness
  inside exp() go here (e.g. SeMoBridge's smoothness, alpha, beta, gamma, lambda1..3, see
  `pipeline.methods.semobridge.semobridge_builder`).

Both take val arrays only, so the test split cannot influence the choice; a `build` callable must
likewise close over val tensors only. Ties go to the first best trial (row order), like the
reference loops' strict `acc > best`. Accuracies are fractions in [0, 1].
"""

from typing import Callable

import torch

# Elements of the largest batched intermediate per chunk (~128 MB in float32); shared by the grid searches.
ELEMENT_BUDGET = 2**25
# On CPU, ~2^18 elements (1 MB) per intermediate keeps a builder's temporaries in L2: the default budget
# measured ~2-3x slower on 2 cores.
CPU_CHUNK_ELEMENTS = 2**18


def search_chunk(rows: int, classes: int, device: str) -> int | None:
    """Trials per chunk of a batched search over (rows, classes) logits: the CPU budget, or None (the
    default budget) on GPUs."""
    return None if device != "cpu" else max(1, CPU_CHUNK_ELEMENTS // max(1, rows * classes))


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

    Returns (index of the first best row, (T,) val accuracy per row). chunk: rows per build call;
    None picks it from a fixed memory budget. `build` must only see val data.
    """
    if params.ndim != 2 or params.shape[0] == 0:
        raise ValueError(f"params must be (T, P) with T > 0, got shape {tuple(params.shape)}")
    if val_labels.ndim != 1 or val_labels.numel() == 0:
        raise ValueError(f"val_labels must be a non-empty (N,) tensor, got shape {tuple(val_labels.shape)}")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None or a positive int, got {chunk!r}")
    # the first row also tells the per-trial size of build's output, which sets the chunk
    first = build(params[:1])
    step = chunk or max(1, ELEMENT_BUDGET // max(1, first[0].numel()))
    counts = [count_correct(first, val_labels)]
    for start in range(1, params.shape[0], step):
        counts.append(count_correct(build(params[start : start + step]), val_labels))
    counts = torch.cat(counts)
    if counts.shape[0] != params.shape[0]:
        raise ValueError(f"build returned {counts.shape[0]} trials for {params.shape[0]} parameter rows")
    return int(torch.argmax(counts)), counts.double() / val_labels.shape[0]


def search(
    val_components: dict[str, torch.Tensor],
    val_labels: torch.Tensor,
    weight_vectors: torch.Tensor,
    chunk: int | None = None,
) -> tuple[int, torch.Tensor]:
    """Linear fusion search: (T, M) weight rows, columns in `val_components` key order.

    Returns (index of the first best row, (T,) val accuracy per row).
    """
    if not val_components:
        raise ValueError("val_components must be a non-empty dict name -> (N, C) logits")
    stacked = torch.stack(list(val_components.values()))
    if weight_vectors.ndim != 2 or weight_vectors.shape[1] != stacked.shape[0]:
        raise ValueError(
            f"weight_vectors must be (T, {stacked.shape[0]}) for components {list(val_components)}, "
            f"got shape {tuple(weight_vectors.shape)}"
        )
    weights = weight_vectors.to(stacked)
    return search_batched(lambda w: torch.einsum("tm,mnc->tnc", w, stacked), weights, val_labels, chunk)
