"""CoOp, KDPL and KDPL-CA in `adapt`: each draw's learned context, trained by `prompt@` (pipeline/prompt_run.py)
because the text tower runs in its loop, gives class text features cached in the prompt store; here they are
scored like zero-shot prompts, 100 * cos(image, class text) (METHODS.md §15.2.4: the last epoch's context)."""

from pathlib import Path

import numpy as np

from pipeline.methods.contract import Fit, Method
from pipeline.methods.cosine import normalize, zeroshot_logits
from pipeline.store import StoreError, open_store, read


class PromptStore:
    """A finished prompt@ store (`pipeline.layout.prompt_store`): per method and draw, the learned context
    and the class text features."""

    def __init__(self, path: Path, expect: dict):
        self.path, self.group = Path(path), open_store(path, expect)

    def text(self, method: str, key: str) -> np.ndarray:
        """(C, D) class text features of `method`'s context learned on draw `key` (protocol "all")."""
        name = f"all/{method}/{key}/text"
        if name not in self.group:
            raise StoreError(f"{self.path} has no '{name}': list {method!r} in params.yaml 'prompt.methods' and "
                             f"re-run the prompt@ stage")
        return read(self.group, name)


class LearnedPrompts(Method):
    def __init__(self, name: str, label: str):
        self.name, self.label = name, label

    def needs(self, cfg):
        return {"prompts"}

    def fit(self, inputs, draw, state, cfg):
        text = normalize(inputs.tensor(inputs.prompts.text(self.name, draw.key)))
        return Fit({}, lambda s: {"logits": zeroshot_logits(inputs.query[s], text, 100.0)})


COOP, KDPL, KDPL_CA = LearnedPrompts("coop", "CoOp"), LearnedPrompts("kdpl", "KDPL"), LearnedPrompts("kdpl_ca", "KDPL-CA")
