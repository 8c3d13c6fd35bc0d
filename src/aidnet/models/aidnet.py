"""AID-Net and ID-Net: the identical dual (Siamese) 3-D network (paper §2.2–2.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aidnet.config import EVIDENCE_POOLS
from aidnet.models.base import CACNet, FeatureMaps, SingleOutput
from aidnet.models.blocks import SoftAttentionGate3d
from aidnet.models.encoder import Encoder3d
from aidnet.models.heads import CalciumMap3d, RisingClassifier

HEADS = ("stage", "calcium", "gated")
CALCIUM_CHANNEL = 1  # the input's HU > 130 channel


def _rows(out: SingleOutput, rows: slice) -> SingleOutput:
    attention = None if out.attention is None else out.attention[rows]
    return SingleOutput(out.logits[rows], out.features[rows], attention)


class AIDNet(CACNet):
    """Attention Identical Dual Network (paper §2.2–2.3; ``attention=False`` gives ID-Net).

    ONE :class:`Encoder3d` is applied to the scan and to the rescan, so both paths share every
    weight. With attention, a :class:`SoftAttentionGate3d` filters the second-to-last
    (higher-resolution) stage map with the last stage map as the gate ``g``; the gated map is
    attention-pooled and joins the global-average-pooled (GAP) map before the final layer.
    Dropout (the network's only one: channel dropout in the encoder stopped it from learning
    on our phantom) acts on the pooled features.

    ``head`` chooses the map before GAP, the one Grad-CAM explains (§2.3):

    - ``"calcium"`` (default): a :class:`~aidnet.models.heads.CalciumMap3d` on the input grid,
      zero off the calcium candidates, and a
      :class:`~aidnet.models.heads.RisingClassifier`: the CAC classes' logits only rise with
      the evidence on that map, so Grad-CAM shows which calcium the decision rests on.
    - ``"gated"``: the calcium head's map times the SAG's attention (resampled onto the input
      grid), and the same rising classifier without the SAG's features: the attention decides
      where calcium may count, and the CAC log-odds depend on calcium evidence alone — no
      path from the scan's overall look (texture, noise, field of view) to the decision.
      Needs the attention gate (not ID-Net).
    - ``"stage"``: the last stage map itself and an ordinary Linear layer; its grid is 8 times
      coarser than the input, so Grad-CAM marks a region of several centimetres.

    ``evidence_norm`` (calcium head): the statistics that normalise the evidence in training;
    ``evidence_pool``: ``"sum"`` (each map channel's sum) or ``"sum_peak"`` (its sum and its
    largest voxel); see :class:`~aidnet.models.heads.RisingClassifier`.
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
        head: str = "calcium",
        map_channels: int = 8,
        evidence_norm: str = "batch",
        evidence_pool: str = "sum",
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
        if evidence_pool not in EVIDENCE_POOLS:
            raise ValueError(
                f"evidence_pool must be one of {EVIDENCE_POOLS}, not {evidence_pool!r}"
            )
        if head == "gated" and not attention:
            raise ValueError("the gated head needs the attention gate (AID-Net, not ID-Net)")
        features = tuple(int(f) for f in features)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.features = features
        self.head = head
        self.encoder = Encoder3d(in_channels, features)
        self.gate: SoftAttentionGate3d | None = None
        other = 0
        if attention:
            # gated head: only the attention map is used, not the gated features
            gated_features = head != "gated"
            self.gate = SoftAttentionGate3d(
                features[-2], features[-1], inter_channels, features_out=gated_features
            )
            other = features[-2] if gated_features else 0
        self.calcium_map: CalciumMap3d | None = None
        self.evidence: RisingClassifier | None = None
        if head in ("calcium", "gated"):
            self.calcium_map = CalciumMap3d(features, map_channels)
            self.evidence = RisingClassifier(
                map_channels,
                num_classes,
                other,
                dropout,
                norm_mode=evidence_norm,
                peak=evidence_pool == "sum_peak",
            )
        else:
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(features[-1] + other, num_classes)
        # the map before GAP is zero off the calcium candidates
        self.map_on_calcium = self.calcium_map is not None

    @property
    def attention(self) -> bool:
        return self.gate is not None

    def forward_features(self, x: Tensor) -> FeatureMaps:
        """One batch of scans (B×in_channels×Z×Y×X) through the shared encoder, the SAG and,
        with the calcium head, the calcium map: the map before GAP and the SAG's parts."""
        maps = self.encoder(x.contiguous(memory_format=torch.channels_last_3d))
        attention_map = None
        local = None
        if self.gate is not None:
            gated, attention_map = self.gate(maps[-2], maps[-1])
            if gated is not None:
                # attention pooling: the gated local features averaged with the attention as
                # weights
                weights = attention_map / (attention_map.sum(dim=(2, 3, 4), keepdim=True) + 1e-6)
                local = (gated * weights).sum(dim=(2, 3, 4))
        if self.calcium_map is not None:
            # in [0, 1] by the input contract; clamped so the map stays non-negative whatever
            calcium = x[:, CALCIUM_CHANNEL : CALCIUM_CHANNEL + 1].clamp(0.0, 1.0)
            before_gap = self.calcium_map(maps, calcium)
            if self.head == "gated":
                assert attention_map is not None
                where = F.interpolate(
                    attention_map, size=before_gap.shape[2:], mode="trilinear", align_corners=False
                )
                before_gap = before_gap * where
        else:
            before_gap = maps[-1]
        return FeatureMaps(before_gap, attention_map, local)

    def logit_parts(self, maps: FeatureMaps) -> tuple[Tensor, Tensor]:
        """Calcium head: the logits' calcium-evidence term and the rest's (the SAG features'
        or the bias), which :meth:`forward_head` adds."""
        if self.evidence is None:
            raise ValueError("only the calcium and gated heads split their logits")
        pooled = maps.map.mean(dim=(2, 3, 4))
        peak = maps.map.amax(dim=(2, 3, 4)) if self.evidence.peak else None
        return self.evidence.parts(pooled, maps.map[0, 0].numel(), maps.local, peak)

    def forward_head(self, maps: FeatureMaps) -> Tensor:
        """The logits from the map before GAP, pooled, and the SAG's pooled features."""
        if self.evidence is not None:
            from_map, rest = self.logit_parts(maps)
            return from_map + rest
        pooled = maps.map.mean(dim=(2, 3, 4))
        parts = [pooled] if maps.local is None else [maps.local, pooled]
        return self.classifier(self.dropout(torch.cat(parts, dim=1)))

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
