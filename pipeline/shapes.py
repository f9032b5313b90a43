"""The embedded `shapes` dataset: one coloured shape per 64x64 image, classes = colour x shape.

Deterministic: image i of a split is drawn from a numpy generator seeded by (seed, split, i), so any
subset can be regenerated identically and in any order.

`blur` is the camera: the demo CLIP pre-trains on sharp renders (blur 0) and the downstream `shapes`
dataset sees the same scenes through a blurrier camera (params `data.shapes.blur`). That domain shift is
what makes few-shot adaptation worth doing, as it is for a web-trained CLIP on satellite images:
without it the demo's text prototypes are already the best classifier its image features allow.

The `scenes` world adds an information imbalance (DESIGN.md §6): each image holds the class object plus
nuisances, a background tint and a small second object of random colour and shape, and a pre-training
caption names the class object always but each nuisance only with probability `mention`. Captions then
describe less than images show, which is the account SAM-CZSL and Cross-the-Gap give of the modality gap.
"""

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.layout import SPLITS

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
TEMPLATE = "a photo of a {}."
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a {} on a noisy background.",
    "an image of a {}.",
    "a drawing of a {}.",
)
IMAGE_SIZE = 64


def classnames() -> list[str]:
    """All colour x shape class names, label order."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def primitives() -> dict:
    """Each class as an (attribute, object) pair, for compositional zero-shot: attribute = colour, object = shape,
    `pairs[label]` = [attribute index, object index]."""
    return {"attrs": list(COLOURS), "objs": list(SHAPES),
            "pairs": [[label // len(SHAPES), label % len(SHAPES)] for label in range(len(COLOURS) * len(SHAPES))]}


def _polygon(cx, cy, radius, n, rotation, inner=None):
    pts = []
    step = math.pi / n if inner else 2 * math.pi / n
    for k in range(2 * n if inner else n):
        r = inner * radius if inner and k % 2 else radius
        a = rotation + k * step
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _cross(cx, cy, radius, rotation):
    arm = radius * 0.35
    outline = [(-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm), (arm, arm),
               (arm, radius), (-arm, radius), (-arm, arm), (-radius, arm), (-radius, -arm), (-arm, -arm)]
    c, s = math.cos(rotation), math.sin(rotation)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in outline]


def _draw_object(img: Image.Image, label: int, rng: np.random.Generator, radius_range: tuple[float, float]) -> None:
    """Draw a class-`label` object (colour x shape) at a random position, size, rotation and colour jitter."""
    colour = list(COLOURS.values())[label // len(SHAPES)]
    shape = SHAPES[label % len(SHAPES)]
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(*radius_range)
    cx, cy = rng.uniform(radius, IMAGE_SIZE - radius, size=2)
    rotation = rng.uniform(0, 2 * math.pi)
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in colour)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(3, int(radius / 3)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, radius, 4, rotation), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, radius, 3, rotation), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, radius, 5, rotation, inner=0.45), fill=fill)
    else:
        draw.polygon(_cross(cx, cy, radius, rotation), fill=fill)


def _camera(img: Image.Image, blur: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else img


def render(label: int, rng: np.random.Generator, blur: float = 0.0) -> Image.Image:
    """Draw one image of class `label` with random position, size, rotation, colour jitter and noise,
    seen through a Gaussian camera blur of radius `blur` pixels."""
    noise = rng.normal(128, 30, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(noise, "RGB")
    _draw_object(img, label, rng, (10, 22))
    return _camera(img, blur)


@dataclass(frozen=True)
class Scene:
    """What a `scenes` image shows: the class object, a background tint and a small second object."""
    label: int
    tint: int       # index into COLOURS
    small: int      # class index (colour x shape) of the small object


def render_scene(label: int, rng: np.random.Generator, blur: float = 0.0) -> tuple[Image.Image, Scene]:
    """A `scenes` image of class `label`: noise tinted towards a random colour, the class object, and a small
    object of random class drawn over it."""
    tint, small = int(rng.integers(len(COLOURS))), int(rng.integers(len(COLOURS) * len(SHAPES)))
    noise = rng.normal(128, 30, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    background = 0.6 * noise + 0.4 * np.array(list(COLOURS.values())[tint])
    img = Image.fromarray(background.clip(0, 255).astype(np.uint8), "RGB")
    _draw_object(img, label, rng, (12, 22))
    _draw_object(img, small, rng, (5, 8))
    return _camera(img, blur), Scene(label, tint, small)


def describe(scene: Scene, mention_small: bool, mention_tint: bool) -> str:
    """What a pre-training caption says, for a CAPTION_TEMPLATES slot: "red square[ and a yellow star][ on blue]"
    (the class object first, as every caption of the plain `shapes` world names it alone)."""
    text = classnames()[scene.label]
    if mention_small:
        text += f" and a {classnames()[scene.small]}"
    if mention_tint:
        text += f" on {list(COLOURS)[scene.tint]}"
    return text


def sample(seed: int, split: str, index: int, blur: float = 0.0) -> tuple[Image.Image, int]:
    """Image `index` of `split` (labels cycle through the classes, so splits are balanced)."""
    n_classes = len(COLOURS) * len(SHAPES)
    label = index % n_classes
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    return render(label, rng, blur), label


def sample_scene(seed: int, split: str, index: int, blur: float = 0.0) -> tuple[Image.Image, Scene]:
    """Scene `index` of `split`, balanced over classes like `sample` (its own random stream)."""
    label = index % (len(COLOURS) * len(SHAPES))
    return render_scene(label, np.random.default_rng([seed, SPLITS.index(split), index, 1]), blur)
