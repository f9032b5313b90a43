"""prompt_transfer@{model}-{dataset}: the contexts each other few-shot dataset's prompt@ learned on all its
classes, scored on this dataset's test split with its own class names (cross-dataset; on the demo, scenes hold
the shapes' classes in another world: a domain shift) -> reports/prompt/<model>-<dataset>-transfer.json
(metrics: source -> zero-shot and method -> shots_K -> mean, std over seeds).

usage: python stages/prompt_transfer.py <model> <dataset>
"""

import json

from common import args, stage_params
from pipeline import features, layout, models, prompt_run, runtime
from pipeline.io import atomic_write_json
from pipeline.layout import SPLIT_CODES
from pipeline.prompt_learner import PromptLearner
from pipeline.store import open_store, read

model_name, target = args(__doc__, "model", "dataset")
p = stage_params(f"prompt_transfer@{model_name}-{target}")
cfg = prompt_run.config(p, target)
m = models.load(layout.model_dir(model_name), runtime.device())
dataset = json.loads((layout.data_dir(target) / "dataset.json").read_text())
f = features.load(layout.feature_dir(model_name, target), m.card, dataset)
test = f.split == SPLIT_CODES["test"]
learner = PromptLearner(m, cfg.n_ctx, cfg.ctx_init)
result = {}
for source in (s for s in p["fewshot_datasets"] if s != target):
    group = open_store(layout.prompt_store(model_name, source), {k: m.card[k] for k in features.MODEL_KEYS})
    contexts = {(method, key): read(group, f"all/{method}/{key}/ctx")
                for method in group.attrs["methods"] for key in group.attrs["draws"]}
    result[source] = prompt_run.transfer(learner, contexts, f.emb[test], f.label[test], dataset["classnames"])
out = layout.prompt_report(model_name, target)
atomic_write_json(out.with_name(out.name + "-transfer.json"), result)
print(json.dumps(result, indent=1))
