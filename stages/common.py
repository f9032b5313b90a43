"""What every stage script shares: its declared params, and where things live."""

import sys
from pathlib import Path

import dvc.api

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stage_params(stage: str) -> dict:
    """Only the params `stage` declares in dvc.yaml, so DVC's invalidation stays honest."""
    return dvc.api.params_show(stages=[stage], repo=str(ROOT))


def data_dir(dataset: str) -> Path:
    return ROOT / "data" / dataset


def model_dir(model: str) -> Path:
    return ROOT / "models" / model


def feature_dir(model: str, dataset: str) -> Path:
    return ROOT / "features" / model / dataset


def staging_dir(model: str, dataset: str) -> Path:
    """Git-ignored work area for resumable writes (DVC deletes a stage's outputs before it runs)."""
    return ROOT / "features" / ".staging" / model / dataset
