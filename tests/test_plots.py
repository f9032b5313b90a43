"""Static plot images (pipeline/plots.py) and the offline `dvc plots` page (.dvc/plots/offline.html).

The images are checked against the geometry the data imply (log2 spacing, bar lengths proportional to mAP,
a linear accuracy axis), not against stored bytes; the page by `dvc plots diff` in a scratch repo and, where
a headless Chromium exists, by rendering it with no network access.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run
from pipeline import plots, report
from pipeline.methods import REGISTRY

SHOTS = (1, 2, 4, 8, 16)
METRICS = {"zeroshot": {"test_acc": 35.0},
           "ncm": {f"shots_{k}": {"mean": 36.0 + 2 * i, "std": 0.5 + 0.1 * i} for i, k in enumerate(SHOTS)},
           "tip": {f"shots_{k}": {"mean": 40.0 + i * i, "std": 1.0} for i, k in enumerate(SHOTS)}}
VARIANTS = {"i2i": {"mAP": 30.0}, "i2t": {"mAP": 60.0}, "oti": {"mAP": 45.0}}


def _path_points(svg: str, gid: str) -> np.ndarray:
    """(x, y) vertices of the first path in the SVG group `gid`."""
    found = re.search(rf'<g id="{re.escape(gid)}">\s*<path d="([^"]+)"', svg)
    assert found, f"no path in group {gid}"
    return np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", found.group(1))]).reshape(-1, 2)


def test_accuracy_plot_is_deterministic_and_names_every_method():
    rows = report.plot_rows(METRICS)
    svg = plots.accuracy_vs_shots(rows, "toy / demo")
    assert svg == plots.accuracy_vs_shots(rows, "toy / demo")
    assert svg != plots.accuracy_vs_shots([{**r, "acc": r["acc"] + 0.01} for r in rows], "toy / demo")
    assert "<dc:date>" not in svg and "toy / demo" in svg
    for method in METRICS:
        assert f">{REGISTRY[method].label}<" in svg, REGISTRY[method].label


def test_accuracy_plot_has_a_log2_shots_axis_and_a_linear_accuracy_axis():
    svg = plots.accuracy_vs_shots(report.plot_rows(METRICS), "toy / demo")
    for method in ("ncm", "tip"):
        xy = _path_points(svg, plots.gid("curve", REGISTRY[method].label))
        assert len(xy) == len(SHOTS)
        np.testing.assert_allclose(np.diff(xy[:, 0]), np.diff(xy[:, 0]).mean(), rtol=1e-4)  # doublings: equal steps
        acc = np.array([METRICS[method][f"shots_{k}"]["mean"] for k in SHOTS])
        slope = np.diff(xy[:, 1]) / np.diff(acc)  # SVG y grows downwards
        assert (slope < 0).all()
        np.testing.assert_allclose(slope, slope.mean(), rtol=1e-4)
    for k in SHOTS:
        assert f">{k}<" in svg


def test_retrieval_plot_bars_are_proportional_to_map():
    svg = plots.retrieval_map({**VARIANTS, "faiss_only": {"mAP@10": 12.0}}, "Retrieval (demo, toy)")
    widths = {v: np.ptp(_path_points(svg, plots.gid("bar", v))[:, 0]) for v in VARIANTS}
    ratio = np.array([widths[v] / VARIANTS[v]["mAP"] for v in VARIANTS])
    np.testing.assert_allclose(ratio, ratio.mean(), rtol=1e-4)
    assert all(f">{v}<" in svg for v in VARIANTS)
    assert plots.gid("bar", "faiss_only") not in svg and "top-k route): faiss_only" in svg
    assert svg == plots.retrieval_map({**VARIANTS, "faiss_only": {"mAP@10": 12.0}}, "Retrieval (demo, toy)")


def test_retrieval_plot_without_map_is_an_error():
    with pytest.raises(ValueError, match="no variant has an mAP"):
        plots.retrieval_map({"i2i": {"mAP@10": 1.0}}, "t")


def test_spectrum_plot_shows_both_spectra_the_cut_off_and_the_gap():
    s_txt, s_psi = np.array([2.0, 1.0, 0.5, 0.05]), np.array([3.0, 1.5, 0.2, 0.0])
    svg = plots.spectrum(s_txt, s_psi, 0.1, 0.8123, "toy / demo")
    assert "modality gap 0.812" in svg and "bridge atol 0.1" in svg
    txt, atol = _path_points(svg, "sigma-W_txt"), _path_points(svg, "atol")
    assert len(txt) == 4 and len(np.unique(atol[:, 1])) == 1
    # log axis: equal ratios -> equal steps; the cut-off lies between sigma=0.5 and 0.05 (above = smaller y)
    np.testing.assert_allclose(np.diff(txt[:3, 1]), np.diff(txt[:3, 1]).mean(), rtol=1e-4)
    assert txt[2, 1] < atol[0, 1] < txt[3, 1]
    assert svg == plots.spectrum(s_txt, s_psi, 0.1, 0.8123, "toy / demo")
    assert 'id="atol"' not in plots.spectrum(s_txt, s_psi, None, 0.8123, "toy / demo")


def test_the_committed_template_is_what_the_generator_writes():
    pytest.importorskip("vl_convert", reason="vl-convert-python (the test extra) builds the template")
    from pipeline import plots_html
    assert plots_html.TEMPLATE.read_text(encoding="utf-8") == plots_html.page(), \
        "regenerate it: python -m pipeline.plots_html"


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """`dvc plots diff HEAD` in a scratch git + DVC repo with the project's .dvc/config and templates: one
    Vega-Lite plot (shots_log2) and one image plot, each changed since HEAD."""
    repo = tmp_path_factory.mktemp("plots")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    (repo / "dvc.yaml").write_text("plots:\n  - acc.csv:\n      x: shots\n      y: acc\n      template: shots_log2\n"
                                   "  - acc.svg\n")
    for step in (0.0, 1.5):
        rows = [{**r, "acc": r["acc"] + step} for r in report.plot_rows(METRICS)]
        (repo / "acc.csv").write_text(report.to_csv(rows))
        (repo / "acc.svg").write_text(plots.accuracy_vs_shots(rows, f"toy, +{step}"))
        if not step:
            run(["git", "add", "-A"], repo)
            run(git + ["commit", "-qm", "v1"], repo)
    run(["dvc", "plots", "diff", "HEAD", "-o", "out"], repo)
    return repo / "out" / "index.html"


def test_plots_page_inlines_vega_and_loads_nothing_from_the_network(page):
    html = page.read_text(encoding="utf-8")
    assert "window.vegaEmbed=" in html and "vegaEmbed('#" in html
    assert not re.search(r"<script[^>]*\bsrc=", html), "a script is loaded from elsewhere"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "something is fetched from the network"
    images = re.findall(r'<img src="([^"]+)"', html.split("</head>", 1)[1])  # the body, not the bundle's code
    assert len(images) == 2 and all((page.parent / src).is_file() for src in images)  # HEAD's and the workspace's


def _chromium() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium): the page was "
                    "checked structurally only")
    return found


def _browse(page: Path, *args: str) -> subprocess.CompletedProcess:
    # every request goes to a closed loopback port: a page that needed a CDN would stay blank
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--proxy-server=127.0.0.1:9", "--virtual-time-budget=15000",
           "--window-size=1400,1000", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_plots_page_renders_in_a_headless_browser(page, tmp_path):
    dom = _browse(page, "--dump-dom").stdout
    assert dom.count('class="marks"') >= 1, "Vega drew no chart: " + dom[-2000:]  # vega-embed's canvas
    shot = tmp_path / "page.png"
    _browse(page, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colour = (pixels.max(axis=2) - pixels.min(axis=2)) > 60   # lines and bars, not text or white
    assert colour.mean() > 0.002, f"the page looks blank ({colour.mean():.4%} coloured pixels)"
