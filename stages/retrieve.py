"""retrieve@{model}-{dataset}: retrieval metrics per variant -> reports/retrieval/<model>-<dataset>.*

usage: python stages/retrieve.py <model> <dataset>

Writes, all after every variant has been computed and each atomically: `<model>-<dataset>.json` (the DVC
metrics: per variant mAP, mAP@R, P@R, R@k, n_queries, n_skipped_no_relevant), `.details.json` (protocol,
variant descriptions, skipped variants and classes, IsoCLIP band / bridge spectrum), `.csv` (the plot) and
`.svg` (the same as an image).

Query/gallery splits, leave-one-out, ks and variants come from `retrieval` in params.yaml (METHODS.md §9);
IsoCLIP's band from `methods.isoclip.<arch>` (text side: `retrieval.isoclip_text.<arch>`), the bridge's
cut-off from `methods.semobridge.atol`; `oti` / `ovi` read the stores of `oti@` / `ovi@<model>-<dataset>`. Queries are ranked in blocks of CLIPCACHE_RETRIEVAL_CHUNK (env or
local.yaml; default 1024): peak memory ~ 16 * chunk * gallery bytes whatever the query count.
"""

import json

from common import ROOT, args, stage_params
from pipeline import config, features, inversion_store, layout, plots, retrieval_variants as rv, runtime
from pipeline.io import atomic_write_json, atomic_write_text

METRICS = ("mAP", "mAP@R", "P@R")

model_name, dataset_name = args(__doc__, "model", "dataset")
card = json.loads((layout.model_dir(model_name) / "card.json").read_text())
dataset = json.loads((layout.data_dir(dataset_name) / "dataset.json").read_text())
cfg = config.retrieval(stage_params(f"retrieve@{model_name}-{dataset_name}"), card["arch"], rv.VARIANTS)
feats = features.load(layout.feature_dir(model_name, dataset_name), card, dataset)
inverted = {v: inversion_store.load(layout.feature_dir(model_name, dataset_name) / f"{v}.zarr", v, card, dataset)
            for v in cfg.variants if v in rv.INVERTED}
q_rows = rv.split_rows(feats.split, cfg.query, "query")
g_rows = rv.split_rows(feats.split, cfg.gallery, "gallery")
device, chunk = runtime.device(), runtime.settings(ROOT)["retrieval_chunk"]

results, skipped, info = {}, {}, {}
for variant in cfg.variants:
    try:
        task = rv.build(variant, feats, q_rows, feats, g_rows, cfg, device, inverted.get(variant))
        res = rv.run(task, cfg.ks, chunk=chunk, faiss_above=cfg.faiss_above)
    except rv.VariantSkipped as why:
        skipped[variant] = str(why)
        print(f"{variant:18s} skipped: {why}")
        continue
    except ValueError as exc:
        raise SystemExit(f"retrieve@{model_name}-{dataset_name}: variant {variant}: {exc}") from None
    if "skipped_classes" in res:  # AP is undefined without a relevant item: left out of every mean
        res["skipped_classes"] = [dataset["classnames"][c] for c in res["skipped_classes"]]
        print(f"{variant:18s} {res['n_skipped_no_relevant']} queries skipped (no relevant gallery item), "
              f"classes {res['skipped_classes']}")
    results[variant] = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    if task.info:
        info[variant] = task.info
    shown = [m for m in (*METRICS, "R@1", f"mAP@{cfg.ks[-1]}") if m in res]  # the FAISS route has no mAP
    print(f"{variant:18s} {res['route']:12s} " + "  ".join(f"{m} {results[variant][m]:.2f}" for m in shown))

protocol = {"leave_one_out": cfg.leave_one_out, "n_query": len(q_rows), "n_gallery": len(g_rows)}
metrics = {"protocol": protocol, "variants": {v: {k: x for k, x in r.items() if not isinstance(x, list)}
                                              for v, r in results.items()}}
details = {
    "model": model_name, "dataset": dataset_name,
    "protocol": {**protocol, "query": cfg.query, "gallery": cfg.gallery, "ks": cfg.ks, "relevance": "same label",
                 "similarity": "cosine (inner product of L2-normalised float32), exact full ranking"},
    "descriptions": {v: rv.VARIANTS[v] for v in cfg.variants},
    "skipped_variants": skipped,
    # queries of these classes have no relevant gallery item: AP is undefined, so they are left out of
    # every mean and counted in n_skipped_no_relevant
    "skipped_classes": {v: r["skipped_classes"] for v, r in results.items() if "skipped_classes" in r},
    "ks_dropped": {v: r["ks_dropped"] for v, r in results.items() if "ks_dropped" in r},
    "variant_info": info,
}
columns = ["variant", *METRICS, *(f"R@{k}" for k in cfg.ks)]
rows = [",".join(columns)] + [",".join([v] + [str(r.get(c, "")) for c in columns[1:]]) for v, r in results.items()]
out = layout.retrieval_report(model_name, dataset_name)
atomic_write_json(out.parent / (out.name + ".json"), metrics)
atomic_write_json(out.parent / (out.name + ".details.json"), details)
atomic_write_text(out.parent / (out.name + ".csv"), "\n".join(rows) + "\n")
atomic_write_text(out.parent / (out.name + ".svg"),
                  plots.retrieval_map(results, f"Retrieval mAP per variant ({model_name}, {dataset_name})"))
