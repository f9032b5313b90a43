"""model@{model}: build the zoo entry's weights into models/<model>/ (model.pt + card.json).

usage: python stages/model.py <model>
"""

import shutil
import sys

from common import model_dir, stage_params
from pipeline import demo, models, params, shapes

name = sys.argv[1]
cfg = params.model_entry(stage_params(f"model@{name}"), name)
train_data = None
if cfg["source"] == "demo":
    train_data = demo.render_split(cfg["data"]["seed"], "train", cfg["data"]["per_class"] * len(shapes.classnames()))
model = models.build(cfg, train_data)
out = model_dir(name)
tmp = out.with_name(out.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
models.save(model, cfg, tmp)
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
