"""SAM-CZSL's dynamic memory bank (issue 9): `size` visual prototypes per composition, visual-only scores,
entropy-gated updates along the test stream.

Every slot has a key (lower = more trusted; +inf = empty or a text placeholder):
- init: a seen pair's slots hold its `size` train image features of lowest key (the caller's entropies);
  a pair with no train image (every unseen pair) holds its normalised composition text in slot 0, key +inf.
- stream, one query at a time in stream order: the query is first scored against the bank as it stands,
  logit_scale * cos with each pair's centroid (the normalised sum of its filled slots); then, if its
  normalised entropy h is below `threshold`, it takes the slot of its pseudo-pair with the largest key
  (the first such slot: the text placeholder before an empty one) when h is below that key.
Pseudo-pair and entropy come from a fixed cross-modal predictor (the caller's logits), not from the bank.
So the final bank keeps the `size` lowest keys per pair whatever the order, while each query's score
depends on the order: it sees the queries before it only.

Choices where the paper is silent: the visual feature is the CLS token (the image embedding); scores use
the centroid rather than the nearest slot; entropy is divided by log(number of scored pairs), so the
threshold lies in [0, 1]; train images enter by the same key as queries; each split's stream starts from
the train-initialised bank, so val never learns from test.
"""

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.czsl_methods import masked
from pipeline.methods.cosine import normalize

ORDERS = ("manifest", "shuffle")


@dataclass(frozen=True)
class Bank:
    feats: torch.Tensor    # (P, M, D) unit rows; zeros where a slot is empty
    keys: np.ndarray       # (P, M) float64 key of each slot
    filled: torch.Tensor   # (P, M) bool

    def centroids(self) -> torch.Tensor:
        return normalize(self.feats.sum(1))


def init_bank(features: torch.Tensor, labels, keys, text: torch.Tensor, size: int) -> Bank:
    """The bank before any query: (n, D) train `features` of pairs `labels` with `keys` (n,); (P, D) `text`."""
    labels, keys = np.asarray(labels), np.asarray(keys, dtype=np.float64)
    order = np.lexsort((keys, labels))                           # by pair, then by key
    by_pair = labels[order]
    rank = np.arange(len(order)) - np.searchsorted(by_pair, by_pair)
    kept = order[rank < size]
    slot = rank[rank < size]
    feats = torch.zeros(len(text), size, text.shape[1], device=text.device)
    bank_keys = np.full((len(text), size), np.inf)
    filled = torch.zeros(len(text), size, dtype=torch.bool, device=text.device)
    pair = torch.as_tensor(labels[kept], device=text.device)
    feats[pair, torch.as_tensor(slot, device=text.device)] = normalize(features[torch.as_tensor(kept)])
    bank_keys[labels[kept], slot] = keys[kept]
    filled[pair, torch.as_tensor(slot, device=text.device)] = True
    empty = ~filled.any(1)
    feats[empty, 0] = normalize(text[empty])
    filled[empty, 0] = True
    return Bank(feats, bank_keys, filled)


def pseudo_labels(logits: torch.Tensor, scored=None) -> tuple[np.ndarray, np.ndarray]:
    """(n,) predicted pair and entropy / log(scored pairs) of softmax(logits) over the scored pairs."""
    logits = masked(logits, scored)
    p = logits.softmax(-1)
    allowed = logits.shape[1] if scored is None else int(np.sum(scored))
    entropy = torch.special.entr(p).sum(-1) / np.log(allowed)
    return logits.argmax(-1).cpu().numpy(), entropy.double().cpu().numpy()


def stream_order(n: int, order: str, seed: int) -> np.ndarray:
    """Positions of the split's n images in stream order: manifest order, or a permutation seeded by `seed`."""
    if order not in ORDERS:
        raise ValueError(f"order {order!r} should be one of {ORDERS}")
    if order == "manifest":
        return np.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


def stream(bank: Bank, queries: torch.Tensor, pseudo, entropy, threshold: float, scale: float,
           order: np.ndarray) -> tuple[torch.Tensor, Bank, int]:
    """(n, P) bank scores of the (n, D) `queries` (rows in input order), the bank after the stream and the
    number of insertions. The decisions need keys only, so they run first; then the queries between two
    insertions, which see the same centroids, are scored in one matmul."""
    keys = bank.keys.copy()
    events = []                                                  # (stream position, pair, slot)
    for position, i in enumerate(order):
        pair, h = int(pseudo[i]), float(entropy[i])
        slot = int(np.argmax(keys[pair]))
        if h < threshold and h < keys[pair, slot]:
            keys[pair, slot] = h
            events.append((position, pair, slot))

    feats, filled = bank.feats.clone(), bank.filled.clone()
    centroids = bank.centroids()
    unit = normalize(queries)
    scores = torch.empty(len(queries), len(feats), device=queries.device)
    order = torch.as_tensor(order, device=queries.device)
    start = 0
    for position, pair, slot in events:
        rows = order[start:position + 1]                         # a query is scored before its own insertion
        scores[rows] = scale * unit[rows] @ centroids.T
        feats[pair, slot] = unit[order[position]]
        filled[pair, slot] = True
        centroids[pair] = normalize(feats[pair].sum(0))
        start = position + 1
    rows = order[start:]
    scores[rows] = scale * unit[rows] @ centroids.T
    return scores, Bank(feats, keys, filled), len(events)
