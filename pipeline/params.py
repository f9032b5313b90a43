"""Typed checks for params.yaml sections: every error names the key, the value and what was expected."""

from dataclasses import fields

# pipeline.datasets/demo/extract/models are imported inside the functions that need them: they pull in
# open_clip, torchvision and pandas (~3.5 s on 2 cores), which stages such as `fuse` never need.


class ParamsError(ValueError):
    """A params.yaml key is missing, of the wrong type, or out of range."""


def need(section: dict, key: str, kind, where: str, *, choices=None, minimum=None):
    """Return section[key] after checking its type, allowed values and lower bound."""
    if not isinstance(section, dict) or key not in section:
        raise ParamsError(f"params.yaml: missing key '{where}.{key}'")
    value = section[key]
    # bool is an int subclass; a flag where a number is expected is almost always a typo.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ParamsError(f"params.yaml: '{where}.{key}' = {value!r} should be {names}")
    if choices is not None and value not in choices:
        raise ParamsError(f"params.yaml: '{where}.{key}' = {value!r} should be one of {sorted(choices)}")
    if minimum is not None and value < minimum:
        raise ParamsError(f"params.yaml: '{where}.{key}' = {value!r} should be >= {minimum}")
    return value


def entry(section: dict, name: str, where: str) -> dict:
    """The entry `where.name`, with a clear error listing the known names."""
    if not isinstance(section, dict) or name not in section:
        known = sorted(section) if isinstance(section, dict) else []
        raise ParamsError(f"params.yaml: no entry '{name}' under '{where}' (known: {known})")
    return section[name]


def dataset_entry(params: dict, name: str) -> dict:
    """Validated `data.<name>`."""
    from pipeline import datasets
    cfg = entry(params.get("data"), name, "data")
    where = f"data.{name}"
    kind = need(cfg, "kind", str, where, choices=datasets.KINDS)
    if kind == "coop":
        need(cfg, "name", str, where, choices=datasets.COOP)
        need(cfg, "root", str, where)
    else:
        need(cfg, "seed", int, where, minimum=0)
        need(cfg, "blur", (int, float), where, minimum=0)
        per_class = need(cfg, "per_class", dict, where)
        for split in datasets.SPLITS:
            need(per_class, split, int, f"{where}.per_class", minimum=1)
    if "template" in cfg:
        need(cfg, "template", str, where)
    return cfg


def model_entry(params: dict, name: str) -> dict:
    """Validated `model_zoo.<name>`."""
    from pipeline import demo, models
    cfg = entry(params.get("model_zoo"), name, "model_zoo")
    where = f"model_zoo.{name}"
    need(cfg, "arch", str, where)
    source = need(cfg, "source", str, where, choices=models.SOURCES)
    if source == "pretrained":
        need(cfg, "tag", str, where)
    elif source == "checkpoint":
        need(cfg, "path", str, where)
    elif source == "random":
        need(cfg, "seed", int, where, minimum=0)
    else:
        data = need(cfg, "data", dict, where)
        need(data, "seed", int, f"{where}.data", minimum=0)
        need(data, "per_class", int, f"{where}.data", minimum=1)
        recipe = need(cfg, "train", dict, where)
        known = {f.name: f.type for f in fields(demo.DemoRecipe)}
        for key, value in recipe.items():
            if key not in known:
                raise ParamsError(f"params.yaml: unknown key '{where}.train.{key}' (known: {sorted(known)})")
            need(recipe, key, (int, float) if known[key] is float else int, f"{where}.train", minimum=0)
    return cfg


def text_section(params: dict) -> dict:
    """Validated `text`: a non-empty list of templates with '{}' (or the literal 'dataset')."""
    text = need(params, "text", dict, "")
    templates = need(text, "templates", list, "text")
    bad = [t for t in templates if not isinstance(t, str) or (t != "dataset" and "{}" not in t)]
    if not templates or bad:
        raise ParamsError(f"params.yaml: 'text.templates' = {templates!r}: need a non-empty list of strings "
                          f"containing '{{}}' or 'dataset'; bad entries: {bad}")
    return text


def precision(params: dict) -> str:
    """Validated `extract.precision`."""
    from pipeline import extract
    return need(need(params, "extract", dict, ""), "precision", str, "extract", choices=extract.PRECISIONS)
