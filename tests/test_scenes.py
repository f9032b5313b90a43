"""The information-imbalance world (`scenes`), its captions, patch tokens in the store, primitive prompts."""

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch

from pipeline import config, czsl_data, demo, extract, models, shapes
from pipeline.store import open_store


def test_scene_shows_its_nuisances_and_captions_name_them_only_when_asked():
    img, scene = shapes.sample_scene(0, "train", 7)
    assert scene.label == 7 and img.size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    again, same = shapes.sample_scene(0, "train", 7)
    assert same == scene and np.array_equal(np.asarray(img), np.asarray(again))
    name, small, tint = shapes.classnames()[7], shapes.classnames()[scene.small], list(shapes.COLOURS)[scene.tint]
    assert shapes.describe(scene, False, False) == name
    assert shapes.describe(scene, True, True) == f"{name} and a {small} on {tint}"
    # the background carries the tint: its mean colour is closer to the tint than to grey noise alone
    corner = np.asarray(img, dtype=float)[:4, :4].reshape(-1, 3).mean(0)
    assert np.linalg.norm(corner - np.array(list(shapes.COLOURS.values())[scene.tint])) < np.linalg.norm(
        np.array(list(shapes.COLOURS.values())[scene.tint]) - 128) + 1


def test_every_caption_fits_the_demo_text_context():
    demo.register_configs()
    tokenizer = open_clip.get_tokenizer("demo-clip")
    context = open_clip.get_model_config("demo-clip")["text_cfg"]["context_length"]
    longest = max((c, s, t) for c in shapes.classnames() for s in shapes.classnames() for t in shapes.COLOURS)
    for template in shapes.CAPTION_TEMPLATES:   # the longest words give the longest caption of each template
        for small in shapes.classnames():
            text = template.format(f"{longest[0]} and a {small} on {longest[2]}")
            assert len(tokenizer.encode(text)) + 2 <= context, text


def test_scene_captions_follow_the_mention_flags():
    demo.register_configs()
    tokenizer = open_clip.get_tokenizer("demo-clip")
    scenes = [shapes.Scene(0, 2, 5), shapes.Scene(1, 3, 4)]
    ids = demo._scene_captions(tokenizer, scenes, torch.tensor([1, 0]), torch.tensor([0, 2]),
                               torch.tensor([[True, False], [False, True]]))
    # pick 1 = scene (red square, tint yellow, small red cross), template 0; pick 0 = (red circle, blue, red ring)
    expected = tokenizer(["a photo of a red square and a red cross.", "an image of a red circle on blue."])
    assert torch.equal(ids, expected)


@pytest.mark.parametrize("data, match", [
    ({"seed": 0, "per_class": 1, "world": "mars"}, r"'model_zoo.d.data.world' = 'mars' should be one of"),
    ({"seed": 0, "per_class": 1, "world": "scenes", "mention": 1.5}, r"'model_zoo.d.data.mention' = 1.5 should be <= 1"),
    ({"seed": 0, "per_class": 1}, r"missing key 'model_zoo.d.data.world'"),
])
def test_demo_world_params_are_checked(data, match):
    entry = {"arch": "demo-clip", "source": "demo", "data": data, "train": {}}
    with pytest.raises(config.ParamsError, match=match):
        config.model({"model_zoo": {"d": entry}}, "d", demo.DemoRecipe)


# ----------------------------------------------------------------------------- patch tokens


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    demo.register_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("demo-clip", pretrained=None).eval()
    out = tmp_path_factory.mktemp("vit")
    models.save(model, config.Model("demo-clip", "random"), out)
    return model, out


def test_tokens_are_the_towers_ln_post_outputs_through_the_projection(vit, tmp_path):
    model, model_dir = vit
    data = tmp_path / "data"
    manifest = pd.DataFrame({"item": range(5), "path": [f"{i}.png" for i in range(5)], "label": [0, 1, 0, 1, 0],
                             "split": ["train", "train", "val", "test", "test"]})
    data.mkdir()
    for i in range(5):
        shapes.sample_scene(0, "train", i)[0].save(data / f"{i}.png")
    m = models.load(model_dir)
    extract.extract_images(m, manifest, data, tmp_path / "images.zarr", tmp_path / "staging", {"run": 1},
                           batch_size=2, workers=0, tokens="fp32", shard_rows=4, progress=False)
    store = open_store(tmp_path / "images.zarr")
    tokens, emb = store["image/tokens"][...], store["image/emb"][...]
    assert tokens.shape == (5, 65, 64)
    np.testing.assert_allclose(tokens[:, 0], emb, atol=1e-5)
    pixels = torch.stack([m.preprocess(shapes.sample_scene(0, "train", i)[0]) for i in range(5)])
    model.visual.output_tokens = True
    with torch.no_grad():
        pooled, patches = model.visual(pixels)    # open_clip projects only the pooled CLS
        patches = patches @ model.visual.proj
    model.visual.output_tokens = False
    np.testing.assert_allclose(tokens[:, 1:], patches.numpy(), atol=1e-4)
    np.testing.assert_allclose(emb, pooled.numpy(), atol=1e-4)

    extract.extract_images(m, manifest, data, tmp_path / "half.zarr", tmp_path / "staging2", {"run": 1},
                           batch_size=2, workers=0, tokens="fp16", shard_rows=4, progress=False)
    half = open_store(tmp_path / "half.zarr")["image/tokens"]
    assert half.dtype == np.float16 and np.abs(half[...].astype(np.float32) - tokens).max() < 1e-2


def test_tokens_from_a_resnet_tower_are_refused(tmp_path):
    torch.manual_seed(0)
    models.save(open_clip.create_model("RN50", pretrained=None), config.Model("RN50", "random"), tmp_path)
    with pytest.raises(ValueError, match="patch tokens need a ViT vision tower; this model \\(RN50\\) has ModifiedResNet"):
        extract.check_token_tower(models.load(tmp_path))


@pytest.mark.parametrize("table, expected", [({"scenes": "fp16"}, "fp16"), ({}, None)])
def test_token_precision_is_opt_in_per_dataset(table, expected):
    assert config.token_precision({"extract": {"tokens": table}}, "scenes") == expected


def test_token_precision_rejects_unknown():
    with pytest.raises(config.ParamsError, match=r"'extract.tokens.scenes' = 'int8' should be one of"):
        config.token_precision({"extract": {"tokens": {"scenes": "int8"}}}, "scenes")


def test_primitive_prompts_are_encoded_beside_the_class_prompts(vit, tmp_path):
    _, model_dir = vit
    m = models.load(model_dir)
    prims = shapes.primitives()
    templates = {"attr": "a photo of a {} object.", "obj": "a photo of a {}."}
    extract.extract_text(m, shapes.classnames(), ["a photo of a {}."], tmp_path / "text.zarr", tmp_path / "st",
                         {"run": 1}, primitives=prims, primitive_templates=templates)
    store = open_store(tmp_path / "text.zarr")
    with torch.no_grad():
        want = m.trunk.encode_text(m.tokenizer(["a photo of a purple object."])) @ m.W_txt
    np.testing.assert_allclose(store["attr/emb"][4], want[0].numpy(), atol=1e-5)
    assert store["attr/emb"].shape == (6, 64) and store["obj/emb"].shape == (6, 64)
    with pytest.raises(config.ParamsError, match="should contain"):
        config.primitive_templates({"czsl": {"prompts": {"attr": "{} {}", "obj": "{}"}}})


# ----------------------------------------------------------------------------- the CZSL split of scenes


def test_czsl_split_of_a_pair_dataset_holds_unseen_pairs_out_of_train():
    prims = shapes.primitives()
    labels = np.tile(np.arange(36), 3)
    manifest = pd.DataFrame({"item": range(108), "path": [f"{i}.png" for i in range(108)], "label": labels,
                             "split": np.repeat(["train", "val", "test"], 36)})
    data = czsl_data.from_classes(prims, manifest, unseen=12, seed=0)
    seen = set(data.seen)
    val_unseen, test_unseen = set(data.split_pairs["val"]) - seen, set(data.split_pairs["test"]) - seen
    assert len(seen) == 24 and len(val_unseen) == len(test_unseen) == 6 and not val_unseen & test_unseen
    assert {a for a, _ in seen} == set(prims["attrs"]) and {o for _, o in seen} == set(prims["objs"])
    m = data.manifest
    for split, allowed in (("train", seen), ("val", seen | val_unseen), ("test", seen | test_unseen)):
        rows = m[m.split == split]
        assert {tuple(c.split()) for c in rows.classname} == allowed
    # labels index the pair list, items point back at the source rows
    assert all(data.pairs[r.label] == tuple(r.classname.split()) for r in m.itertuples())
    src = manifest.set_index("item")
    assert all(shapes.classnames()[src.loc[r.item, "label"]] == r.classname for r in m.itertuples())
    assert data.dropped == 12 + 6 + 6
    with pytest.raises(ValueError, match="unseen = 40"):
        czsl_data.from_classes(prims, manifest, unseen=40, seed=0)
