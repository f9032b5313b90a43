"""prompt@{model}-{dataset}: CoOp, KDPL and KDPL-CA contexts for every few-shot draw, and the base-to-novel
protocol, on cached views (METHODS.md §15.2; the learner is `pipeline.prompt_learner`, the loop
`pipeline.prompt_train`).

Per draw (shots K, seed S) and method, two contexts are learned, both seeded with S:
- "all": on the draw's shots of every class. Its class text features are stored; `adapt` scores them like
  any method (`pipeline.methods.prompts`), so CoOp and KDPL join logits.zarr, the fusion and the report.
- "base_to_novel" (for the shot counts in `prompt.base_to_novel.shots`): on the shots of the base classes
  only, the first ceil(C / 2) in label order (`OxfordPets.subsample_classes`); scored on the base classes'
  test images against the base names and on the novel classes' against the novel names, HM = 2BN / (B + N).
KDPL's teacher sees the same views (its own views.zarr of the same items and recipe) and scores the same class
names in the dataset's template (KDPL's TeacherPrompt); KDPL-CA's candidates are a text set's names, the
teacher's features from its text-set store. Labels reach CoOp only.
"""

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import draws as drawlib
from pipeline.config import ParamsError, merged_block, names, need
from pipeline.layout import SPLIT_CODES, parse_draw_key
from pipeline.prompt_learner import PromptError, PromptLearner, class_features
from pipeline.prompt_train import PromptTrainConfig, train

METHODS = ("coop", "kdpl", "kdpl_ca")
LABELS = {"zeroshot": "Zero-shot CLIP", "coop": "CoOp", "kdpl": "KDPL", "kdpl_ca": "KDPL-CA"}
SHARED = tuple(f.name for f in fields(PromptTrainConfig) if f.name not in ("method", "top_k", "seed"))


@dataclass(frozen=True)
class PromptConfig:
    methods: tuple[str, ...]
    n_ctx: int
    ctx_init: str
    train: dict                  # the PromptTrainConfig fields every method shares
    names: str                   # KDPL-CA's candidate text set
    top_k: int                   # KDPL-CA's K
    b2n_shots: tuple[int, ...]   # shot counts that also run base-to-novel (may be empty)

    def run_config(self, method: str, seed: int) -> PromptTrainConfig:
        return PromptTrainConfig(method="coop" if method == "coop" else "kdpl",
                                 top_k=self.top_k if method == "kdpl_ca" else None, seed=seed, **self.train)


def config(params: dict, dataset: str) -> PromptConfig:
    """Validated `prompt` with `prompt.overrides.<dataset>` merged over each block."""
    section = need(params, "prompt", dict, "")
    train_block, where = merged_block(section, "prompt", "train", dataset)
    unknown = set(train_block) - set(SHARED)
    if unknown:
        raise ParamsError(f"params.yaml: '{where}' has unknown keys {sorted(unknown)}; known: {list(SHARED)}")
    try:
        PromptTrainConfig(**train_block)
    except (PromptError, TypeError) as exc:
        raise ParamsError(f"params.yaml: '{where}': {exc}") from None
    ca, where_ca = merged_block(section, "prompt", "kdpl_ca", dataset)
    b2n, where_b2n = merged_block(section, "prompt", "base_to_novel", dataset)
    shots = need(b2n, "shots", list, where_b2n)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in shots):
        raise ParamsError(f"params.yaml: '{where_b2n}.shots' = {shots!r} should be a list of shot counts")
    return PromptConfig(names(section, "methods", "prompt", METHODS), need(section, "n_ctx", int, "prompt", minimum=1),
                        need(section, "ctx_init", str, "prompt"), dict(train_block),
                        need(ca, "names", str, where_ca), need(ca, "top_k", int, where_ca, minimum=1), tuple(shots))


@dataclass
class PromptInputs:
    """One (model, dataset)'s cached arrays for prompt learning."""
    classnames: list[str]
    item: np.ndarray             # (N,) the student's image store rows
    label: np.ndarray
    split: np.ndarray
    emb: np.ndarray              # (N, D) student image features
    views: object                # pipeline.views.Views, the student's
    teacher_views: object        # the teacher's, same items and recipe
    teacher_text: np.ndarray     # (C, D_t) the teacher's class prompts
    candidates: list[str]        # KDPL-CA's names
    candidate_text: np.ndarray   # (K0, D_t) the teacher's features of them
    fewshot: dict

    def __post_init__(self):
        if not np.array_equal(self.views.item, self.teacher_views.item) or \
                self.views.recipe != self.teacher_views.recipe:
            raise PromptError("the student's and the teacher's views.zarr hold different items or view recipes: "
                              "re-run views@ and teacher_views@ from the same draws and `views` params")
        if len(self.teacher_text) != len(self.classnames):
            raise PromptError(f"the teacher has {len(self.teacher_text)} class text features, the dataset "
                              f"{len(self.classnames)} classes: teacher and student must share the class list")


def n_base(num_classes: int) -> int:
    """Base classes of base-to-novel: the first ceil(C / 2) labels."""
    return math.ceil(num_classes / 2)


def accuracy(image: np.ndarray, text: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 (%) of argmax cosine(image, class text) against labels (indices into `text`)."""
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    return round(100.0 * float(((image @ text.T).argmax(1) == labels).mean()), 4)


def harmonic(base: float, novel: float) -> float:
    return round(2 * base * novel / (base + novel), 4) if base + novel > 0 else 0.0


def base_novel_scores(learner: PromptLearner, ctx, inputs: PromptInputs) -> dict:
    """{"base", "novel", "hm"} test accuracy (%) of a context under the base-to-novel protocol."""
    test = inputs.split == SPLIT_CODES["test"]
    b, out = n_base(len(inputs.classnames)), {}
    for part, names_, keep, offset in (("base", inputs.classnames[:b], test & (inputs.label < b), 0),
                                       ("novel", inputs.classnames[b:], test & (inputs.label >= b), b)):
        out[part] = accuracy(inputs.emb[keep], class_features(learner, ctx, names_), inputs.label[keep] - offset)
    return {**out, "hm": harmonic(out["base"], out["novel"])}


def views_accuracy(learner: PromptLearner, inputs: PromptInputs) -> dict:
    """Zero-shot top-1 (%) of the student (the init context) and of the teacher (its class prompts) on every
    cached training view: how much better the distribution KDPL distils is than the student's own."""
    labels = np.repeat(inputs.label[drawlib.rows_of(inputs.item, inputs.views.item)], inputs.views.emb.shape[1])
    flat = lambda v: v.emb.reshape(-1, v.emb.shape[-1])
    return {"student": accuracy(flat(inputs.views), class_features(learner, learner.init_ctx, inputs.classnames),
                                labels),
            "teacher": accuracy(flat(inputs.teacher_views), inputs.teacher_text, labels)}


def _fit(learner: PromptLearner, cfg: PromptConfig, method: str, seed: int, inputs: PromptInputs,
         rows: np.ndarray, classes: int, checkpoint: Path):
    """Learn one context on the draw's store rows `rows` whose labels are < `classes`."""
    items = inputs.item[rows]
    sv = inputs.views.emb[drawlib.rows_of(inputs.views.item, items)]
    tv = inputs.teacher_views.emb[drawlib.rows_of(inputs.teacher_views.item, items)]
    if method == "kdpl_ca":
        names_, teacher_text = inputs.candidates, inputs.candidate_text
    else:
        names_, teacher_text = inputs.classnames[:classes], inputs.teacher_text[:classes]
    return train(learner, cfg.run_config(method, seed), names_, sv, labels=inputs.label[rows],
                 teacher_views=tv, teacher_text=teacher_text, checkpoint=checkpoint, progress=False)


def run(learner: PromptLearner, inputs: PromptInputs, cfg: PromptConfig, runs_dir: Path,
        progress: bool = True) -> tuple[dict, dict, list[dict]]:
    """(arrays for the prompt store, attrs, base-to-novel rows). Each run checkpoints under `runs_dir`, so a
    killed stage resumes where it stopped."""
    C, b = len(inputs.classnames), n_base(len(inputs.classnames))
    jobs = [(key, m, "all") for key in inputs.fewshot["draws"] for m in cfg.methods]
    jobs += [(key, m, "base_to_novel") for key in inputs.fewshot["draws"] for m in cfg.methods
             if parse_draw_key(key)[0] in cfg.b2n_shots]
    arrays, history, rows_b2n = {}, {}, []
    zero = base_novel_scores(learner, learner.init_ctx, inputs)
    rows_b2n.append({"method": "zeroshot", "shots": 0, "seed": 0, **zero})
    for key, method, protocol in tqdm(jobs, desc="prompt runs", unit="run", disable=not progress):
        shots, seed = parse_draw_key(key)
        rows = drawlib.rows_of(inputs.item, inputs.fewshot["draws"][key]["train"])
        classes = C if protocol == "all" else b
        rows = rows[inputs.label[rows] < classes]
        start = time.perf_counter()
        learned = _fit(learner, cfg, method, seed, inputs, rows, classes, runs_dir / f"{protocol}-{method}-{key}.pt")
        seconds = round(time.perf_counter() - start, 2)
        history[f"{protocol}/{method}/{key}"] = {"loss": [round(x, 5) for x in learned.history], "seconds": seconds}
        arrays[f"{protocol}/{method}/{key}/ctx"] = learned.ctx
        if protocol == "all":
            arrays[f"{protocol}/{method}/{key}/text"] = class_features(learner, learned.ctx, inputs.classnames)
        else:
            rows_b2n.append({"method": method, "shots": shots, "seed": seed, **base_novel_scores(learner, learned.ctx,
                                                                                                  inputs)})
    attrs = {"methods": list(cfg.methods), "draws": list(inputs.fewshot["draws"]), "n_base": b,
             "views_accuracy": views_accuracy(learner, inputs),
             "settings": {m: {**asdict(cfg.run_config(m, 0)), "seed": "the draw's", "n_ctx": cfg.n_ctx,
                              "ctx_init": cfg.ctx_init} for m in cfg.methods},
             "candidates": {"text_set": cfg.names, "n_names": len(inputs.candidates)}, "history": history}
    return arrays, attrs, rows_b2n


def summarise(rows: list[dict]) -> dict:
    """Base-to-novel rows -> metrics: zeroshot {base, novel, hm}; method -> shots_K -> part -> mean, std."""
    out = {}
    for row in rows:
        if row["method"] == "zeroshot":
            out["zeroshot"] = {k: row[k] for k in ("base", "novel", "hm")}
    groups = {}
    for row in rows:
        if row["method"] != "zeroshot":
            groups.setdefault(row["method"], {}).setdefault(row["shots"], []).append(row)
    for method, by_shots in groups.items():
        for shots, runs in sorted(by_shots.items()):
            out.setdefault(method, {})[f"shots_{shots}"] = {
                part: {"mean": round(float(np.mean([r[part] for r in runs])), 4),
                       "std": round(float(np.std([r[part] for r in runs])), 4)} for part in ("base", "novel", "hm")}
    return out


def transfer(learner: PromptLearner, contexts: dict[tuple[str, str], np.ndarray], emb: np.ndarray,
             labels: np.ndarray, classnames: list[str]) -> dict:
    """Cross-dataset / domain shift: contexts {(method, draw key): (n_ctx, width)} learned on a source (protocol
    "all") scored on a target's test features with the target's class names -> zeroshot (the init context,
    %) and method -> shots_K -> mean, std (%) over seeds."""
    out, by = {"zeroshot": accuracy(emb, class_features(learner, learner.init_ctx, classnames), labels)}, {}
    for (method, key), ctx in contexts.items():
        by.setdefault(method, {}).setdefault(parse_draw_key(key)[0], []).append(
            accuracy(emb, class_features(learner, ctx, classnames), labels))
    for method, per_shots in by.items():
        out[method] = {f"shots_{k}": {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4)}
                       for k, v in sorted(per_shots.items())}
    return out
