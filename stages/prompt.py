"""prompt@{model}-{dataset}: CoOp, KDPL and KDPL-CA contexts per few-shot draw on cached views, distilled from
`distill.teacher` (pipeline/prompt_run.py) -> features/<model>/prompts/<dataset>.zarr (the contexts and the
class text features `adapt` scores), reports/prompt/<model>-<dataset>.json (metrics: base-to-novel base / novel /
HM per method and shot count, mean and std over seeds), .details.json (per seed, loss curves) and .svg.

usage: python stages/prompt.py <model> <dataset>
"""

import json
import shutil

from common import args, stage_params
from pipeline import config, features, layout, models, plots, prompt_inputs, prompt_run, runtime
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.prompt_learner import PromptLearner
from pipeline.store import write_store

model_name, dataset_name = args(__doc__, "model", "dataset")
p = stage_params(f"prompt@{model_name}-{dataset_name}")
cfg = prompt_run.config(p, dataset_name)
_, teacher_name = config.distill(p)
device = runtime.device()
student, teacher = models.load(layout.model_dir(model_name), device), models.load(layout.model_dir(teacher_name), device)
inputs = prompt_inputs.load(model_name, teacher, teacher_name, dataset_name, cfg, device)
learner = PromptLearner(student, cfg.n_ctx, cfg.ctx_init)
staging = layout.prompt_staging(model_name, dataset_name)
arrays, attrs, rows = prompt_run.run(learner, inputs, cfg, staging / "runs")
provenance = {**{k: student.card[k] for k in features.MODEL_KEYS}, "dataset": dataset_name,
              "manifest_sha256": inputs.fewshot["manifest_sha256"], "teacher": teacher_name,
              "teacher_checkpoint_sha256": teacher.card["checkpoint_sha256"]}
timeless = {k: {"loss": v["loss"]} for k, v in attrs["history"].items()}   # the same inputs give the same bytes
write_store(layout.prompt_store(model_name, dataset_name), staging / "store", provenance, arrays,
            {**attrs, "history": timeless, "teacher": teacher_name})
shutil.rmtree(staging / "runs", ignore_errors=True)   # finished: the store holds every context

out = layout.prompt_report(model_name, dataset_name)
metrics = prompt_run.summarise(rows)
atomic_write_json(out.with_name(out.name + ".json"), metrics)
atomic_write_json(out.with_name(out.name + ".details.json"), {"teacher": teacher_name, "runs": rows, **attrs})
atomic_write_text(out.with_name(out.name + ".svg"), plots.base_to_novel(
    metrics, f"Base-to-novel on {dataset_name} ({model_name}, teacher {teacher_name})"))
print(json.dumps(metrics, indent=1))
