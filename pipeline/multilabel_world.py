"""A multi-label demo world for RE-tune (METHODS.md §15.4): each image shows any subset of five object types,
and a caption states what is there and, sometimes, what is not ("no square"), so that a negative prompt
means something to a demo CLIP pre-trained on such captions.

Not wired into the DAG yet: the next step is a demo model that reads these captions (a fine-tuned entry like
the teacher, or a pre-training world) and a `prepare` kind that writes the label matrix.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.layout import SPLITS
from pipeline.shapes import COLOURS, IMAGE_SIZE, SHAPES, _camera, _draw_object

LABELS = ("circle", "square", "triangle", "star", "cross")   # the findings: present or absent
TEMPLATE = "a photo of {}."


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


def caption(scene: MultiScene, rng: np.random.Generator, mention_absent: float = 0.5) -> str:
    """"a photo of a red circle and a blue star, no square." : every present object with its colour, and each
    absent label stated as "no <label>" with probability `mention_absent`."""
    names = list(COLOURS)
    there = [f"a {names[c]} {label}" for label, c in zip(LABELS, scene.colours) if c is not None]
    absent = [f"no {label}" for label, c in zip(LABELS, scene.colours) if c is None and rng.random() < mention_absent]
    text = " and ".join(there) if there else "an empty background"
    return TEMPLATE.format(", ".join([text, *absent]))


def label_matrix(scenes: list[MultiScene]) -> np.ndarray:
    """(N, len(LABELS)) float32 presence matrix."""
    return np.array([s.present for s in scenes], np.float32).reshape(len(scenes), len(LABELS))
