"""Torch datasets over the preprocessed cache: scan–rescan pairs and single scans."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from aidnet.data.augment import posture_variation, scanner_variation
from aidnet.data.cache import load_cached
from aidnet.data.manifest import ScanRecord


def target_of(record: ScanRecord, num_classes: int) -> int:
    """Training target: class 0/1/2 (strategy 2) or CAC yes/no (strategy 1)."""
    label = record.label
    if label is None:
        raise ValueError(f"{record.key} has no agatston score")
    return label if num_classes == 3 else int(label > 0)


@dataclass(frozen=True)
class Item:
    record: ScanRecord
    cache: Path


def make_pairs(items: list[Item]) -> list[tuple[Item, Item]]:
    """Scan–rescan pairs within each subject: consecutive visits in manifest order."""
    by_subject: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_subject[item.record.subject].append(item)
    pairs: list[tuple[Item, Item]] = []
    for subject in sorted(by_subject):
        visits = by_subject[subject]
        pairs.extend(zip(visits[:-1], visits[1:], strict=True))
    return pairs


def shift(image: torch.Tensor, offsets: tuple[int, int, int]) -> torch.Tensor:
    """Translate a (C, Z, Y, X) tensor by whole voxels, filling with zeros (no wrap-around)."""
    out = torch.zeros_like(image)
    src, dst = [slice(None)], [slice(None)]
    for d, n in zip(offsets, image.shape[1:], strict=True):
        if d >= 0:
            src.append(slice(0, n - d))
            dst.append(slice(d, n))
        else:
            src.append(slice(-d, n))
            dst.append(slice(0, n + d))
    out[tuple(dst)] = image[tuple(src)]
    return out


class _Base(Dataset):
    def __init__(
        self,
        num_classes: int,
        max_shift: int = 0,
        seed: int = 0,
        intensity: bool = False,
        posture: bool = False,
    ):
        self.num_classes = num_classes
        self.max_shift = max_shift
        self.intensity = intensity
        self.posture = posture
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _key(self, key: int | tuple[int, int]) -> tuple[int, int]:
        """(epoch, index) of a key: an index (of the epoch set by :meth:`set_epoch`) or an
        (epoch, index) pair, which reaches loader workers that outlive an epoch."""
        if isinstance(key, tuple):
            return int(key[0]), int(key[1])
        return self.epoch, int(key)

    def _load(self, item: Item, rng: np.random.Generator | None) -> torch.Tensor:
        image = torch.from_numpy(load_cached(item.cache).image)
        if rng is not None and self.max_shift > 0:
            offsets = rng.integers(-self.max_shift, self.max_shift + 1, size=3)
            image = shift(image, (int(offsets[0]), int(offsets[1]), int(offsets[2])))
        if rng is not None and self.posture:
            image = posture_variation(image, rng)
        if rng is not None and self.intensity:
            image = scanner_variation(image, rng)
        return image

    def _rng(self, epoch: int, index: int) -> np.random.Generator | None:
        if self.max_shift <= 0 and not self.intensity and not self.posture:
            return None
        return np.random.default_rng([self.seed, epoch, index])


class PairDataset(_Base):
    """(scan, rescan) pairs for the identical dual networks; order swapped at random."""

    def __init__(self, pairs: list[tuple[Item, Item]], num_classes: int, **kw):
        super().__init__(num_classes, **kw)
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = self._key(key)
        a, b = self.pairs[index]
        rng = self._rng(epoch, index)
        if rng is not None and rng.random() < 0.5:
            a, b = b, a
        return (
            self._load(a, rng),
            self._load(b, rng),
            target_of(a.record, self.num_classes),
            target_of(b.record, self.num_classes),
        )


class ScanDataset(_Base):
    """Single scans (baselines, validation, testing)."""

    def __init__(self, items: list[Item], num_classes: int, with_target: bool = True, **kw):
        super().__init__(num_classes, **kw)
        self.items = items
        self.with_target = with_target

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = self._key(key)
        item = self.items[index]
        image = self._load(item, self._rng(epoch, index))
        target = target_of(item.record, self.num_classes) if self.with_target else -1
        return image, target, index
