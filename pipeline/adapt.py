"""adapt: every enabled method's component logits per (shot, seed) on val and test -> logits.zarr.

What runs here and what runs in `fuse`: each method's *shape* knobs, the sharpness and weighting
parameters inside an exp() (Tip's beta, APE's beta/gamma, SeMoBridge's smoothness/alpha/beta/gamma), are
chosen here on the draw's val rows with the reference search, jointly with the linear weights, as the
references do. What is stored are the *components* at the chosen knobs, which `fuse` combines with linear
weights (the method's `weights`), fixed or re-searched on val. Editing a fusion weight therefore re-runs
only the cheap linear step; editing a method's search grid re-runs the method.

logits.zarr layout (N_val / N_test rows in manifest order; C classes; the method contract is
`pipeline.methods.contract`):
    label/{val,test}                          (N,)     int
    zeroshot/all/logits/{val,test}            (N, C)   100 * cos(q, T): CLIP's logits, Tip's and APE's base
    <method>/<key>/<component>/{val,test}     (N, C)   e.g. ncm/<key>/logits, tip/<key>/alpha,
                                                       semobridge/<key>/lambda1 (z1 at the chosen knobs)
    <method>/<key>/checkpoint/<name>                   a trained method's kept parameters, e.g.
                                                       semobridge_t/<key>/checkpoint/{P,bias,items}
    draw/<key>/val_index                      (N_v,)   rows of the val split this draw chooses on
    spectrum/W_txt, spectrum/psi                       singular values of W_txt and of W_img W_txt^T
Attributes: `choices` (method -> key -> chosen knobs, the reference weights, val accuracy in %),
`checkpoints` (trained method -> the settings that trained it and its checkpoint's array names), `draws`,
`methods`, `modality_gap`, `bridge` (atol, how many singular values of W_txt fall at or below it).
<key> is `pipeline.layout.draw_key(K, S)`, e.g. "shot_16-seed_1"; draw-free methods use "all".
`Inputs` and `Draw` below are what each method's `setup` and `fit` receive.
"""

import numpy as np
import torch

from pipeline import draws as drawlib
from pipeline import metrics
from pipeline.config import Methods
from pipeline.features import Features, nonfinite_rows
from pipeline.layout import ALL_DRAWS, SPLIT_CODES, logits_array
from pipeline.methods import REGISTRY
from pipeline.methods.contract import EVAL_SPLITS
from pipeline.methods.cosine import class_prototypes
from pipeline.train import TrainedFit, checkpoint_array
from pipeline.views import Views


class InputError(ValueError):
    """A cached array a method reads is unusable (NaN, inf, missing views)."""


def _finite(name: str, array: np.ndarray) -> None:
    if why := nonfinite_rows(name, array):
        raise InputError(f"{why}; re-run the stage that wrote it")


class Inputs:
    """One (model, dataset)'s cached arrays, as float32 tensors on `device` where methods need them."""

    def __init__(self, feats: Features, views: Views | None, device: str = "cpu", prompts=None):
        for name in ("pre", "emb", "text_pre", "text_emb", "W_img", "W_txt"):
            _finite(name, getattr(feats, name))
        if views is not None:
            _finite("view/emb", views.emb)
            _finite("flip/emb", views.flip)
        self.feats, self.views, self.device, self.prompts = feats, views, device, prompts
        self.num_classes = feats.text_emb.shape[0]
        self.rows = {s: np.flatnonzero(feats.split == SPLIT_CODES[s]) for s in EVAL_SPLITS}
        self.query = {s: self.tensor(feats.emb[r]) for s, r in self.rows.items()}
        self.labels = {s: torch.from_numpy(feats.label[r].astype(np.int64)).to(device) for s, r in self.rows.items()}
        self.protos = class_prototypes(self.tensor(feats.text_emb))   # (C, D) unit zero-shot classifier

    def tensor(self, array) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).float().to(self.device)


class Draw:
    """One (shots, seed) draw resolved to feature rows: shots (C, K), its val subset, its views."""

    def __init__(self, inputs: Inputs, key: str, draw: dict):
        feats = inputs.feats
        rows = drawlib.rows_of(feats.item, draw["train"])
        self.key = key
        self.idx = drawlib.class_major(rows, feats.label[rows], inputs.num_classes, draw["shots"])
        self.val_index = drawlib.rows_of(feats.item[inputs.rows["val"]], draw["val"])
        self.view_rows = None
        if inputs.views is not None:
            self.view_rows = drawlib.rows_of(inputs.views.item, feats.item[self.idx.ravel()]).reshape(self.idx.shape)
        vi = torch.from_numpy(self.val_index).to(inputs.device)
        self.q_val, self.y_val = inputs.query["val"][vi], inputs.labels["val"][vi]   # all a choice may see


def spectra(feats: Features, atol: float | None) -> tuple[dict, dict]:
    """Singular spectra of W_txt and Psi = W_img W_txt^T, the bridge cut-off count and the modality gap
    (test images vs every class prompt, the same population as the test accuracy)."""
    s_txt, s_psi = metrics.projection_spectra(feats.W_img, feats.W_txt)
    arrays = {"spectrum/W_txt": s_txt.astype(np.float32), "spectrum/psi": s_psi.astype(np.float32)}
    attrs = {"modality_gap": metrics.modality_gap(feats.emb[feats.split == 2], feats.text_emb)}
    if atol is not None:
        attrs["bridge"] = {"atol": atol, "n_sigma_le_atol": int((s_txt <= atol).sum()), "n_sigma": len(s_txt)}
    return arrays, attrs


def run(feats: Features, fewshot: dict, views: Views | None, cfg: Methods, device: str = "cpu",
        prompts=None) -> tuple[dict, dict]:
    """Every enabled method's components for every draw; returns (arrays, attrs) for logits.zarr.

    Choices are made on each draw's val rows only (`Draw.q_val`, `Draw.y_val`); test components are
    computed afterwards from the chosen knobs, so test never influences a choice.
    """
    methods = [(REGISTRY[name], cfg.settings[name]) for name in cfg.enabled]
    for need, given, what in (("views", views, "augmented views (views.zarr)"),
                              ("prompts", prompts, "learned prompts (prompt@'s store)")):
        wanting = [m.name for m, c in methods if need in m.needs(c)]
        if given is None and wanting:
            raise InputError(f"methods {wanting} need {what} but none were given")
    inputs = Inputs(feats, views, device, prompts)
    semo = cfg.settings.get("semobridge")
    arrays, attrs = spectra(feats, semo.atol if semo else None)
    choices, checkpoints = {}, {}

    def put(method, key: str, draw: Draw | None, state, settings) -> None:
        fit = method.fit(inputs, draw, state, settings)
        if fit.choice:
            choices.setdefault(method.name, {})[key] = fit.choice
        if isinstance(fit, TrainedFit):   # written with the logits it produced, in one store write
            for name, value in fit.checkpoint.items():
                arrays[checkpoint_array(method.name, key, name)] = value.cpu().numpy()
            checkpoints[method.name] = {"params": fit.params, "arrays": sorted(fit.checkpoint)}
        for split in EVAL_SPLITS:
            for component, logits in fit.components(split).items():
                name = logits_array(method.name, key, component, split)
                arrays[name] = logits.cpu().numpy()
                if not np.isfinite(arrays[name]).all():
                    raise FloatingPointError(f"{method.name}: component '{name}' has NaN or inf values although "
                                             f"its inputs are finite (an overflowing sharpness knob?)")

    for split in EVAL_SPLITS:
        arrays[f"label/{split}"] = feats.label[inputs.rows[split]].astype(np.int32)
    put(REGISTRY["zeroshot"], ALL_DRAWS, None, None, None)   # always stored: the base of Tip and APE
    states = {m.name: m.setup(inputs, c) for m, c in methods}
    for key, spec in fewshot["draws"].items():
        draw = Draw(inputs, key, spec)
        for method, settings in methods:
            if method.per_draw:
                put(method, key, draw, states[method.name], settings)
        arrays[f"draw/{key}/val_index"] = draw.val_index.astype(np.int32)
    attrs.update({"choices": choices, "checkpoints": checkpoints, "methods": list(cfg.enabled),
                  "draws": list(fewshot["draws"]),
                  "shots": fewshot["shots"], "seeds": fewshot["seeds"], "val_protocol": fewshot["val"]})
    return arrays, attrs
