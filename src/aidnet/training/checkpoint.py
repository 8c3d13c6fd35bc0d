"""Checkpoints: atomic writes, safe loading (``weights_only=True``), clear errors."""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
import zlib
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
    is_zip = zipfile.is_zipfile(path)  # aidnet writes PyTorch's zip format only
    if is_zip and _fails_checksum(path):
        raise AidnetError(
            f"{path}: damaged checkpoint (its data do not match the checksums written with "
            "them: the file changed after it was saved)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = _unreadable(path, exc, is_zip)
        raise AidnetError(f"{path}: not a readable aidnet checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AidnetError(f"{path}: not an aidnet checkpoint (no '{FORMAT}' marker)")
    return state


def _fails_checksum(path: Path) -> bool:
    """Whether a member of the zip-format file ``path`` no longer matches its CRC-32.

    PyTorch writes a CRC-32 for every member but does not check it when loading, so a
    checkpoint damaged on disk would load with wrong weights. Reading it all once more costs
    time in proportion to its size (docs/results.md)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        return True


def _unreadable(path: Path, exc: Exception, is_zip: bool) -> str:
    """Why torch.load refused ``path``, in words rather than PyTorch's message."""
    if not is_zip:
        size = path.stat().st_size
        return f"{size} bytes that are not a whole PyTorch file: cut short, or another format"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if isinstance(exc, pickle.UnpicklingError) or found:
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds Python objects{what}, not only tensors and plain values as aidnet's do; "
            "it was not saved by aidnet"
        )
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"a damaged PyTorch file: {first[:160]}"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (a checkpoint's, in ``prediction.json`` and the resume logs)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(run_or_file: Path, which: str = "best") -> Path:
    """A run folder (→ its best.pt) or a checkpoint file."""
    if run_or_file.is_dir():
        return run_or_file / f"{which}.pt"
    return run_or_file


def spec_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model description with what older versions did not write: an AID-Net or
    ID-Net saved before the calcium head has the stage head, one saved before
    ``evidence_pool`` the sum."""
    from aidnet.models.registry import HEADED

    spec = dict(spec)
    if spec.get("name") in HEADED:
        spec["head"] = spec.get("head") or "stage"
        spec["evidence_pool"] = spec.get("evidence_pool") or "sum"
    return spec


def build_from_checkpoint(state: dict[str, Any], path: Path):
    """Instantiate the model a checkpoint was trained as and load its weights."""
    from aidnet.models.registry import build_model

    spec = state.get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise AidnetError(f"{path}: checkpoint has no model description")
    spec = spec_defaults(spec)
    model = build_model(
        spec["name"],
        in_channels=int(spec.get("in_channels", 2)),
        num_classes=int(spec["num_classes"]),
        features=tuple(spec["features"]),
        dropout=float(spec.get("dropout", 0.0)),
        # the head's options, for the models that have them
        **{key: str(spec[key]) for key in ("head", "evidence_pool") if spec.get(key)},
    )
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0]
        raise AidnetError(f"{path}: weights do not fit model {spec['name']} ({first})") from None
    model.eval()
    return model
