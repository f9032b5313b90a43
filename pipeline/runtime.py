"""Non-semantic knobs (batch size, loader workers, device): from the environment or an untracked
`local.yaml`, never from params.yaml or a stage's cmd, so changing them never invalidates a stage.
"""

import os
from pathlib import Path

import torch
import yaml

# retrieval_chunk: queries ranked per block in `retrieve` (peak memory ~ 16 * chunk * gallery bytes).
# workers: loader processes decoding images. None = 0 on the CPU, where workers take the cores the forward pass
# needs (bench.extraction: decoding is ~4% of a ViT-B/32 forward; 2 workers on 2 cores cost 14% of the rate);
# with a GPU, min(4, cores), so decoding keeps up with it.
DEFAULTS = {"batch_size": 64, "workers": None, "retrieval_chunk": 1024}


def settings(root: Path = Path(".")) -> dict:
    """batch_size / workers / retrieval_chunk: env CLIPCACHE_<KEY> > local.yaml > defaults."""
    local = root / "local.yaml"
    values = dict(DEFAULTS)
    if local.is_file():
        values.update(yaml.safe_load(local.read_text()) or {})
    for key in DEFAULTS:
        env = os.environ.get(f"CLIPCACHE_{key.upper()}")
        if env is not None:
            values[key] = env
    if values["workers"] is None:
        values["workers"] = min(4, os.cpu_count() or 1) if device() == "cuda" else 0
    try:
        return {k: int(values[k]) for k in DEFAULTS}
    except ValueError as exc:
        raise ValueError(f"{'/'.join(DEFAULTS)} from env or local.yaml must be integers: {exc}") from None


def device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"
