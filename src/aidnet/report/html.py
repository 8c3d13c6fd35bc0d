"""report.html: one file, images embedded as data URIs, no scripts, nothing from the network."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aidnet.atomic import write_text_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;
padding:.3rem .6rem;text-align:left}th{background:#f3f3f3}.figs{display:flex;flex-wrap:wrap;
gap:1rem}.figs figure{margin:0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9rem;color:#555}.muted{color:#777;font-size:.9rem}
"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _ci(metrics: dict, key: str) -> str:
    ci = metrics.get(f"{key}_ci95")
    text = _fmt(metrics.get(key))
    if ci:
        text += f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})"
    return text


def write_report(
    path: Path,
    *,
    title: str,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    figures: dict[str, Path],
    gallery: Iterable[dict[str, Any]] = (),
    tables: Iterable[dict[str, Any]] = (),
) -> Path:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<h2>Summary</h2><table>",
    ]
    parts += [f"<tr><th>{e(str(k))}</th><td>{e(_fmt(v))}</td></tr>" for k, v in summary.items()]
    parts.append("</table><h2>Metrics (CAC present vs absent)</h2><table>")
    rows = [
        ("AUC", _ci(metrics, "auc")),
        ("accuracy", _ci(metrics, "accuracy")),
        ("sensitivity", _fmt(metrics.get("sensitivity"))),
        ("specificity", _fmt(metrics.get("specificity"))),
        ("scans (n)", _fmt(metrics.get("n"))),
        ("scans with CAC", _fmt(metrics.get("n_positive"))),
    ]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    parts.append("</table>")
    for note in metrics.get("notes", []):
        parts.append(f"<p class='muted'>{e(str(note))}</p>")
    for table in tables:
        parts.append(f"<h2>{e(str(table['title']))}</h2><table><tr>")
        parts += [f"<th>{e(str(c))}</th>" for c in table["columns"]]
        parts.append("</tr>")
        for row in table["rows"]:
            parts.append("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Figures</h2><div class='figs'>")
    for caption, fig_path in figures.items():
        parts.append(f"<figure>{_img(fig_path)}<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("</div>")
    gallery = list(gallery)
    if gallery:
        parts.append("<h2>Where the network looked (Grad-CAM on the patient's CT)</h2>")
        parts.append(
            "<p class='muted'>Slices through each heat map's peak; CT in a "
            "mediastinal window (W 400, L 40); patient left on the image right.</p>"
        )
        for case in gallery:
            parts.append(
                f"<figure>{_img(case['image_path'])}"
                f"<figcaption>{e(str(case['caption']))}</figcaption></figure>"
            )
    parts.append(
        "<p class='muted'>Written by aidnet. Synthetic or not, every number above was "
        "computed from the files of this run.</p></body></html>"
    )
    write_text_atomic(path, "".join(parts))
    return path
