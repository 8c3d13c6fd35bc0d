"""What every network of the zoo declares, so that training, inference and Grad-CAM ask it
nothing: timm's ``forward_features`` / ``forward_head`` split and two flags."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


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


@dataclass
class FeatureMaps:
    """What :meth:`CACNet.forward_features` returns: ``map``, the feature map before global
    average pooling (B×K×Z'×Y'×X', Grad-CAM's target); ``attention``, the soft attention map or
    None; ``local``, pooled features that join the head beside the pooled map (B×M: AID-Net's
    attention-pooled gated features) or None."""

    map: Tensor
    attention: Tensor | None = None
    local: Tensor | None = None


class CACNet(nn.Module):
    """A CAC classifier of scans (B×in_channels×Z×Y×X) that declares its parts.

    - ``siamese``: trained on scan–rescan pairs (``forward(x1, x2)`` runs both through shared
      weights) rather than on single scans;
    - ``map_on_calcium``: the map before global average pooling is zero off the calcium
      candidates (AID-Net's calcium head), so its sum is calcium evidence (the loss's penalty,
      the training's live-map check) and its Grad-CAM belongs on the calcium;
    - ``forward_features(x)``: the :class:`FeatureMaps`; ``forward_head(maps)``: the logits;
      ``forward_single(x)`` is the one after the other.
    """

    siamese: bool = False
    map_on_calcium: bool = False

    def forward_features(self, x: Tensor) -> FeatureMaps:
        raise NotImplementedError

    def forward_head(self, maps: FeatureMaps) -> Tensor:
        raise NotImplementedError

    def forward_single(self, x: Tensor) -> SingleOutput:
        """One batch of scans through the network; ``features`` is Grad-CAM's target map."""
        maps = self.forward_features(x)
        return SingleOutput(self.forward_head(maps), maps.map, maps.attention)

    def forward(
        self, x1: Tensor, x2: Tensor | None = None
    ) -> tuple[SingleOutput, SingleOutput | None]:
        """Scan and (optional) rescan, each on its own."""
        return self.forward_single(x1), (None if x2 is None else self.forward_single(x2))
