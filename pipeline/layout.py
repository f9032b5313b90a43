"""Where everything lives, and the codes stores use: one place for paths, split codes, draw keys and the
stage that owns each output. Stages, benchmarks and tests all use these names.

    data/<ds>/manifest.parquet, dataset.json              prepare@<ds>
    models/<m>/model.pt, card.json                         model@<m> (teacher: distill.teacher)
    features/<m>/<ds>/{images,text,views}.zarr             extract@ / text@ / views@<m>-<ds>
    features/<m>/<ds>/{oti,ovi}.zarr                       oti@ / ovi@<m>-<ds>
    features/<m>/textsets/<set>.zarr                       textset@<m>-<set> / teacher_textset@<set>
    features/<student>/<ds>/gcd_views.zarr                 gcd_views@<ds>
    fewshot/<ds>/fewshot.json                              fewshot@<ds>
    logits/<m>/<ds>/logits.zarr                            adapt@<m>-<ds>
    reports/metrics.json, fusion.json, per_seed.csv        fuse
    reports/summary.md, plots/                             report
    reports/retrieval/<m>-<ds>.{json,details.json,csv}     retrieve@<m>-<ds>
    reports/gcd/<ds>.{json,details.json,csv,svg}           gcd@<ds>
Resumable writes go to git-ignored `features/.staging/` and `logits/.staging/` (DVC deletes a stage's
outputs before it runs, so a staging store is what survives a kill).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPLITS = ("train", "val", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}   # image/split in images.zarr

FEATURE_STORES = {"images.zarr": "extract", "text.zarr": "text", "views.zarr": "views", "oti.zarr": "oti",
                  "ovi.zarr": "ovi"}


def draw_key(shots: int, seed: int) -> str:
    """Key of one few-shot draw, e.g. "shot_16-seed_1" (CoOp's cache slug)."""
    return f"shot_{shots}-seed_{seed}"


def parse_draw_key(key: str) -> tuple[int, int]:
    """(shots, seed) of a `draw_key`."""
    try:
        shots, seed = key.split("-")
        if not (shots.startswith("shot_") and seed.startswith("seed_")):
            raise ValueError
        return int(shots[5:]), int(seed[5:])
    except ValueError:
        raise ValueError(f"draw key {key!r} is not of the form 'shot_<K>-seed_<S>'") from None


def data_dir(dataset: str, root: Path = ROOT) -> Path:
    return Path(root) / "data" / dataset


def model_dir(model: str, root: Path = ROOT) -> Path:
    return Path(root) / "models" / model


def feature_dir(model: str, dataset: str, root: Path = ROOT) -> Path:
    return Path(root) / "features" / model / dataset


def staging_dir(model: str, dataset: str, root: Path = ROOT) -> Path:
    """Git-ignored work area for resumable feature writes."""
    return Path(root) / "features" / ".staging" / model / dataset


def textset_store(model: str, name: str, root: Path = ROOT) -> Path:
    return Path(root) / "features" / model / "textsets" / f"{name}.zarr"


def textset_staging(model: str, name: str, root: Path = ROOT) -> Path:
    return Path(root) / "features" / ".staging" / model / "textsets" / f"{name}.zarr"


def prompt_store(model: str, dataset: str, root: Path = ROOT) -> Path:
    """The learned contexts of prompt@{model}-{dataset}; prompt_transfer@ reads every store of the model."""
    return Path(root) / "features" / model / "prompts" / f"{dataset}.zarr"


def prompt_staging(model: str, dataset: str, root: Path = ROOT) -> Path:
    """Work area of prompt@: the store being written and each run's resumable checkpoint (runs/)."""
    return Path(root) / "features" / ".staging" / model / "prompts" / dataset


def prompt_report(model: str, dataset: str, root: Path = ROOT) -> Path:
    """Stem of prompt@'s base-to-novel outputs (`.json`, `.details.json`, `.svg`); prompt_transfer@ adds
    `-transfer` to the target's."""
    return Path(root) / "reports" / "prompt" / f"{model}-{dataset}"


def gcd_report(dataset: str, root: Path = ROOT) -> Path:
    """Stem of the category-discovery outputs; add `.json`, `.details.json`, `.csv` or `.svg`."""
    return Path(root) / "reports" / "gcd" / dataset


def fewshot_file(dataset: str, root: Path = ROOT) -> Path:
    return Path(root) / "fewshot" / dataset / "fewshot.json"


def logits_store(model: str, dataset: str, root: Path = ROOT) -> Path:
    return Path(root) / "logits" / model / dataset / "logits.zarr"


def logits_staging(model: str, dataset: str, root: Path = ROOT) -> Path:
    return Path(root) / "logits" / ".staging" / model / dataset


def reports_dir(root: Path = ROOT) -> Path:
    return Path(root) / "reports"


def retrieval_report(model: str, dataset: str, root: Path = ROOT) -> Path:
    """Stem of the retrieval outputs; add `.json`, `.details.json` or `.csv`."""
    return Path(root) / "reports" / "retrieval" / f"{model}-{dataset}"


def owner_stage(store: Path) -> str | None:
    """The DVC stage that writes `store` (e.g. 'extract@demo-shapes'), or None for a path outside the layout."""
    parts = Path(store).resolve().parts
    if len(parts) >= 4 and parts[-4] == "features" and parts[-1] in FEATURE_STORES:
        return f"{FEATURE_STORES[parts[-1]]}@{parts[-3]}-{parts[-2]}"
    if len(parts) >= 4 and parts[-4] == "logits" and parts[-1] == "logits.zarr":
        return f"adapt@{parts[-3]}-{parts[-2]}"
    return None


ALL_DRAWS = "all"   # the draw key of methods that use no shots (zero-shot)


def logits_array(method: str, key: str, component: str, split: str) -> str:
    """Name of one component's (N, C) logits in logits.zarr, e.g. 'tip/shot_16-seed_1/alpha/test'."""
    return f"{method}/{key}/{component}/{split}"
