"""Zero-shot CLIP: image embeddings vs class prompt prototypes, at CLIP's logit scale 100 (METHODS.md §2.3)."""

from pipeline.methods.contract import Fit, Method
from pipeline.methods.cosine import zeroshot_logits


class ZeroShot(Method):
    name, label, per_draw = "zeroshot", "Zero-shot CLIP", False

    def fit(self, inputs, draw, state, cfg):
        return Fit({}, lambda s: {"logits": zeroshot_logits(inputs.query[s], inputs.protos, 100.0)})


METHOD = ZeroShot()
