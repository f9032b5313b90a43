"""model@{model}: build the zoo entry's weights into models/<model>/ (model.pt + card.json).

usage: python stages/model.py <model>
"""

import shutil

from common import args, stage_params
from pipeline import config, demo, layout, models, shapes

(name,) = args(__doc__, "model")
cfg = config.model(stage_params(f"model@{name}"), name, demo.DemoRecipe)
train_data = None
if cfg.source == "demo":
    train_data = demo.render_split(cfg.data_seed, "train", cfg.data_per_class * len(shapes.classnames()),
                                   cfg.data_world)
model = models.build(cfg, train_data)
out = layout.model_dir(name)
tmp = out.with_name(out.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
models.save(model, cfg, tmp)
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
