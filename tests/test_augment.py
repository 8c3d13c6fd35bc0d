"""Scanner-variation augmentation of the CT channel (data/augment.py)."""

import numpy as np
import pytest
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


def test_posture_at_no_angle_and_no_scale_gives_the_input_back():
    from aidnet.data.augment import posture

    image = _image()
    assert torch.allclose(posture(image, 0.0, 1.0), image, atol=1e-6)


def _chest_with_a_plaque(y: int, x: int) -> torch.Tensor:
    """Soft tissue (0.3) with a lung on the left-hand columns (hidden, 0) and one bright
    one-voxel plaque at (4, y, x) in both channels."""
    image = torch.zeros(2, 9, 32, 40)
    image[0] = 0.3
    image[0, :, :, :8] = 0.0
    image[0, 4, y, x] = 0.9
    image[1, 4, y, x] = 0.7
    return image


def test_posture_keeps_every_plaque_and_its_value_and_moves_both_channels_together():
    from aidnet.data.augment import posture

    for angle, scale in [(10.0, 0.9), (-10.0, 1.1), (7.0, 1.0), (-3.0, 0.92), (90.0, 1.0)]:
        image = _chest_with_a_plaque(9, 30)
        out = posture(image, angle, scale)
        where = torch.nonzero(out[1])
        assert len(where) == 1 and float(out[1].max()) == pytest.approx(0.7)  # not lost, not dimmed
        z, y, x = (int(v) for v in where[0])
        assert z == 4 and (y, x) != (9, 30)  # moved in-plane only
        assert float(out[0, z, y, x]) > 0.5  # where the CT channel's bright voxel went
        # rotation and scale about the centre: the distance from it scales by `scale`
        centre = np.array([15.5, 19.5])
        before, after = (
            np.hypot(*(np.array([9, 30]) - centre)),
            np.hypot(*(np.array([y, x]) - centre)),
        )
        assert after == pytest.approx(before * scale, abs=1.0)
        assert torch.all((out[0] >= 0) & (out[0] <= 1))


def test_posture_keeps_hidden_voxels_at_zero_and_never_mirrors():
    from aidnet.data.augment import posture

    image = _chest_with_a_plaque(16, 30)
    for angle in (-10.0, 10.0):
        out = posture(image, angle, 1.0)
        values = out[0][out[0] > 0]
        assert float(values.min()) >= 0.3 - 1e-6  # no half-hidden blend at the lung's edge...
        hidden = (out[0] == 0).float().mean(dim=(0, 1))  # ...and the lung stays on the left
        assert float(hidden[:6].mean()) > 0.8 and float(hidden[20:30].mean()) < 0.1


def test_posture_variation_is_deterministic_for_a_seed():
    from aidnet.data.augment import posture_variation

    image = _chest_with_a_plaque(9, 30)
    a = posture_variation(image, np.random.default_rng([3, 1, 4]))
    b = posture_variation(image, np.random.default_rng([3, 1, 4]))
    c = posture_variation(image, np.random.default_rng([3, 1, 5]))
    assert torch.equal(a, b) and not torch.equal(a, c)
