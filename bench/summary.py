"""The README's benchmark figures, rendered from reports/bench/*.json (never typed by hand).

usage: python -m bench.summary [--write]
Prints the markdown block; --write replaces the block between the README's bench markers.
tests/test_bench_reports.py fails when the README's block differs from what this renders.
"""

import argparse
import json

from bench.common import ROOT
from bench.context import code_digest

BEGIN, END = "<!-- bench:begin (python -m bench.summary --write) -->", "<!-- bench:end -->"


def _load(name: str) -> dict | None:
    path = ROOT / "reports" / "bench" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _family(prefix: str):
    """(name, report) of every reports/bench/<prefix>-*.json, by name."""
    for path in sorted((ROOT / "reports" / "bench").glob(f"{prefix}-*.json")):
        yield path.stem, json.loads(path.read_text())


def _where(r: dict) -> str:
    c = r["context"]
    moved = "" if code_digest(c["module"]) == c["code_sha256"] else "; **code changed since: re-run**"
    return f"{c['device']}, {c['torch_threads']} threads, commit {c['commit'][:8]}{moved}"


def lines() -> list[str]:
    out = []
    for name, r in _family("fusion_search"):
        m, t = r["mean"], r["throughput"]
        out.append(f"- `{name}` ({r['setup']['draws']} draws; {_where(r)}): mean val / test over draws, random "
                   f"{m['random']['val']:.2f} / {m['random']['test']:.2f}, random + refinement "
                   f"{m['refined']['val']:.2f} / {m['refined']['test']:.2f}, TPE {r['setup']['optuna_trials']} "
                   f"{m['tpe']['val']:.2f} / {m['tpe']['test']:.2f}; refinement >= TPE on every draw: "
                   f"{r['refined_ge_tpe_on_every_draw']}; batched {t['trials_per_s']['batched']:.0f} trials/s = "
                   f"{t['batched_over_tpe']}x TPE, {t['batched_over_loop']}x a per-trial loop.")
    for name, r in _family("closed_form"):
        per = ", ".join(f"{k} {v['total_s']:.2f}" for k, v in r["seconds_per_method"].items())
        out.append(f"- `{name}` ({r['setup']['draws']} draws; {_where(r)}): seconds per method, {per}.")
    for name, r in _family("semobridge_t"):
        per = "; ".join(f"{m} ({v['arch']}, D {v['D']}, d_t {v['d_t']}) {v['train_s']:.1f} s per run, "
                        f"{v['train_s_per_1000_steps']:.1f} s per 1,000 steps ({100 * v['val_scoring_share']:.0f}% "
                        f"of it val scoring)" for m, v in r["per_model"].items())
        v = next(iter(r["per_model"].values()))
        out.append(f"- `{name}` ({r['setup']['key']}: {v['classes']} classes x {v['shots_per_class']} shots with "
                   f"{v['extra_shots']}, {v['val_rows_scored']} val rows scored per step; {_where(r)}): SeMoBridge-T "
                   f"training at {r['setup']['steps']} steps, {per}; the reference: {r['setup']['reference']}.")
    for name, r in _family("sweep_cost"):
        out.append(f"- `{name}` ({_where(r)}): a fusion-weight edit re-runs {r['fixed_weight_edit']['stages_run']} "
                   f"in {r['ratio_fixed']:.3f}x the time of adapt + fuse.")
    for name in ("retrieval", "retrieval-demo-eurosat"):
        r = _load(name)
        if r:
            n = r["i2i_naive_over_chunked"]
            out.append(f"- `{name}` ({_where(r)}): naive full-matrix numpy / chunked ranking, eval time "
                       f"{n['eval_s']}x, RSS growth {n['eval_rss_growth']}x, mAP difference {n['mAP_abs_diff']}.")
    r = _load("retrieval_scale")
    if r:
        t, f, x = r["routes"]["topk"], r["routes"]["full_ranking"], r["full_over_topk"]
        extrapolated = f" (extrapolated linearly from {f['n_query']} queries)" if r["full_ranking_extrapolated"] else ""
        out.append(f"- `retrieval_scale` ({_where(r)}): {t['n_query']} x {t['n_gallery']} synthetic, FAISS top-k "
                   f"{t['eval_s']:.0f} s, peak RSS {t['peak_rss_mib']:.0f} MiB (+{t['eval_rss_growth_mib']:.0f}); "
                   f"full ranking {f['eval_s_extrapolated']:.0f} s{extrapolated}, peak RSS {f['peak_rss_mib']:.0f} MiB "
                   f"(+{f['eval_rss_growth_mib']:.0f}); full / top-k time {x['eval_s']}x, RSS growth "
                   f"{x['eval_rss_growth']}x.")
    r = _load("spectral_filter")
    if r:
        t, x, e = r["routes"]["truncated_full"], r["ratios"], r["routes"].get("exact_full")
        e, how = (e, "") if e else (r["exact_full_extrapolated"], " extrapolated")
        gib = lambda mib: f"{mib / 1024:.1f} GiB"
        sweep = ", ".join(f"{k[len('exact_K'):]} {x['exact_over_truncated_' + k[len('exact_'):]]['seconds']}x"
                          for k in r["routes"] if k.startswith("exact_K"))
        small = ", ".join(f"N {k[len('gram_N'):]} {x['gram_over_truncated_' + k[len('gram_'):]]['seconds']}x"
                          for k in r["routes"] if k.startswith("gram_N"))
        out.append(f"- `spectral_filter` ({_where(r)}): {t['N']} x {t['K0']} synthetic logits (k_e {t['k_e']}, "
                   f"k_c {t['k_c']}), truncated {t['seconds']:.0f} s, peak RSS {gib(t['peak_rss_mib'])} "
                   f"(+{gib(t['rss_growth_mib'])}); exact{how} {e['seconds']:.0f} s (+{gib(e['rss_growth_mib'])}), "
                   f"{x['exact_over_truncated_full']['seconds']}x; exact / truncated measured at K0 {sweep}; "
                   f"gram / truncated at K0 {t['K0']}: {small}.")
    for name, r in _family("inversion_latency"):
        q = r["ms_per_query"]
        out.append(f"- `{name}` ({_where(r)}): ms per query, batched / alone: OTI ({q['oti']['steps']} steps) "
                   f"{q['oti']['ms_per_query_batched']:.1f} / {q['oti']['ms_per_query_batch1']:.0f}, OVI "
                   f"({q['ovi']['steps']} steps) {q['ovi']['ms_per_query_batched']:.0f} / "
                   f"{q['ovi']['ms_per_query_batch1']:.0f}, IsoCLIP {q['isoclip']['ms_per_query_batched']:.2g} / "
                   f"{q['isoclip']['ms_per_query_batch1']:.2g}, bridge {q['bridge']['ms_per_query_batched']:.2g} / "
                   f"{q['bridge']['ms_per_query_batch1']:.2g}; OTI / bridge {r['ratios']['oti_over_bridge']['batched']:.3g}x "
                   f"batched, {r['ratios']['oti_over_bridge']['batch1']:.3g}x alone.")
    for name, r in _family("tokens"):
        out.append(f"- `{name}` ({r['images']} images; {_where(r)}): store size with fp16 / fp32 tokens "
                   f"{r['size_over_none']['fp16']}x / {r['size_over_none']['fp32']}x the store without, extraction "
                   f"time {r['time_over_none']['fp16']}x / {r['time_over_none']['fp32']}x.")
    for name, r in _family("gcd_training"):
        per = "; ".join(f"{t} tower {v['forward_s_per_batch']:.2f} s per batch, {v['epoch_with_forward_s']:.1f} s per "
                        f"epoch = {v['ratio']}x" for t, v in r["towers"].items())
        out.append(f"- `{name}` ({r['train_rows']} train rows, batch {r['batch']} x 2 views; {_where(r)}): SpectralGCD "
                   f"epoch on cached views {r['cached_epoch_s']:.2f} s; with the student's image tower on each batch: "
                   f"{per}.")
    r = _load("retune_epoch")
    if r:
        per = "; ".join(f"D {d}: {v['s_per_epoch']} s per epoch, training RSS growth {v['train_rss_growth_mib']:.0f} MiB "
                        f"for a {v['row_array_mib']:.0f} MiB row array" for d, v in r["per_dim"].items())
        out.append(f"- `retune_epoch` ({r['setup']['rows']} synthetic rows, batch {r['setup']['batch']}, "
                   f"{r['setup']['labels']} labels x {r['setup']['prompts']} prompts; {_where(r)}): {per}.")
    r = _load("prompt_training")
    if r:
        per = "; ".join(
            f"{name} ({v['classes']} classes, {v['steps_per_epoch']} steps per epoch): " + ", ".join(
                f"{m.upper() if m == 'kdpl' else 'CoOp'} {v[m]['cached_s_per_step']} s per step cached, "
                f"{v[m]['with_towers_s_per_step']} s with the image tower{'s' if m == 'kdpl' else ''} = "
                f"{v[m]['ratio']}x, {v[m]['run_s_cached']:.0f} / {v[m]['run_s_with_towers']:.0f} s per run"
                for m in ("coop", "kdpl")) for name, v in r["per_model"].items())
        out.append(f"- `prompt_training` ({r['shots']} shots x {r['views']} views, batch {r['batch']}, runs of "
                   f"{r['reference_epochs']} epochs from {r['measured_epochs']} measured; {_where(r)}): {per}.")
    r = _load("extraction")
    if r:
        by = ", ".join(f"{w} {v['median']:.2f}" for w, v in r["efficiency_by_workers"].items())
        out.append(f"- `extraction` ({r['model']}, {r['images']} EuroSAT images, median of {r['rounds']} alternated "
                   f"rounds; {_where(r)}): end-to-end / forward-only {r['efficiency']:.2f} at the default "
                   f"{r['workers']} loader workers (by workers: {by}); peak RSS growth {100 * r['rss_growth']:.1f}% from "
                   f"{' to '.join(r['peak_rss_mib'])} images; {r['max_files_per_array']} files per array at "
                   f"{r['rows']} rows.")
    r = _load("torchrun_extraction")
    if r:
        out.append(f"- `torchrun_extraction` ({r['images']} EuroSAT images, {r['shard_rows']}-row shards, {r['model']}; "
                   f"{_where(r)}): {r['nproc']} gloo processes / 1: {r['speedup']:.2f}x ({r['one_process']['seconds']:.0f} s "
                   f"-> {r['torchrun']['seconds']:.0f} s; {r['speedup_wall']:.2f}x with the launch), identical bytes: "
                   f"{r['identical_bytes']}.")
    r = _load("verify")
    if r:
        out.append(f"- `verify` ({_where(r)}): " + ", ".join(f"{k} {v}" for k, v in r.get("summary", {}).items()) + ".")
    return out


def block() -> str:
    return "\n".join([BEGIN, *lines(), END])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    text = block()
    if ap.parse_args().write:
        readme = ROOT / "README.md"
        s = readme.read_text()
        start, stop = s.index(BEGIN), s.index(END) + len(END)
        readme.write_text(s[:start] + text + s[stop:])
    print(text)


if __name__ == "__main__":
    main()
