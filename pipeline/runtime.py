"""Non-semantic knobs (batch size, loader workers, device): from the environment or an untracked
`local.yaml`, never from params.yaml or a stage's cmd, so changing them never invalidates a stage.
"""

import os
from pathlib import Path

import torch
import yaml

# retrieval_chunk: queries ranked per block in `retrieve` (peak memory ~ 16 * chunk * gallery bytes).
DEFAULTS = {"batch_size": 64, "workers": min(4, os.cpu_count() or 1), "retrieval_chunk": 1024}


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
    try:
        return {k: int(values[k]) for k in DEFAULTS}
    except ValueError as exc:
        raise ValueError(f"{'/'.join(DEFAULTS)} from env or local.yaml must be integers: {exc}") from None


def device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"
