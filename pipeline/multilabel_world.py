"""A multi-label demo world for RE-tune (METHODS.md §15.4): each image shows any subset of five object types,
and a caption states some of what is there and, sometimes, what is not ("no square"), so that a negative prompt
means something to the demo CLIP fine-tuned on such captions (`pipeline.multilabel_demo`).

Captions must fit demo-clip's 16-token context (start and end tokens included; every word and punctuation mark
of this world is one token): clauses are shuffled and the last ones dropped until the caption fits, so a caption
never states something false but may leave things out (a truncated caption would lose its absences).
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.layout import SPLITS
from pipeline.shapes import COLOURS, IMAGE_SIZE, SHAPES, _camera, _draw_object

LABELS = ("circle", "square", "triangle", "star", "cross")   # the findings: present or absent
PREFIXES = ("", "a photo of ", "a picture of ", "an image of ")
BUDGET = 14   # tokens a caption may hold: demo-clip's context of 16 minus the start and end tokens


@dataclass(frozen=True)
class MultiScene:
    """What an image shows: per label, the colour index of its object, or None when absent."""
    colours: tuple[int | None, ...]

    @property
    def present(self) -> tuple[bool, ...]:
        return tuple(c is not None for c in self.colours)


def render(rng: np.random.Generator, p_present: float = 0.4, blur: float = 0.0) -> tuple[Image.Image, MultiScene]:
    """Noise, then each label's object with probability `p_present`, in a random colour and place."""
    noise = rng.normal(128, 30, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(noise, "RGB")
    colours = []
    for shape in LABELS:
        if rng.random() < p_present:
            colour = int(rng.integers(len(COLOURS)))
            _draw_object(img, colour * len(SHAPES) + SHAPES.index(shape), rng, (7, 13))
            colours.append(colour)
        else:
            colours.append(None)
    return _camera(img, blur), MultiScene(tuple(colours))


def sample(seed: int, split: str, index: int, p_present: float = 0.4, blur: float = 0.0
           ) -> tuple[Image.Image, MultiScene]:
    """Image `index` of `split`, from its own random stream (independent of the other worlds')."""
    return render(np.random.default_rng([seed, SPLITS.index(split), index, 2]), p_present, blur)


def caption(scene: MultiScene, rng: np.random.Generator, mention_absent: float = 0.5, colour: float = 0.5,
            budget: int = BUDGET) -> str:
    """"a photo of a red circle, no square, a star." : a random prefix (PREFIXES), then in random order each
    present object ("a star", its colour named with probability `colour`) and each absent label stated as
    "no <label>" with probability `mention_absent`; clauses beyond `budget` tokens are dropped."""
    names = list(COLOURS)
    clauses = [f"a {names[c]} {label}" if rng.random() < colour else f"a {label}"
               for label, c in zip(LABELS, scene.colours) if c is not None]
    clauses += [f"no {label}" for label, c in zip(LABELS, scene.colours) if c is None and rng.random() < mention_absent]
    prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
    kept, used = [], len(prefix.split()) + 1          # the final "."
    for clause in (clauses[i] for i in rng.permutation(len(clauses))):
        cost = len(clause.split()) + (1 if kept else 0)   # its words and the "," before it
        if used + cost > budget:
            break
        kept.append(clause)
        used += cost
    if clauses and not kept:
        raise ValueError(f"a caption budget of {budget} tokens holds no clause after {prefix!r}")
    return prefix + (", ".join(kept) if kept else "an empty background") + "."


def label_matrix(scenes: list[MultiScene]) -> np.ndarray:
    """(N, len(LABELS)) float32 presence matrix."""
    return np.array([s.present for s in scenes], np.float32).reshape(len(scenes), len(LABELS))
