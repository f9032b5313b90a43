"""fuse: each method's linear fusion weights, chosen on val (or fixed), applied once to test; metrics.

Per method (`pipeline.methods.contract`), fused logits = [zero-shot logits if `base`] + sum_w weight_w *
component_w over the components `adapt` stored; a method without weights is its one component "logits".
Modes (`fusion.mode`):
    search     score `fusion.search.trials` random weight vectors plus a `grid`-point grid per weight,
               all within `fusion.ranges`, then `fusion.search.refine` rounds around the best rows, each
               one batched op per chunk (`pipeline.fusion.search_space`) on the draw's val rows; the
               first best is applied to test.
    fixed      the weights in `fusion.fixed`, for every draw.
    reference  the weights each method's own reference search chose in `adapt`, jointly with its
               sharpness (reproduces Tip-Adapter / APE / SeMoBridge as published).
Choices read val arrays only; test arrays are read after every choice of a store is made.
"""

import numpy as np
import torch
import zarr

from pipeline import fusion, metrics, store
from pipeline.config import Fusion
from pipeline.layout import ALL_DRAWS, logits_array, parse_draw_key
from pipeline.methods import REGISTRY
from pipeline.methods.contract import Method


class FusionError(ValueError):
    """fuse was asked for something the logits stores cannot provide."""


def _read(group: zarr.Group, name: str, rows=None) -> torch.Tensor:
    array = store.read(group, name)   # a chunk that does not decode is a StoreError naming the file
    return torch.from_numpy(array if rows is None else array[rows])


def components(group: zarr.Group, method: Method, key: str, split: str, rows=None) -> tuple[torch.Tensor | None, dict]:
    """(base logits or None, {component name: (N, C)}) of one method and draw on one split."""
    base = _read(group, logits_array("zeroshot", ALL_DRAWS, "logits", split), rows) if method.base else None
    return base, {c: _read(group, logits_array(method.name, key, c, split), rows) for c in method.component_names}


def combine(base, comps: dict, weights: dict) -> torch.Tensor:
    if not weights:   # a method without weights is its one component
        return next(iter(comps.values()))
    out = fusion.fuse(comps, weights)
    return out if base is None else base + out


def choose(method: Method, base, comps: dict, labels: torch.Tensor, cfg: Fusion, reference: dict) -> tuple[dict, float]:
    """Weights for one method and draw from VAL components only; returns (weights, val accuracy %)."""
    if not method.weights:
        weights = {}
    elif cfg.mode == "fixed":
        weights = dict(cfg.fixed[method.name])
    elif cfg.mode == "reference":
        if not set(method.weights) <= set(reference):
            raise FusionError(f"fusion.mode 'reference': adapt recorded no {sorted(method.weights)} for {method.name}")
        weights = {w: float(reference[w]) for w in method.weights}
    else:
        build = fusion.linear_builder(torch.stack([comps[w] for w in method.weights]), 0 if base is None else base)
        row, _, _ = fusion.search_space(build, cfg.ranges[method.name], labels, cfg.search)
        weights = dict(zip(method.weights, row.tolist()))
    return weights, metrics.accuracy(combine(base, comps, weights), labels)


def evaluate_store(group: zarr.Group, where: str, cfg: Fusion) -> tuple[dict, dict, list[dict]]:
    """(metrics, choices, per-draw rows) of one (model, dataset) logits store."""
    attrs = dict(group.attrs)
    missing = [m for m in cfg.methods if m not in attrs["methods"]]
    if missing:
        raise FusionError(f"fusion.methods asks for {missing} but {where} holds logits of {attrs['methods']} only "
                          f"(add them to params.yaml 'methods.enabled' and re-run adapt)")
    y_val, y_test = (torch.from_numpy(group[f"label/{s}"][...].astype(np.int64)) for s in ("val", "test"))
    picks = {}
    for name in cfg.methods:  # every choice first, on val only
        method = REGISTRY[name]
        for key in (attrs["draws"] if method.per_draw else [ALL_DRAWS]):
            rows = group[f"draw/{key}/val_index"][...] if method.per_draw else None
            base, comps = components(group, method, key, "val", rows)
            ref = attrs["choices"].get(name, {}).get(key, {})
            weights, val_acc = choose(method, base, comps, y_val if rows is None else y_val[rows], cfg, ref)
            picks[(name, key)] = {"weights": weights, "val_acc": round(val_acc, 4)}
    results, report, per_draw = {}, {}, []
    for (name, key), pick in picks.items():  # then test, once per choice
        base, comps = components(group, REGISTRY[name], key, "test")
        test_acc = round(metrics.accuracy(combine(base, comps, pick["weights"]), y_test), 4)
        if key == ALL_DRAWS:
            results[name] = {"test_acc": test_acc}
            continue
        shots, seed = parse_draw_key(key)
        results.setdefault(name, {}).setdefault(shots, {})[seed] = test_acc
        per_draw.append({"method": name, "shots": shots, "seed": seed, "val_acc": pick["val_acc"],
                         "test_acc": test_acc})
        adapt_choice = attrs["choices"].get(name, {}).get(key, {})
        report.setdefault(name, {})[key] = {**pick, "test_acc": test_acc,
                                            **({"adapt": adapt_choice} if adapt_choice else {})}
    out = {m: r if "test_acc" in r else mean_std(r) for m, r in results.items()}
    return {**out, **spectrum(group, attrs)}, report, per_draw


def mean_std(by_shots: dict) -> dict:
    """shots -> seed -> accuracy  =>  "shots_K" -> mean and (population) std over seeds."""
    out = {}
    for shots in sorted(by_shots):
        seeds = by_shots[shots]
        accs = np.array([seeds[s] for s in sorted(seeds)])
        out[f"shots_{shots}"] = {"mean": round(float(accs.mean()), 4), "std": round(float(accs.std()), 4)}
    return out


def spectrum(group: zarr.Group, attrs: dict) -> dict:
    s_txt, s_psi = group["spectrum/W_txt"][...], group["spectrum/psi"][...]
    out = {"w_txt_sigma_max": round(float(s_txt.max()), 4), "w_txt_sigma_min": round(float(s_txt.min()), 4),
           "psi_sigma_max": round(float(s_psi.max()), 4), "psi_rank": metrics.numerical_rank(s_psi)}
    if "bridge" in attrs:
        out.update({"w_txt_n_le_atol": attrs["bridge"]["n_sigma_le_atol"], "bridge_atol": attrs["bridge"]["atol"]})
    return {"modality_gap": round(attrs["modality_gap"], 4), "spectrum": out}
