"""Shared test fixtures."""

import numpy as np
import pytest

from aidnet.io.volume import Volume, canonical_affine


@pytest.fixture
def head_ct() -> Volume:
    """A skull of bone around brain tissue with an air-filled sinus: a CT with no lungs."""
    shape, spacing = (30, 64, 64), (4.0, 3.0, 3.0)
    z, y, x = np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij")
    r = np.sqrt((z * 4.0 / 90) ** 2 + (y * 3.0 / 95) ** 2 + (x * 3.0 / 75) ** 2)
    hu = np.where(r <= 1.0, 700.0, -1000.0)
    hu[r <= 0.93] = 35.0
    sinus = np.sqrt((z * 4.0) ** 2 + ((y + 7) * 3.0) ** 2 + (x * 3.0) ** 2) <= 12
    hu[sinus] = -1000.0
    return Volume(hu.astype(np.float32), spacing, canonical_affine(spacing))
