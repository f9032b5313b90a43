"""One category-discovery run on a dataset: Spectral Filtering of the teacher's concept logits, then every
method of the table per seed, scored transductively (the unlabelled train rows: the papers' protocol) and
inductively (test rows), All / Old / New with the reference's v2 and the class-balanced v2b.
"""

import numpy as np

from pipeline import gcd_baselines, gcd_eval, gcd_train
from pipeline.gcd_config import GCDConfig
from pipeline.gcd_inputs import GCDInputs
from pipeline.layout import SPLIT_CODES
from pipeline.spectral_filter import spectral_filter

METHODS = ("kmeans_image", "kmeans_concepts", "kmeans_filtered", "simgcd", "spectralgcd")
PROTOCOLS = ("transductive", "inductive")


def _rows(inputs: GCDInputs) -> dict[str, np.ndarray]:
    return {"transductive": inputs.train[~inputs.labelled],
            "inductive": np.flatnonzero(inputs.split == SPLIT_CODES["test"])}


def _score(inputs: GCDInputs, rows: np.ndarray, pred: np.ndarray) -> dict:
    return {v: gcd_eval.cluster_accuracy(inputs.target[rows], pred, inputs.is_old[rows], v)
            for v in gcd_eval.VARIANTS}


def filter_report(inputs: GCDInputs, filt) -> dict:
    """What filtering kept: counts, each kept concept with its score, and (demo) the share of distractors and
    of the classes' own words kept."""
    kept = [inputs.concepts[i] for i in filt.keep]
    words = {c.lower() for c in inputs.classnames} | {w for c in inputs.classnames for w in c.lower().split()}
    own = [c for c in inputs.concepts if c.lower() in words]
    share = lambda group: (sum(c in set(kept) for c in group) / len(group)) if group else None
    return {"K0": len(inputs.concepts), "k_e": filt.k_e, "k_c": filt.k_c, "route": filt.route,
            "distractors_kept": share(sorted(inputs.distractors)), "class_words_kept": share(own),
            "kept": [{"concept": inputs.concepts[i], "score": float(filt.scores[i])} for i in filt.keep]}


def run(inputs: GCDInputs, cfg: GCDConfig, device: str = "cpu", progress: bool = True) -> dict:
    filt = spectral_filter(inputs.teacher_logits, cfg.beta_e, cfg.beta_c, cfg.route)
    rows, k = _rows(inputs), len(inputs.classnames)
    sims = gcd_baselines.concept_similarities(inputs.student_emb, inputs.student_concepts)
    spaces = {"kmeans_image": inputs.student_emb, "kmeans_concepts": sims, "kmeans_filtered": sims[:, filt.keep]}
    scores = {m: {} for m in METHODS}
    history = {}
    scored = np.concatenate(list(rows.values()))
    cuts = np.cumsum([len(r) for r in rows.values()])[:-1]
    for seed in cfg.seeds:
        for method, x in spaces.items():
            pred = gcd_baselines.kmeans(x[inputs.train], x[scored], k, cfg.kmeans_iters, cfg.kmeans_redo, seed)
            scores[method][seed] = {p: _score(inputs, r, part) for (p, r), part in zip(rows.items(), np.split(pred, cuts))}
        for method in ("simgcd", "spectralgcd"):
            trained = gcd_train.train(method, inputs, filt.keep, cfg, seed, device, progress)
            history[f"{method}/seed_{seed}"] = trained.history
            scores[method][seed] = {p: _score(inputs, r, gcd_train.predict(trained.net, inputs.student_emb[r], device))
                                    for p, r in rows.items()}
    return {"filter": filter_report(inputs, filt), "scores": scores, "history": history,
            "rows": {p: len(r) for p, r in rows.items()}, "old_classes": [inputs.classnames[c] for c in inputs.old]}


def metrics(result: dict) -> dict:
    """Per method and protocol: All / Old / New (v2, %) mean and std over seeds, plus the filter's counts."""
    out = {}
    for method, by_seed in result["scores"].items():
        out[method] = {}
        for p in PROTOCOLS:
            entry = {}
            for part in ("all", "old", "new"):
                vals = [s[p]["v2"][part] for s in by_seed.values() if s[p]["v2"][part] is not None]
                if vals:
                    entry[part] = round(100 * float(np.mean(vals)), 2)
                    entry[f"{part}_std"] = round(100 * float(np.std(vals)), 2)
            out[method][p] = entry
    f = result["filter"]
    out["filter"] = {k: f[k] for k in ("K0", "k_e", "k_c", "distractors_kept", "class_words_kept")}
    return out
