"""3-D Grad-CAM at the feature map before global average pooling (paper §2.3, Fig. 2).

Score explained: the log-odds of CAC, log(P1 + P2) − log P0 for the 3-class model (strategy 2:
the CAC classes together), log P1 − log P0 for the 2-class model. Its gradient is that of
log P(CAC) divided by 1 − P(CAC), so after normalisation the maps are the same as for log P(CAC),
but they do not vanish when a confident model's P(CAC) rounds to 1 in float32 (the gradient of
log P(CAC) then underflows and every map would come out flat).

Beside Grad-CAM and the SAG map, the integrated gradients of the same score (Sundararajan et
al., 2017) from the scan without its calcium to the scan itself: a voxel-level map of which
calcifications the decision rests on, whatever the map Grad-CAM looks at (AID-Net's calcium
head puts that map on the input grid, the stage head's cells are centimetres wide).

Every map is min–max normalised to [0, 1] so that HIGH = IMPORTANT (unlike an inverting
normaliser; the attention map's floor, e.g. a uniform 0.5 of an undecided gate, becomes 0), and
a constant map becomes all zero.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aidnet.preprocess.geometry import CropGeometry
from aidnet.preprocess.sample import CALCIUM_HU, HU_HIGH, HU_LOW


def normalise(cam: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min–max to [0, 1], float32 (high stays high); a flat or non-finite map becomes zeros."""
    cam = torch.as_tensor(cam).detach().float()
    if cam.numel() == 0:
        return np.zeros(cam.shape, dtype=np.float32)
    low_t, high_t = torch.aminmax(cam)  # one pass over a full-resolution map
    low, high = float(low_t), float(high_t)
    if not np.isfinite(high) or high - low <= 1e-12:
        return np.zeros(cam.shape, dtype=np.float32)
    return (cam - low).div_(high - low).cpu().numpy()


def cac_score(logits: torch.Tensor) -> torch.Tensor:
    """The log-odds of CAC per scan: logsumexp of the CAC classes' logits minus class 0's."""
    logits = logits.float()
    return torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]


#: Riemann steps (midpoints) of the integrated gradients; more steps did not localise better
#: (docs/results.md).
IG_STEPS = 8
#: Steps per forward pass. PyTorch's CPU convolutions fall back to a slow native kernel for a
#: single small 3-D volume; two at a time take the fast (oneDNN) path, and the memory of a
#: training pair.
IG_BATCH = 2

#: The CT channel's value at the calcium threshold (130 HU on the [−200, 600] HU scale).
CALCIUM_LEVEL = (CALCIUM_HU - HU_LOW) / (HU_HIGH - HU_LOW)


def without_calcium(x: torch.Tensor) -> torch.Tensor:
    """The integrated gradients' baseline: the same network input with no calcium in it, the
    calcium channel empty and the CT channel capped at the 130 HU level."""
    base = x.detach().clone()
    base[:, 1] = 0.0
    base[:, 0] = base[:, 0].clamp(max=CALCIUM_LEVEL)
    return base


def integrated_gradients(
    model: Any, x: torch.Tensor, steps: int = IG_STEPS, batch: int = IG_BATCH
) -> torch.Tensor:
    """Integrated gradients of the CAC log-odds from :func:`without_calcium` to ``x``
    (1×2×Z×Y×X), summed over the input channels: 1×1×Z×Y×X, non-zero only where the input
    differs from the baseline, i.e. on calcium. The steps go through the network ``batch`` at
    a time (one forward and backward pass each); in eval mode each step's gradient is its own,
    so the batch changes nothing but the speed."""
    x = x.detach()
    base = without_calcium(x)
    total = torch.zeros_like(x, dtype=torch.float32)
    fractions = [(k + 0.5) / steps for k in range(steps)]
    batch = max(1, int(batch))
    was_training = model.training
    model.eval()  # batch statistics would mix the steps
    try:
        with torch.enable_grad():
            for start in range(0, steps, batch):
                chunk = torch.tensor(fractions[start : start + batch], device=x.device)
                alpha = chunk.to(x.dtype).view(-1, 1, 1, 1, 1)
                points = (base + alpha * (x - base)).requires_grad_(True)
                score = cac_score(model.forward_single(points).logits).sum()
                (grad,) = torch.autograd.grad(score, points)
                total += grad.float().sum(dim=0, keepdim=True)
    finally:
        model.train(was_training)
    return (total / steps * (x - base).float()).sum(dim=1, keepdim=True)


def upsample(net_map: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """B×1×z×y×x map → B×1×``size`` (the network's input grid), trilinear, float32."""
    return F.interpolate(net_map.float(), size=size, mode="trilinear", align_corners=False)


def network_maps(model: Any, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The heat maps of one scan (x: 1×2×Z×Y×X) on the input grid, in [0, 1]:

    - ``gradcam``: Grad-CAM at the feature map before global average pooling;
    - ``integrated_gradients``: the positive part of :func:`integrated_gradients`, which
      calcifications raise the CAC score;
    - ``attention``: the soft attention gate's map, for a model that has one.

    Parameters get no gradient and the model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model.forward_single(x)
            features = out.features
            (grads,) = torch.autograd.grad(cac_score(out.logits).sum(), features)
        weights = grads.mean(dim=(2, 3, 4), keepdim=True)
        cam = F.relu((weights * features).sum(dim=1, keepdim=True)).detach()
        size = tuple(x.shape[2:])
        maps = {"gradcam": normalise(upsample(cam, size)[0, 0])}
        maps["integrated_gradients"] = normalise(F.relu(integrated_gradients(model, x))[0, 0])
        if out.attention is not None:
            maps["attention"] = normalise(upsample(out.attention.detach(), size)[0, 0])
    finally:
        model.train(was_training)
    return maps


#: Grad-CAM's grid per model and input shape: it depends on nothing else, so one forward pass
#: serves every scan of an evaluation
_GRIDS: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], tuple[int, int, int]]] = (
    weakref.WeakKeyDictionary()
)


def feature_grid(model: Any, x: torch.Tensor) -> tuple[int, int, int]:
    """The grid of Grad-CAM's cells (the feature map before global average pooling) for the
    network input ``x`` (1×C×Z×Y×X): one forward pass in eval mode, no gradient, the first time
    a model meets an input of this shape."""
    known = _GRIDS.setdefault(model, {})
    shape = tuple(int(n) for n in x.shape[1:])
    if shape not in known:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                features = model.forward_single(x).features
        finally:
            model.train(was_training)
        nz, ny, nx = (int(n) for n in features.shape[2:])
        known[shape] = (nz, ny, nx)
    return known[shape]


def cell_peaks(grid: tuple[int, ...], geometry: CropGeometry) -> list[np.ndarray]:
    """Per axis (z, y, x): the original-grid indices where a map that is 1 in a single cell of a
    ``grid``-shaped feature map and 0 elsewhere peaks, once resampled as Grad-CAM is (onto the
    network grid by :func:`upsample`, then by ``geometry.to_original``); a tie goes to the first
    maximum, the pointing game's rule.

    Trilinear resampling is separable: a cell's peak is the product of its peaks along each
    axis, and the peaks of all cells the product of these per-axis sets. A real Grad-CAM, with
    weight on several cells, peaks near one of them (on a phantom's 98 test scans, within 1.33
    network voxels along every axis).
    """
    axes = []
    crop_start = geometry.crop_box[0::2]
    for cells, net, crop, start in zip(
        grid, geometry.network_shape, geometry.crop_shape, crop_start, strict=True
    ):
        one_hot = torch.eye(int(cells)).unsqueeze(1)  # cells × 1 × cells
        on_net = F.interpolate(one_hot, size=int(net), mode="linear", align_corners=False)
        on_crop = F.interpolate(on_net, size=int(crop), mode="linear", align_corners=False)[:, 0]
        index = torch.argmax(on_crop, dim=1).numpy()  # the first maximum, as np.argmax
        axes.append(np.unique(index) + int(start))
    return axes


def grad_cam(model: Any, x: torch.Tensor) -> np.ndarray:
    """Grad-CAM of one scan (x: 1×2×Z×Y×X) on the input grid, float32 in [0, 1]."""
    return network_maps(model, x)["gradcam"]


def attention_map(model: Any, x: torch.Tensor) -> np.ndarray | None:
    """The soft attention gate's map on the input grid, in [0, 1]; None without a gate."""
    return network_maps(model, x).get("attention")
