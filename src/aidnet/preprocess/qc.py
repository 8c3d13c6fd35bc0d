"""Quality-control picture of one preprocessed scan: is the lung mask right, does the crop hold
the lungs and the heart? An axial and a coronal slice through the lungs' centre of the original
CT (lung window) with the lung contour and the crop box, small enough to page through a cohort.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aidnet.io.volume import Volume

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WINDOW_HU = (-1000.0, 400.0)  # shows lung, soft tissue and the heart in one grey scale
LUNG_COLOUR, BOX_COLOUR = "#00e5ff", "#ffb000"


def lung_centre(lungs: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) index of the lung mask's centre of mass (the array centre when it is empty)."""
    mask = np.asarray(lungs) != 0
    centre = []
    for other in ((1, 2), (0, 2), (0, 1)):
        counts = mask.sum(axis=other, dtype=np.int64)
        total = counts.sum()
        mean = (np.arange(counts.size) @ counts) / total if total else (counts.size - 1) / 2
        centre.append(int(round(float(mean))))
    z, y, x = centre
    return z, y, x


def qc_figure(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    lungs: np.ndarray,
    crop_box: tuple[int, ...],
    title: str,
) -> Figure:
    """Matplotlib Figure (about 1000 × 480 px at 100 dpi), made without pyplot or a display."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    z, y, x = lung_centre(lungs)
    z0, z1, y0, y1, x0, x1 = (int(v) for v in crop_box)
    sz, sy, sx = (float(s) for s in spacing)
    views = (
        ("axial", hu[z], lungs[z], sy / sx, (x0, y0, x1 - x0, y1 - y0), f"z={z}"),
        ("coronal", hu[:, y], lungs[:, y], sz / sx, (x0, z0, x1 - x0, z1 - z0), f"y={y}"),
    )
    fig = Figure(figsize=(10.0, 4.8), dpi=100, facecolor="black")
    axes = fig.subplots(1, 2)
    for ax, (name, image, mask, aspect, (rx, ry, rw, rh), where) in zip(axes, views, strict=True):
        low, high = WINDOW_HU
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        if np.any(mask):
            ax.contour(np.asarray(mask) != 0, levels=[0.5], colors=LUNG_COLOUR, linewidths=0.8)
        ax.add_patch(
            Rectangle((rx - 0.5, ry - 0.5), rw, rh, fill=False, edgecolor=BOX_COLOUR, linewidth=1.2)
        )
        ax.set_title(f"{name} {where}  (R on the left)", color="white", fontsize=9)
        ax.set_axis_off()
    box = f"z {z0}:{z1}  y {y0}:{y1}  x {x0}:{x1}"
    fig.suptitle(
        f"{title}   shape {hu.shape}   spacing {sz:.2g}×{sy:.2g}×{sx:.2g} mm   crop {box}",
        color="white",
        fontsize=10,
    )
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.03)
    return fig


def write_qc(
    path: Path,
    volume: Volume,
    lungs: np.ndarray,
    crop_box: tuple[int, ...],
    title: str,
    *,
    temp_suffix: str = ".png",
) -> Path:
    """Write the QC PNG of one scan atomically; ``title`` is the scan key (no patient names).

    ``temp_suffix`` ends the temporary file's name while it is written (see ``atomic_path``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from aidnet.atomic import atomic_path

    fig = qc_figure(np.asarray(volume.array), volume.spacing, lungs, crop_box, title)
    canvas = FigureCanvasAgg(fig)
    with atomic_path(path, suffix=temp_suffix) as tmp, tmp.open("wb") as fh:
        canvas.print_png(fh)
    return Path(path)
