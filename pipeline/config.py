"""params.yaml -> frozen dataclasses. Every error names the key, the value and what was expected.

One section parser per params section; methods parse their own `methods.<name>` blocks with the helpers
here (`pipeline.methods` holds the registry). Heavy modules (open_clip, torchvision, pandas) are never
imported here: `fuse` reads its params in milliseconds.
"""

from dataclasses import dataclass, field, fields

from pipeline.layout import SPLITS


class ParamsError(ValueError):
    """A params.yaml key is missing, of the wrong type, or out of range."""


def _kinds(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def is_a(value, kind) -> bool:
    """isinstance, except that a bool is never an int or a float (a flag where a number is expected is a typo)."""
    return isinstance(value, _kinds(kind)) and not (isinstance(value, bool) and bool not in _kinds(kind))


def need(section, key: str, kind, where: str, *, choices=None, minimum=None, maximum=None):
    """section[key] after checking its type, allowed values and bounds; `where` is the section's dotted path."""
    path = f"{where}.{key}" if where else key
    if not isinstance(section, dict) or key not in section:
        raise ParamsError(f"params.yaml: missing key '{path}'")
    value = section[key]
    if not is_a(value, kind):
        names = " or ".join(k.__name__ for k in _kinds(kind))
        raise ParamsError(f"params.yaml: '{path}' = {value!r} should be {names}")
    if choices is not None and value not in choices:
        raise ParamsError(f"params.yaml: '{path}' = {value!r} should be one of {list(choices)}")
    if minimum is not None and value < minimum:
        raise ParamsError(f"params.yaml: '{path}' = {value!r} should be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ParamsError(f"params.yaml: '{path}' = {value!r} should be <= {maximum}")
    return value


def numbers(section, key: str, where: str, n: int, *, positive: bool = False) -> tuple[float, ...]:
    """A list of exactly n numbers (all > 0 with `positive`)."""
    value = need(section, key, list, where)
    if len(value) != n or not all(is_a(v, (int, float)) for v in value) or (positive and min(value) <= 0):
        raise ParamsError(f"params.yaml: '{where}.{key}' = {value!r} should be a list of {n} "
                          f"{'positive ' if positive else ''}numbers")
    return tuple(float(v) for v in value)


def int_list(section, key: str, where: str, *, n: int | None = None, distinct: bool = False,
             minimum: int = 1) -> tuple[int, ...]:
    """A non-empty list of ints >= minimum (exactly n of them, or distinct, when asked)."""
    value = need(section, key, list, where)
    ok = value and all(is_a(v, int) and v >= minimum for v in value)
    if not ok or (n is not None and len(value) != n) or (distinct and len(set(value)) != len(value)):
        what = f"{n} " if n is not None else ("non-empty list of distinct " if distinct else "non-empty list of ")
        raise ParamsError(f"params.yaml: '{where}.{key}' = {value!r} should be a {what}ints >= {minimum}")
    return tuple(value)


def names(section, key: str, where: str, known) -> tuple[str, ...]:
    """A non-empty list of distinct names, each one of `known`."""
    value = need(section, key, list, where)
    if not value or len(set(value)) != len(value) or any(v not in known for v in value):
        raise ParamsError(f"params.yaml: '{where}.{key}' = {value!r} should be distinct names from {list(known)}")
    return tuple(value)


def entry(section, name: str, where: str) -> dict:
    """The mapping `where.name`, with an error listing the known names."""
    if not isinstance(section, dict) or name not in section:
        known = sorted(section) if isinstance(section, dict) else []
        raise ParamsError(f"params.yaml: no entry '{name}' under '{where}' (known: {known})")
    if not isinstance(section[name], dict):
        raise ParamsError(f"params.yaml: '{where}.{name}' = {section[name]!r} should be a mapping")
    return section[name]


# ----------------------------------------------------------------------------- data and models

DATASET_KINDS = ("coop", "shapes", "scenes", "folder", "webdataset")
DEFAULT_RATIO = (0.7, 0.1)   # folder, ratio split: train and val fractions per class; test gets the rest


@dataclass(frozen=True)
class Dataset:
    """`data.<name>`: a CoOp-layout dataset on disk, an embedded demo world (`shapes`, `scenes`), a
    class-per-folder dataset (`folder`) or tar shards in the webdataset layout (`webdataset`)."""
    name: str
    kind: str
    coop_name: str | None = None      # coop: which CoOp dataset (split file, image folder, template)
    root: str | None = None           # coop: folder holding the split file; folder, webdataset: the data
    seed: int = 0                     # shapes, scenes; folder: the ratio split's seed
    blur: float = 0.0                 # shapes, scenes: camera blur (px)
    per_class: dict = field(default_factory=dict)   # shapes, scenes: images per class per split
    template: str | None = None       # overrides the dataset's literature template
    split: str = "auto"               # folder: folders (root/<split>/<class>), ratio, or auto (folders if
                                      # root has train/, val/ and test/, else ratio)
    ratio: tuple = DEFAULT_RATIO      # folder, ratio split: (train, val) fractions per class
    shards: dict = field(default_factory=dict)      # webdataset: split -> shard names or globs under root


def _known_keys(cfg: dict, where: str, known: tuple) -> None:
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ParamsError(f"params.yaml: unknown key '{where}.{unknown[0]}' (known: {sorted(known)})")


def _folder_split(cfg: dict, where: str) -> tuple[str, tuple, int]:
    """`split` of a folder dataset: absent (auto), `folders`, or {train: f, val: f, seed: n} -> (mode, ratio, seed)."""
    if "split" not in cfg:
        return "auto", DEFAULT_RATIO, 0
    sec, at = cfg["split"], f"{where}.split"
    if sec == "folders":
        return "folders", DEFAULT_RATIO, 0
    if not isinstance(sec, dict):
        raise ParamsError(f"params.yaml: '{at}' = {sec!r} should be 'folders' (root/train, root/val, root/test) "
                          "or a mapping {train: fraction, val: fraction, seed: int}")
    _known_keys(sec, at, ("train", "val", "seed"))
    train = float(need(sec, "train", (int, float), at, minimum=0, maximum=1))
    val = float(need(sec, "val", (int, float), at, minimum=0, maximum=1))
    if train <= 0 or train + val > 1:
        raise ParamsError(f"params.yaml: '{at}' = {sec!r}: train should be > 0 and train + val <= 1 "
                          "(test gets the rest)")
    return "ratio", (train, val), need(sec, "seed", int, at, minimum=0)


def _shards(cfg: dict, where: str) -> dict[str, tuple[str, ...]]:
    """`shards` of a webdataset: per split, a shard name or glob, or a list of them, relative to root."""
    sec, at = need(cfg, "shards", dict, where), f"{where}.shards"
    _known_keys(sec, at, SPLITS)
    out = {}
    for split in SPLITS:
        value = need(sec, split, (str, list), at)
        names = [value] if isinstance(value, str) else value
        if not names or not all(isinstance(n, str) and n.endswith(".tar") and not n.startswith("/") and "::" not in n
                                for n in names):
            raise ParamsError(f"params.yaml: '{at}.{split}' = {value!r} should be a relative name or glob of "
                              "uncompressed .tar shards, or a non-empty list of them (shards are read by offset)")
        out[split] = tuple(names)
    return out


def dataset(params: dict, name: str, coop_names) -> Dataset:
    """Validated `data.<name>`; `coop_names` are the known CoOp datasets (pipeline.datasets.COOP)."""
    cfg, where = entry(params.get("data"), name, "data"), f"data.{name}"
    kind = need(cfg, "kind", str, where, choices=DATASET_KINDS)
    template = need(cfg, "template", str, where) if "template" in cfg else None
    if template is not None and "{}" not in template:
        raise ParamsError(f"params.yaml: '{where}.template' = {template!r} should contain '{{}}'")
    if kind == "coop":
        return Dataset(name, kind, coop_name=need(cfg, "name", str, where, choices=coop_names),
                       root=need(cfg, "root", str, where), template=template)
    if kind == "folder":
        _known_keys(cfg, where, ("kind", "root", "split", "template"))
        split, ratio, seed = _folder_split(cfg, where)
        return Dataset(name, kind, root=need(cfg, "root", str, where), split=split, ratio=ratio, seed=seed,
                       template=template)
    if kind == "webdataset":
        _known_keys(cfg, where, ("kind", "root", "shards", "template"))
        return Dataset(name, kind, root=need(cfg, "root", str, where), shards=_shards(cfg, where),
                       template=template)
    per_class = need(cfg, "per_class", dict, where)
    return Dataset(name, kind, seed=need(cfg, "seed", int, where, minimum=0),
                   blur=float(need(cfg, "blur", (int, float), where, minimum=0)),
                   per_class={s: need(per_class, s, int, f"{where}.per_class", minimum=1) for s in SPLITS},
                   template=template)


MODEL_SOURCES = ("demo", "random", "pretrained", "checkpoint")
DEMO_WORLDS = ("shapes", "scenes")


@dataclass(frozen=True)
class Model:
    """`model_zoo.<name>`: an open_clip arch and where its weights come from."""
    arch: str
    source: str
    tag: str | None = None            # pretrained
    path: str | None = None           # checkpoint
    seed: int = 0                     # random init
    data_seed: int = 0                # demo: pre-training renders
    data_per_class: int = 0
    data_world: str = "shapes"        # demo: shapes (one object, class-only captions) | scenes (nuisances)
    data_mention: float = 1.0         # demo, scenes: probability that a caption names each nuisance
    data_blur: float = 0.0            # demo: camera blur of the renders (a teacher's privileged view)
    init: str | None = None           # demo: the zoo entry whose checkpoint training starts from
    train: dict = field(default_factory=dict)   # demo: pipeline.demo.DemoRecipe fields


def model(params: dict, name: str, recipe_type) -> Model:
    """Validated `model_zoo.<name>`; `recipe_type` is the demo recipe dataclass (pipeline.demo.DemoRecipe)."""
    cfg, where = entry(params.get("model_zoo"), name, "model_zoo"), f"model_zoo.{name}"
    arch = need(cfg, "arch", str, where)
    source = need(cfg, "source", str, where, choices=MODEL_SOURCES)
    if source == "pretrained":
        return Model(arch, source, tag=need(cfg, "tag", str, where))
    if source == "checkpoint":
        return Model(arch, source, path=need(cfg, "path", str, where))
    if source == "random":
        return Model(arch, source, seed=need(cfg, "seed", int, where, minimum=0))
    data, recipe = need(cfg, "data", dict, where), need(cfg, "train", dict, where)
    known = {f.name: f.type for f in fields(recipe_type)}
    for key in recipe:
        if key not in known:
            raise ParamsError(f"params.yaml: unknown key '{where}.train.{key}' (known: {sorted(known)})")
        need(recipe, key, (int, float) if known[key] in (float, "float") else int, f"{where}.train", minimum=0)
    world = need(data, "world", str, f"{where}.data", choices=DEMO_WORLDS)
    mention = float(need(data, "mention", (int, float), f"{where}.data", minimum=0, maximum=1)) if world == "scenes" else 1.0
    blur = float(need(data, "blur", (int, float), f"{where}.data", minimum=0)) if "blur" in data else 0.0
    init = need(cfg, "init", str, where) if "init" in cfg else None   # its checkpoint: models/<init>
    return Model(arch, source, data_seed=need(data, "seed", int, f"{where}.data", minimum=0),
                 data_per_class=need(data, "per_class", int, f"{where}.data", minimum=1), data_world=world,
                 data_mention=mention, data_blur=blur, init=init, train=dict(recipe))


PRECISIONS = ("fp32", "fp16", "bf16")


def precision(params: dict) -> str:
    """`extract.precision`: the compute precision of every network pass (stores are float32)."""
    return need(need(params, "extract", dict, ""), "precision", str, "extract", choices=PRECISIONS)


TOKEN_PRECISIONS = ("fp32", "fp16")


def token_precision(params: dict, dataset: str) -> str | None:
    """`extract.tokens.<dataset>`: the storage precision of that dataset's cached patch tokens, or None when
    the dataset caches none (the mapping is opt-in: tokens are L+1 times the size of image/emb)."""
    table = need(need(params, "extract", dict, ""), "tokens", dict, "extract")
    if dataset not in table:
        return None
    return need(table, dataset, str, "extract.tokens", choices=TOKEN_PRECISIONS)


def primitive_templates(params: dict) -> dict[str, str]:
    """`czsl.prompts`: the prompt of an attribute alone and of an object alone ('{}' once in each), encoded by
    `text` for datasets whose classes are (attribute, object) pairs."""
    sec = need(need(params, "czsl", dict, ""), "prompts", dict, "czsl")
    out = {}
    for key in ("attr", "obj"):
        out[key] = need(sec, key, str, "czsl.prompts")
        if out[key].count("{}") != 1:
            raise ParamsError(f"params.yaml: 'czsl.prompts.{key}' = {out[key]!r} should contain '{{}}' once")
    return out


def templates(params: dict) -> tuple[str, ...]:
    """`text.templates`: strings with '{}', or the literal 'dataset' (the dataset's own template)."""
    value = need(need(params, "text", dict, ""), "templates", list, "text")
    bad = [t for t in value if not isinstance(t, str) or (t != "dataset" and "{}" not in t)]
    if not value or bad:
        raise ParamsError(f"params.yaml: 'text.templates' = {value!r}: need a non-empty list of strings "
                          f"containing '{{}}' or 'dataset'; bad entries: {bad}")
    return tuple(value)


@dataclass(frozen=True)
class TextSet:
    """`text_sets.<name>`: where a set's names come from and the template they are encoded through."""
    name: str
    source: str          # "demo" or a file path (.csv with ClassName, else one name a line)
    template: str
    distractors: int = 0  # demo only


def text_set(params: dict, name: str) -> TextSet:
    cfg, where = entry(params.get("text_sets"), name, "text_sets"), f"text_sets.{name}"
    _known_keys(cfg, where, ("source", "template", "distractors"))
    template = need(cfg, "template", str, where)
    if template.count("{}") != 1:
        raise ParamsError(f"params.yaml: '{where}.template' = {template!r} should contain '{{}}' exactly once")
    source = need(cfg, "source", str, where)
    distractors = need(cfg, "distractors", int, where, minimum=0) if source == "demo" else 0
    return TextSet(name, source, template, distractors)


def distill(params: dict) -> tuple[str, str]:
    """`distill`: the (student, teacher) zoo entries SpectralGCD distils between."""
    section = need(params, "distill", dict, "")
    return need(section, "student", str, "distill"), need(section, "teacher", str, "distill")


def merged_block(section: dict, where: str, block: str, dataset: str) -> tuple[dict, str]:
    """`<where>.<block>` with `<where>.overrides.<dataset>.<block>` merged over it, and the dotted name to
    quote in errors."""
    mine = (section.get("overrides") or {}).get(dataset) or {}
    if not isinstance(mine, dict) or not all(isinstance(v, dict) for v in mine.values()):
        raise ParamsError(f"params.yaml: '{where}.overrides.{dataset}' = {mine!r} should map blocks to settings")
    name = f"{where}.{block}" + (f" (with {where}.overrides.{dataset})" if block in mine else "")
    return {**need(section, block, dict, where), **mine.get(block, {})}, name


# ----------------------------------------------------------------------------- few-shot draws and views

VAL_PROTOCOLS = ("full", "coop")


@dataclass(frozen=True)
class Fewshot:
    """`fewshot`: CoOp's draws (METHODS.md §2.2)."""
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    val: str        # full: every val image | coop: min(K, 4) per class
    repeat: bool    # sample with replacement where a class has fewer than K images


def fewshot(params: dict) -> Fewshot:
    section = need(params, "fewshot", dict, "")
    return Fewshot(tuple(sorted(int_list(section, "shots", "fewshot", distinct=True))),
                   tuple(sorted(int_list(section, "seeds", "fewshot", distinct=True))),
                   need(section, "val", str, "fewshot", choices=VAL_PROTOCOLS),
                   need(section, "repeat", bool, "fewshot"))


@dataclass(frozen=True)
class ViewRecipe:
    """`views`: the seeded augmented views of drawn images (METHODS.md §7.1)."""
    n_views: int = 10
    scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    seed: int = 0


def views(params: dict, where: str = "views", min_views: int = 1) -> ViewRecipe:
    """`views` (the few-shot images'), or another section of that shape such as `gcd.views`."""
    section = params
    for i, key in enumerate(where.split(".")):
        section = need(section, key, dict, ".".join(where.split(".")[:i]))
    scale = numbers(section, "scale", where, 2)
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ParamsError(f"params.yaml: '{where}.scale' = {list(scale)!r} should be [low, high] with "
                          f"0 < low <= high <= 1")
    return ViewRecipe(need(section, "n_views", int, where, minimum=min_views), scale,
                      need(section, "flip", bool, where), need(section, "seed", int, where, minimum=0))


# ----------------------------------------------------------------------------- keys several stages share


@dataclass(frozen=True)
class Band:
    """IsoCLIP's kept band [k_top, r - k_bottom) of Psi's singular directions (METHODS.md §5.4)."""
    k_top: int
    k_bottom: int


def band(table, arch: str, where: str, user: str) -> Band:
    """`<where>.<arch>` as a Band; `user` names what needs it, for the error."""
    if not isinstance(table, dict) or arch not in table:
        known = sorted(table) if isinstance(table, dict) else []
        raise ParamsError(f"params.yaml: no '{where}.{arch}' (k_top, k_bottom) for architecture '{arch}' "
                          f"(known: {known}); add it or drop {user}")
    row = entry(table, arch, where)
    return Band(*(need(row, k, int, f"{where}.{arch}", minimum=0) for k in ("k_top", "k_bottom")))


def isoclip_band(params: dict, arch: str, user: str) -> Band:
    """`methods.isoclip.<arch>`: the image-side band shared by IsoCLIP-NCM and i2i_isoclip retrieval."""
    return band(need(need(params, "methods", dict, ""), "isoclip", dict, "methods"), arch, "methods.isoclip", user)


def bridge_atol(params: dict) -> float:
    """`methods.semobridge.atol`: singular values of W_txt at or below it are dropped by the bridge."""
    semo = need(need(params, "methods", dict, ""), "semobridge", dict, "methods")
    return float(need(semo, "atol", (int, float), "methods.semobridge", minimum=0))


# ----------------------------------------------------------------------------- searches, methods and fusion


@dataclass(frozen=True)
class SearchConfig:
    """One `pipeline.fusion.search_space` run: random rows, then batched refinement rounds around the best."""
    trials: int
    seed: int = 0
    grid: int = 0          # points per axis of a full grid scored with the random rows (0: none)
    rounds: int = 0        # refinement rounds after the random stage
    per_round: int = 0     # perturbed rows per round
    top: int = 8           # best rows perturbed each round
    radius: float = 0.1    # first round's standard deviation, as a fraction of each range
    shrink: float = 0.5    # radius factor per round


def search(section: dict, where: str, *, grid: bool = False) -> SearchConfig:
    """`trials`, `seed` (and `grid`) of a search section, plus its optional `refine` block."""
    trials = need(section, "trials", int, where, minimum=0)
    points = need(section, "grid", int, where, minimum=0) if grid else 0
    if points == 1 or trials + points == 0:
        raise ParamsError(f"params.yaml: '{where}' needs trials > 0{' or grid >= 2 (grid 0 = no grid)' if grid else ''}")
    refine, rw = section.get("refine") or {}, f"{where}.refine"
    if not isinstance(refine, dict):
        raise ParamsError(f"params.yaml: '{rw}' = {refine!r} should be a mapping (rounds, per_round, top, radius, shrink)")
    unknown = set(refine) - {"rounds", "per_round", "top", "radius", "shrink"}
    if unknown:
        raise ParamsError(f"params.yaml: unknown keys {sorted(unknown)} under '{rw}'")
    get = lambda key, kind, default, **bounds: need(refine, key, kind, rw, **bounds) if key in refine else default
    rounds = get("rounds", int, 0, minimum=0)
    per_round = get("per_round", int, 0, minimum=1 if rounds else 0)
    if rounds and not per_round:
        raise ParamsError(f"params.yaml: '{rw}.rounds' = {rounds} needs '{rw}.per_round' >= 1")
    return SearchConfig(trials, need(section, "seed", int, where, minimum=0), points, rounds, per_round,
                        get("top", int, 8, minimum=1), float(get("radius", (int, float), 0.1, minimum=0)),
                        float(get("shrink", (int, float), 0.5, minimum=0, maximum=1)))


@dataclass(frozen=True)
class TrainRecipe:
    """One `pipeline.train.fit` run: full-batch AdamW steps with a linear warm-up (DESIGN.md §7b)."""
    steps: int
    lr: float
    warmup: int            # steps of linear warm-up (Dassl's: warmup_min_lr at step 0, then lr * t / warmup)
    warmup_min_lr: float
    weight_decay: float
    seed: int


def train_recipe(section: dict, where: str) -> TrainRecipe:
    """`steps`, `lr`, `warmup`, `warmup_min_lr`, `weight_decay`, `seed` of a trained method's block."""
    number = lambda key, **bounds: float(need(section, key, (int, float), where, **bounds))
    lr = number("lr", minimum=0)
    if lr == 0:
        raise ParamsError(f"params.yaml: '{where}.lr' = {section['lr']!r} should be > 0")
    return TrainRecipe(need(section, "steps", int, where, minimum=0), lr, need(section, "warmup", int, where, minimum=0),
                       number("warmup_min_lr", minimum=0), number("weight_decay", minimum=0),
                       need(section, "seed", int, where, minimum=0))


@dataclass(frozen=True)
class Methods:
    """`methods` for one (arch, dataset): which methods `adapt` runs and each one's settings."""
    enabled: tuple[str, ...]
    settings: dict            # name -> that method's frozen config (None for methods without a block)


def methods(params: dict, arch: str, dataset: str, registry: dict) -> Methods:
    """Validated `methods`: `methods.overrides.<dataset>.<block>` merged over each block, then each
    enabled method parses its own block (`Method.config`)."""
    section = need(params, "methods", dict, "")
    enabled = names(section, "enabled", "methods", registry)
    blocks = {m.block for m in registry.values() if m.block}
    overrides = section.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ParamsError(f"params.yaml: 'methods.overrides' = {overrides!r} should be a mapping dataset -> settings")
    mine = overrides.get(dataset) or {}
    for block, values in mine.items():
        if block not in blocks or not isinstance(values, dict):
            raise ParamsError(f"params.yaml: 'methods.overrides.{dataset}.{block}' should be a mapping under one of "
                              f"{sorted(blocks)}")
    settings = {}
    for name in enabled:
        method = registry[name]
        if method.block is None:
            settings[name] = None
            continue
        where = f"methods.{method.block}" + (f" (with methods.overrides.{dataset})" if method.block in mine else "")
        block = {**need(section, method.block, dict, "methods"), **mine.get(method.block, {})}
        settings[name] = method.config(block, where, arch)
    return Methods(enabled, settings)


FUSION_MODES = ("search", "fixed", "reference")


@dataclass(frozen=True)
class Fusion:
    """`fusion`: how `fuse` picks each method's linear weights (pipeline/evaluate.py)."""
    mode: str                 # search (on val) | fixed | reference (adapt's joint choice)
    methods: tuple[str, ...]
    search: SearchConfig      # random weight vectors plus a grid, then refinement rounds
    ranges: dict              # method -> weight -> (low, high)
    fixed: dict               # method -> weight -> value


def fusion(params: dict, registry: dict) -> Fusion:
    """Validated `fusion`; every range and fixed weight must lie inside its method's declared domain."""
    section = need(params, "fusion", dict, "")
    mode = need(section, "mode", str, "fusion", choices=FUSION_MODES)
    chosen = names(section, "methods", "fusion", registry)
    searched = search(need(section, "search", dict, "fusion"), "fusion.search", grid=True)
    ranges, fixed = {}, {}
    for name in chosen:
        for weight, (low, high) in registry[name].weights.items():
            where = f"fusion.ranges.{name}"
            r = need(need(need(section, "ranges", dict, "fusion"), name, dict, "fusion.ranges"), weight, list, where)
            if len(r) != 2 or not all(is_a(v, (int, float)) for v in r) or not low <= r[0] <= r[1] <= high:
                raise ParamsError(f"params.yaml: '{where}.{weight}' = {r!r} should be [low, high] within "
                                  f"[{low}, {high}]")
            ranges.setdefault(name, {})[weight] = (float(r[0]), float(r[1]))
            where = f"fusion.fixed.{name}"
            v = need(need(need(section, "fixed", dict, "fusion"), name, dict, "fusion.fixed"), weight,
                     (int, float), where, minimum=low, maximum=high)
            fixed.setdefault(name, {})[weight] = float(v)
    return Fusion(mode, chosen, searched, ranges, fixed)


# ----------------------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class Retrieval:
    """`retrieval` plus the `methods.isoclip` / `methods.semobridge.atol` keys its variants use (METHODS.md §9)."""
    query: tuple[str, ...]
    gallery: tuple[str, ...]
    leave_one_out: bool
    ks: tuple[int, ...]
    variants: tuple[str, ...]
    isoclip: Band | None = None        # image side, for i2i_isoclip
    isoclip_text: Band | None = None   # text side, for t2t_isoclip
    atol: float | None = None          # for i2i_bridge_*
    faiss_above: int | None = None     # a larger gallery takes the FAISS top-k route (None: always full ranking)


def retrieval(params: dict, arch: str, variants) -> Retrieval:
    """Validated `retrieval`; `variants` are the known variant names (pipeline.retrieval_variants.VARIANTS).
    Keys of other sections are read only for the variants that need them."""
    sec = need(params, "retrieval", dict, "")
    query, gallery = (names(sec, key, "retrieval", SPLITS) for key in ("query", "gallery"))
    loo = need(sec, "leave_one_out", bool, "retrieval")
    shared = set(query) & set(gallery)
    if loo and set(query) != set(gallery):
        raise ParamsError(f"params.yaml: 'retrieval.leave_one_out' is true, so the query set must be the gallery "
                          f"set, but 'retrieval.query' = {list(query)} and 'retrieval.gallery' = {list(gallery)}")
    if not loo and shared:
        raise ParamsError(f"params.yaml: 'retrieval.query' and 'retrieval.gallery' share {sorted(shared)}: every "
                          f"such query would find itself; set 'retrieval.leave_one_out: true' or use disjoint splits")
    ks = tuple(sorted(set(int_list(sec, "ks", "retrieval"))))
    faiss_above = need(sec, "faiss_above", int, "retrieval", minimum=0)
    chosen = names(sec, "variants", "retrieval", variants)
    iso = isoclip_band(params, arch, "'i2i_isoclip' from retrieval.variants") if "i2i_isoclip" in chosen else None
    iso_text = None
    if "t2t_isoclip" in chosen:
        iso_text = band(need(sec, "isoclip_text", dict, "retrieval"), arch, "retrieval.isoclip_text",
                        "'t2t_isoclip' from retrieval.variants")
    atol = bridge_atol(params) if any(v.startswith("i2i_bridge") for v in chosen) else None
    return Retrieval(query, gallery, loo, ks, chosen, iso, iso_text, atol, faiss_above)
