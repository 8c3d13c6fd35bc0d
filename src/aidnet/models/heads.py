"""AID-Net's calcium head: the map before global average pooling on the input grid, kept on
the calcium candidates, and logits that can only rise with the evidence on it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aidnet.models.blocks import Conv3d, norm3d


class CalciumMap3d(nn.Module):
    """Encoder stages → a ``width``-channel map on the input grid, zero off the calcium.

    Each stage map goes through a 1×1×1 conv to ``width`` channels on its own grid; from the
    deepest stage up, the running sum is resampled (trilinear) onto the next finer stage's grid
    and that stage's term added, as in a feature pyramid, down to the first stage's grid, the
    input grid. Then normalisation and ReLU, one 3×3×3 conv–normalisation–ReLU, and a product
    with the calcium channel of the input (HU > 130, in [0, 1]): every voxel sees the first
    stage's detail and the deepest stage's context, and only calcium carries evidence.

    ``forward(maps, calcium)``: ``maps`` the encoder's stage maps (highest resolution first),
    ``calcium`` B×1×Z×Y×X on the first map's grid; returns B×width×Z×Y×X, non-negative.
    """

    def __init__(self, in_channels: tuple[int, ...], width: int = 8) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            Conv3d(int(c), width, kernel_size=1, bias=False) for c in in_channels
        )
        self.norm = norm3d(width)
        self.refine = nn.Sequential(
            Conv3d(width, width, kernel_size=3, padding=1, bias=False), norm3d(width)
        )
        self.width = width

    def forward(self, maps: list[Tensor], calcium: Tensor) -> Tensor:
        total = self.lateral[-1](maps[-1])
        for conv, stage in zip(self.lateral[-2::-1], maps[-2::-1], strict=True):
            total = conv(stage) + F.interpolate(
                total, size=stage.shape[2:], mode="trilinear", align_corners=False
            )
        out = F.relu(self.refine(F.relu(self.norm(total))))
        return out * calcium


class RisingClassifier(nn.Module):
    """Logits whose CAC classes can only rise with the pooled calcium map.

    ``forward(pooled, voxels, other, peak)``: ``pooled`` the global average of the map (B×K,
    ≥ 0), ``voxels`` the number of voxels it was averaged over, ``other`` further features (B×M,
    the SAG's) or None, ``peak`` the map's largest voxel per channel (B×K; needed with
    ``peak=True``). Each channel's evidence is ``log(1 + voxels · pooled)``, the log of its sum
    over the scan (Agatston scores span four orders of magnitude, and one small plaque must
    count), normalised by BatchNorm without an affine part (a positive rescaling and a shift).
    With ``peak=True`` each channel gives a second evidence, ``log(1 + peak)``: a sum is
    dominated by faint evidence spread over much other calcium (aorta, valves, bone), which
    can drown a small plaque; the largest voxel is not, and in CAC-negative scans its gradient
    falls on the one spot that looks most like a plaque. Both rise with the map.
    The logits of classes 1… are the evidence times positive weights (softplus), class 0 is
    the reference; ``other`` goes through an ordinary Linear layer onto every class.

    So the log-odds of CAC never fall when the map grows anywhere, and Grad-CAM's channel
    weights on the map are all positive: its heat map is the map's evidence itself.

    ``norm_mode`` (training's ``evidence_norm``) says which statistics normalise the evidence
    in training; inference, and the saved weights, are the same in every mode:

    - ``"batch"`` (BatchNorm's own): the batch's. The classifier then sees only how a scan's
      evidence differs from its batch's, and a common factor on the map is a common shift of
      the log evidence that the normalisation removes: the cross-entropy cannot tell a map from
      the same map a thousand times fainter, so nothing resists a force that shrinks it (the
      negative-evidence penalty) until the map dies.
    - ``"running"``: the running statistics as they stood before the batch (the very first
      batch sets them), then updated from it without a gradient: a scan's evidence does not
      depend on the other scans of its batch; the statistics still follow a shrinking map.
    - ``"fixed"``: the first training batch sets the centre and it never changes, and the
      scale is the log's own: the evidence is the log of the map's sum on one fixed scale, so a
      fainter map gives fainter CAC logits on the positive scans and the cross-entropy pays.
    """

    def __init__(
        self,
        map_channels: int,
        num_classes: int,
        other_channels: int = 0,
        dropout: float = 0.0,
        norm_mode: str = "batch",
        peak: bool = False,
    ) -> None:
        super().__init__()
        evidence = map_channels * (2 if peak else 1)
        self.norm = nn.BatchNorm1d(evidence, affine=False)
        self.weight = nn.Parameter(torch.zeros(num_classes - 1, evidence))
        self.other = nn.Linear(other_channels, num_classes) if other_channels else None
        self.bias = None if other_channels else nn.Parameter(torch.zeros(num_classes))
        self.dropout = nn.Dropout(dropout)
        self.norm_mode = norm_mode
        self.peak = peak

    def _normalise(self, raw: Tensor) -> Tensor:
        norm = self.norm
        if not self.training or self.norm_mode == "batch":
            return norm(raw)
        assert norm.running_mean is not None and norm.running_var is not None
        assert norm.num_batches_tracked is not None
        with torch.no_grad():
            batch_mean = raw.mean(0)
            batch_var = raw.var(0) if raw.shape[0] > 1 else norm.running_var.clone()
            first = int(norm.num_batches_tracked) == 0
            if first:  # the first batch sets the statistics
                norm.running_mean.copy_(batch_mean)
                # fixed: a centre only; the scale stays the log's own (the softplus weights
                # learn it), since a few scans' spread is no scale to keep for a whole run
                if self.norm_mode == "running":
                    norm.running_var.copy_(batch_var)
                else:
                    norm.running_var.fill_(1 - norm.eps)
            mean, var = norm.running_mean.clone(), norm.running_var.clone()
            if self.norm_mode == "running" or first:
                # then a plain mean over the first batches, later the layer's momentum
                norm.num_batches_tracked += 1
            if self.norm_mode == "running":
                rate = max(float(norm.momentum or 0.0), 1.0 / float(norm.num_batches_tracked))
                norm.running_mean.lerp_(batch_mean, rate)
                norm.running_var.lerp_(batch_var, rate)
        return (raw - mean) / torch.sqrt(var + norm.eps)

    def parts(
        self,
        pooled: Tensor,
        voxels: int,
        other: Tensor | None = None,
        peak: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The logits' two terms: the calcium evidence's (B×classes, class 0 zero) and the
        rest's (``other`` through its Linear layer, or the bias); :meth:`forward` adds them."""
        raw = torch.log1p(pooled * voxels)
        if self.peak:
            if peak is None:
                raise ValueError("this classifier needs the map's peak")
            raw = torch.cat([raw, torch.log1p(peak)], dim=1)
        evidence = self.dropout(self._normalise(raw))
        from_map = F.pad(evidence @ F.softplus(self.weight).T, (1, 0))
        if self.other is not None:
            if other is None:
                raise ValueError("this classifier needs the other features")
            return from_map, self.other(self.dropout(other))
        assert self.bias is not None
        return from_map, self.bias[None]

    def forward(
        self,
        pooled: Tensor,
        voxels: int,
        other: Tensor | None = None,
        peak: Tensor | None = None,
    ) -> Tensor:
        from_map, rest = self.parts(pooled, voxels, other, peak)
        return from_map + rest
