"""Scanner-variation augmentation of the CT channel (data/augment.py)."""

import numpy as np
import torch

from aidnet.data.augment import scanner_variation


def _image(seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ct = rng.uniform(0.2, 0.4, size=(12, 16, 20)).astype(np.float32)
    ct[:, :, :6] = 0.0  # hidden: lungs / outside the region of interest
    calcium = (rng.random((12, 16, 20)) > 0.97).astype(np.float32)
    return torch.from_numpy(np.stack([ct, calcium]))


def test_it_changes_the_ct_channel_only_where_tissue_is_shown():
    image = _image()
    changed = [scanner_variation(image, np.random.default_rng(s)) for s in range(8)]
    for out in changed:
        assert out.shape == image.shape and out.dtype == image.dtype
        assert torch.equal(out[1], image[1])  # the calcium channel is left alone
        assert torch.all(out[0][:, :, :6] == 0)  # hidden voxels stay hidden
        assert torch.all((out[0] >= 0) & (out[0] <= 1))
    diffs = [float((out[0] - image[0]).abs().max()) for out in changed]
    assert max(diffs) > 0.01  # it does something
    # offsets are a few tens of HU (1 unit = 800 HU), never a different tissue
    assert max(diffs) < 100 / 800
    assert not torch.equal(changed[0], image)  # input not modified in place...
    assert torch.equal(image, _image())


def test_it_is_deterministic_for_a_seed_and_differs_between_seeds():
    image = _image()
    a = scanner_variation(image, np.random.default_rng([3, 1, 4]))
    b = scanner_variation(image, np.random.default_rng([3, 1, 4]))
    c = scanner_variation(image, np.random.default_rng([3, 1, 5]))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_it_never_flips_left_and_right():
    image = _image()
    image[0, :, :, 6:] = torch.linspace(0.2, 0.5, 14)  # a left-right gradient
    for s in range(8):
        out = scanner_variation(image, np.random.default_rng(s))[0, :, :, 6:]
        assert (out[..., -1] - out[..., 0]).mean() > 0.2
