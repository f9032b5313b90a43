"""Category discovery on real images (plumbing): EuroSAT, DTD and Caltech101 from ../shared/datasets through a
random ViT-B-32-quickgelu, with the issue's protocols (EuroSAT 5 old / 5 new), via the library the stage uses."""

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, shared_dataset
from pipeline import config, datasets, extract, gcd_config, gcd_protocol, gcd_run, models
from pipeline.gcd_inputs import GCDInputs, old_first
from pipeline.layout import SPLIT_CODES


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("vit")
    models.save(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None),
                config.Model("ViT-B-32-quickgelu", "random"), out)
    return models.load(out)


def embed(m, root, paths) -> np.ndarray:
    loader = torch.utils.data.DataLoader(extract.ImageFiles(root, paths, m.preprocess), batch_size=32)
    with torch.no_grad():
        return torch.cat([extract.project(m.trunk.encode_image(x), m.W_img, m.b_img) for x in loader]).numpy()


@pytest.mark.parametrize("name, old", [("eurosat", 5), ("dtd", 0.5), ("caltech101", 0.5)])
def test_gcd_runs_on_real_images_with_a_random_vit(vit, name, old):
    root = shared_dataset(name)
    manifest = datasets.coop_manifest(name, root)
    names = datasets.classnames(manifest)
    rng = np.random.default_rng(0)
    classes = np.arange(len(names)) if len(names) <= 10 else np.sort(rng.choice(len(names), 10, replace=False))
    # 6 train and 2 test images of up to 10 classes: plumbing, not accuracy
    picked = [manifest[(manifest.label == c) & (manifest.split == s)].head(k) for c in classes
              for s, k in (("train", 6), ("test", 2))]
    sub = pd.concat(picked).reset_index(drop=True)
    sub_names = [names[c] for c in classes]
    remap = {c: i for i, c in enumerate(classes)}
    label = sub.label.map(remap).to_numpy()
    split = sub.split.map(SPLIT_CODES).to_numpy().astype(np.int8)
    spec = 5 if name == "eurosat" else old
    old_idx = gcd_protocol.old_classes(spec, sub_names)
    assert (name != "eurosat") or old_idx.tolist() == [0, 1, 2, 3, 4]
    train = np.flatnonzero(split == 0)
    labelled = np.isin(train, gcd_protocol.labelled_rows(label[train], train, old_idx, 0.5, 0))
    emb = embed(vit, root, sub.path.tolist())
    concepts = sub_names + ["a river", "a forest", "a road", "a cat"]
    with torch.no_grad():
        text = (vit.trunk.encode_text(vit.tokenizer([f"a photo of a {c} ." for c in concepts])) @ vit.W_txt).numpy()
    relabel = old_first(old_idx, len(sub_names))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    inputs = GCDInputs(classnames=sub_names, old=old_idx, target=relabel[label], split=split, train=train,
                       labelled=labelled, student_emb=emb, student_views=np.stack([emb[train], emb[train]], 1),
                       concepts=concepts, student_concepts=text,
                       teacher_logits=(unit(emb[train]) @ unit(text).T / 0.01).astype(np.float32), distractors=set())
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["gcd"]["protocol"][name] = {"old": spec, "labelled": 0.5, "seed": 0}
    p["gcd"]["overrides"][name] = {"head": {"width": 16, "hidden": 32, "bottleneck": 8},
                                   "train": {"epochs": 2, "batch": 8}, "loss": {"teacher_temp_epochs": 1}}
    p["gcd"]["seeds"] = [0]
    result = gcd_run.run(inputs, gcd_config.config(p, name), progress=False)
    for method, by_seed in result["scores"].items():
        for protocol in gcd_run.PROTOCOLS:
            scores = by_seed[0][protocol]["v2"]
            assert 0 <= scores["all"] <= 1, (method, protocol)
    assert result["rows"]["inductive"] == int((split == 2).sum())
