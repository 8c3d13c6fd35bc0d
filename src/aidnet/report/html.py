"""report.html: one file, images embedded as data URIs, no scripts, nothing from the network.

Used by ``aidnet demo`` (one model) and ``aidnet experiment`` (the paper's comparison). Every
string that came from the user or the data (subject ids, captions, paths) is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aidnet.atomic import write_text_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1200px;color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem}h3{font-size:1.05rem;margin:1rem 0 .3rem}table{border-collapse:collapse;
margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}
tr.ref td{background:#f6fbff}.figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0 0 1rem 0}figure img{max-width:100%;border:1px solid #eee;display:block}
figcaption{font-size:.9rem;color:#555}.muted{color:#777;font-size:.9rem}
"""
GALLERY_KINDS = {
    "TP": "True positives (CAC, called CAC)",
    "FN": "False negatives (CAC, called no CAC)",
    "FP": "False positives (no CAC, called CAC)",
    "TN": "True negatives (no CAC, called no CAC)",
}
MAP_NAMES = {
    "gradcam": "Grad-CAM",
    "attention": "SAG attention",
    "integrated_gradients": "Integrated gradients (on calcium)",
    "attention_calcium": "SAG attention on calcium",
}


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _with_ci(value: Any, ci: Sequence[float] | None) -> str:
    text = _fmt(value)
    if value is not None and ci and ci[0] is not None and ci[1] is not None:
        text += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return text


def _ci(metrics: dict, key: str) -> str:
    text = _with_ci(metrics.get(key), metrics.get(f"{key}_ci95"))
    return text.replace(" (", " (95% CI ", 1) if "(" in text else text


def _mm(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):g}"


def _p_value(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def pick_gallery(predictions: Path, k: int = 6, threshold: float = 0.5) -> list[dict[str, str]]:
    """Cases for the gallery from a predictions.csv: one true positive, false negative, false
    positive and true negative each (where there is one; the most confident first), then more
    in the same order, ``k`` in all. Returns ``{"key", "kind", "caption"}`` dicts."""
    with Path(predictions).open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] != ""]
    groups: dict[str, list[dict]] = {kind: [] for kind in GALLERY_KINDS}
    for r in rows:
        truth, called = int(r["label"]) > 0, float(r["p_cac"]) >= threshold
        groups[("T" if truth == called else "F") + ("P" if called else "N")].append(r)
    ranked: dict[str, list[dict]] = {
        kind: sorted(group, key=lambda r: float(r["p_cac"]), reverse=kind in ("TP", "FP"))
        for kind, group in groups.items()
    }
    order: list[tuple[str, dict]] = []
    depth = max((len(g) for g in ranked.values()), default=0)
    for i in range(depth):  # round-robin: one of each kind, then a second of each, …
        order += [(kind, ranked[kind][i]) for kind in GALLERY_KINDS if i < len(ranked[kind])]
    chosen = []
    for kind, r in order[:k]:
        key = "".join(
            c if c.isalnum() or c in "-_." else "-" for c in f"{r['subject']}_{r['visit']}"
        )
        caption = (
            f"{kind}: {r['subject']} {r['visit']}, P(CAC) = {float(r['p_cac']):.2f}, "
            f"true class {r['label']}"
        )
        chosen.append({"key": key, "kind": kind, "caption": caption})
    return chosen


def gallery_entries(
    picked: list[dict[str, str]], maps: list[dict], attention: bool = True
) -> list[dict[str, Any]]:
    """Gallery entries (kind, caption, images) for the picked cases that have heat maps."""
    by_key = {m["key"]: m for m in maps}
    entries = []
    for case in picked:
        written = by_key.get(case["key"])
        if written is None:
            continue
        images = [("Grad-CAM", written["gradcam_png"])]
        if "integrated_gradients_png" in written:
            images.append(("Integrated gradients", written["integrated_gradients_png"]))
        if attention and "attention_png" in written:
            images.append(("SAG attention", written["attention_png"]))
        entries.append({"kind": case["kind"], "caption": case["caption"], "images": images})
    return entries


def localisation_rows(metrics: dict, label: str = "") -> list[dict[str, Any]]:
    """Rows of the localisation table from ``metrics["localisation"]`` (empty when absent)."""
    rows = []
    for key, scores in (metrics.get("localisation") or {}).items():
        if isinstance(scores, dict):
            rows.append({"label": label, "map": MAP_NAMES.get(key, key), **scores})
    return rows


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]], classes=None) -> list[str]:
    e = html.escape
    parts = ["<table><tr>", *(f"<th>{e(c)}</th>" for c in columns), "</tr>"]
    for i, row in enumerate(rows):
        cls = f" class='{classes[i]}'" if classes and classes[i] else ""
        cells = "".join(
            f"<td class='num'>{e(v)}</td>" if j else f"<td>{e(v)}</td>" for j, v in enumerate(row)
        )
        parts.append(f"<tr{cls}>{cells}</tr>")
    parts.append("</table>")
    return parts


def _key_values(rows: Iterable[tuple[str, str]]) -> list[str]:
    e = html.escape
    return ["<table>", *(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows), "</table>"]


def _comparison(rows: list[dict[str, Any]], reference: dict[int, str]) -> list[str]:
    columns = [
        "row",
        "strategy",
        "λ",
        "n",
        "accuracy (95% CI)",
        "AUC (95% CI)",
        "sensitivity (95% CI)",
        "specificity (95% CI)",
        "DeLong p vs AID-Net λ=0.001",
    ]
    body, classes = [], []
    for r in rows:
        if r.get("status") != "done":
            body.append([r["label"], str(r["strategy"]), _fmt(r.get("lambda"))] + ["—"] * 5)
            body[-1].append(str(r.get("status", "not run")))
            classes.append("")
            continue
        delong = r.get("delong")
        body.append(
            [
                r["label"],
                str(r["strategy"]),
                "—" if r.get("lambda") is None else f"{r['lambda']:g}",
                _fmt(r.get("n")),
                *(_with_ci(r.get(k), r.get(f"{k}_ci95")) for k in _RATES),
                "reference" if r["id"] == reference.get(r["strategy"]) else _delong_cell(delong),
            ]
        )
        classes.append("ref" if r["id"] == reference.get(r["strategy"]) else "")
    return _table(columns, body, classes)


_RATES = ("accuracy", "auc", "sensitivity", "specificity")


def _delong_cell(delong: dict | None) -> str:
    if not delong:
        return "n/a"
    text = _p_value(delong.get("p"))
    if delong.get("difference") is not None:
        text += f" (ΔAUC {delong['difference']:+.3f})"
    return text


def _localisation(rows: list[dict[str, Any]]) -> list[str]:
    with_label = any(r.get("label") for r in rows)
    columns = (["row"] if with_label else []) + [
        "map",
        "CAC scans (n)",
        "pointing hit rate (95% CI)",
        "best single cell",
        "coronary mass share, median / mean",
        "non-coronary mass share, median / mean",
    ]
    body = []
    for r in rows:
        body.append(
            ([str(r.get("label", ""))] if with_label else [])
            + [
                str(r["map"]),
                _fmt(r.get("n")),
                _with_ci(r.get("pointing_hit_rate"), r.get("pointing_hit_rate_ci95")),
                _fmt(r["pointing_hit_rate_best_cell"])
                if "pointing_hit_rate_best_cell" in r
                else "—",
                f"{_fmt(r.get('coronary_mass_share_median'))} / "
                f"{_fmt(r.get('coronary_mass_share_mean'))}",
                f"{_fmt(r.get('noncoronary_mass_share_median'))} / "
                f"{_fmt(r.get('noncoronary_mass_share_mean'))}",
            ]
        )
    return _table(columns, body)


def write_report(
    path: Path,
    *,
    title: str,
    summary: dict[str, Any],
    figures: dict[str, Path],
    metrics: dict[str, Any] | None = None,
    comparison: list[dict[str, Any]] | None = None,
    reference: dict[int, str] | None = None,
    localisation: list[dict[str, Any]] | None = None,
    gallery: Iterable[dict[str, Any]] = (),
    tables: Iterable[dict[str, Any]] = (),
    notes: Iterable[str] = (),
) -> Path:
    """Write the report.

    ``metrics``: one model's metrics (``aidnet demo``); ``comparison``: the experiment's rows
    (``reference`` names the AID-Net λ=0.001 row of each strategy); ``figures``: caption →
    PNG, the first one being the ROC figure (``id="roc"``); ``localisation``: rows from
    :func:`localisation_rows` (None or empty: the cohort has no voxel labels); ``gallery``:
    ``{"kind": "TP"|"FP"|"FN"|"TN", "caption", "images": [(name, png), …]}``.
    """
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<h2 id='cohort'>Cohort and run</h2>",
    ]
    parts += _key_values([(str(k), _fmt(v)) for k, v in summary.items()])
    if comparison is not None:
        parts.append(
            "<h2 id='comparison'>Comparison on the test split (CAC present vs absent)</h2>"
        )
        parts += _comparison(comparison, reference or {})
        parts.append(
            "<p class='muted'>Intervals: 95% percentile bootstrap resampling whole subjects "
            "(a subject's scan and rescan stay together). DeLong's test compares each row's AUC "
            "with AID-Net λ=0.001 of the same strategy on the same test scans, with a subject's "
            "scan and rescan as one correlated cluster (Obuchowski 1997).</p>"
        )
    if metrics is not None:
        parts.append("<h2 id='metrics'>Metrics (CAC present vs absent)</h2>")
        rows = [(name, _ci(metrics, key)) for name, key in zip(_RATE_NAMES, _RATES, strict=True)]
        rows += [
            ("scans (n)", _fmt(metrics.get("n"))),
            ("scans with CAC", _fmt(metrics.get("n_positive"))),
        ]
        parts += _key_values(rows)
        for note in metrics.get("notes", []):
            parts.append(f"<p class='muted'>{e(str(note))}</p>")
    for note in notes:
        parts.append(f"<p class='muted'>{e(str(note))}</p>")
    for table in tables:
        parts.append(f"<h2>{e(str(table['title']))}</h2>")
        parts += _table(
            [str(c) for c in table["columns"]], [[_fmt(v) for v in row] for row in table["rows"]]
        )
    parts.append("<h2 id='figures'>Figures</h2><div class='figs'>")
    for i, (caption, fig_path) in enumerate(figures.items()):
        fig_id = "roc" if i == 0 else f"figure-{i}"
        parts.append(
            f"<figure id='{fig_id}'>{_img(fig_path, caption)}"
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    parts.append("</div>")
    parts.append("<h2 id='localisation'>Localisation on voxel labels</h2>")
    if localisation:
        parts += _localisation(localisation)
        radii = localisation[0]
        parts.append(
            "<p class='muted'>CAC-positive scans only. Pointing game: the heat map's maximum lies "
            f"within {_mm(radii.get('hit_radius_mm'))} mm of coronary calcium (95% Wilson "
            "interval). Mass shares: share of the heat map within "
            f"{_mm(radii.get('mass_radius_mm'))} mm of coronary calcium, and of non-coronary "
            "calcium (label 2 of the label maps, e.g. aortic wall and valves). The "
            "'on calcium' maps are kept on the scan's calcium candidates only. Integrated "
            "gradients: which calcifications raise the CAC score, from the scan without its "
            "calcium to the scan itself. Grad-CAM lives on the grid of the map before global "
            "average pooling: the network input's grid, kept on calcium, for AID-Net's "
            "calcium head; cells centimetres wide for the stage head. Best single cell: the "
            "hit rate of a Grad-CAM that marks only the best-placed cell of its grid. A real "
            "Grad-CAM peaks within about a network voxel of one of those voxels, so this is "
            "roughly the most Grad-CAM at that layer can reach, whatever the network "
            "learned.</p>"
        )
    else:
        parts.append("<p>No voxel labels in this cohort: localisation was not measured.</p>")
    gallery = list(gallery)
    if gallery:
        parts.append(
            "<h2 id='gallery'>Where the network looked (heat maps on the patient's CT)</h2>"
        )
        parts.append(
            "<p class='muted'>Slices through each heat map's peak; CT in a mediastinal window "
            "(W 400, L 40); patient left on the image right.</p>"
        )
        for kind in [*GALLERY_KINDS, None]:
            cases = [
                c
                for c in gallery
                if c.get("kind") == kind or (kind is None and c.get("kind") not in GALLERY_KINDS)
            ]
            if not cases:
                continue
            if kind is not None:
                parts.append(f"<h3>{e(GALLERY_KINDS[kind])}</h3>")
            parts.append("<div class='figs'>")
            for case in cases:
                for name, image in case["images"]:
                    caption = f"{case['caption']} — {name}"
                    parts.append(
                        f"<figure>{_img(image, caption)}"
                        f"<figcaption>{e(caption)}</figcaption></figure>"
                    )
            parts.append("</div>")
    parts.append(
        "<p class='muted'>Written by aidnet. Every number above was computed from the files of "
        "this run.</p></body></html>"
    )
    write_text_atomic(path, "".join(parts))
    return path


_RATE_NAMES = ("accuracy", "AUC", "sensitivity", "specificity")
