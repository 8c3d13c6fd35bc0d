"""3-D Grad-CAM at the feature map before global average pooling (paper §2.3, Fig. 2).

Score explained: the log-odds of CAC, log(P1 + P2) − log P0 for the 3-class model (strategy 2:
the CAC classes together), log P1 − log P0 for the 2-class model. Its gradient is that of
log P(CAC) divided by 1 − P(CAC), so after normalisation the maps are the same as for log P(CAC),
but they do not vanish when a confident model's P(CAC) rounds to 1 in float32 (the gradient of
log P(CAC) then underflows and every map would come out flat).
Grad-CAM and the SAG attention map are both
min–max normalised to [0, 1] so that HIGH = IMPORTANT (unlike an inverting normaliser; the
attention map's floor, e.g. a uniform 0.5 of an undecided gate, becomes 0), and a constant map
becomes all zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def normalise(cam: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min–max to [0, 1], float32 (high stays high); a flat or non-finite map becomes zeros."""
    cam = torch.as_tensor(cam).detach().float()
    low, high = float(cam.min()), float(cam.max())
    if not np.isfinite(high) or high - low <= 1e-12:
        return np.zeros(cam.shape, dtype=np.float32)
    return ((cam - low) / (high - low)).cpu().numpy().astype(np.float32)


def cac_score(logits: torch.Tensor) -> torch.Tensor:
    """The log-odds of CAC per scan: logsumexp of the CAC classes' logits minus class 0's."""
    logits = logits.float()
    return torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]


def network_maps(model: Any, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The heat maps of one scan (x: 1×2×Z×Y×X) on the input grid, in [0, 1], from ONE forward
    and one backward pass:

    - ``gradcam``: Grad-CAM at the feature map before global average pooling;
    - ``gradcam_guided``: Grad-CAM times the positive part of gradient × input (summed over
      the input channels), the high-resolution "guided" Grad-CAM of Selvaraju et al. with
      gradient × input in place of guided backpropagation: the coarse map says which region,
      the input-gradient term which voxels in it the score depends on;
    - ``attention``: the soft attention gate's map, for a model that has one.

    Parameters get no gradient and the model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            out = model.forward_single(x)
            features = out.features
            grads, input_grads = torch.autograd.grad(cac_score(out.logits).sum(), [features, x])
        weights = grads.mean(dim=(2, 3, 4), keepdim=True)
        cam = F.relu((weights * features).sum(dim=1, keepdim=True)).detach()
        size = tuple(x.shape[2:])
        cam = F.interpolate(cam.float(), size=size, mode="trilinear", align_corners=False)
        evidence = F.relu((input_grads.float() * x.detach().float()).sum(dim=1, keepdim=True))
        maps = {
            "gradcam": normalise(cam[0, 0]),
            "gradcam_guided": normalise((cam * evidence)[0, 0]),
        }
        if out.attention is not None:
            att = out.attention.detach().float()
            att = F.interpolate(att, size=size, mode="trilinear", align_corners=False)
            maps["attention"] = normalise(att[0, 0])
    finally:
        model.train(was_training)
    return maps


def grad_cam(model: Any, x: torch.Tensor) -> np.ndarray:
    """Grad-CAM of one scan (x: 1×2×Z×Y×X) on the input grid, float32 in [0, 1]."""
    return network_maps(model, x)["gradcam"]


def attention_map(model: Any, x: torch.Tensor) -> np.ndarray | None:
    """The soft attention gate's map on the input grid, in [0, 1]; None without a gate."""
    return network_maps(model, x).get("attention")
