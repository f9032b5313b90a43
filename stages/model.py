"""model@{model} (and `teacher`): build the zoo entry's weights into models/<model>/ (model.pt + card.json).

usage: python stages/model.py <model>
A demo entry with `init: <zoo entry>` starts from that model's checkpoint (the demo teacher).
"""

import shutil

from common import args, stage_params
from pipeline import config, demo, layout, models, shapes

(name,) = args(__doc__, "model")
cfg = config.model(stage_params(f"model@{name}", "teacher"), name, demo.DemoRecipe)
train_data, init_card, init_state = None, None, None
if cfg.source == "demo":
    train_data = demo.render_split(cfg.data_seed, "train", cfg.data_per_class * len(shapes.classnames()),
                                   cfg.data_world, cfg.data_blur)
    if cfg.init:
        init_card, init_state = models.checkpoint(layout.model_dir(cfg.init))
model = models.build(cfg, train_data, init=init_state)
out = layout.model_dir(name)
tmp = out.with_name(out.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
models.save(model, cfg, tmp, {"name": cfg.init, "checkpoint_sha256": init_card["checkpoint_sha256"]} if cfg.init else None)
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
