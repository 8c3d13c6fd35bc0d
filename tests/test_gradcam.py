"""Grad-CAM against maps worked out by hand, and proof that its checks can fail.

A tiny model whose feature map is its (signed) input and whose head is linear on a spatially
weighted mean of it: logits = W · Σ_v M(v) A(v) / N + b. The gradient of the score at voxel v
of channel k is g_k M(v) / N, so Grad-CAM's channel weights are g_k · mean(M) / N and its map
is ReLU(Σ_k g_k A_k), min–max normalised, whatever the pooling pattern M. The score is the
log-odds of CAC (:func:`aidnet.explain.gradcam.cac_score`): g = W1 − W0 for 2 classes,
q1 W1 + q2 W2 − W0 for 3, q the softmax of the two CAC logits.

Each check below runs on the real :func:`aidnet.explain.gradcam.grad_cam` and must pass; the
same checks run on wrong versions of Grad-CAM and each wrong version must fail at least one.
Which checks catch which version (asserted exactly by
``test_each_wrong_version_fails_its_recorded_checks``, so this record cannot go stale):

======================================  ====  =====  ========  =======  =====  ====
wrong version                           2cls  3cls   neg = 0   pooling  signs  peak
======================================  ====  =====  ========  =======  =====  ====
no ReLU                                  x     x      x
per-voxel gradients as weights           x     x               x              x
absolute-value weights                   x     x      x                 x
plain feature sum (no weights)           x     x      x                 x      x
gradient of the wrong class (class 0)    x     x      x                        x
gradient of one CAC class only (1)       x     x      x                 x      x
======================================  ====  =====  ========  =======  =====  ====
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aidnet.explain.gradcam import cac_score, grad_cam, normalise, upsample

# Two signed feature channels on a 1×2×3 grid (Z, Y, X).
A0 = [[1.0, -2.0, 3.0], [0.0, 2.0, -1.0]]
A1 = [[2.0, 1.0, -1.0], [-3.0, 0.0, 1.0]]
POOLING = [[1.0, 1.0, 0.5], [1.0, 2.0, 1.0]]  # the head's spatial weights M, mean 13/12

# 2 classes: W0 = (−1, 1), W1 = (1, 0), so g = W1 − W0 = (2, −1), unequal and of both signs.
# Σ g A = 2 A0 − A1 = [[0, −5, 7], [3, 4, −3]]; ReLU and ÷ 7:
TWO_CLASS = dict(weight=[[-1.0, 1.0], [1.0, 0.0]], bias=[0.0, 0.0])
TWO_CLASS_MAP = [[0.0, 0.0, 1.0], [3 / 7, 4 / 7, 0.0]]
TWO_CLASS_AGAINST = [[False, True, False], [False, False, True]]  # Σ g A < 0

# 3 classes: W0 = (−1, 1), W1 = (3, −1), W2 = (1, −1). Pooled features s = Σ M A / 6 =
# (3.5/6, 0.5/6), so l1 = 3 s0 − s1 and l2 = s0 − s1 + b2 differ by b2 − 7/6: with
# b2 = ln 3 + 7/6, l2 − l1 = ln 3, q = (1/4, 3/4) and g = W1/4 + 3 W2/4 − W0 = (2.5, −2).
# Σ g A ∝ 5 A0 − 4 A1 = [[−3, −14, 19], [12, 10, −9]]; ReLU and ÷ 19:
THREE_CLASS = dict(
    weight=[[-1.0, 1.0], [3.0, -1.0], [1.0, -1.0]], bias=[0.0, 0.0, math.log(3) + 7 / 6]
)
THREE_CLASS_MAP = [[0.0, 0.0, 1.0], [12 / 19, 10 / 19, 0.0]]
THREE_CLASS_AGAINST = [[True, True, False], [False, False, True]]


@dataclass
class Out:
    logits: torch.Tensor
    features: torch.Tensor
    attention: torch.Tensor | None


class LinearHeadNet(nn.Module):
    """Features = the input (times a parameter equal to 1, so they carry a gradient);
    logits = W · (the features weighted by ``pooling``, averaged over space) + b."""

    def __init__(self, weight, bias, pooling=POOLING):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        self.register_buffer("weight", torch.tensor(weight))
        self.register_buffer("bias", torch.tensor(bias))
        self.register_buffer("pooling", torch.tensor(pooling)[None, None])

    def forward_single(self, x):
        features = x * self.gain
        pooled = (features * self.pooling).mean(dim=(2, 3, 4))
        return Out(pooled @ self.weight.T + self.bias, features, None)


def features(a0=A0, a1=A1) -> torch.Tensor:
    """The network input, which is also the feature map: 1×2×1×2×3."""
    return torch.tensor([a0, a1])[None, :, None]


# --- the checks: each takes a Grad-CAM, (model, x) -> map on x's grid ----------------------


def check_two_class_map(cam_fn):
    cam = cam_fn(LinearHeadNet(**TWO_CLASS), features())
    np.testing.assert_allclose(cam, [TWO_CLASS_MAP], atol=1e-6)


def check_three_class_map(cam_fn):
    model = LinearHeadNet(**THREE_CLASS)
    with torch.no_grad():  # the set-up: the CAC classes' softmax is (1/4, 3/4)
        logits = model.forward_single(features()).logits[0]
    assert torch.softmax(logits[1:], 0).tolist() == pytest.approx([0.25, 0.75], abs=1e-6)
    np.testing.assert_allclose(cam_fn(model, features()), [THREE_CLASS_MAP], atol=1e-6)


def check_evidence_against_cac_is_zero(cam_fn):
    """Where Σ g A < 0 the map is exactly 0 (ReLU); so is the voxel where it is 0."""
    for setting, against in ((TWO_CLASS, TWO_CLASS_AGAINST), (THREE_CLASS, THREE_CLASS_AGAINST)):
        cam = cam_fn(LinearHeadNet(**setting), features())[0]
        assert (cam[np.array(against)] == 0.0).all()
    assert cam_fn(LinearHeadNet(**TWO_CLASS), features())[0, 0, 0] == 0.0


def check_head_pooling_does_not_shape_the_map(cam_fn):
    """Grad-CAM's weights are gradients averaged over space: how the head weights the
    voxels changes them by one positive factor, not the map."""
    maps = [
        cam_fn(LinearHeadNet(**TWO_CLASS, pooling=pooling), features())
        for pooling in (POOLING, [[1.0] * 3] * 2, [[0.2, 3.0, 1.0], [0.5, 0.1, 2.0]])
    ]
    for cam in maps[1:]:
        np.testing.assert_allclose(cam, maps[0], atol=1e-6)


def check_head_signs_steer_the_map(cam_fn):
    """A channel that speaks against CAC (g1 = −1) lowers the map where it is high; once the
    head's sign of that channel flips (g1 = +1) it raises it there: the two maps differ."""
    flipped = dict(TWO_CLASS, weight=[[-1.0, -1.0], [1.0, 0.0]])
    original = cam_fn(LinearHeadNet(**TWO_CLASS), features())
    changed = cam_fn(LinearHeadNet(**flipped), features())
    assert np.abs(original - changed).max() > 0.1


def check_peak_where_the_cac_evidence_is(cam_fn):
    """Class 0 rests on channel 1, CAC on channel 0 as much (W0 = (0, 1), W1 = (1, 1), so
    g = (1, 0)): the map is ReLU(A0), whose peak (3, at y 0, x 2) is not channel 1's (2, at
    y 0, x 0)."""
    model = LinearHeadNet(weight=[[0.0, 1.0], [1.0, 1.0]], bias=[0.0, 0.0])
    cam = cam_fn(model, features())
    assert np.unravel_index(int(np.argmax(cam)), cam.shape) == (0, 0, 2)


CHECKS = {
    "2cls": check_two_class_map,
    "3cls": check_three_class_map,
    "neg = 0": check_evidence_against_cac_is_zero,
    "pooling": check_head_pooling_does_not_shape_the_map,
    "signs": check_head_signs_steer_the_map,
    "peak": check_peak_where_the_cac_evidence_is,
}


# --- Grad-CAM with one thing wrong at a time ---------------------------------------------------


def gradcam_variant(model, x, *, relu=True, weights="mean", target="cac"):
    """network_maps' Grad-CAM step by step; the defaults are the right method, each switch
    puts one wrong step in."""
    scores = {
        "cac": cac_score,
        "class0": lambda logits: logits[:, 0],
        "class1": lambda logits: logits[:, 1],
    }
    with torch.enable_grad():
        out = model.forward_single(x)
        (grads,) = torch.autograd.grad(scores[target](out.logits).sum(), out.features)
    alpha = grads.mean(dim=(2, 3, 4), keepdim=True)
    channel_weights = {
        "mean": alpha,
        "abs": alpha.abs(),
        "voxel": grads,
        "none": torch.ones_like(alpha),
    }[weights]
    cam = (channel_weights * out.features).sum(dim=1, keepdim=True).detach()
    if relu:
        cam = F.relu(cam)
    return normalise(upsample(cam, tuple(x.shape[2:]))[0, 0])


WRONG: dict[str, dict[str, Any]] = {
    "no ReLU": dict(relu=False),
    "per-voxel gradients": dict(weights="voxel"),
    "absolute-value weights": dict(weights="abs"),
    "plain feature sum": dict(weights="none"),
    "gradient of the wrong class (class 0)": dict(target="class0"),
    "gradient of one CAC class only (class 1)": dict(target="class1"),
}

#: Which checks each wrong version fails (the table in the module docstring).
CAUGHT = {
    "no ReLU": {"2cls", "3cls", "neg = 0"},
    "per-voxel gradients": {"2cls", "3cls", "pooling", "peak"},
    "absolute-value weights": {"2cls", "3cls", "neg = 0", "signs"},
    "plain feature sum": {"2cls", "3cls", "neg = 0", "signs", "peak"},
    "gradient of the wrong class (class 0)": {"2cls", "3cls", "neg = 0", "peak"},
    "gradient of one CAC class only (class 1)": {"2cls", "3cls", "neg = 0", "signs", "peak"},
}


def _fails(check, cam_fn) -> bool:
    try:
        check(cam_fn)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize("check", list(CHECKS))
def test_gradcam_passes_every_check(check):
    CHECKS[check](grad_cam)


def test_the_variants_default_is_the_real_gradcam():
    """The wrong versions differ from the real Grad-CAM by their one switch only."""
    for setting in (TWO_CLASS, THREE_CLASS):
        model = LinearHeadNet(**setting)
        np.testing.assert_array_equal(
            gradcam_variant(model, features()), grad_cam(model, features())
        )


@pytest.mark.parametrize("variant", list(WRONG))
def test_each_wrong_version_fails_its_recorded_checks(variant):
    def cam_fn(model, x):
        return gradcam_variant(model, x, **WRONG[variant])

    caught = {name for name, check in CHECKS.items() if _fails(check, cam_fn)}
    assert caught, f"{variant}: no check fails"
    assert caught == CAUGHT[variant]


def test_gradcam_leaves_the_model_as_it_found_it():
    model = LinearHeadNet(**THREE_CLASS).train()
    grad_cam(model, features())
    assert model.training and model.gain.grad is None


def test_feature_grid_runs_the_network_once_per_input_shape():
    from aidnet.explain.gradcam import feature_grid

    class Pooled(nn.Module):
        """Features on a grid half the input's; counts its forward passes."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward_single(self, x):
            self.calls += 1
            features = F.avg_pool3d(x, 2)
            return Out(features.mean(dim=(2, 3, 4)), features, None)

    model = Pooled().train()
    assert feature_grid(model, torch.zeros(1, 2, 4, 6, 8)) == (2, 3, 4)
    assert feature_grid(model, torch.ones(1, 2, 4, 6, 8)) == (2, 3, 4)
    assert model.calls == 1 and model.training
    assert feature_grid(model, torch.zeros(1, 2, 8, 6, 4)) == (4, 3, 2)
    assert model.calls == 2
    assert feature_grid(Pooled(), torch.zeros(1, 2, 4, 6, 8)) == (2, 3, 4)  # per model
