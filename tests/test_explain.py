"""Grad-CAM and attention maps: peak where the evidence is, high = important, overlays."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aidnet.explain.gradcam import attention_map, grad_cam
from aidnet.explain.overlay import save_overlay_png


@dataclass
class Out:
    logits: torch.Tensor
    features: torch.Tensor
    attention: torch.Tensor | None


class BrightSpotNet(nn.Module):
    """Features = ReLU of a fixed 3x3x3 mean filter on channel 1; CAC logit = their mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 1] = 1.0 / 27

    def forward_single(self, x):
        features = torch.relu(self.conv(x))
        pooled = features.mean(dim=(2, 3, 4)).sum(1, keepdim=True)
        logits = torch.cat([-pooled, pooled, pooled], dim=1)
        return Out(logits, features, torch.sigmoid(features[:, :1]))


def test_gradcam_peaks_at_the_evidence_and_is_not_inverted():
    model = BrightSpotNet()
    x = torch.zeros(1, 2, 12, 16, 20)
    x[0, 1, 3:5, 10:12, 14:16] = 1.0
    cam = grad_cam(model, x)
    assert cam.shape == (12, 16, 20) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == 1.0
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert 3 <= peak[0] <= 4 and 10 <= peak[1] <= 11 and 14 <= peak[2] <= 15
    assert cam[4, 11, 15] > 0.9 and cam[10, 2, 2] == 0.0
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_flat_map_is_zero_not_nan():
    cam = grad_cam(BrightSpotNet(), torch.zeros(1, 2, 8, 8, 8))
    assert np.all(cam == 0)


def test_attention_map_on_input_grid():
    x = torch.zeros(1, 2, 8, 10, 12)
    att = attention_map(BrightSpotNet(), x)
    assert att.shape == (8, 10, 12) and 0 <= att.min() <= att.max() <= 1


def test_overlay_png(tmp_path):
    ct = np.full((10, 40, 50), 40.0)
    heat = np.zeros_like(ct)
    heat[5, 20, 25] = 1
    save_overlay_png(ct, heat, (3.0, 0.8, 0.8), tmp_path / "o.png", title="x")
    data = (tmp_path / "o.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
