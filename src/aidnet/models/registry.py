"""The model zoo: name → constructor (paper §2.2–2.3 and the §3 baselines)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from aidnet.errors import AidnetError
from aidnet.models.aidnet import AIDNet
from aidnet.models.base import CACNet
from aidnet.models.baselines import DenseNet121Baseline, ResNet101Baseline

#: the models whose map before global average pooling ``head`` chooses (the baselines ignore it)
HEADED = ("aidnet", "idnet")

MODELS: dict[str, Callable[..., CACNet]] = {
    "aidnet": partial(AIDNet, attention=True),
    "idnet": partial(AIDNet, attention=False),
    "resnet101": ResNet101Baseline,
    "densenet121": DenseNet121Baseline,
}


def build_model(
    name: str,
    *,
    in_channels: int = 2,
    num_classes: int = 3,
    features: tuple[int, ...] = (16, 32, 64, 128),
    dropout: float = 0.0,
    head: str = "calcium",
    evidence_norm: str = "batch",
    evidence_pool: str = "sum",
    **kw,
) -> CACNet:
    """Build a registered model by name (``aidnet``, ``idnet``, ``resnet101``, ``densenet121``).

    Every model declares its parts (:class:`~aidnet.models.base.CACNet`): ``siamese``,
    ``map_on_calcium``, ``forward_features`` / ``forward_head``, ``forward_single(x)`` and
    ``forward(x1, x2=None)``; ``head``, ``evidence_norm`` and ``evidence_pool`` apply to AID-Net
    and ID-Net only.
    Weights and inputs use the channels-last 3-D memory layout (same numbers, faster
    convolutions).
    """
    if name not in MODELS:
        raise AidnetError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if name in HEADED:
        kw["head"] = head
        kw["evidence_norm"] = evidence_norm
        kw["evidence_pool"] = evidence_pool
    model = MODELS[name](
        in_channels=in_channels,
        num_classes=num_classes,
        features=tuple(features),
        dropout=dropout,
        **kw,
    )
    # channels-last 3-D layout: faster on CPUs at the paper's input size (docs/results.md)
    return model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
