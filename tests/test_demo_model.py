"""The demo CLIP is a real CLIP: zero-shot far above chance and a clear modality gap.

Recomputed here from the raw Zarr arrays with plain numpy, not through the pipeline's own methods.
"""

import json

import numpy as np
import zarr


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_zeroshot_accuracy_and_modality_gap(demo_repo):
    store = demo_repo / "features" / "demo" / "shapes"
    images, text = zarr.open_group(store / "images.zarr", mode="r"), zarr.open_group(store / "text.zarr", mode="r")
    test = images["image/split"][...] == 2
    f = _unit(images["image/emb"][...][test])
    t = _unit(text["text/emb"][...])                        # (C, P, D)
    protos = _unit(t.mean(axis=1))
    acc = (np.argmax(f @ protos.T, axis=1) == images["image/label"][...][test]).mean()
    gap = np.linalg.norm(f.mean(0) - t.reshape(-1, t.shape[-1]).mean(0))
    n_classes = protos.shape[0]
    assert n_classes >= 36
    # chance is 1/36; pre-training on the imbalanced `scenes` world costs the plain shapes zero-shot (README:
    # 35% here against 56% for the old class-only captions), so the bar is "far above chance"
    assert acc >= 0.25, f"zero-shot top-1 {acc:.3f} (chance {1 / n_classes:.3f})"
    assert gap >= 0.3, f"modality gap {gap:.3f}"
    reported = json.loads((demo_repo / "reports" / "metrics.json").read_text())["shapes"]["demo"]
    assert abs(reported["modality_gap"] - gap) < 1e-3


def test_model_card(demo_repo):
    card = json.loads((demo_repo / "models" / "demo" / "card.json").read_text())
    assert card["arch"] == "demo-clip" and card["source"] == "demo"
    assert len(card["checkpoint_sha256"]) == 64 and card["open_clip_version"]
