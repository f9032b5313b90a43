"""textset@{model}-{set} (and teacher_textset@{set}): one named text set through its template ->
features/<model>/textsets/<set>.zarr (pipeline/textsets.py).

usage: python stages/textset.py <model> <set>
Depends on `text_sets.<set>` only, so editing one set re-encodes that set alone; a killed run resumes.
"""

from common import ROOT, args, stage_params
from pipeline import config, layout, models, runtime, textsets

model_name, set_name = args(__doc__, "model", "set")
p = stage_params(f"textset@{model_name}-{set_name}", f"teacher_textset@{set_name}")
spec, precision = config.text_set(p, set_name), config.precision(p)
if spec.source == "demo":
    names = textsets.demo_vocabulary() + textsets.demo_distractors(spec.distractors)
else:
    names = textsets.read_names(ROOT / spec.source)
names = textsets.clean(names, f"text_sets.{set_name} ({spec.source})")
device = runtime.device()
m = models.load(layout.model_dir(model_name), device)
textsets.encode(m, names, spec.template, layout.textset_store(model_name, set_name),
                layout.textset_staging(model_name, set_name),
                textsets.provenance(m.card, precision, set_name, names, spec.template), device=device,
                precision=precision)
