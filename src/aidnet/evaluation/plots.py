"""ROC and confusion-matrix figures (matplotlib's object API: no global pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_roc(
    curves: dict[str, tuple[list, list, float | None]],
    path: Path,
    *,
    title: str = "ROC: CAC present vs absent",
) -> Path:
    """One ROC curve per model: {name: (fpr, tpr, auc)} (paper Fig. 5)."""
    size = (4.6, 4.4) if len(curves) <= 2 else (5.0, 4.7)
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    # overlapping curves (equal models) stay visible: each later one thinner and dashed
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (1, 1))]
    for i, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        label = name if auc is None else f"{name} (AUC {auc:.3f})"
        ax.plot(
            fpr,
            tpr,
            linewidth=max(2.6 - 0.3 * i, 1.2),
            linestyle=styles[i % len(styles)],
            label=label,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_confusion(matrix, labels: list[str], path: Path, title: str = "") -> Path:
    """Counts with true class on rows, predicted class on columns (paper Fig. 4)."""
    m = np.asarray(matrix)
    fig = _figure((3.8, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(m, cmap="Blues")
    for (i, j), value in np.ndenumerate(m):
        color = "white" if value > m.max() / 2 else "black"
        ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=12)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_confusion_grid(
    matrices: dict[str, list[list[int]]], labels: list[str], path: Path, title: str = ""
) -> Path:
    """One confusion matrix per model side by side, true class on rows (paper Fig. 4)."""
    n = max(len(matrices), 1)
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    fig = _figure((2.7 * cols + 0.4, 2.7 * rows + 0.5))
    for k, (name, matrix) in enumerate(matrices.items()):
        m = np.asarray(matrix)
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
        for (i, j), value in np.ndenumerate(m):
            color = "white" if value > m.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=11)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("true", fontsize=8)
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path
