"""The report is one self-contained, escaped HTML file, and a real browser shows it whole."""

import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from aidnet.evaluation.plots import plot_confusion_grid, plot_roc
from aidnet.report.html import gallery_entries, localisation_rows, pick_gallery, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOCALISATION = {
    "gradcam": {
        "n": 12,
        "pointing_hit_rate": 0.75,
        "pointing_hit_rate_ci95": [0.468, 0.911],
        "pointing_hit_rate_best_cell": 0.917,
        "coronary_mass_share_median": 0.41,
        "coronary_mass_share_mean": 0.38,
        "noncoronary_mass_share_median": 0.05,
        "noncoronary_mass_share_mean": 0.07,
        "hit_radius_mm": 5.0,
        "mass_radius_mm": 10.0,
    },
    "attention": {
        "n": 12,
        "pointing_hit_rate": 0.5,
        "pointing_hit_rate_ci95": [0.254, 0.746],
        "coronary_mass_share_median": 0.2,
        "coronary_mass_share_mean": 0.22,
        "noncoronary_mass_share_median": 0.1,
        "noncoronary_mass_share_mean": 0.12,
        "hit_radius_mm": 5.0,
        "mass_radius_mm": 10.0,
    },
}


def _comparison_row(rid, strategy, auc, p):
    return {
        "id": rid,
        "label": f"<i>{rid}</i>",
        "model": "aidnet",
        "strategy": strategy,
        "lambda": 0.001,
        "status": "done",
        "n": 40,
        "accuracy": 0.8,
        "accuracy_ci95": [0.7, 0.9],
        "auc": auc,
        "auc_ci95": [auc - 0.1, min(auc + 0.05, 1.0)],
        "sensitivity": 0.75,
        "sensitivity_ci95": [0.6, 0.9],
        "specificity": 0.85,
        "specificity_ci95": [0.7, 0.95],
        "delong": None if p is None else {"p": p, "difference": auc - 0.9},
    }


def _images(text: str) -> list[str]:
    return re.findall(r"<img [^>]*src=\"([^\"]*)\"", text)


def test_report_is_self_contained_and_escaped(tmp_path):
    roc = plot_roc({"m": ([0, 1], [0, 1], 0.5)}, tmp_path / "roc.png")
    path = write_report(
        tmp_path / "report.html",
        title="t <b>",
        summary={"cohort": "<b>10</b> scans"},
        metrics={"auc": 0.91, "auc_ci95": [0.8, 0.97], "accuracy": 0.85, "n": 10},
        figures={"ROC": roc},
        gallery=[{"kind": "FP", "caption": "<script>alert(1)</script>", "images": [("g", roc)]}],
        tables=[{"title": "rows", "columns": ["a"], "rows": [[1.23456]]}],
    )
    text = path.read_text()
    sources = _images(text)
    assert len(sources) == 2
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "&lt;b&gt;10&lt;/b&gt;" in text and "t &lt;b&gt;" in text
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert "0.910 (95% CI 0.800–0.970)" in text
    assert "1.235" in text
    assert "False positives" in text
    assert "No voxel labels in this cohort" in text


def test_comparison_and_localisation_tables(tmp_path):
    roc = plot_roc({"m": ([0, 1], [0, 1], 0.5)}, tmp_path / "roc.png")
    rows = [
        _comparison_row("resnet101-s2", 2, 0.8, 0.0004),
        _comparison_row("aidnet-l0-s2", 2, 0.85, 0.2345),
        _comparison_row("aidnet-l0.001-s2", 2, 0.9, None),
        {"id": "idnet-s2", "label": "ID-Net", "strategy": 2, "lambda": 0.001, "status": "failed"},
    ]
    loc = localisation_rows({"localisation": LOCALISATION}, label="AID-Net")
    text = write_report(
        tmp_path / "r.html",
        title="x",
        summary={},
        figures={"ROC": roc},
        comparison=rows,
        reference={2: "aidnet-l0.001-s2"},
        localisation=loc,
    ).read_text()
    assert "&lt;i&gt;resnet101-s2&lt;/i&gt;" in text
    assert "&lt; 0.001 (ΔAUC -0.100)" in text and "0.234 (ΔAUC -0.050)" in text
    assert text.count(">reference<") == 1 and ">failed<" in text
    assert "0.800 (0.700–0.850)" in text  # AUC with its interval
    assert "0.750 (0.468–0.911)" in text and "0.500 (0.254–0.746)" in text
    assert "<td class='num'>0.917</td>" in text  # Grad-CAM's best single cell
    assert "<td class='num'>—</td>" in text  # none for the attention map
    assert "Grad-CAM" in text and "SAG attention" in text
    assert "0.410 / 0.380" in text and "0.050 / 0.070" in text
    assert "No voxel labels" not in text
    assert "within 5 mm of coronary calcium" in text and "within 10 mm" in text
    assert [r["map"] for r in loc] == ["Grad-CAM", "SAG attention"]
    assert localisation_rows({}) == []


def test_gallery_picks_each_kind_first(tmp_path):
    predictions = tmp_path / "predictions.csv"
    rows = [  # (subject, p_cac, label): TP x2, FN, FP, TN x2
        ("a", 0.9, 2),
        ("b", 0.7, 1),
        ("c", 0.2, 1),
        ("d", 0.6, 0),
        ("e", 0.1, 0),
        ("f", 0.3, 0),
        ("g", 0.5, ""),
    ]
    with predictions.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject", "visit", "p_cac", "label"])
        writer.writerows((s, "scan/1", p, label) for s, p, label in rows)
    picked = pick_gallery(predictions, k=5)
    assert [c["kind"] for c in picked] == ["TP", "FN", "FP", "TN", "TP"]
    assert [c["key"] for c in picked] == [
        "a_scan-1",
        "c_scan-1",
        "d_scan-1",
        "e_scan-1",
        "b_scan-1",
    ]
    assert "P(CAC) = 0.90" in picked[0]["caption"]
    maps = [
        {
            "key": "a_scan-1",
            "gradcam_png": "a.png",
            "integrated_gradients_png": "g.png",
            "attention_png": "b.png",
        }
    ]
    entries = gallery_entries(picked, maps)
    images = [("Grad-CAM", "a.png"), ("Integrated gradients", "g.png"), ("SAG attention", "b.png")]
    assert entries == [{"kind": "TP", "caption": picked[0]["caption"], "images": images}]
    assert gallery_entries(picked, maps, attention=False)[0]["images"] == images[:2]


# --- in a real browser ----------------------------------------------------------------------

CHECK_SCRIPT = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const roc = document.querySelector('#roc img').getBoundingClientRect();
  const result = {
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    sources: [...new Set(imgs.map(i => i.src.split(':')[0]))],
    resources: performance.getEntriesByType('resource').map(r => r.name)
      .filter(n => !n.startsWith('data:')),
    roc: [roc.left, roc.top, roc.width, roc.height],
    dpr: window.devicePixelRatio,
  };
  const pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>
"""


WIDTH = 1280


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no chromium: `make test` installs Debian's chromium (apt-get install -y chromium, "
        "needs root); install it to run the browser check"
    )


def _run_browser(tmp_path, *args: str) -> subprocess.CompletedProcess:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-extensions",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _browser_report(tmp_path):
    curves = {
        "ResNet-101": ([0, 0.2, 0.5, 1], [0, 0.5, 0.8, 1], 0.71),
        "AID-Net λ=0.001": ([0, 0.1, 0.3, 1], [0, 0.7, 0.95, 1], 0.9),
    }
    roc = plot_roc(curves, tmp_path / "roc.png")
    grid = plot_confusion_grid(
        {"a": [[5, 1], [2, 4]], "b": [[6, 0], [1, 5]]}, ["no", "yes"], tmp_path / "cm.png"
    )
    rows = [_comparison_row("a", 2, 0.71, 0.03), _comparison_row("b", 2, 0.9, None)]
    return write_report(
        tmp_path / "report.html",
        title="browser check",
        summary={"cohort": "12 synthetic subjects"},
        figures={"ROC curves": roc, "Confusion": grid},
        comparison=rows,
        reference={2: "b"},
        localisation=localisation_rows({"localisation": LOCALISATION}),
        gallery=[{"kind": "TP", "caption": "case", "images": [("Grad-CAM", grid)]}],
    )


def _rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


@pytest.mark.slow
def test_report_in_a_real_browser(tmp_path):
    """Chromium loads the report with every image decoded from a data URI, asks the network
    for nothing, logs no load error, and its screenshot shows the ROC figure where the page
    lays it out."""
    if os.environ.get("AIDNET_SKIP_BROWSER"):
        pytest.skip("AIDNET_SKIP_BROWSER is set")
    report = _browser_report(tmp_path)
    html = report.read_text()

    # 1. every image decodes in the browser and nothing but data: URIs is loaded
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = _run_browser(
        tmp_path,
        f"--window-size={WIDTH},1000",  # the screenshot below has the same width: same layout
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r"<pre id=\"check\">(.*?)</pre>", dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["images"] == 3 == check["decoded"]
    assert check["sources"] == ["data"] and check["resources"] == []
    left, top, width, height = check["roc"]
    assert width > 300 and height > 300

    # 2. the untouched report loads with no failed resource in chromium's own log
    log = _run_browser(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri())
    assert log.returncode == 0
    for marker in ("Failed to load resource", "net::ERR_", "ERR_FILE_NOT_FOUND"):
        assert marker not in log.stderr, log.stderr[-2000:]
    assert log.stdout.count("<img") == 3

    # 3. a screenshot of the page: the region where the ROC <img> sits is the ROC figure
    shot = tmp_path / "shot.png"
    height_px = int(top + height) + 50
    result = _run_browser(
        tmp_path, f"--window-size={WIDTH},{height_px}", f"--screenshot={shot}", report.as_uri()
    )
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    screen = _rgb(shot.read_bytes())
    assert screen.shape[:2] == (height_px, WIDTH)
    x0, y0 = round(left) + 1, round(top) + 1  # inside the 1 px border
    figure = _rgb((tmp_path / "roc.png").read_bytes())
    h, w = figure.shape[:2]
    region = screen[y0 : y0 + h, x0 : x0 + w]
    assert region.shape == figure.shape
    assert region.std() > 30  # not blank
    assert np.abs(region - figure).mean() < 3  # the very figure, drawn 1:1
    # matplotlib's first two line colours (tab:blue, tab:orange) are on screen
    for colour in ((31, 119, 180), (255, 127, 14)):
        close = np.abs(region - np.array(colour)).sum(axis=2) < 40
        assert close.sum() > 100, colour
    # and the rest of the page is not where the ROC pixels came from: elsewhere differs
    assert np.abs(screen[:h, :w] - figure).mean() > 10
