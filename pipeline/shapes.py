"""The embedded `shapes` dataset: one coloured shape per 64x64 image, classes = colour x shape.

Deterministic: image i of a split is drawn from a numpy generator seeded by (seed, split, i), so any
subset can be regenerated identically and in any order.

`blur` is the camera: the demo CLIP pre-trains on sharp renders (blur 0) and the downstream `shapes`
dataset sees the same scenes through a blurrier camera (params `data.shapes.blur`). That domain shift is
what makes few-shot adaptation worth doing, as it is for a web-trained CLIP on satellite images:
without it the demo's text prototypes are already the best classifier its image features allow.
"""

import math

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


def render(label: int, rng: np.random.Generator, blur: float = 0.0) -> Image.Image:
    """Draw one image of class `label` with random position, size, rotation, colour jitter and noise,
    seen through a Gaussian camera blur of radius `blur` pixels."""
    colour = list(COLOURS.values())[label // len(SHAPES)]
    shape = SHAPES[label % len(SHAPES)]
    noise = rng.normal(128, 30, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(10, 22)
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
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else img


def sample(seed: int, split: str, index: int, blur: float = 0.0) -> tuple[Image.Image, int]:
    """Image `index` of `split` (labels cycle through the classes, so splits are balanced)."""
    n_classes = len(COLOURS) * len(SHAPES)
    label = index % n_classes
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    return render(label, rng, blur), label
