"""bfloat16 on CPUs: checking 3-D convolutions against float32 (aidnet.training.precision)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import aidnet.training.precision as precision
from aidnet.models.aidnet import SingleOutput


class TwoDeep(nn.Module):
    """A convolution on the input, one on a map 2 voxels deep, with BatchNorm and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv3d(2, 8, 3, padding=1)
        self.norm = nn.BatchNorm3d(8)
        self.b = nn.Conv3d(8, 8, 3, padding=1, bias=False)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 3)

    def forward_single(self, x):
        h = self.b(F.max_pool3d(self.norm(self.a(x)).relu(), 2))
        return SingleOutput(
            logits=self.fc(self.drop(h.mean(dim=(2, 3, 4)))), features=h, attention=None
        )


def test_convolution_shapes_come_from_one_pass_that_changes_nothing():
    torch.manual_seed(0)
    model = TwoDeep().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    shapes = precision.conv_inputs(model, (3, 2, 4, 6, 8))
    assert shapes == {"a": ((3, 2, 4, 6, 8), False), "b": ((3, 8, 2, 3, 4), False)}
    model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    assert precision.conv_inputs(model, (3, 2, 4, 6, 8))["b"] == ((3, 8, 2, 3, 4), True)
    assert model.training  # back in training mode, BatchNorm statistics untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # no random numbers drawn


def test_bf16_error_finds_a_wrong_output_and_a_wrong_weight_gradient():
    class WrongOutput(nn.Conv3d):
        def _conv_forward(self, x, w, b):
            out = super()._conv_forward(x, w, b)
            return out * 1.5 if torch.is_autocast_enabled("cpu") else out

    class WrongWeightGradient(nn.Conv3d):
        def _conv_forward(self, x, w, b):  # same output; every weight gradient off under autocast
            out = super()._conv_forward(x, w, b)
            if torch.is_autocast_enabled("cpu"):
                out = out + 1e3 * (w - w.detach()).sum()
            return out

    shape = (2, 4, 4, 6, 8)
    torch.manual_seed(0)
    right = nn.Conv3d(4, 4, 3, padding=1)
    assert precision.bf16_error(right, shape, backward=True) < precision.TOLERANCE
    out_wrong = WrongOutput(4, 4, 3, padding=1)
    assert precision.bf16_error(out_wrong, shape, backward=False) > 0.3
    grad_wrong = WrongWeightGradient(4, 4, 3, padding=1)
    assert precision.bf16_error(grad_wrong, shape, backward=False) < precision.TOLERANCE
    assert precision.bf16_error(grad_wrong, shape, backward=True) > 1.0
    assert grad_wrong.weight.grad is None  # the check leaves the convolution as it was


def test_guarded_convolutions_run_in_float32_under_autocast(monkeypatch, capsys):
    # pretend this CPU gets convolutions on 2-voxel-deep inputs wrong in bfloat16
    monkeypatch.setattr(
        precision, "bf16_error", lambda conv, shape, backward, last: 1.0 if shape[2] == 2 else 0.0
    )
    torch.manual_seed(0)
    model = TwoDeep()
    keys = set(model.state_dict())
    precision.check_bf16(model, (2, 2, 4, 6, 8), "cpu_amp")
    assert "cpu_amp: 1 of 2 3-D convolutions give wrong results" in capsys.readouterr().err
    dtypes = {}
    for name in ("a", "b"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: dtypes.__setitem__(name, out.dtype)
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_single(torch.rand(2, 2, 4, 6, 8))
        assert torch.is_autocast_enabled("cpu")  # the guard restores autocast after it
    assert dtypes == {"a": torch.bfloat16, "b": torch.float32}
    out.logits.float().sum().backward()
    assert model.b.weight.grad is not None and model.b.weight.grad.isfinite().all()
    assert set(model.state_dict()) == keys  # checkpoints unchanged
    assert precision.guard_bf16_convs(TwoDeep(), (2, 2, 8, 8, 8)) == []  # nothing 2 deep
    precision.check_bf16(TwoDeep(), (2, 2, 8, 8, 8), "cpu_amp")
    assert capsys.readouterr().err == ""


def test_bfloat16_weight_gradients_of_a_guarded_model_match_float32():
    """On this CPU as it is: after the check, a 3×3×3 convolution on a 2-voxel-deep input (wrong
    in bfloat16 with torch 2.13 on Zen 4) trains in bfloat16 autocast with float32's gradient."""
    torch.manual_seed(0)
    model = TwoDeep().eval()  # no dropout, fixed statistics: the two passes compare exactly
    model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # as ours
    x = torch.rand(4, 2, 4, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    precision.guard_bf16_convs(model, tuple(x.shape))
    grads = []
    for low in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            out = model.forward_single(x)
        (
            out.features.float() * torch.linspace(-1, 1, out.features.numel()).view_as(out.features)
        ).sum().backward()
        grads.append(model.b.weight.grad.clone())
    ref, got = grads
    assert got.isfinite().all()
    assert float((got - ref).abs().max() / ref.abs().max()) < precision.TOLERANCE
