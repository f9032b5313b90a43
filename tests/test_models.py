"""Model loading: pre-projection features times the stored projections equal open_clip's encoders."""

import os
import subprocess
import sys

import open_clip
import pytest
import torch

from pipeline import config, demo, models
from pipeline.extract import project


@pytest.mark.parametrize("arch", ["ViT-B-32-quickgelu", "RN50"])
def test_pre_projection_times_projection_equals_encoders(arch, tmp_path):
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval()
    models.save(model, config.Model(arch, "random", seed=0), tmp_path)
    m = models.load(tmp_path)
    images = torch.randn(2, 3, 224, 224)
    tokens = open_clip.get_tokenizer(arch)(["a photo of a cat.", "a diagram"])
    with torch.no_grad():
        pre, eos = m.trunk.encode_image(images), m.trunk.encode_text(tokens)
        ref_img, ref_txt = model.encode_image(images), model.encode_text(tokens)
    assert pre.shape[1] == m.W_img.shape[0] and eos.shape[1] == m.W_txt.shape[0]
    assert (m.b_img is not None) == (arch == "RN50")
    torch.testing.assert_close(project(pre, m.W_img, m.b_img), ref_img, atol=1e-4, rtol=0)
    torch.testing.assert_close(project(eos, m.W_txt), ref_txt, atol=1e-4, rtol=0)


def test_checkpoint_of_another_arch_is_refused(tmp_path):
    demo_ckpt = tmp_path / "demo.pt"
    models.demo.register_configs()
    torch.save(open_clip.create_model("demo-clip", pretrained=None).state_dict(), demo_ckpt)
    with pytest.raises(models.ModelError, match="does not match architecture 'ViT-B-32-quickgelu'"):
        models.build(config.Model("ViT-B-32-quickgelu", "checkpoint", path=str(demo_ckpt)))


def test_quickgelu_mismatch_is_refused():
    with pytest.raises(models.ModelError, match="use 'ViT-B-32-quickgelu'"):
        models.build(config.Model("ViT-B-32", "pretrained", tag="openai"))


@pytest.mark.parametrize("entry, message", [
    ({"arch": "ViT-Nope", "source": "random", "seed": 0}, "unknown open_clip architecture"),
    ({"arch": "ViT-B-32-quickgelu", "source": "pretrained", "tag": "nope"}, "no pretrained tag 'nope'"),
    ({"arch": "ViT-B-32-quickgelu", "source": "checkpoint", "path": "/no/such.pt"}, "not found"),
])
def test_bad_entries(entry, message):
    with pytest.raises(models.ModelError, match=message):
        models.build(config.model({"model_zoo": {"m": entry}}, "m", demo.DemoRecipe))


def test_unknown_source_is_a_params_error():
    with pytest.raises(config.ParamsError, match=r"'model_zoo.m.source' = 'magic' should be one of"):
        config.model({"model_zoo": {"m": {"arch": "RN50", "source": "magic"}}}, "m", demo.DemoRecipe)


def test_offline_pretrained_tag_says_how_to_use_a_local_checkpoint():
    code = ("from pipeline import config, models\n"
            "try:\n    models.build(config.Model('RN50-quickgelu', 'pretrained', tag='openai'))\n"
            "except models.ModelError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    assert "ERR could not fetch pretrained weights 'openai'" in out
    assert "source: checkpoint" in out
