"""Seeded augmented views of the few-shot images, cached in views.zarr beside images.zarr.

Tip-Adapter and APE build each cache key from the mean of V augmented views (RandomResizedCrop with
area scale [0.5, 1], ratio [3/4, 4/3], bicubic, then a random horizontal flip; METHODS.md §7.1);
SeMoBridge appends augmented copies as extra shots (§4.5). Views are extracted once, for every train
image some draw uses, and shared by all draws, methods and fusion settings.

Store layout (rows follow `view/item`, sorted item ids):
    view/emb  (M, V, D)  projected, un-normalised embeddings of the V augmented views
    flip/emb  (M, D)     the test-time view, horizontally flipped (SeMoBridge's "+1 hflip" shot)
    view/item (M,)       manifest item ids
View v of item i is drawn from numpy's generator seeded with (seed, i, v): the same image gets the same
views whatever the draws, the batch order or the number of loader workers.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from pipeline.extract import ImageSource, _autocast, project
from pipeline.models import LoadedModel
from pipeline.config import ViewRecipe
from pipeline.store import StoreError, open_store, read, write_store

_RATIO = (3 / 4, 4 / 3)


def crop_box(rng: np.random.Generator, width: int, height: int, scale) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop, torchvision's rule with `rng` for the draws."""
    area = width * height
    log_ratio = (math.log(_RATIO[0]), math.log(_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height  # fallback: the whole image, cropped to the ratio bounds
    w, h = (width, int(round(width / _RATIO[0]))) if ratio < _RATIO[0] else (
        (int(round(height * _RATIO[1])), height) if ratio > _RATIO[1] else (width, height))
    return (height - h) // 2, (width - w) // 2, h, w


class ViewImages(Dataset):
    """Per item: (V + 1, 3, S, S) = V seeded augmented views, then the flipped test-time view."""

    def __init__(self, root: Path, paths: list[str], items: np.ndarray, recipe: ViewRecipe, card: dict,
                 preprocess):
        self.source, self.paths, self.items, self.recipe = ImageSource(root), paths, items, recipe
        cfg = card["preprocess"]
        size = cfg["size"]
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.interp = InterpolationMode(cfg.get("interpolation", "bicubic"))
        self.mean, self.std, self.preprocess = cfg["mean"], cfg["std"], preprocess

    def __len__(self):
        return len(self.paths)

    def view(self, img: Image.Image, item: int, v: int) -> torch.Tensor:
        rng = np.random.default_rng([self.recipe.seed, int(item), v])
        top, left, h, w = crop_box(rng, img.width, img.height, self.recipe.scale)
        out = TF.resized_crop(img, top, left, h, w, self.size, self.interp)
        if self.recipe.flip and rng.random() < 0.5:
            out = TF.hflip(out)
        return TF.normalize(TF.to_tensor(out), self.mean, self.std)

    def __getitem__(self, i):
        img = self.source.open(self.paths[i])
        views = [self.view(img, self.items[i], v) for v in range(self.recipe.n_views)]
        return torch.stack(views + [self.preprocess(TF.hflip(img))])


def extract_views(m: LoadedModel, manifest: pd.DataFrame, items: np.ndarray, root: Path, dest: Path,
                  staging: Path, provenance: dict, recipe: ViewRecipe, *, batch_size: int = 64,
                  workers: int = 2, device: str = "cpu", precision: str = "fp32", progress: bool = True) -> None:
    """Embed the views of `items` (manifest item ids) and write views.zarr at `dest` (via `staging`)."""
    by_item = manifest.set_index("item")
    missing = np.setdiff1d(items, by_item.index.to_numpy())
    if missing.size:
        raise StoreError(f"{missing.size} item ids are not in the manifest (first {missing[:5].tolist()})")
    data = ViewImages(root, by_item.loc[items, "path"].tolist(), items, recipe, m.card, m.preprocess)
    per_batch = max(1, batch_size // (recipe.n_views + 1))
    loader = DataLoader(data, batch_size=per_batch, num_workers=workers, shuffle=False)
    embs = []
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"views {dest.parent.name}", unit="batch", disable=not progress):
            b, v1 = batch.shape[:2]
            with _autocast(device, precision):
                pre = m.trunk.encode_image(batch.flatten(0, 1).to(device))
            embs.append(project(pre.float(), m.W_img, m.b_img).cpu().reshape(b, v1, -1))
    emb = torch.cat(embs).numpy().astype(np.float32)
    if not np.isfinite(emb).all():
        raise StoreError(f"view embeddings for {dest} contain NaN or inf")
    write_store(dest, staging, {**provenance, "views": asdict(recipe)},
                {"view/emb": emb[:, :-1], "flip/emb": emb[:, -1], "view/item": items.astype(np.int64)})


@dataclass
class Views:
    item: np.ndarray   # (M,) sorted item ids
    emb: np.ndarray    # (M, V, D)
    flip: np.ndarray   # (M, D)
    recipe: dict


def load(path: Path, expect: dict) -> Views:
    """Read a complete views.zarr whose provenance matches `expect` (model keys, manifest digest)."""
    group = open_store(path, expect)
    emb, flip = read(group, "view/emb"), read(group, "flip/emb")
    for name, arr in (("view/emb", emb), ("flip/emb", flip)):
        if not np.isfinite(arr).all():
            raise StoreError(f"{path}: '{name}' has NaN or inf values")
    prov = dict(group.attrs["provenance"])
    return Views(item=read(group, "view/item"), emb=emb, flip=flip, recipe=prov["views"])
