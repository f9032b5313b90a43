"""Few-shot methods on cached features: component logits per (shot, seed) for val and test.

What runs here and what runs in `fuse`: every method's *shape* knobs, i.e. the sharpness and weighting
parameters that sit inside an exp() (Tip's beta, APE's beta/gamma, SeMoBridge's smoothness/alpha/beta/
gamma), are chosen here on val with the reference search (Tip/APE grids, a batched random search for
SeMoBridge), jointly with the linear weights, exactly as the references do. What is stored are the
*components* at the chosen shape knobs, which `fuse` combines with linear weights (Tip/APE alpha,
SeMoBridge lambda1..3), fixed from params.yaml or re-searched on val. Editing a fusion weight therefore
re-runs only the cheap linear step; editing a method's search grid re-runs the method.

logits.zarr layout (N_val / N_test rows in manifest order; C classes):
    label/{val,test}                        (N,)       int
    zeroshot/{val,test}                     (N, C)     100 * cos(q, T)  (CLIP logits, the references' scale)
    draw/<key>/val_index                    (N_v,)     rows of the val split this draw chooses weights on
    ncm/<key>/{val,test}                    (N, C)     cosine to the normalised mean of the raw shots
    isoncm/<key>/{val,test}                 (N, C)     the same on IsoCLIP-projected pre-projection features
    tip/<key>/{val,test}                    (N, C)     Tip cache affinity at the chosen beta
    ape/<key>/{val,test}                    (N, C)     APE cache affinity at the chosen beta, gamma
    semobridge/<key>/{val,test}             (3, N, C)  z1, z2, z3 at the chosen smoothness, alpha, beta, gamma
    spectrum/W_txt, spectrum/psi            singular values of W_txt and of W_img W_txt^T
Attributes: `choices` (method -> key -> chosen shape knobs, reference weights, val accuracy in %), `draws`,
`methods`, `modality_gap`, `bridge` (atol and how many singular values of W_txt fall at or below it).
<key> is `pipeline.fewshot.fewshot_key(K, S)`, e.g. "shot_16-seed_1".
"""

import copy

import numpy as np
import torch

from pipeline import draws as drawlib
from pipeline import metrics
from pipeline.features import Features
from pipeline.fusion import sample_weights, search_batched
from pipeline.methods import ape, isoclip, ncm, semobridge, tip_adapter, zeroshot
from pipeline.params import ParamsError, need
from pipeline.views import Views

METHODS = ("zeroshot", "ncm", "isoncm", "tip", "ape", "semobridge")
NEEDS_VIEWS = ("tip", "ape")
EXTRA_SHOTS = ("none", "hflip", "views")
CPU_CHUNK_ELEMENTS = 2**18


def _numbers(section: dict, key: str, where: str, n: int, positive: bool = True) -> list[float]:
    value = need(section, key, list, where)
    ok = len(value) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or (positive and not all(v > 0 for v in value)):
        raise ParamsError(f"params.yaml: '{where}.{key}' = {value!r} should be a list of {n} "
                          f"{'positive ' if positive else ''}numbers")
    return [float(v) for v in value]


def _steps(section: dict, where: str, n: int) -> list[int]:
    value = need(section, "steps", list, where)
    if len(value) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ParamsError(f"params.yaml: '{where}.steps' = {value!r} should be a list of {n} positive ints")
    return value


def methods_section(params: dict, arch: str, dataset: str) -> dict:
    """Validated `methods` for one (arch, dataset): overrides[dataset] merged over the defaults."""
    section = copy.deepcopy(need(params, "methods", dict, ""))
    enabled = need(section, "enabled", list, "methods")
    unknown = [m for m in enabled if m not in METHODS]
    if not enabled or unknown or len(set(enabled)) != len(enabled):
        raise ParamsError(f"params.yaml: 'methods.enabled' = {enabled!r} should be distinct names from {METHODS}")
    overrides = section.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ParamsError(f"params.yaml: 'methods.overrides' = {overrides!r} should be a mapping dataset -> settings")
    for method, values in (overrides.get(dataset) or {}).items():
        if method not in ("tip", "ape", "semobridge") or not isinstance(values, dict):
            raise ParamsError(f"params.yaml: 'methods.overrides.{dataset}.{method}' should be a mapping under "
                              f"tip, ape or semobridge")
        section[method] = {**need(section, method, dict, "methods"), **values}
    where = lambda m: f"methods.{m}" + (f" (with methods.overrides.{dataset})" if dataset in overrides else "")
    tip = need(section, "tip", dict, "methods")
    ape_cfg = need(section, "ape", dict, "methods")
    semo = need(section, "semobridge", dict, "methods")
    channels = need(ape_cfg, "channels", (int, float), where("ape"))
    if (isinstance(channels, float) and not 0 < channels <= 1) or (isinstance(channels, int) and channels < 1):
        raise ParamsError(f"params.yaml: '{where('ape')}.channels' = {channels!r} should be a fraction in (0, 1] "
                          f"of the embedding width or a channel count >= 1")
    cfg = {
        "enabled": enabled,
        "tip": {"scales": _numbers(tip, "scales", where("tip"), 2), "steps": _steps(tip, where("tip"), 2)},
        "ape": {"channels": channels, "w": _numbers(ape_cfg, "w", where("ape"), 2, positive=False),
                "scales": _numbers(ape_cfg, "scales", where("ape"), 3), "steps": _steps(ape_cfg, where("ape"), 3)},
        "semobridge": {"atol": float(need(semo, "atol", (int, float), where("semobridge"), minimum=0)),
                       "extra_shots": need(semo, "extra_shots", str, where("semobridge"), choices=EXTRA_SHOTS),
                       "trials": need(semo, "trials", int, where("semobridge"), minimum=1),
                       "seed": need(semo, "seed", int, where("semobridge"), minimum=0)},
    }
    if "isoncm" in enabled:
        iso = need(section, "isoclip", dict, "methods")
        if arch not in iso:
            raise ParamsError(f"params.yaml: no 'methods.isoclip.{arch}' (k_top, k_bottom) for architecture "
                              f"'{arch}' (known: {sorted(iso)}); add it or drop 'isoncm' from methods.enabled")
        cfg["isoclip"] = {k: need(iso[arch], k, int, f"methods.isoclip.{arch}", minimum=0)
                          for k in ("k_top", "k_bottom")}
    return cfg


def search_chunk(rows: int, classes: int, device: str) -> int | None:
    """Trials per chunk of SeMoBridge's batched search: ~2^18 elements (1 MB) per intermediate on CPU,
    which keeps the builder's temporaries in L2 (the library default, 2^25, measured ~2-3x slower on
    2 cores); the library default on GPUs."""
    return None if device != "cpu" else max(1, CPU_CHUNK_ELEMENTS // max(1, rows * classes))


def _pct(fraction) -> float:
    return round(100 * float(fraction), 4)


def _channel_count(channels, dim: int) -> int:
    q = max(1, round(channels * dim)) if isinstance(channels, float) else channels
    if q > dim:
        raise ParamsError(f"params.yaml: 'methods.ape.channels' = {channels} exceeds the embedding width {dim}")
    return q


class _Draw:
    """One (shot, seed) draw resolved to feature rows: shots (C, K) rows, val subset, views."""

    def __init__(self, feats: Features, draw: dict, val_rows: np.ndarray, num_classes: int, views: Views | None):
        rows = drawlib.rows_of(feats.item, draw["train"])
        self.idx = drawlib.class_major(rows, feats.label[rows], num_classes, draw["shots"])
        self.val_index = drawlib.rows_of(feats.item[val_rows], draw["val"])
        self.view_rows = None
        if views is not None:
            self.view_rows = drawlib.rows_of(views.item, feats.item[self.idx.ravel()]).reshape(self.idx.shape)


def spectra(feats: Features, atol: float) -> tuple[dict, dict]:
    """Singular spectra of W_txt and Psi = W_img W_txt^T, the bridge cut-off count and the modality gap
    (test images vs every class prompt, the same population as the test accuracy)."""
    W_img, W_txt = torch.from_numpy(feats.W_img).double(), torch.from_numpy(feats.W_txt).double()
    s_txt = torch.linalg.svdvals(W_txt)
    s_psi = torch.linalg.svdvals(W_img @ W_txt.T)
    arrays = {"spectrum/W_txt": s_txt.float().numpy(), "spectrum/psi": s_psi.float().numpy()}
    attrs = {"modality_gap": metrics.modality_gap(feats.emb[feats.split == 2], feats.text_emb),
             "bridge": {"atol": atol, "n_sigma_le_atol": int((s_txt <= atol).sum()), "n_sigma": len(s_txt)}}
    return arrays, attrs


def run(feats: Features, fewshot: dict, views: Views | None, cfg: dict, device: str = "cpu") -> tuple[dict, dict]:
    """Every enabled method's components for every draw; returns (arrays, attrs) for logits.zarr.

    Choices are made on each draw's val rows only; test components are computed afterwards from the
    chosen knobs, so test never influences a choice.
    """
    enabled = cfg["enabled"]
    if views is None and (set(NEEDS_VIEWS) & set(enabled) or
                          ("semobridge" in enabled and cfg["semobridge"]["extra_shots"] != "none")):
        raise ValueError("augmented views are needed (Tip/APE cache keys, SeMoBridge extra shots) but none were given")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float().to(device)
    num_classes = feats.text_emb.shape[0]
    protos = zeroshot.class_prototypes(t(feats.text_emb))
    split_rows = {"val": np.flatnonzero(feats.split == 1), "test": np.flatnonzero(feats.split == 2)}
    query = {s: t(feats.emb[r]) for s, r in split_rows.items()}
    labels = {s: torch.from_numpy(feats.label[r].astype(np.int64)).to(device) for s, r in split_rows.items()}
    arrays, attrs = spectra(feats, cfg["semobridge"]["atol"])
    for s in split_rows:
        arrays[f"label/{s}"] = feats.label[split_rows[s]].astype(np.int32)
        arrays[f"zeroshot/{s}"] = zeroshot.zeroshot_logits(query[s], protos, 100.0).cpu().numpy()
    if "isoncm" in enabled:
        U_k, _ = isoclip.iso_basis(t(feats.W_img), t(feats.W_txt), cfg["isoclip"]["k_top"],
                                   cfg["isoclip"]["k_bottom"], None if feats.b_img is None else t(feats.b_img))
        W_iso = isoclip.iso_image_projector(t(feats.W_img), U_k)
        iso_query = {s: t(feats.pre[r]) @ W_iso for s, r in split_rows.items()}
    if "semobridge" in enabled:
        P = semobridge.bridge_matrix(t(feats.W_txt), cfg["semobridge"]["atol"])
        scale = semobridge.text_scale(t(feats.text_pre))
        semo_trials = sample_weights(semobridge.SEARCH_SPACE, cfg["semobridge"]["trials"], cfg["semobridge"]["seed"])
    choices = {m: {} for m in enabled if m in ("tip", "ape", "semobridge")}
    for key, draw in fewshot["draws"].items():
        d = _Draw(feats, draw, split_rows["val"], num_classes, views)
        vi = torch.from_numpy(d.val_index).to(device)
        q_val, y_val = query["val"][vi], labels["val"][vi]   # the only rows any choice below sees
        shots = t(feats.emb[d.idx])                            # (C, K, D) raw
        put = lambda m, fn: arrays.update({f"{m}/{key}/{s}": fn(s).cpu().numpy() for s in split_rows})
        if "ncm" in enabled:
            centres = zeroshot.normalize(shots.mean(dim=1))
            put("ncm", lambda s: ncm.ncm_logits(query[s], centres))
        if "isoncm" in enabled:
            iso_centres = isoclip.iso_embed(t(feats.pre[d.idx]).mean(dim=1), W_iso)
            put("isoncm", lambda s: ncm.ncm_logits(iso_query[s], iso_centres))
        if set(NEEDS_VIEWS) & set(enabled):
            keys = tip_adapter.cache_keys(t(views.emb[d.view_rows]))  # (C, K, D) from (C, K, V, D)
        if "tip" in enabled:
            (s_beta, s_alpha), (n_beta, n_alpha) = cfg["tip"]["scales"], cfg["tip"]["steps"]
            best = tip_adapter.tip_search(q_val, y_val, protos, keys, s_beta, s_alpha, n_beta, n_alpha)
            choices["tip"][key] = {"beta": best["beta"], "alpha": best["alpha"], "val_acc": _pct(best["val_acc"])}
            put("tip", lambda s: tip_adapter.cache_affinity(query[s], keys, best["beta"]))
        if "ape" in enabled:
            w0, w1 = cfg["ape"]["w"]
            channels = ape.select_channels(protos, keys, _channel_count(cfg["ape"]["channels"], keys.shape[-1]), w0, w1)
            n_beta, n_alpha, n_gamma = cfg["ape"]["steps"]
            best_a = ape.ape_search(q_val, y_val, protos, keys, channels, tuple(cfg["ape"]["scales"]),
                                    n_gamma, n_beta, n_alpha)
            choices["ape"][key] = {**{k: best_a[k] for k in ("beta", "alpha", "gamma")},
                                   "val_acc": _pct(best_a["val_acc"]), "channels": int(channels.numel())}
            put("ape", lambda s: ape.ape_cache_affinity(query[s], protos, keys, channels, best_a["beta"],
                                                        best_a["gamma"]))
        if "semobridge" in enabled:
            extra = cfg["semobridge"]["extra_shots"]
            parts = [shots.unsqueeze(2)]
            if extra == "hflip":
                parts.append(t(views.flip[d.view_rows]).unsqueeze(2))
            elif extra == "views":
                parts.append(t(views.emb[d.view_rows]))
            semo_shots = torch.cat(parts, dim=2).flatten(1, 2)  # (C, K', D), K' = K (E + 1)
            cos_val = semobridge.semobridge_cosines(q_val, semo_shots, protos, P, t(feats.W_txt), scale)
            i, acc = search_batched(semobridge.semobridge_builder(cos_val), semo_trials.to(device), y_val,
                                    search_chunk(len(y_val), num_classes, device))
            chosen = dict(zip(semobridge.PARAM_NAMES, semo_trials[i].tolist()))
            choices["semobridge"][key] = {**chosen, "val_acc": _pct(acc[i]), "extra_shots": extra,
                                          "shots_per_class": int(semo_shots.shape[1])}

            def terms(s):
                cos = semobridge.semobridge_cosines(query[s], semo_shots, protos, P, t(feats.W_txt), scale)
                return torch.stack(semobridge.semobridge_terms(
                    cos, chosen["smoothness"], chosen["alpha"], chosen["beta"], chosen["gamma"]))
            put("semobridge", terms)
        arrays[f"draw/{key}/val_index"] = d.val_index.astype(np.int32)
    attrs.update({"choices": choices, "methods": enabled, "draws": list(fewshot["draws"]),
                  "shots": fewshot["shots"], "seeds": fewshot["seeds"], "val_protocol": fewshot["val"]})
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise FloatingPointError(f"component '{name}' has NaN or inf values (overflowing sharpness?)")
    return arrays, attrs
