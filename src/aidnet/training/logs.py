"""Training logs: ``log.csv`` (one row per epoch) and TensorBoard event files, process 0 only."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

# training-loss parts, each an epoch mean (losses.PairLoss; "negative" unweighted)
LOSS_PARTS = ("loss", "ce", "contrastive", "negative")
# val_map_live: share of CAC-positive validation scans with any calcium-map evidence (NaN for
# models without a calcium map); 0 is a dead map
# grad_norm_max: the epoch's largest global gradient norm, before any clipping
LOG_COLUMNS = [
    "epoch",
    "lr",
    *LOSS_PARTS,
    "grad_norm_max",
    "val_auc",
    "val_accuracy",
    "val_map_live",
    "seconds",
]


class TrainLog:
    """Appends to ``RUN/log.csv`` and ``RUN/tensorboard/`` (``tensorboard --logdir RUN``)."""

    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.csv_path = out / "log.csv"
        self.writer: Any = None
        self.columns = list(LOG_COLUMNS)
        if not enabled:
            return
        if self.csv_path.exists():
            # a resumed run keeps its file's columns (a run from an older version has fewer)
            with self.csv_path.open(newline="") as fh:
                header = next(csv.reader(fh), None)
            if header and header[0] == "epoch" and set(header) <= set(LOG_COLUMNS):
                self.columns = header
        else:
            with self.csv_path.open("w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerow(LOG_COLUMNS)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"))

    def step(self, global_step: int, loss: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss_step", loss, global_step)

    def epoch(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.csv_path.open("a", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow(
                [row["epoch"]] + [_round(row[k]) for k in self.columns[1:]]
            )
        for key in (*LOSS_PARTS, "lr", "grad_norm_max"):
            if key in row:
                self.writer.add_scalar(f"train/{key}", row[key], row["epoch"])
        for key in ("val_auc", "val_accuracy", "val_map_live"):
            if key in row:
                self.writer.add_scalar(f"val/{key[4:]}", row[key], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _round(value: float) -> float:
    return round(float(value), 6)
