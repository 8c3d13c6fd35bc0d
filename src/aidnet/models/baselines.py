"""Single-scan baselines of the paper's comparison (§3): 3-D ResNet-101 and DenseNet-121.

Both come from MONAI with random initialisation (nothing is downloaded) and are wrapped to
declare the same parts as :class:`~aidnet.models.AIDNet` (:class:`~aidnet.models.base.CACNet`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aidnet.models.base import CACNet, FeatureMaps


class _SingleScanModel(CACNet):
    """A single-scan network (``siamese`` False) whose map before pooling is no calcium map
    (``map_on_calcium`` False): ``_features`` is its map, a Linear layer its head."""

    min_size: int = 1  # voxels per spatial axis the architecture needs
    dropout: nn.Dropout
    classifier: nn.Linear

    def _features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> FeatureMaps:
        """The map before pooling of one batch of scans.

        An axis shorter than ``min_size`` is zero-padded on both sides (0 is the input's empty
        value), so small presets run; heat maps of such inputs are then slightly approximate.
        """
        pad: list[int] = []
        for n in reversed(x.shape[2:]):
            extra = max(self.min_size - int(n), 0)
            pad += [extra // 2, extra - extra // 2]
        if any(pad):
            x = F.pad(x, pad)
        return FeatureMaps(self._features(x.contiguous(memory_format=torch.channels_last_3d)))

    def forward_head(self, maps: FeatureMaps) -> Tensor:
        return self.classifier(self.dropout(maps.map.mean(dim=(2, 3, 4))))


class ResNet101Baseline(_SingleScanModel):
    """3-D ResNet-101 baseline (paper §3), MONAI ``resnet101``, ``pretrained=False``.

    ``features`` is accepted for a uniform constructor and ignored (the architecture is fixed).
    Shorter axes than 16 voxels are zero-padded to 16.
    """

    min_size = 16

    def __init__(
        self,
        in_channels: int = 2,
        num_classes: int = 3,
        features: tuple[int, ...] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        from monai.networks.nets import resnet101

        net = resnet101(
            pretrained=False,
            spatial_dims=3,
            n_input_channels=in_channels,
            num_classes=num_classes,
            feed_forward=False,
        )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act)
        self.maxpool = None if net.no_max_pool else net.maxpool
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2048, num_classes)  # layer4: 512 planes × expansion 4

    def _features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        return self.layers(x)


class DenseNet121Baseline(_SingleScanModel):
    """3-D DenseNet-121 baseline (paper §3), MONAI ``DenseNet121``, ``pretrained=False``.

    ``features`` is the ReLU'd output of the dense blocks (MONAI's Grad-CAM layer
    ``class_layers.relu``). ``features`` (the argument) is ignored. Shorter axes than 32
    voxels are zero-padded to 32.
    """

    min_size = 32

    def __init__(
        self,
        in_channels: int = 2,
        num_classes: int = 3,
        features: tuple[int, ...] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        net = DenseNet121(
            spatial_dims=3, in_channels=in_channels, out_channels=num_classes, pretrained=False
        )
        self.body = net.features
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1024, num_classes)  # channels after the last dense block

    def _features(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x))
