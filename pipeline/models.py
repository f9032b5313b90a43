"""open_clip models: build from a zoo entry (tag | checkpoint | random | demo), save with a card, load
for extraction with the projections split off (METHODS.md §1.3-1.4).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import VisionTransformer

from pipeline import __version__, demo
from pipeline.config import MODEL_SOURCES, Model
from pipeline.io import atomic_write_json, sha256_file

class ModelError(ValueError):
    """A model entry cannot be built or loaded as asked."""


def _check_arch(arch: str) -> None:
    demo.register_configs()
    if arch not in open_clip.list_models():
        raise ModelError(f"unknown open_clip architecture '{arch}' (see open_clip.list_models())")


def _pretrained(arch: str, tag: str) -> torch.nn.Module:
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ModelError(f"open_clip has no pretrained tag '{tag}' for '{arch}'; known tags: {tags}")
    # OpenAI weights were trained with QuickGELU; open_clip only warns, and the features silently shift.
    tag_quick = open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False)
    if tag_quick and not open_clip.get_model_config(arch).get("quick_gelu", False):
        raise ModelError(f"pretrained '{tag}' needs QuickGELU but '{arch}' uses GELU: use '{arch}-quickgelu'")
    try:
        return open_clip.create_model(arch, pretrained=tag)
    except Exception as exc:
        raise ModelError(
            f"could not fetch pretrained weights '{tag}' for '{arch}' ({type(exc).__name__}: {exc}). Offline? "
            f"Download the checkpoint elsewhere and set `source: checkpoint` with `path: /path/to/file` "
            f"in this model_zoo entry.") from None


def _from_checkpoint(arch: str, path: str) -> torch.nn.Module:
    if not Path(path).is_file():
        raise ModelError(f"checkpoint '{path}' not found")
    model = open_clip.create_model(arch, pretrained=None)
    try:
        open_clip.load_checkpoint(model, path, strict=True)
    except Exception as exc:
        raise ModelError(f"checkpoint '{path}' does not match architecture '{arch}': {exc}") from None
    return model


def build(entry: Model, train_data=None, progress: bool = True, init: dict | None = None) -> torch.nn.Module:
    """Build the model a zoo entry describes; `train_data` = (images, labels, scenes) for `demo`
    (`pipeline.demo.render_split`), trained from the state dict `init` when the entry names one."""
    _check_arch(entry.arch)
    if entry.source == "pretrained":
        return _pretrained(entry.arch, entry.tag)
    if entry.source == "checkpoint":
        return _from_checkpoint(entry.arch, entry.path)
    if entry.source == "random":
        torch.manual_seed(entry.seed)
        return open_clip.create_model(entry.arch, pretrained=None)
    if entry.source == "demo":
        return demo.train(demo.DemoRecipe(**entry.train), *train_data, mention=entry.data_mention, progress=progress,
                          init=init)
    raise ModelError(f"model source '{entry.source}' is not one of {MODEL_SOURCES}")


def save(model: torch.nn.Module, entry: Model, out_dir: Path, init: dict | None = None) -> dict:
    """Write `model.pt` (state dict) and `card.json` (with `init`: the name and checkpoint sha256 of the model
    training started from); return the card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.pt.tmp"
    torch.save(model.state_dict(), tmp)
    tmp.replace(out_dir / "model.pt")
    card = {
        "arch": entry.arch,
        "source": entry.source,
        "tag": entry.tag,
        "path": entry.path,
        **({"init": init} if init else {}),
        "checkpoint_sha256": sha256_file(out_dir / "model.pt"),
        "open_clip_version": open_clip.__version__,
        "quick_gelu": bool(open_clip.get_model_config(entry.arch).get("quick_gelu", False)),
        "preprocess": dict(model.visual.preprocess_cfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "project_version": __version__,
    }
    atomic_write_json(out_dir / "card.json", card)
    return card


@dataclass
class LoadedModel:
    """A model ready for extraction: towers without projections, plus the projections themselves."""
    trunk: torch.nn.Module      # encode_image -> pre-projection x_v, encode_text -> EOS feature e
    W_img: torch.Tensor         # (d_v, D)
    b_img: torch.Tensor | None  # (D,) for ModifiedResNet's c_proj, else None
    W_txt: torch.Tensor         # (d_t, D)
    logit_scale: float
    preprocess: object
    tokenizer: object
    card: dict


def split_projections(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Detach W_img (+ bias), W_txt from `model` in place so its encoders return pre-projection features."""
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        if visual.proj is None:
            raise ModelError("vision tower has no projection `proj` to split off")
        W_img, b_img = visual.proj.detach().clone(), None
        visual.proj = None
    elif isinstance(visual, ModifiedResNet):
        c_proj = visual.attnpool.c_proj
        W_img, b_img = c_proj.weight.detach().T.clone(), c_proj.bias.detach().clone()
        # c_proj is fused into the attention call as its output projection; an identity keeps x_v.
        width = c_proj.in_features
        identity = torch.nn.Linear(width, width).requires_grad_(False)
        identity.weight.copy_(torch.eye(width))
        identity.bias.zero_()
        visual.attnpool.c_proj = identity
    else:
        raise ModelError(f"unsupported vision tower {type(visual).__name__} (ViT and ModifiedResNet only)")
    if not isinstance(getattr(model, "text_projection", None), torch.nn.Parameter):
        raise ModelError("only a bias-free `text_projection` parameter is supported on the text side")
    W_txt = model.text_projection.detach().clone()
    model.text_projection = None
    return W_img, b_img, W_txt


def checkpoint(model_dir: Path) -> tuple[dict, dict]:
    """(card, state dict) of a built model, refusing a `model.pt` whose sha256 is not its card's."""
    model_dir = Path(model_dir)
    for name in ("card.json", "model.pt"):
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir / name} is missing: run `dvc repro model@{model_dir.name}`")
    card = json.loads((model_dir / "card.json").read_text())
    if sha256_file(model_dir / "model.pt") != card["checkpoint_sha256"]:
        raise ModelError(f"{model_dir / 'model.pt'} is not the checkpoint its card.json describes (sha256 differs): "
                         f"run `dvc repro model@{model_dir.name}` or `dvc checkout models/{model_dir.name}`")
    return card, torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)


def load(model_dir: Path, device: str = "cpu") -> LoadedModel:
    """Load `model_dir/model.pt` as its card describes (refusing a checkpoint whose sha256 is not the card's)
    and split off the projections."""
    card, state = checkpoint(model_dir)
    _check_arch(card["arch"])
    model = open_clip.create_model(card["arch"], pretrained=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{model_dir / 'model.pt'} does not match architecture '{card['arch']}': {exc}") from None
    logit_scale = float(model.logit_scale.detach().exp())
    W_img, b_img, W_txt = split_projections(model)
    return LoadedModel(
        trunk=model.eval().requires_grad_(False).to(device), W_img=W_img, b_img=b_img, W_txt=W_txt,
        logit_scale=logit_scale,
        preprocess=image_transform_v2(PreprocessCfg(**card["preprocess"]), is_train=False),
        tokenizer=open_clip.get_tokenizer(card["arch"]), card=card)
