"""prepare@{dataset} (and retune_prepare@{dataset}): build data/<dataset>/manifest.parquet and dataset.json.

usage: python stages/prepare.py <dataset>
"""

import shutil

from common import ROOT, args, stage_params
from pipeline import config, datasets, layout, multilabel_data, shapes
from pipeline.folder_datasets import folder_manifest
from pipeline.io import atomic_write_json
from pipeline.webdataset_datasets import webdataset_manifest

(name,) = args(__doc__, "dataset")
params = stage_params(f"prepare@{name}", f"retune_prepare@{name}")
if multilabel_data.is_multilabel(params, name):   # RE-tune's kinds: the N x C label matrix in the manifest
    multilabel_data.prepare(multilabel_data.dataset(params, name), layout.data_dir(name), ROOT)
    raise SystemExit
cfg = config.dataset(params, name, datasets.COOP)
out = layout.data_dir(name)
tmp = out.with_name(out.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
extra = {}
if cfg.kind in ("shapes", "scenes"):
    manifest = datasets.write_demo(tmp, cfg.kind, cfg.seed, cfg.per_class, cfg.blur)
    root, template = f"data/{name}", shapes.TEMPLATE
elif cfg.kind == "coop":
    root = cfg.root
    manifest = datasets.coop_manifest(cfg.coop_name, ROOT / root)
    datasets.check_images(manifest, ROOT / root)
    template = datasets.COOP[cfg.coop_name].template
elif cfg.kind == "folder":
    root, template = cfg.root, datasets.GENERIC_TEMPLATE
    manifest, skipped = folder_manifest(ROOT / root, cfg.split, cfg.ratio, cfg.seed)
    datasets.check_images(manifest, ROOT / root)
    extra = {"skipped_non_images": {"count": len(skipped), "first": skipped[:20]}}
else:
    root, template = cfg.root, datasets.GENERIC_TEMPLATE
    manifest = webdataset_manifest(ROOT / root, cfg.shards)   # decodes every member on the way
manifest.to_parquet(tmp / "manifest.parquet", index=False)
atomic_write_json(tmp / "dataset.json", {
    "name": name, "root": root, "template": cfg.template or template,
    "classnames": datasets.classnames(manifest), "manifest_sha256": datasets.manifest_digest(manifest),
    **({"primitives": shapes.primitives()} if cfg.kind == "scenes" else {}), **extra,
    "counts": manifest["split"].value_counts().to_dict()})
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
