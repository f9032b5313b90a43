"""The method contract: what a method declares, and what `adapt`, `fuse` and `report` do with it.

A method is one module under `pipeline/methods/` that ends with `METHOD = <a Method subclass>()`, listed
once in `pipeline.methods.REGISTRY`. It declares:

    name, label     its key in params.yaml / logits.zarr / metrics.json, and its name in reports
    block           the `methods.<block>` params section it reads (None: no params); `config` validates it
    needs(cfg)      cached inputs beyond images.zarr + text.zarr + the draws: "views" (views.zarr)
    per_draw        False for methods that use no shots (zero-shot): one fit, stored under key "all"
    setup/fit       `setup` once per store (e.g. a projector); `fit` once per draw: it chooses the knobs
                    inside exp() on the draw's val rows only and returns the chosen knobs (`Fit.choice`,
                    recorded in logits.zarr) and a function split -> component logits
    weights         the linear weights `fuse` searches, name -> domain; one component per weight, named
                    like it. A method without weights has one component, "logits"
    base            True: fused logits = zero-shot logits + sum_w weight_w * component_w (Tip, APE)
    knobs           which of `Fit.choice` the summary shows
    measured        which of `Fit.choice` are measurements (seconds), not choices: they vary run to run

logits.zarr holds `<name>/<draw key>/<component>/{val,test}` (N, C) arrays (`pipeline.layout.logits_array`),
so fuse pairs weights with components by name, never by position. `pipeline.adapt.Inputs` and `Draw`
are what `setup` and `fit` receive.

Methods that train on cached features alone (SeMoBridge-T) train inside `fit` and record their best step
and seconds in `Fit.choice`. Methods that run the network (OTI/OVI, and the prompt learners, whose text
tower is in the loop) run in a stage of their own that writes a cached store; their `needs` names it
("prompts": `prompt@`'s store), `adapt` lists it as a dep and hands it over in `Inputs`, and `fit` reads it
like the views.
"""

from dataclasses import dataclass
from typing import Callable

import torch

EVAL_SPLITS = ("val", "test")
INPUTS = ("views", "prompts")


@dataclass
class Fit:
    choice: dict                                             # knobs chosen on val; {} when nothing is chosen
    components: Callable[[str], dict[str, torch.Tensor]]     # split -> {component: (N, C) logits}


class Method:
    name: str = ""
    label: str = ""
    block: str | None = None
    per_draw: bool = True
    base: bool = False
    weights: dict[str, tuple[float, float]] = {}
    knobs: tuple[str, ...] = ()
    measured: tuple[str, ...] = ()

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(self.weights) or ("logits",)

    def config(self, section: dict | None, where: str, arch: str):
        """This method's frozen settings from its params block (merged with the dataset's overrides)."""
        return None

    def needs(self, cfg) -> set[str]:
        """Cached inputs (from INPUTS) this configuration reads."""
        return set()

    def setup(self, inputs, cfg):
        """Whatever the draws share (projectors, trial rows); computed once per store."""
        return None

    def fit(self, inputs, draw, state, cfg) -> Fit:
        """`inputs`: a `pipeline.adapt.Inputs`; `draw`: a `pipeline.adapt.Draw` (None when not per_draw)."""
        raise NotImplementedError
