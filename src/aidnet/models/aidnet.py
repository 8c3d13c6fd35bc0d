"""AID-Net and ID-Net: the identical dual (Siamese) 3-D network (paper §2.2–2.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aidnet.models.blocks import SoftAttentionGate3d
from aidnet.models.encoder import Encoder3d


@dataclass
class SingleOutput:
    """What one path of a model returns for one batch of scans.

    ``logits`` is B×C; ``features`` the last feature map before global average pooling (from
    ``forward_single`` it is the tensor the logits were computed from, the Grad-CAM target of
    §2.3; from the pair ``forward`` it is a row slice of the joint batch); ``attention`` the
    B×1×Z'×Y'×X' soft attention map on the gated stage's grid, or None without a SAG.
    """

    logits: Tensor
    features: Tensor
    attention: Tensor | None


def _rows(out: SingleOutput, rows: slice) -> SingleOutput:
    attention = None if out.attention is None else out.attention[rows]
    return SingleOutput(out.logits[rows], out.features[rows], attention)


class AIDNet(nn.Module):
    """Attention Identical Dual Network (paper §2.2–2.3; ``attention=False`` gives ID-Net).

    ONE :class:`Encoder3d` is applied to the scan and to the rescan, so both paths share every
    weight. Head of one path: the last stage map is the gate ``g`` and is global-average-pooled;
    with attention, a :class:`SoftAttentionGate3d` filters the second-to-last (higher-resolution)
    stage map with ``g``, the gated map is global-average-pooled and concatenated with the GAP
    of the last map, then dropout (the network's only dropout: channel dropout in the encoder
    stopped it from learning on our phantom) and the final Linear give the logits. Without
    attention only the GAP of the last map feeds the Linear.
    """

    siamese: bool = True

    def __init__(
        self,
        in_channels: int = 2,
        num_classes: int = 3,
        features: tuple[int, ...] = (16, 32, 64, 128),
        attention: bool = True,
        inter_channels: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.features = features
        self.encoder = Encoder3d(in_channels, features)
        self.gate: SoftAttentionGate3d | None = None
        head_in = features[-1]
        if attention:
            self.gate = SoftAttentionGate3d(features[-2], features[-1], inter_channels)
            head_in += features[-2]
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_in, num_classes)

    @property
    def attention(self) -> bool:
        return self.gate is not None

    def forward_single(self, x: Tensor) -> SingleOutput:
        """One batch of scans (B×in_channels×Z×Y×X) through the shared encoder and head."""
        maps = self.encoder(x.contiguous(memory_format=torch.channels_last_3d))
        last = maps[-1]
        pooled = [last.mean(dim=(2, 3, 4))]
        attention_map = None
        if self.gate is not None:
            gated, attention_map = self.gate(maps[-2], last)
            # attention pooling: the gated local features averaged with the attention as weights
            weights = attention_map / (attention_map.sum(dim=(2, 3, 4), keepdim=True) + 1e-6)
            pooled.insert(0, (gated * weights).sum(dim=(2, 3, 4)))
        logits = self.classifier(self.dropout(torch.cat(pooled, dim=1)))
        return SingleOutput(logits=logits, features=last, attention=attention_map)

    def forward(
        self, x1: Tensor, x2: Tensor | None = None
    ) -> tuple[SingleOutput, SingleOutput | None]:
        """Scan and (optional) rescan through the same encoder and head.

        Both go through in ONE batch (scans first, then rescans): the weights are shared by
        construction, and the batch normalisation sees every scan of the step (with the paper's
        batch of 2 pairs, 4 scans rather than 2, which trains markedly better).
        """
        if x2 is None:
            return self.forward_single(x1), None
        both = self.forward_single(torch.cat([x1, x2]))
        n = x1.shape[0]
        return _rows(both, slice(0, n)), _rows(both, slice(n, None))
