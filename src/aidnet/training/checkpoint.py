"""Checkpoints: atomic writes, safe loading (``weights_only=True``), clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aidnet.atomic import atomic_path
from aidnet.errors import AidnetError

FORMAT = "aidnet-checkpoint-1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def cpu_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's state dict, detached and on the CPU, as checkpoints store it."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by aidnet; any other file is one clear error."""
    if not path.is_file():
        raise AidnetError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AidnetError(f"{path}: not a readable aidnet checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AidnetError(f"{path}: not an aidnet checkpoint (no '{FORMAT}' marker)")
    return state


def resolve_checkpoint(run_or_file: Path, which: str = "best") -> Path:
    """A run folder (→ its best.pt) or a checkpoint file."""
    if run_or_file.is_dir():
        return run_or_file / f"{which}.pt"
    return run_or_file


def build_from_checkpoint(state: dict[str, Any], path: Path):
    """Instantiate the model a checkpoint was trained as and load its weights."""
    from aidnet.models.registry import build_model

    spec = state.get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise AidnetError(f"{path}: checkpoint has no model description")
    model = build_model(
        spec["name"],
        in_channels=int(spec.get("in_channels", 2)),
        num_classes=int(spec["num_classes"]),
        features=tuple(spec["features"]),
        dropout=float(spec.get("dropout", 0.0)),
        head=str(spec.get("head") or "stage"),  # checkpoints from before the calcium head
    )
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise AidnetError(f"{path}: weights do not fit model {spec['name']} ({first})") from None
    model.eval()
    return model
