"""adapt@{model}-{dataset}: every method's component logits on val and test per (shot, seed)
-> logits/<model>/<dataset>/logits.zarr (layout and what is chosen here: pipeline/adapt.py).

usage: python stages/adapt.py <model> <dataset>
"""

import json

from common import args, stage_params
from pipeline import adapt, config, draws, features, layout, runtime, views
from pipeline.methods import REGISTRY
from pipeline.methods.prompts import PromptStore
from pipeline.store import write_store

model_name, dataset_name = args(__doc__, "model", "dataset")
card = json.loads((layout.model_dir(model_name) / "card.json").read_text())
cfg = config.methods(stage_params(f"adapt@{model_name}-{dataset_name}"), card["arch"], dataset_name, REGISTRY)
dataset = json.loads((layout.data_dir(dataset_name) / "dataset.json").read_text())
fdir = layout.feature_dir(model_name, dataset_name)
feats = features.load(fdir, card, dataset)
fewshot = draws.load(layout.fewshot_file(dataset_name), feats.provenance["manifest_sha256"])
expect = {**{k: card[k] for k in features.MODEL_KEYS}, "manifest_sha256": dataset["manifest_sha256"]}
cached_views = views.load(fdir / "views.zarr", expect)
wants_prompts = any("prompts" in REGISTRY[m].needs(cfg.settings[m]) for m in cfg.enabled)
prompts = PromptStore(layout.prompt_store(model_name, dataset_name), expect) if wants_prompts else None
arrays, attrs = adapt.run(feats, fewshot, cached_views, cfg, runtime.device(), prompts)
write_store(layout.logits_store(model_name, dataset_name), layout.logits_staging(model_name, dataset_name),
            {**feats.provenance, "fewshot_manifest_sha256": fewshot["manifest_sha256"]},
            arrays, {**attrs, "views": cached_views.recipe})
