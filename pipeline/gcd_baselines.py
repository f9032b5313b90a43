"""The k-means baselines of the category-discovery table: FAISS's own k-means (GPU when present) with k = all
classes (assumed known, as in the reference), on student image embeddings and on the student's concept-
similarity vectors, unfiltered or filtered. Fitted on every train row; test rows go to their nearest centroid.
"""

import faiss
import numpy as np

from pipeline.gcd_inputs import unit


def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(unit(x), dtype=np.float32)   # FAISS takes C-contiguous float32


def concept_similarities(emb: np.ndarray, concepts: np.ndarray) -> np.ndarray:
    """(N, K) cosine of each image to each concept's text feature (both given un-normalised)."""
    return _unit(emb) @ _unit(concepts).T


def kmeans(train: np.ndarray, rows: np.ndarray, k: int, niter: int, nredo: int, seed: int) -> np.ndarray:
    """Cluster ids of `rows` after k-means on `train` (both L2-normalised first: spherical data); the best of
    `nredo` random initialisations (FAISS's init picks k training points, which a single run can get wrong)."""
    km = faiss.Kmeans(train.shape[1], k, niter=niter, nredo=nredo, seed=seed, gpu=faiss.get_num_gpus() > 0,
                      verbose=False)
    km.train(_unit(train))
    return km.index.search(_unit(rows), 1)[1][:, 0]
