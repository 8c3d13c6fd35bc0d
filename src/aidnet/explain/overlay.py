"""PNG overlays: axial, coronal and sagittal slices through the heat map's peak."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WINDOW = (40.0, 400.0)  # mediastinal window: level, width


def save_overlay_png(
    ct_hu: np.ndarray,
    heat: np.ndarray,
    spacing: tuple[float, float, float],
    path: Path,
    title: str = "",
) -> Path:
    """CT (z, y, x) in a mediastinal window with ``heat`` (same grid, [0, 1]) on top.

    Radiological convention: patient left on the image right (our x runs right → left),
    anterior at the top of axial slices, head at the top of coronal and sagittal ones.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if ct_hu.shape != heat.shape:
        raise ValueError(f"heat map shape {heat.shape} differs from CT shape {ct_hu.shape}")
    z, y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    level, width = WINDOW
    lo, hi = level - width / 2, level + width / 2
    sz, sy, sx = spacing
    views = [
        ("axial", ct_hu[z], heat[z], sy / sx),
        ("coronal", ct_hu[:, y, :], heat[:, y, :], sz / sx),
        ("sagittal", ct_hu[:, :, x], heat[:, :, x], sz / sy),
    ]
    fig = Figure(figsize=(12, 4.4), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    image = None
    for ax, (name, ct, hm, aspect) in zip(axes, views, strict=True):
        ax.imshow(ct, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        shown = np.ma.masked_less(hm, 0.05)
        image = ax.imshow(
            shown, cmap="jet", vmin=0, vmax=1, alpha=0.4, aspect=aspect, interpolation="bilinear"
        )
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01, label="importance")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path)
    return path
