"""extract@{model}-{dataset}: image features of every manifest row -> features/<model>/<dataset>/images.zarr.
With `extract.tokens.<dataset>` (fp16 | fp32), also the projected output tokens (CLS + patches) as image/tokens.

usage: python stages/extract.py <model> <dataset>
Batch size and loader workers: env CLIPCACHE_BATCH_SIZE / CLIPCACHE_WORKERS or local.yaml (not params).
Several processes: env CLIPCACHE_TORCHRUN or local.yaml `torchrun:` ("--nproc_per_node 2"); this script then
re-runs itself under torchrun. An interrupted run resumes from the finished shards in features/.staging/,
with any number of processes.
"""

import json

import pandas as pd
from common import ROOT, args, stage_params
from pipeline import config, distributed, extract, features, layout, models, runtime

model_name, dataset_name = args(__doc__, "model", "dataset")
distributed.relaunch_under_torchrun(__file__, ROOT)
p = stage_params(f"extract@{model_name}-{dataset_name}", f"teacher_extract@{dataset_name}",
                 f"retune_extract@{dataset_name}")
# the teacher's and retune's stages declare no `extract.tokens`: their methods read no patch tokens
precision = config.precision(p)
tokens = config.token_precision(p, dataset_name) if "tokens" in p["extract"] else None
device, knobs, world = runtime.device(), runtime.settings(ROOT), distributed.current_world()
dataset = json.loads((layout.data_dir(dataset_name) / "dataset.json").read_text())
manifest = pd.read_parquet(layout.data_dir(dataset_name) / "manifest.parquet")
with distributed.process_group(world, device):
    m = models.load(layout.model_dir(model_name), device)
    extract.extract_images(
        m, manifest, ROOT / dataset["root"], layout.feature_dir(model_name, dataset_name) / "images.zarr",
        layout.staging_dir(model_name, dataset_name) / "images.zarr",
        features.provenance(m.card, dataset, precision, **({"tokens": tokens} if tokens else {})),
        batch_size=knobs["batch_size"], workers=knobs["workers"], device=device, precision=precision,
        tokens=tokens, world=world)
