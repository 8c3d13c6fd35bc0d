"""bfloat16 on CPUs: whether the CPU has it natively, and a check of a model's 3-D convolutions
against float32 before a run trusts them.

oneDNN picks a different kernel for each convolution shape, and some of its bfloat16 kernels
are wrong for some shapes: with torch 2.13, a 3×3×3 convolution whose input is 2 voxels deep
can get wrong or non-finite weight gradients while its output and input gradient are right, and
DenseNet-121 at the ``demo`` preset's input (its third dense block is 2 voxels deep) diverges
(docs/results.md). So a bfloat16 run first checks each convolution at the shape it will see and
runs the wrong ones in float32.
"""

from __future__ import annotations

import sys
import types

import torch
from torch import Tensor, nn

#: a convolution is checked when an axis of its input is at most this many voxels: the wrong
#: kernels known are for such degenerate shapes (2 voxels deep here; 1 voxel wide with stride
#: 2 or more in torch issue 169688), and larger volumes would make the check as slow as training
#: steps
SMALL_AXIS = 4

#: largest relative error (max |difference| / max |float32|) of a convolution's bfloat16 output
#: or gradient that counts as right: far above a right kernel's rounding, far below a wrong
#: kernel's error (docs/results.md)
TOLERANCE = 0.05


def cpu_bf16(wanted: bool, what: str, warn: bool = True) -> torch.dtype | None:
    """bfloat16 for CPU autocast when ``wanted`` and the CPU has it natively; when wanted on a
    CPU without it, None (float32) and, with ``warn``, one warning line (``what`` names the
    option)."""
    if not wanted:
        return None
    if cpu_has_native_bf16():
        return torch.bfloat16
    if warn:
        print(
            f"warning: {what}: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where it runs "
            "many times slower than float32; using float32",
            file=sys.stderr,
        )
    return None


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX). Elsewhere it is
    emulated: with oneDNN held to AVX2 a 3-D convolution ran 6 to 25 times slower than in
    float32, the more the larger the volume."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def conv_inputs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple]:
    """``(shape, channels_last)`` of the input each 3-D convolution of ``model`` sees when
    ``model.forward_single`` gets a batch of ``input_shape`` (N, C, D, H, W): from one float32
    pass in eval mode (no statistics updated, no random numbers drawn) of the whole batch: the
    layout PyTorch picks depends on the batch size, and oneDNN's kernel on the layout."""
    shapes: dict[str, tuple] = {}

    def record(name: str, args: tuple) -> None:
        x = args[0]
        last = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)
        shapes.setdefault(name, (tuple(x.shape), last and not x.is_contiguous()))

    handles = [
        module.register_forward_pre_hook(lambda _m, args, name=name: record(name, args))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv3d)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            model.forward_single(torch.zeros(input_shape))  # type: ignore[operator]
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def bf16_error(
    conv: nn.Conv3d, shape: tuple, backward: bool, channels_last: bool = True, seed: int = 0
) -> float:
    """The largest relative error of ``conv`` in bfloat16 autocast against float32 on random
    inputs of ``shape`` in the given layout (rounded to bfloat16 first, so only the computation
    differs): of its output and, with ``backward``, of its input and weight gradients. The
    weight keeps its layout. Nothing of ``conv`` is changed."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).relu().bfloat16().float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    weight = conv.weight.detach().bfloat16().float()
    bias = None if conv.bias is None else conv.bias.detach().bfloat16().float()
    results = []
    grad: Tensor | None = None  # the same output gradient for both passes
    for low in (False, True):
        xi = x.clone().requires_grad_(backward)
        w = weight.clone().requires_grad_(backward)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            y = conv._conv_forward(xi, w, bias)
        got = [y.detach().float()]
        if backward:
            if grad is None:
                grad = torch.randn(y.shape, generator=gen)
            (y.float() * grad).sum().backward()
            got += [xi.grad, w.grad]
        results.append(got)
    worst = 0.0
    for ref, low in zip(*results, strict=True):
        if not bool(torch.isfinite(low).all()):
            return float("inf")
        scale = float(ref.abs().max())
        worst = max(worst, float((low - ref).abs().max()) / max(scale, 1e-30))
    return worst


def _float32_forward(self: nn.Conv3d, x: Tensor) -> Tensor:
    with torch.autocast("cpu", enabled=False):
        return type(self).forward(self, x.float())


def guard_bf16_convs(
    model: nn.Module, input_shape: tuple[int, ...], backward: bool = True
) -> list[str]:
    """Run in float32 every 3-D convolution of ``model`` that this CPU gets wrong in bfloat16.

    Each convolution with an input axis of at most :data:`SMALL_AXIS` voxels (times its stride)
    is checked alone (:func:`bf16_error`) at the input it sees for a batch of ``input_shape``;
    one off by more than :data:`TOLERANCE` then runs in float32 even under autocast (its
    neighbours stay in bfloat16). ``backward=False`` checks the forward pass only (inference).
    Returns the names of the convolutions so guarded."""
    modules = dict(model.named_modules())
    verdicts: dict[tuple, bool] = {}  # same convolution and input: same kernel, same verdict
    guarded = []
    for name, (shape, last) in conv_inputs(model, input_shape).items():
        conv = modules[name]
        if min(shape[2:]) > SMALL_AXIS * max(conv.stride):  # output axes above it too
            continue
        key = (shape, last, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
               conv.dilation, conv.groups, conv.bias is not None,
               conv.weight.is_contiguous())  # fmt: skip
        if key not in verdicts:
            error = bf16_error(conv, shape, backward, last)
            verdicts[key] = error > TOLERANCE
        if verdicts[key]:
            conv.forward = types.MethodType(_float32_forward, conv)
            guarded.append(name)
    return guarded


def check_bf16(
    model: nn.Module,
    input_shape: tuple[int, ...],
    what: str,
    backward: bool = True,
    warn: bool = True,
) -> None:
    """:func:`guard_bf16_convs`, and with ``warn`` one warning line when it guarded any."""
    guarded = guard_bf16_convs(model, input_shape, backward)
    if guarded and warn:
        total = sum(isinstance(m, nn.Conv3d) for m in model.modules())
        print(
            f"warning: {what}: {len(guarded)} of {total} 3-D convolutions give wrong results in "
            "bfloat16 on this CPU at this input size (checked against float32); they run in "
            "float32",
            file=sys.stderr,
        )
