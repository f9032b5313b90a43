"""retune_model: build `retune.model` into models/<model>/ (model.pt + card.json) for RE-tune.

usage: python stages/retune_model.py <model>
A multi-label demo entry (data.world multilabel) is the demo CLIP fine-tuned from its `init` checkpoint on
captions that state absences (pipeline/multilabel_demo.py); a real CLIP entry is built as model@ would build it.
Its own script, so that editing RE-tune's training or metrics never re-runs the fine-tune.
"""

import shutil

from common import args, stage_params
from pipeline import config, demo, layout, models, multilabel_demo

(name,) = args(__doc__, "model")
p = stage_params("retune_model")
if multilabel_demo.is_entry(p, name):
    cfg = multilabel_demo.entry(p, name)
    init_card, init_state = models.checkpoint(layout.model_dir(cfg.model.init))
    model, losses = multilabel_demo.finetune(cfg, *multilabel_demo.render(cfg), init_state)
    print(f"fine-tune loss: first 10 steps {sum(losses[:10]) / 10:.3f}, last 10 {sum(losses[-10:]) / 10:.3f}")
    entry, init = cfg.model, {"name": cfg.model.init, "checkpoint_sha256": init_card["checkpoint_sha256"]}
else:   # pretrained, checkpoint, random; another demo world needs model@'s training data
    entry, init = config.model(p, name, demo.DemoRecipe), None
    if entry.source == "demo":
        raise SystemExit(f"model_zoo.{name}: a demo entry built by retune_model needs data.world multilabel")
    model = models.build(entry)
out = layout.model_dir(name)
tmp = out.with_name(out.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
models.save(model, entry, tmp, init)
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
