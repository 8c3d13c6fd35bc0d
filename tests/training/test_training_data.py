"""What training reads: one global batch order cut between processes, loader workers that
keep each epoch's augmentation, shifts that never mirror."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import TINY, assert_same_weights, weights

from aidnet.config import load_config
from aidnet.training.batches import epoch_batches
from aidnet.training.loop import train


def test_batches_are_one_global_order_cut_between_processes():
    one = epoch_batches(11, 2, seed=3, epoch=4)
    assert len(one) == 5 and all(len(b) == 2 for b in one)  # the odd item out is dropped
    assert len({i for b in one for i in b}) == 10
    ranks = [epoch_batches(11, 1, seed=3, epoch=4, world=2, rank=r) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    assert epoch_batches(11, 2, seed=3, epoch=5) != one  # a new order every epoch
    assert epoch_batches(1, 2, seed=0, epoch=0) == [[0]]  # fewer items than a batch: keep them
    with pytest.raises(ValueError, match="cannot fill one batch"):
        epoch_batches(3, 2, seed=0, epoch=0, world=2, rank=1)


@pytest.mark.slow
def test_loader_workers_that_outlive_an_epoch_train_the_same_weights(cohort, cache, tmp_path):
    """One DataLoader serves the whole run; with worker processes each batch carries its
    epoch, so the shifts (augmentation) of epoch 2 are epoch 2's, as without workers."""
    for workers in (0, 2):
        config = load_config("tiny", epochs=2, max_shift=2, num_workers=workers, **TINY)
        train(config, cohort, tmp_path / str(workers), cache_dir=cache, progress=False)
    assert_same_weights(weights(tmp_path / "0"), weights(tmp_path / "2"))


def test_augmentation_shifts_but_never_mirrors(tmp_path):
    """The heart is on the left: augmentation moves a scan by a few voxels, never flips it."""

    from aidnet.data.cache import save_cached
    from aidnet.data.datasets import Item, PairDataset
    from aidnet.data.manifest import ScanRecord

    image = np.zeros((2, 8, 10, 12), np.float32)
    image[1, 4, 5, 9] = 1.0  # a marker on the patient's left (high X)
    items = []
    for visit in ("scan", "rescan"):
        path = tmp_path / f"{visit}.npz"
        save_cached(path, image, {})
        record = ScanRecord("s", visit, path, 0.0, {})
        items.append(Item(record, path))
    dataset = PairDataset([(items[0], items[1])], 3, max_shift=2, seed=0)
    moves = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        for scan in dataset[0][:2]:
            (z, y, x) = np.argwhere(scan[1].numpy() > 0)[0]
            assert abs(z - 4) <= 2 and abs(y - 5) <= 2 and abs(x - 9) <= 2
            moves.add((z - 4, y - 5, x - 9))
    assert len(moves) > 10  # it does move


def test_posture_augmentation_keeps_the_marker_and_repeats_for_the_same_epoch(tmp_path):
    """With posture and scanner variation on, a one-voxel calcium marker is never lost nor
    mirrored, and an epoch's pair is the same when drawn again (what exact resume needs)."""
    from aidnet.data.cache import save_cached
    from aidnet.data.datasets import Item, PairDataset
    from aidnet.data.manifest import ScanRecord

    image = np.zeros((2, 8, 20, 24), np.float32)
    image[0, :, 4:16, 4:20] = 0.3
    image[0, 4, 10, 16] = image[1, 4, 10, 16] = 0.8  # on the patient's left (high X)
    items = []
    for visit in ("scan", "rescan"):
        path = tmp_path / f"{visit}.npz"
        save_cached(path, image, {})
        items.append(Item(ScanRecord("s", visit, path, 0.0, {}), path))
    kw = {"max_shift": 2, "seed": 0, "intensity": True}
    dataset = PairDataset([(items[0], items[1])], 3, posture=True, **kw)
    plain = PairDataset([(items[0], items[1])], 3, **kw)
    for epoch in range(12):
        dataset.set_epoch(epoch)
        plain.set_epoch(epoch)
        first, again = dataset[0], dataset[0]
        assert all(torch.equal(a, b) for a, b in zip(first[:2], again[:2], strict=True))
        assert not torch.equal(first[0], plain[0][0])
        for scan in first[:2]:
            where = np.argwhere(scan[1].numpy() > 0)
            assert len(where) == 1 and float(scan[1].max()) == pytest.approx(0.8)
            assert where[0][2] > 12  # still on the left
