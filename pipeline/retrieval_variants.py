"""Retrieval variants as feature transforms before indexing (METHODS.md §5.3, §9.1, §9.2).

Protocol (Cross-the-Gap / IsoCLIP on the CoOp datasets): query = test split, gallery = train split,
relevant = same label; or leave-one-out, where query set = gallery set and each query's own item is
removed from its ranking by item id. Every variant turns cached arrays into a ``Task`` (query and
gallery vectors, labels, ids), which ``pipeline.retrieval.evaluate`` ranks exactly (L2-normalised
float32, inner product, full ranking in bounded query chunks).

| variant            | query                                   | gallery                                  |
|--------------------|-----------------------------------------|------------------------------------------|
| i2i                | projected image f                       | projected image f                        |
| i2i_isoclip        | x_v U_k U_k^T W_img                     | same transform                           |
| i2i_bridge_query   | SeMoBridge bridge f̂ of f               | projected image f                        |
| i2i_bridge_both    | f̂                                      | f̂                                       |
| i2t                | projected image f                       | C class prompt prototypes (R@1 = zero-shot accuracy) |
| i2i_text_probs     | softmax(scale cos(f, class prompts))    | same transform (both sides through the text) |
| t2t                | projected prompt t, every (class, prompt), leave-one-out | same set              |
| t2t_isoclip        | e V_k V_k^T W_txt, leave-one-out        | same set                                 |
| oti                | OTI text feature of the query image (§6.1) | projected image f                     |
| ovi                | projected image f                       | C class means of the prompts' OVI image features (§6.2) |

Transforms reuse ``pipeline.methods.isoclip`` and ``pipeline.methods.semobridge``; all linear algebra
is float32 torch on the caller's device. Nothing here knows about DVC or files.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import metrics
from pipeline.config import Retrieval
from pipeline.features import MODEL_KEYS, Features
from pipeline.inversion_store import Inverted
from pipeline.layout import SPLIT_CODES
from pipeline.methods import isoclip, semobridge
from pipeline.methods.cosine import class_prototypes
from pipeline.retrieval import evaluate, evaluate_topk

VARIANTS = {
    "i2i": "image -> image, projected features (intra-modal baseline)",
    "i2i_isoclip": "image -> image, IsoCLIP: pre-projection x_v U_k U_k^T W_img on both sides",
    "i2i_bridge_query": "image -> image, SeMoBridge-bridged query vs projected gallery",
    "i2i_bridge_both": "image -> image, SeMoBridge bridge on both sides",
    "i2t": "image -> text, query images vs class prompt prototypes (R@1 = zero-shot accuracy)",
    "i2i_text_probs": "image -> image through the text: each image as its zero-shot class-probability vector "
                      "(softmax of logit_scale x cosine to the class prompts)",
    "t2t": "text -> text, projected prompt embeddings, leave-one-out over (class, prompt)",
    "t2t_isoclip": "text -> text, IsoCLIP text side e V_k V_k^T W_txt, leave-one-out over (class, prompt)",
    "oti": "image -> image through text, OTI: the query's pseudo-word text feature vs projected gallery images",
    "ovi": "image -> text through image, OVI: query images vs class means of the prompts' inverted image features "
           "(R@1 = OVI zero-shot accuracy)",
}
INVERTED = ("oti", "ovi")   # variants that read an inversion store (pipeline/inversion_store.py)


class VariantSkipped(Exception):
    """A variant does not apply to these features (the message says why); the report records it."""


@dataclass
class Task:
    """One retrieval problem: rows of ``query`` are ranked against rows of ``gallery``."""
    query: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray
    query_ids: np.ndarray | None = None
    gallery_ids: np.ndarray | None = None
    leave_one_out: bool = False
    # Galleries of class prototypes / prompts are small: ks beyond them are dropped, not an error.
    clamp_ks: bool = False
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- rows and models


def split_rows(split: np.ndarray, names: list[str], role: str) -> np.ndarray:
    """Row indices whose split code is one of ``names``; ValueError when that set is empty."""
    rows = np.flatnonzero(np.isin(split, [SPLIT_CODES[n] for n in names]))
    if len(rows) == 0:
        raise ValueError(f"the {role} set (splits {names}) is empty for these features")
    return rows


def check_same_model(query: Features, gallery: Features) -> None:
    """Refuse query and gallery features that come from different models (or precisions)."""
    if query is gallery:
        return
    keys = MODEL_KEYS + ("precision",)
    diff = [k for k in keys if query.provenance.get(k) != gallery.provenance.get(k)]
    if diff:
        raise ValueError("query and gallery features come from different models: "
                         + "; ".join(f"{k}: {query.provenance.get(k)!r} vs {gallery.provenance.get(k)!r}"
                                     for k in diff))
    for name in ("W_img", "W_txt"):
        a, b = getattr(query, name), getattr(gallery, name)
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ValueError(f"query and gallery features have different {name} ({a.shape} vs {b.shape}): "
                             "they come from different models")


# ----------------------------------------------------------------------------- transforms


def isoclip_projectors(W_img: torch.Tensor, W_txt: torch.Tensor, k_top: int, k_bottom: int,
                       b_img: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IsoCLIP's modified projectors (U_k U_k^T W_img (d_v, D), V_k V_k^T W_txt (d_t, D)), one SVD of Psi.

    Image side: raw pre-projection x_v @ the first; text side: raw EOS e @ the second (METHODS.md §5.3).
    """
    U_k, V_k = isoclip.iso_basis(W_img, W_txt, k_top, k_bottom, b_img)
    return isoclip.iso_image_projector(W_img, U_k), isoclip.iso_text_projector(W_txt, V_k)


def bridged(emb: torch.Tensor, W_txt: torch.Tensor, text_pre: torch.Tensor, atol: float) -> torch.Tensor:
    """(N, D) raw projected image embeddings -> (N, D) SeMoBridge bridge s * norm(f P) @ W_txt (§3.2)."""
    P = semobridge.bridge_matrix(W_txt, atol)
    return semobridge.bridge(emb, P, W_txt, semobridge.text_scale(text_pre))


# ----------------------------------------------------------------------------- tasks


def build(variant: str, query: Features, query_rows: np.ndarray, gallery: Features, gallery_rows: np.ndarray,
          cfg: Retrieval, device: str = "cpu", inverted: Inverted | None = None) -> Task:
    """The ``Task`` of one variant; query/gallery rows index their Features' image arrays; `inverted` is the
    OTI store of the query features (variant oti) or the OVI store of the gallery's (ovi).

    Text variants (t2t*) ignore the image rows: their query set is every (class, prompt) of the
    gallery features' text, ranked leave-one-out. Raises VariantSkipped when the variant does not
    apply (t2t with one prompt per class, IsoCLIP with an affine image projection), ValueError for
    features from different models.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown retrieval variant {variant!r}; known: {list(VARIANTS)}")
    check_same_model(query, gallery)
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)
    out = lambda x: x.cpu().numpy()
    q_lab, g_lab = query.label[query_rows], gallery.label[gallery_rows]
    ids = {}
    if cfg.leave_one_out:
        ids = {"query_ids": query.item[query_rows], "gallery_ids": gallery.item[gallery_rows]}
    W_img, W_txt = t(gallery.W_img), t(gallery.W_txt)

    if variant == "i2i":
        return Task(query.emb[query_rows], q_lab, gallery.emb[gallery_rows], g_lab,
                    leave_one_out=cfg.leave_one_out, **ids)
    if variant == "i2i_isoclip":
        if gallery.b_img is not None and np.any(gallery.b_img != 0):
            raise VariantSkipped("IsoCLIP needs a bias-free linear image projection (ViT visual.proj); this model's "
                                 "projection is affine (ResNet attnpool.c_proj)")
        k = cfg.isoclip
        W_iso, _ = isoclip_projectors(W_img, W_txt, k.k_top, k.k_bottom)
        q, g = out(t(query.pre[query_rows]) @ W_iso), out(t(gallery.pre[gallery_rows]) @ W_iso)
        return Task(q, q_lab, g, g_lab, leave_one_out=cfg.leave_one_out, info=iso_info(gallery, k), **ids)
    if variant in ("i2i_bridge_query", "i2i_bridge_both"):
        text_pre = t(gallery.text_pre)
        q = out(bridged(t(query.emb[query_rows]), W_txt, text_pre, cfg.atol))
        g = gallery.emb[gallery_rows]
        if variant == "i2i_bridge_both":
            g = out(bridged(t(g), W_txt, text_pre, cfg.atol))
        n_cut = int((metrics.projection_spectra(gallery.W_img, gallery.W_txt)[0] <= cfg.atol).sum())
        info = {"atol": cfg.atol, "n_sigma_le_atol": n_cut, "n_sigma": min(W_txt.shape),
                "direction_preserving": n_cut == 0}
        return Task(q, q_lab, g, g_lab, leave_one_out=cfg.leave_one_out, info=info, **ids)
    if variant == "i2t":
        protos = out(class_prototypes(t(gallery.text_emb)))
        return Task(query.emb[query_rows], q_lab, protos, np.arange(len(protos)), clamp_ks=True)
    if variant == "i2i_text_probs":
        protos = class_prototypes(t(gallery.text_emb))
        probs = lambda e: out(torch.softmax(gallery.logit_scale * F.normalize(t(e), dim=-1) @ protos.T, dim=-1))
        return Task(probs(query.emb[query_rows]), q_lab, probs(gallery.emb[gallery_rows]), g_lab,
                    leave_one_out=cfg.leave_one_out, **ids)
    if variant in INVERTED:
        if inverted is None:
            raise ValueError(f"variant {variant!r} needs the {variant} store (features/<model>/<dataset>/{variant}.zarr)")
        check_inverted(inverted, gallery)
    if variant == "oti":
        q = inverted.emb[inverted_positions(inverted, query_rows)]
        return Task(q, q_lab, gallery.emb[gallery_rows], g_lab, leave_one_out=cfg.leave_one_out,
                    info={"cos_to_image": cos_info(inverted)}, **ids)
    if variant == "ovi":
        n_cls, n_prompts = gallery.text_emb.shape[:2]
        protos = out(class_prototypes(t(inverted.emb.reshape(n_cls, n_prompts, -1))))
        return Task(query.emb[query_rows], q_lab, protos, np.arange(n_cls), clamp_ks=True,
                    info={"cos_to_text": cos_info(inverted)})

    # text -> text over every (class, prompt) of the gallery's text features
    n_cls, n_prompts = gallery.text_emb.shape[:2]
    if n_prompts < 2:
        raise VariantSkipped(f"text -> text needs >= 2 prompts per class to have relevant items; these features "
                             f"have {n_prompts} (add templates to text.templates)")
    if variant == "t2t":
        vecs, info = gallery.text_emb.reshape(n_cls * n_prompts, -1), {}
    else:
        k = cfg.isoclip_text
        _, W_iso = isoclip_projectors(W_img, W_txt, k.k_top, k.k_bottom)
        vecs = out(t(gallery.text_pre) @ W_iso)
        vecs, info = vecs.reshape(n_cls * n_prompts, -1), iso_info(gallery, k)
    labels = np.repeat(np.arange(n_cls), n_prompts)
    ids = np.arange(len(vecs))
    return Task(vecs, labels, vecs, labels, query_ids=ids, gallery_ids=ids, leave_one_out=True, clamp_ks=True,
                info=info)


def check_inverted(inverted: Inverted, feats: Features) -> None:
    """Refuse an OTI/OVI store made from another checkpoint or dataset than the features."""
    diff = [k for k in ("checkpoint_sha256", "dataset", "manifest_sha256")
            if inverted.provenance.get(k) != feats.provenance.get(k)]
    if diff:
        raise ValueError("the inversion store comes from other features: " + "; ".join(
            f"{k}: {inverted.provenance.get(k)!r} vs {feats.provenance.get(k)!r}" for k in diff))


def inverted_positions(inverted: Inverted, rows: np.ndarray) -> np.ndarray:
    """Positions in an OTI store of manifest `rows`; ValueError naming rows that were not inverted."""
    pos = np.full(int(max(rows.max(), inverted.row.max())) + 1, -1)
    pos[inverted.row] = np.arange(len(inverted.row))
    missing = rows[pos[rows] < 0]
    if len(missing):
        raise ValueError(f"{len(missing)} query rows (first {int(missing[0])}) were not inverted by OTI: make "
                         f"inversion.oti.splits cover retrieval.query")
    return pos[rows]


def cos_info(inverted: Inverted) -> dict:
    """Mean cosine between inverted features and their targets, before and after the optimisation."""
    return {"init": round(float(inverted.cos[:, 0].mean()), 4), "final": round(float(inverted.cos[:, 1].mean()), 4)}


def iso_info(feats: Features, band) -> dict:
    """The kept band [k_top, r - k_bottom) of Psi's singular directions, and how many are nonzero.

    r = min(d_v, d_t); when D < r (the demo model) Psi has rank <= D and the last r - rank directions
    are null ones that carry nothing, so k_bottom must count them to cut real directions.
    """
    s = metrics.projection_spectra(feats.W_img, feats.W_txt)[1]
    rank, stop = metrics.numerical_rank(s), len(s) - band.k_bottom
    return {"k_top": band.k_top, "k_bottom": band.k_bottom, "r": len(s), "rank_psi": rank, "kept": [band.k_top, stop],
            "kept_nonzero": max(0, min(stop, rank) - band.k_top)}


# ----------------------------------------------------------------------------- evaluation


def run(task: Task, ks: list[int], *, chunk: int = 1024, device: str | None = None,
        faiss_above: int | None = None) -> dict:
    """The task's metrics, plus which query classes have no relevant gallery item (skipped, counted).

    A gallery of up to ``faiss_above`` items (any size when None) is ranked in full (``evaluate``: mAP,
    mAP@R, P@R, R@k, the papers' protocol); a larger one goes the FAISS top-k route (``evaluate_topk``:
    R@k and mAP@k only). Returns the metrics (×100) with ``n_queries`` / ``n_skipped_no_relevant``;
    ``route`` ("full_ranking" or "faiss_topk"); ``skipped_classes`` (labels of skipped queries) when any
    were skipped; ``ks_dropped`` when a prototype/prompt gallery is smaller than some k (those R@k are left
    out). Raises ValueError on bad features or k > an image gallery.
    """
    n_avail = len(task.gallery) - task.leave_one_out
    used = [k for k in ks if k <= n_avail] if task.clamp_ks else list(ks)
    if not used:
        raise ValueError(f"every k in {ks} exceeds the gallery of {n_avail} items")
    topk = faiss_above is not None and len(task.gallery) > faiss_above
    res = (evaluate_topk if topk else evaluate)(
        task.query, task.query_labels, task.gallery, task.gallery_labels, query_ids=task.query_ids,
        gallery_ids=task.gallery_ids, leave_one_out=task.leave_one_out, ks=used, chunk=chunk, device=device)
    res["route"] = "faiss_topk" if topk else "full_ranking"
    if len(used) < len(ks):
        res["ks_dropped"] = [k for k in ks if k not in used]
    if res["n_skipped_no_relevant"]:
        res["skipped_classes"] = _classes_without_relevant(task)
    return res


def _classes_without_relevant(task: Task) -> list:
    gl, counts = np.unique(task.gallery_labels, return_counts=True)
    have = dict(zip(gl.tolist(), counts.tolist()))
    need_n = 2 if task.leave_one_out else 1  # under leave-one-out the query's own item does not count
    # (with leave-one-out the query set is the gallery set, so a singleton class has nothing left)
    return sorted({int(c) for c in np.unique(task.query_labels) if have.get(int(c), 0) < need_n})
