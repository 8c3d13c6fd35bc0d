"""What the training tests share: the split of a tiny cohort and weight comparisons."""

from __future__ import annotations

from pathlib import Path

import torch

from aidnet.training.checkpoint import load_checkpoint

TINY = {"val_fraction": 0.25, "test_fraction": 0.25}


def weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / name)["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if not a[key].is_floating_point() or atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            assert torch.allclose(a[key], b[key], atol=atol, rtol=0), (
                key,
                {k: float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()},
            )
