"""Applying a network to scans: class probabilities of cached scans in batches, and a trained
model ready to apply. Used by training's validation, ``evaluate``, ``explain`` and ``predict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from aidnet.data.datasets import Item, ScanDataset
from aidnet.models.base import CACNet
from aidnet.preprocess.config import LATER_OPTIONS, PreprocessConfig

#: scans per batch when predicting (validation, evaluation)
PREDICT_BATCH = 4


@dataclass
class Trained:
    """A trained network on ``device`` in eval mode, its checkpoint's model description
    (``spec``) and where it came from (``run_dir``: the run folder given, else None)."""

    model: CACNet
    spec: dict
    path: Path
    run_dir: Path | None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False  # trained with mixed precision on GPUs (the saved config's ``amp``)

    @property
    def num_classes(self) -> int:
        return int(self.spec["num_classes"])

    @property
    def input_size(self) -> tuple[int, int, int]:
        z, y, x = self.spec["input_size"]
        return int(z), int(y), int(x)

    @property
    def preprocess(self) -> PreprocessConfig:
        """The scan → network-input settings the network was trained on."""
        # absent in older checkpoints: off
        options = {name: bool(self.spec.get(name, False)) for name in LATER_OPTIONS}
        return PreprocessConfig(size=self.input_size, **options)


def class_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes, computed in float32."""
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def predict_items(
    model: CACNet,
    items: list[Item],
    num_classes: int,
    device: torch.device,
    desc: str | None = None,
    map_sums: list[float] | None = None,
    amp: torch.dtype | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) of single scans through one path of the model; with ``desc``
    a progress bar of that name on a terminal. With ``map_sums`` a list, each scan's sum of its
    map before global average pooling is appended to it. With ``amp`` a dtype, the network runs
    under autocast to it (the probabilities are computed in float32)."""
    from tqdm import tqdm

    model.eval()
    loader = DataLoader(
        ScanDataset(items, num_classes, with_target=False), batch_size=PREDICT_BATCH
    )
    out = []
    bar = tqdm(loader, desc=desc, unit="batch", disable=None if desc else True, leave=False)
    for image, _, _ in bar:
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
            single = model.forward_single(image.to(device))
        out.append(class_probs(single.logits).cpu().numpy())
        if map_sums is not None:
            map_sums.extend(single.features.flatten(1).float().sum(1).cpu().tolist())
    return np.concatenate(out) if out else np.zeros((0, num_classes))
