"""fuse: each method's linear fusion weights, chosen on val (or fixed), applied once to test; metrics.

Per method, its logits are `base + sum_w weight_w * component_w` over the components `adapt` stored
(see `pipeline.adapt`):
    tip, ape     base = zero-shot CLIP logits, component alpha = cache affinity
    semobridge   components lambda1, lambda2, lambda3 = z1, z2, z3
    zeroshot, ncm, isoncm: no weights.
Modes (`fusion.mode`):
    search     score `fusion.search.trials` random weight vectors plus a `grid`-point grid per weight,
               all within `fusion.ranges`, in one batched op per chunk (`pipeline.fusion.search`) on the
               draw's val rows; the first best is applied to test.
    fixed      the weights in `fusion.fixed`, for every draw.
    reference  the weights each method's own reference search chose in `adapt`, jointly with its
               sharpness (reproduces Tip-Adapter / APE / SeMoBridge as published).
Choices read val arrays only; test arrays are read after every choice of a store is made.
"""

import numpy as np
import torch
import zarr

from pipeline import fusion, metrics
from pipeline.params import ParamsError, need

# The domain of each weight (METHODS.md §3.5 lambdas in [0, 1]; Tip/APE alpha grids reach S_alpha <= 50, §7.2/§8.3).
DOMAINS = {
    "tip": {"alpha": (0.0, 50.0)},
    "ape": {"alpha": (0.0, 50.0)},
    "semobridge": {"lambda1": (0.0, 1.0), "lambda2": (0.0, 1.0), "lambda3": (0.0, 1.0)},
}
METHODS = ("zeroshot", "ncm", "isoncm", "tip", "ape", "semobridge")
MODES = ("search", "fixed", "reference")


class FusionError(ValueError):
    """fuse was asked for something the logits stores cannot provide."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fusion_section(params: dict) -> dict:
    """Validated `fusion`; every range and fixed weight must lie inside its method's DOMAINS entry."""
    section = need(params, "fusion", dict, "")
    mode = need(section, "mode", str, "fusion", choices=MODES)
    methods = need(section, "methods", list, "fusion")
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise ParamsError(f"params.yaml: 'fusion.methods' = {methods!r} should be distinct names from {METHODS}")
    search = need(section, "search", dict, "fusion")
    cfg = {"mode": mode, "methods": methods,
           "trials": need(search, "trials", int, "fusion.search", minimum=0),
           "grid": need(search, "grid", int, "fusion.search", minimum=0),
           "seed": need(search, "seed", int, "fusion.search", minimum=0), "ranges": {}, "fixed": {}}
    if cfg["grid"] == 1 or cfg["trials"] + cfg["grid"] == 0:
        raise ParamsError("params.yaml: 'fusion.search' needs trials > 0 or grid >= 2 (grid 0 = no grid)")
    ranges, fixed = need(section, "ranges", dict, "fusion"), need(section, "fixed", dict, "fusion")
    for method in (m for m in methods if m in DOMAINS):
        for weight, (low, high) in DOMAINS[method].items():
            where = f"fusion.ranges.{method}"
            r = need(need(ranges, method, dict, "fusion.ranges"), weight, list, where)
            if len(r) != 2 or not all(map(_number, r)) or not low <= r[0] <= r[1] <= high:
                raise ParamsError(f"params.yaml: '{where}.{weight}' = {r!r} should be [low, high] within "
                                  f"[{low}, {high}]")
            cfg["ranges"].setdefault(method, {})[weight] = (float(r[0]), float(r[1]))
            where = f"fusion.fixed.{method}"
            v = need(need(fixed, method, dict, "fusion.fixed"), weight, (int, float), where)
            if not low <= v <= high:
                raise ParamsError(f"params.yaml: '{where}.{weight}' = {v!r} is outside its range [{low}, {high}]")
            cfg["fixed"].setdefault(method, {})[weight] = float(v)
    return cfg


def _read(group: zarr.Group, name: str, rows=None) -> torch.Tensor:
    arr = group[name]
    return torch.from_numpy(arr[...] if rows is None else arr.get_orthogonal_selection(
        (rows,) + (slice(None),) * (arr.ndim - 1)))


def components(group: zarr.Group, method: str, key: str, split: str, rows=None) -> tuple[torch.Tensor | None, dict]:
    """(base logits or None, {weight name: (N, C) component}) of one method and draw on one split."""
    if method == "zeroshot":
        return _read(group, f"zeroshot/{split}", rows), {}
    if method in ("ncm", "isoncm"):
        return _read(group, f"{method}/{key}/{split}", rows), {}
    if method in ("tip", "ape"):
        return _read(group, f"zeroshot/{split}", rows), {"alpha": _read(group, f"{method}/{key}/{split}", rows)}
    z = group[f"semobridge/{key}/{split}"]
    z = torch.from_numpy(z[...] if rows is None else z.get_orthogonal_selection((slice(None), rows, slice(None))))
    return None, {"lambda1": z[0], "lambda2": z[1], "lambda3": z[2]}


def combine(base, comps: dict, weights: dict) -> torch.Tensor:
    out = fusion.fuse(comps, weights) if comps else 0
    return out if base is None else base + out


def choose(method: str, base, comps: dict, labels: torch.Tensor, cfg: dict, reference: dict) -> tuple[dict, float]:
    """Weights for one method and draw from VAL components only; returns (weights, val accuracy %)."""
    if not comps:
        return {}, metrics.accuracy(base, labels)
    if cfg["mode"] == "fixed":
        weights = dict(cfg["fixed"][method])
    elif cfg["mode"] == "reference":
        if not set(comps) <= set(reference):
            raise FusionError(f"fusion.mode 'reference': adapt recorded no {sorted(comps)} for {method}")
        weights = {w: float(reference[w]) for w in comps}
    else:
        space = cfg["ranges"][method]
        trials = fusion.sample_weights(space, cfg["trials"], cfg["seed"], cfg["grid"] or None)
        named = dict(comps) if base is None else {"base": base, **comps}
        if base is not None:
            trials = torch.cat([torch.ones(len(trials), 1), trials], dim=1)
        best, _ = fusion.search(named, labels, trials)
        weights = {w: float(v) for w, v in zip(space, trials[best, -len(space):].tolist())}
    return weights, metrics.accuracy(combine(base, comps, weights), labels)


def evaluate_store(group: zarr.Group, where: str, cfg: dict) -> tuple[dict, dict]:
    """Metrics and choices of one (model, dataset) logits store."""
    attrs = dict(group.attrs)
    missing = [m for m in cfg["methods"] if m not in attrs["methods"]]
    if missing:
        raise FusionError(f"fusion.methods asks for {missing} but {where} holds logits of {attrs['methods']} only "
                          f"(add them to params.yaml 'methods.enabled' and re-run adapt)")
    y_val, y_test = (torch.from_numpy(group[f"label/{s}"][...].astype(np.int64)) for s in ("val", "test"))
    picks = {}
    for method in cfg["methods"]:  # every choice first, on val only
        for key in (["all"] if method == "zeroshot" else attrs["draws"]):
            rows = None if key == "all" else group[f"draw/{key}/val_index"][...]
            base, comps = components(group, method, key, "val", rows)
            ref = attrs["choices"].get(method, {}).get(key, {})
            weights, val_acc = choose(method, base, comps, y_val if rows is None else y_val[rows], cfg, ref)
            picks[(method, key)] = {"weights": weights, "val_acc": round(val_acc, 4)}
    results, report = {}, {}
    for (method, key), pick in picks.items():  # then test, once per choice
        base, comps = components(group, method, key, "test")
        test_acc = round(metrics.accuracy(combine(base, comps, pick["weights"]), y_test), 4)
        if method == "zeroshot":
            results["zeroshot"] = {"test_acc": test_acc}
            continue
        shots, seed = _parse(key)
        results.setdefault(method, {}).setdefault(shots, {})[seed] = test_acc
        adapt_choice = attrs["choices"].get(method, {}).get(key, {})
        report.setdefault(method, {})[key] = {**pick, "test_acc": test_acc, **({"adapt": adapt_choice}
                                                                              if adapt_choice else {})}
    out = {m: (r if m == "zeroshot" else _aggregate(r)) for m, r in results.items()}
    return {**out, **_spectrum(group, attrs)}, report


def _parse(key: str) -> tuple[int, int]:
    shots, seed = key.split("-")
    return int(shots.split("_")[1]), int(seed.split("_")[1])


def _aggregate(by_shots: dict) -> dict:
    out = {}
    for shots in sorted(by_shots):
        seeds = by_shots[shots]
        accs = np.array([seeds[s] for s in sorted(seeds)])
        out[f"shots_{shots}"] = {"mean": round(float(accs.mean()), 4), "std": round(float(accs.std()), 4),
                                 **{f"seed_{s}": seeds[s] for s in sorted(seeds)}}
    return out


def _spectrum(group: zarr.Group, attrs: dict) -> dict:
    s_txt, s_psi = group["spectrum/W_txt"][...], group["spectrum/psi"][...]
    return {"modality_gap": round(attrs["modality_gap"], 4),
            "spectrum": {"w_txt_sigma_max": round(float(s_txt.max()), 4),
                         "w_txt_sigma_min": round(float(s_txt.min()), 4),
                         "w_txt_n_le_atol": attrs["bridge"]["n_sigma_le_atol"],
                         "bridge_atol": attrs["bridge"]["atol"],
                         "psi_sigma_max": round(float(s_psi.max()), 4),
                         "psi_rank": int((s_psi > s_psi.max() * 1e-5).sum())}}
