"""Run a loaded CLIP over a manifest's images and prompts, streaming features into Zarr stores.

Batches never cross a shard boundary, so a resumed run computes exactly the batches an uninterrupted
run would have, and the two stores end bit-identical.
"""

import io
import os
import tarfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from open_clip.transformer import VisionTransformer

from pipeline.distributed import World
from pipeline.layout import SPLIT_CODES
from pipeline.models import LoadedModel
from pipeline.store import SHARD_ROWS, ShardedWriter, write_store

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}   # keys: config.PRECISIONS
TOKEN_DTYPES = {"fp32": "float32", "fp16": "float16"}                    # image/tokens storage: config.TOKEN_PRECISIONS


class ImageSource:
    """Opens a manifest's images as RGB: files under `root`, or members of uncompressed tar shards, whose
    manifest path is `<shard>.tar::<member>` (pipeline/webdataset_datasets.py), read at their offset without
    unpacking. Each process keeps one shard open with its member index: DataLoader workers read whole
    batches in manifest order, so they move from shard to shard, and a forked worker must not share its
    parent's file offset."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._reset()

    def _reset(self):
        self._pid, self._shard, self._file, self._index = os.getpid(), None, None, {}

    def __getstate__(self):   # spawned workers open their own shard
        return {"root": self.root}

    def __setstate__(self, state):
        self.root = state["root"]
        self._reset()

    def open(self, path: str) -> Image.Image:
        shard, sep, member = path.partition(".tar::")
        try:
            if not sep:
                with Image.open(self.root / path) as img:
                    return img.convert("RGB")
            with Image.open(io.BytesIO(self._member(self.root / (shard + ".tar"), member))) as img:
                return img.convert("RGB")
        except Exception as exc:
            raise RuntimeError(f"cannot decode image {self.root / path}: {exc}") from exc

    def _member(self, shard: Path, member: str) -> bytes:
        if self._pid != os.getpid():
            self._reset()
        if shard != self._shard:
            if self._file is not None:
                self._file.close()
            self._shard, self._file, self._index = None, None, _member_index(shard)
            self._shard, self._file = shard, open(shard, "rb")
        if member not in self._index:
            raise ValueError(f"no member '{member}' in {shard} (truncated, or rewritten since prepare)")
        offset, size = self._index[member]
        self._file.seek(offset)
        data = self._file.read(size)
        if len(data) != size:
            raise ValueError(f"{shard} is truncated: member '{member}' has {len(data)} of {size} bytes")
        return data


def _member_index(shard: Path) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of a tar shard, from its headers."""
    index = {}
    with tarfile.open(shard, "r:") as tar:
        try:
            for m in tar:
                index[m.name] = (m.offset_data, m.size)
        except tarfile.ReadError:   # cut short: the members before the cut stay readable
            pass
    return index


class ImageFiles(Dataset):
    """Decoded, preprocessed images of a manifest, in manifest order."""

    def __init__(self, root: Path, paths: list[str], preprocess):
        self.source, self.paths, self.preprocess = ImageSource(root), paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.preprocess(self.source.open(self.paths[i]))


def _autocast(device: str, precision: str):
    if precision not in DTYPES:
        raise ValueError(f"precision '{precision}' is not one of {sorted(DTYPES)}")
    dtype = DTYPES[precision]
    return nullcontext() if dtype is None else torch.autocast(device_type=device, dtype=dtype)


def project(pre: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Projected embedding from a pre-projection feature, in fp32 (the store's emb == pre @ W exactly)."""
    out = pre.float() @ W.to(pre.device)
    return out if b is None else out + b.to(pre.device)


def check_token_tower(m: LoadedModel) -> int:
    """The number of output tokens (CLS + patches) of a ViT tower whose tokens pass ln_post, as its CLS does."""
    visual = m.trunk.visual
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"patch tokens need a ViT vision tower; this model ({m.card['arch']}) has "
                         f"{type(visual).__name__}: remove this dataset from extract.tokens")
    if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type != "tok":
        raise ValueError(f"patch tokens are cached for CLS-pooled ViTs only ({m.card['arch']} pools otherwise)")
    return visual.positional_embedding.shape[0]


def encode_with_tokens(m: LoadedModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-projection CLS (B, d_v) and projected output tokens (B, L+1, D), CLS first (it equals image/emb)."""
    visual = m.trunk.visual
    visual.output_tokens = True
    try:
        pre, patches = visual(images)
    finally:
        visual.output_tokens = False
    return pre, project(torch.cat([pre[:, None], patches], dim=1), m.W_img, m.b_img)


def image_store_layout(m: LoadedModel, manifest: pd.DataFrame, tokens: str | None = None) -> tuple[dict, dict]:
    """Row arrays and small arrays of an images.zarr store (with `tokens`, image/tokens stored at that precision)."""
    n, d_v, D = len(manifest), m.W_img.shape[0], m.W_img.shape[1]
    rows = {"image/pre": ((n, d_v), "float32"), "image/emb": ((n, D), "float32")}
    if tokens is not None:
        rows["image/tokens"] = ((n, check_token_tower(m), D), TOKEN_DTYPES[tokens])
    small = {
        "image/label": manifest["label"].to_numpy(np.int32),
        "image/split": manifest["split"].map(SPLIT_CODES).to_numpy(np.int8),
        "image/item": manifest["item"].to_numpy(np.int64),
        "model/W_img": m.W_img.numpy().astype(np.float32),
        "model/W_txt": m.W_txt.numpy().astype(np.float32),
        "model/logit_scale": np.array([m.logit_scale], np.float32),
    }
    if m.b_img is not None:
        small["model/b_img"] = m.b_img.numpy().astype(np.float32)
    return rows, small


def _shard_batches(writer: ShardedWriter, shards: list[int], batch_size: int) -> list[list[int]]:
    batches = []
    for shard in shards:
        start, stop = writer.shard_range(shard)
        batches += [list(range(i, min(i + batch_size, stop))) for i in range(start, stop, batch_size)]
    return batches


def _open_writer(world: World, staging: Path, provenance: dict, rows: dict, small: dict,
                 shard_rows: int) -> ShardedWriter:
    """Rank 0 creates (or resumes) the staging store at its final size; the other ranks join it after."""
    writer = ShardedWriter(staging, provenance, rows, small, shard_rows) if world.rank == 0 else None
    world.barrier()
    return writer or ShardedWriter(staging, provenance, rows, small, shard_rows, create=False)


def extract_images(m: LoadedModel, manifest: pd.DataFrame, root: Path, dest: Path, staging: Path,
                   provenance: dict, *, batch_size: int = 64, workers: int = 2, device: str = "cpu",
                   precision: str = "fp32", tokens: str | None = None, shard_rows: int = SHARD_ROWS,
                   progress: bool = True, world: World = World()) -> None:
    """Extract image/pre and image/emb (and with `tokens`, image/tokens) for every manifest row into `dest`
    (via `staging`, resumable). Under torchrun (`world`), each rank computes the pending shards it owns and
    rank 0 moves the store to `dest` once every rank is done: the store does not depend on the world size."""
    rows, small = image_store_layout(m, manifest, tokens)
    writer = _open_writer(world, staging, provenance, rows, small, shard_rows)
    pending = [s for s in writer.pending() if world.owns(s)]
    loader = DataLoader(ImageFiles(root, manifest["path"].tolist(), m.preprocess),
                        batch_sampler=_shard_batches(writer, pending, batch_size), num_workers=workers,
                        pin_memory=device == "cuda", persistent_workers=False)
    rank = f" (rank {world.rank} of {world.size})" if world.size > 1 else ""
    bar = tqdm(total=writer.pending_rows(pending),
               desc=f"extract {dest.parent.name}{rank}", unit="img", disable=not progress)
    buffers, shard_iter = [], iter(pending)
    shard = next(shard_iter, None)
    with torch.no_grad():
        for images in loader:
            images = images.to(device, non_blocking=True)
            with _autocast(device, precision):
                pre, toks = encode_with_tokens(m, images) if tokens else (m.trunk.encode_image(images), None)
            pre = pre.float()
            block = {"image/pre": pre.cpu().numpy(), "image/emb": project(pre, m.W_img, m.b_img).cpu().numpy()}
            if tokens:
                block["image/tokens"] = toks.float().cpu().numpy().astype(TOKEN_DTYPES[tokens])
            buffers.append(block)
            bar.update(len(images))
            start, stop = writer.shard_range(shard)
            if sum(len(b["image/pre"]) for b in buffers) == stop - start:
                writer.write_shard(shard, {k: np.concatenate([b[k] for b in buffers]) for k in buffers[0]})
                buffers, shard = [], next(shard_iter, None)
    bar.close()
    world.barrier()
    if world.rank == 0:
        writer.finalize(dest)
    world.barrier()   # no rank returns before the store is in place (DVC may run on any machine's rank)


def expand_templates(names: list[str], dataset_template: str) -> list[str]:
    """Prompt templates from `text.templates`: the literal 'dataset' means the dataset's own template."""
    return [dataset_template if t == "dataset" else t for t in names]


def encode_prompts(m: LoadedModel, prompts: list[str], device: str, precision: str) -> torch.Tensor:
    """EOS features (n, d_t) of `prompts`, in batches of 256."""
    with torch.no_grad(), _autocast(device, precision):
        return torch.cat([m.trunk.encode_text(m.tokenizer(prompts[i:i + 256]).to(device)).float()
                          for i in range(0, len(prompts), 256)])


def extract_text(m: LoadedModel, classnames: list[str], templates: list[str], dest: Path, staging: Path,
                 provenance: dict, *, device: str = "cpu", precision: str = "fp32",
                 primitives: dict | None = None, primitive_templates: dict | None = None) -> None:
    """Encode every (class, template) prompt: text/pre (C, P, d_t) EOS features and text/emb (C, P, D); with
    `primitives` ({"attrs": [...], "objs": [...]}), also attr/{pre,emb} and obj/{pre,emb}, one prompt each."""
    C, P = len(classnames), len(templates)
    pre = encode_prompts(m, [t.format(c) for c in classnames for t in templates], device, precision)
    arrays = {"text/pre": pre.cpu().numpy().reshape(C, P, -1),
              "text/emb": project(pre, m.W_txt).cpu().numpy().reshape(C, P, -1)}
    for group in ("attr", "obj") if primitives else ():
        names = primitives[f"{group}s"]
        pre = encode_prompts(m, [primitive_templates[group].format(n) for n in names], device, precision)
        arrays |= {f"{group}/pre": pre.cpu().numpy(), f"{group}/emb": project(pre, m.W_txt).cpu().numpy()}
    write_store(dest, staging, provenance, arrays)
