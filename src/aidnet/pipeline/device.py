"""Where inference runs: the ``--device`` of ``evaluate``, ``explain``, ``predict`` and
``experiment``, checked before any work, and the autocast dtype there."""

from __future__ import annotations

import torch

from aidnet.errors import AidnetError

CHOICES = "cpu, cuda or cuda:N"


def default_device() -> torch.device:
    """What ``aidnet train`` picks without ``--device`` in one process: the GPU when PyTorch
    sees one, else the CPU (:func:`aidnet.training.distributed.start_processes`)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(text: str | None, option: str = "--device") -> torch.device:
    """``text`` (``cpu``, ``cuda``, ``cuda:1`` …; None: :func:`default_device`) as a device
    this machine has; anything else is one AidnetError line naming the problem."""
    if text is None:
        return default_device()
    name = text.strip()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AidnetError(f"{option} {text!r}: not a device; use {CHOICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise AidnetError(f"{option} {text!r}: {device.type} is not supported; use {CHOICES}")
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = f"this PyTorch ({torch.__version__}) is built without CUDA"
        else:
            why = "PyTorch sees no CUDA GPU on this machine"
        raise AidnetError(f"{option} {text!r}: {why}; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise AidnetError(
            f"{option} {text!r}: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return device


def autocast_dtype(device: torch.device, trained_amp: bool, bf16: bool) -> torch.dtype | None:
    """The dtype the network predicts in under autocast, None for float32.

    On a GPU: bfloat16 (float16 where the GPU lacks it) when the model was trained with mixed
    precision (``amp``) or ``bf16`` asks for it. On a CPU: float32 unless ``bf16``, and then
    bfloat16 only where the CPU has it natively (see :func:`aidnet.training.precision.cpu_bf16`).
    """
    if device.type == "cuda":
        if not (trained_amp or bf16):
            return None
        index = torch.cuda.current_device() if device.index is None else device.index
        with torch.cuda.device(index):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        from aidnet.training.precision import cpu_bf16

        return cpu_bf16(bf16, "--bf16")
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
