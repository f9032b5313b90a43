"""Everything prompt learning reads for one (student, dataset), from the caches (METHODS.md §15.2.5).

Student: images.zarr (test features, labels), views.zarr (the draws' augmented views). Teacher: its
views.zarr of the same items (teacher_views@), its text-set store of KDPL-CA's candidates, and its class
text features, encoded here from the dataset's template (KDPL's TeacherPrompt: one fixed prompt per class,
36 prompts for the demo, so no store of its own).
"""

import json
from pathlib import Path

import numpy as np

from pipeline import draws, extract, features, layout, textsets, views
from pipeline.models import LoadedModel
from pipeline.prompt_run import PromptConfig, PromptInputs
from pipeline.store import open_store, read


def teacher_class_text(teacher: LoadedModel, classnames: list[str], template: str, device: str) -> np.ndarray:
    """(C, D_t) the teacher's projected features of `template.format(class)`."""
    pre = extract.encode_prompts(teacher, [template.format(c) for c in classnames], device, "fp32")
    return extract.project(pre, teacher.W_txt.to(pre.device)).cpu().numpy()


def load(student: str, teacher: LoadedModel, teacher_name: str, dataset_name: str, cfg: PromptConfig,
         device: str = "cpu", root: Path = layout.ROOT) -> PromptInputs:
    dataset = json.loads((layout.data_dir(dataset_name, root) / "dataset.json").read_text())
    card = json.loads((layout.model_dir(student, root) / "card.json").read_text())
    expect = features.expected(card, dataset)
    images = open_store(layout.feature_dir(student, dataset_name, root) / "images.zarr", expect)
    fewshot = draws.load(layout.fewshot_file(dataset_name, root), dataset["manifest_sha256"])
    student_views = views.load(layout.feature_dir(student, dataset_name, root) / "views.zarr", expect)
    teacher_views = views.load(layout.feature_dir(teacher_name, dataset_name, root) / "views.zarr",
                               features.expected(teacher.card, dataset))
    candidates, candidate_text = textsets.load(layout.textset_store(teacher_name, cfg.names, root),
                                               textsets.expected(teacher.card, cfg.names))
    return PromptInputs(
        classnames=list(dataset["classnames"]), item=read(images, "image/item"), label=read(images, "image/label"),
        split=read(images, "image/split"), emb=read(images, "image/emb"), views=student_views,
        teacher_views=teacher_views,
        teacher_text=teacher_class_text(teacher, dataset["classnames"], dataset["template"], device),
        candidates=candidates, candidate_text=candidate_text, fewshot=fewshot)

