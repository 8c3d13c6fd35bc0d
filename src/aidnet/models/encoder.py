"""The plain 3-D CNN encoder shared by both paths of AID-Net / ID-Net (paper §2.2)."""

from __future__ import annotations

from torch import Tensor, nn

from aidnet.models.blocks import ConvBlock3d


class Encoder3d(nn.Module):
    """Plain 3-D CNN: one :class:`ConvBlock3d` per entry of ``features``, 2×2×2 max-pooling
    between stages (paper §2.2, Figure 2).

    ``forward(x)`` returns the list of stage feature maps, highest resolution first; stage ``i``
    has ``features[i]`` channels on a grid ``2**i`` times smaller than the input. Each spatial
    axis of the input must be at least ``2 ** (len(features) - 1)`` voxels (2×16×24×32 works
    with the default four stages; the paper's input is 2×64×128×192).
    """

    def __init__(
        self,
        in_channels: int = 2,
        features: tuple[int, ...] = (16, 32, 64, 128),
    ) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"features needs at least two stages, got {tuple(features)}")
        self.features = tuple(int(f) for f in features)
        self.stages = nn.ModuleList()
        previous = in_channels
        for width in self.features:
            self.stages.append(ConvBlock3d(previous, width))
            previous = width
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.features

    def forward(self, x: Tensor) -> list[Tensor]:
        maps: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            maps.append(x)
        return maps
