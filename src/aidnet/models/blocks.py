"""Small 3-D building blocks: the encoder's conv block and the soft attention gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that sends a single CPU float32 volume to oneDNN.

    For a batch of one, PyTorch's CPU convolution takes its slow native kernel whenever the
    input's first four sizes multiply to 20,480 or less (a rule made for 2-D images, where
    it counts batch × channels × rows); for 3-D volumes that is most layers below the first
    stage, and it made a heat map's single-scan passes several times slower than two scans at
    once. The same weights, the same result to float rounding, the same parameters and
    checkpoints.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (
            input.dim() == 5
            and input.shape[0] == 1
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")  # bfloat16 autocast casts in conv3d
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
        ):
            return torch.mkldnn_convolution(
                input, weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)


def norm3d(channels: int) -> nn.BatchNorm3d:
    """BatchNorm, as in the attention-gated networks the paper builds on.

    Not GroupNorm: it normalises each scan on its own, so the global-average-pooled features
    that feed the classifier come out nearly the same for every scan, and the few voxels of a
    calcification cannot move them; with GroupNorm the encoder did not learn on our phantom
    (docs/results.md). Under ``torchrun`` on GPUs the layers become SyncBatchNorm, so statistics
    cover the global batch.
    """
    return nn.BatchNorm3d(channels)


class ConvBlock3d(nn.Sequential):
    """Two 3×3×3 conv–BatchNorm–ReLU layers.

    One stage of the plain 3-D CNN encoder of AID-Net (paper §2.2, Figure 2).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                Conv3d(c_in, out_channels, kernel_size=3, padding=1, bias=False),
                norm3d(out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class SoftAttentionGate3d(nn.Module):
    """3-D soft attention gate (SAG), Schlemper et al.'s grid attention extended to 3-D (§2.3).

    ``theta`` maps ``x`` onto a grid half its size (2×2×2 conv, stride 2), ``phi`` maps the
    gating signal ``g`` (1×1×1 conv) and is resampled onto theta's grid; ``psi`` turns
    ``ReLU(theta(x) + phi(g))`` into one channel whose sigmoid is the attention map. The map is
    resampled back to ``x``'s grid, multiplies ``x``, and the gated features go through a
    1×1×1 conv + normalisation (``W`` in the original). The intermediate width is 32 as in §2.3.

    ``forward(x, g)`` returns ``(gated, attention)``: gated is ``B×in_channels×Z×Y×X`` and
    attention ``B×1×Z×Y×X`` with values in [0, 1], both on ``x``'s grid. With
    ``features_out=False`` the gate has no ``W`` and ``gated`` is None: only its attention map
    is used (AID-Net's gated head).
    """

    def __init__(
        self,
        in_channels: int,
        gating_channels: int,
        inter_channels: int = 32,
        features_out: bool = True,
    ) -> None:
        super().__init__()
        self.theta = Conv3d(in_channels, inter_channels, kernel_size=2, stride=2, bias=False)
        self.phi = Conv3d(gating_channels, inter_channels, kernel_size=1)
        self.psi = Conv3d(inter_channels, 1, kernel_size=1)
        self.out = (
            nn.Sequential(  # no bias: the normalisation right after would cancel it
                Conv3d(in_channels, in_channels, kernel_size=1, bias=False),
                norm3d(in_channels),
            )
            if features_out
            else None
        )

    def forward(self, x: Tensor, g: Tensor) -> tuple[Tensor | None, Tensor]:
        theta_x = self.theta(x)
        phi_g = F.interpolate(
            self.phi(g), size=theta_x.shape[2:], mode="trilinear", align_corners=False
        )
        attention = self.psi(F.relu(theta_x + phi_g)).sigmoid()
        attention = F.interpolate(
            attention, size=x.shape[2:], mode="trilinear", align_corners=False
        )
        if self.out is None:
            return None, attention
        return self.out(x * attention), attention
