"""Shape, range, gradient and weight-sharing checks for the model zoo (paper §2.2–2.3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aidnet.errors import AidnetError
from aidnet.models import MODELS, AIDNet, Encoder3d, SoftAttentionGate3d, build_model

TINY = (16, 24, 32)
# Smallest inputs the MONAI baselines accept quickly (downsampling by 32).
BASELINE_INPUT = {"resnet101": (16, 16, 16), "densenet121": (32, 32, 32)}


def _input(name: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, *BASELINE_INPUT.get(name, TINY), generator=gen)


def test_attention_gate_shapes_range_and_gradients():
    torch.manual_seed(0)
    gate = SoftAttentionGate3d(in_channels=8, gating_channels=16, inter_channels=4)
    x = torch.randn(2, 8, 4, 6, 8, requires_grad=True)
    g = torch.randn(2, 16, 2, 3, 4, requires_grad=True)
    gated, attention = gate(x, g)
    assert gated.shape == (2, 8, 4, 6, 8)
    assert attention.shape == (2, 1, 4, 6, 8)
    assert float(attention.detach().min()) >= 0.0 and float(attention.detach().max()) <= 1.0
    assert float(attention.detach().std()) > 0  # not a constant map
    (gated.square().mean() + attention.mean()).backward()
    for t in (x, g):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_attention_gate_odd_grid():
    gate = SoftAttentionGate3d(4, 8)
    gated, attention = gate(torch.randn(1, 4, 5, 7, 9), torch.randn(1, 8, 2, 3, 4))
    assert gated.shape == (1, 4, 5, 7, 9) and attention.shape == (1, 1, 5, 7, 9)


@pytest.mark.parametrize("size", [(16, 24, 32), (64, 128, 192)])
def test_encoder_stage_shapes(size):
    enc = Encoder3d(in_channels=2, features=(4, 8, 16, 32))
    with torch.no_grad():
        maps = enc(torch.zeros(1, 2, *size))
    assert [m.shape[1] for m in maps] == [4, 8, 16, 32]
    for i, m in enumerate(maps):
        assert tuple(m.shape[2:]) == tuple(s // 2**i for s in size)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_shapes_and_gradients(name, num_classes):
    torch.manual_seed(0)
    model = build_model(name, in_channels=2, num_classes=num_classes)
    model.train()
    x1, x2 = _input(name, 1), _input(name, 2)
    o1, o2 = model(x1, x2) if model.siamese else (model.forward_single(x1), None)
    outputs = [o for o in (o1, o2) if o is not None]
    for out in outputs:
        assert out.logits.shape == (2, num_classes)
        assert torch.isfinite(out.logits).all()
        assert out.features.dim() == 5 and out.features.shape[0] == 2
        assert out.features.requires_grad
        if name == "aidnet":
            assert out.attention is not None
            assert out.attention.shape == (2, 1, 4, 6, 8)  # the second-to-last stage's grid
            assert (
                0.0
                <= float(out.attention.detach().min())
                <= float(out.attention.detach().max())
                <= 1.0
            )
        else:
            assert out.attention is None
    # features of forward_single is the Grad-CAM target: the logits must depend on it.
    single = model.forward_single(x1)
    (grad,) = torch.autograd.grad(single.logits[:, -1].sum(), single.features)
    assert grad.abs().sum() > 0
    sum(out.logits.square().mean() for out in outputs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert model.siamese == (name in ("aidnet", "idnet"))


@pytest.mark.parametrize("name", ["aidnet", "idnet"])
def test_paths_share_one_encoder(name):
    torch.manual_seed(0)
    model = build_model(name, features=(4, 8, 16, 32)).eval()
    assert sum(isinstance(m, Encoder3d) for m in model.modules()) == 1
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 2, *TINY)
    with torch.no_grad():
        a, b = model(x, x)
        assert torch.equal(a.logits, b.logits)
        single, none = model(x)
        assert none is None and torch.allclose(single.logits, a.logits, atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) == n_params
    # Changing one encoder weight changes both paths identically.
    y = torch.randn(1, 2, *TINY)
    with torch.no_grad():
        before1, before2 = (o.logits.clone() for o in model(x, y))
        model.encoder.stages[0][0].weight.mul_(-1.5)
        after1, after2 = (o.logits for o in model(x, y))
    assert not torch.allclose(before1, after1) and not torch.allclose(before2, after2)


def test_aidnet_head_sizes_and_attention_flag():
    aid = AIDNet(features=(16, 32, 64, 128), attention=True, head="stage")
    idn = AIDNet(features=(16, 32, 64, 128), attention=False, head="stage")
    assert aid.classifier.in_features == 64 + 128 and idn.classifier.in_features == 128
    assert aid.attention and not idn.attention and idn.gate is None
    assert sum(p.numel() for p in aid.parameters()) == 904_996
    assert sum(p.numel() for p in idn.parameters()) == 880_035
    # the calcium head: 8 map channels; the SAG's 64 pooled features join through a Linear
    aid = AIDNet(features=(16, 32, 64, 128), attention=True)
    idn = AIDNet(features=(16, 32, 64, 128), attention=False)
    assert aid.head == "calcium" and aid.map_on_calcium and not AIDNet(head="stage").map_on_calcium
    assert aid.evidence is not None and aid.evidence.weight.shape == (2, 8)
    assert aid.evidence.other is not None and aid.evidence.other.in_features == 64
    assert idn.evidence is not None and idn.evidence.other is None
    assert sum(p.numel() for p in aid.parameters()) == 908_308
    assert sum(p.numel() for p in idn.parameters()) == 883_347
    with pytest.raises(ValueError, match="stage, calcium, gated"):
        AIDNet(head="pixel")


def test_gated_head_weights_the_calcium_map_by_the_attention_and_has_no_sag_logits():
    torch.manual_seed(0)
    model = AIDNet(features=(4, 8, 16), head="gated").eval()
    assert model.map_on_calcium and model.gate is not None and model.gate.out is None
    assert model.evidence is not None and model.evidence.other is None
    x = _calcium_input(3)
    maps = model.forward_features(x)
    assert maps.local is None and maps.attention is not None
    assert maps.map.shape == (2, 8, *TINY)
    assert torch.all(maps.map[x[:, 1:].expand_as(maps.map) == 0] == 0)
    # the map is the calcium head's map times the attention resampled onto the input grid
    assert model.calcium_map is not None
    raw = model.calcium_map(model.encoder(x), x[:, 1:])
    where = torch.nn.functional.interpolate(
        maps.attention, size=TINY, mode="trilinear", align_corners=False
    )
    assert torch.allclose(maps.map, raw * where)
    # closing the gate closes the evidence: the CAC logits fall to the reference's
    assert model.gate.psi.bias is not None
    with torch.no_grad():
        model.gate.psi.bias.fill_(-1e4)
    shut = model.forward_features(x)
    assert float(shut.map.detach().abs().max()) == 0.0
    # and every parameter learns (no unused ones: DistributedDataParallel needs that)
    model.train()
    out, _ = model(x, x)
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="attention gate"):
        AIDNet(attention=False, head="gated")


def _calcium_input(seed: int, batch: int = 2) -> torch.Tensor:
    """A network input in its real range: CT in [0, 1] and a sparse 0/1 calcium channel."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 2, *TINY, generator=gen)
    x[:, 1] = (torch.rand(batch, *TINY, generator=gen) > 0.97).float()
    return x


def test_calcium_map_is_on_the_input_grid_and_zero_off_calcium():
    from aidnet.models.heads import CalciumMap3d

    torch.manual_seed(0)
    encoder = Encoder3d(2, (4, 8, 16))
    head = CalciumMap3d((4, 8, 16), width=6)
    x = _calcium_input(1)
    out = head(encoder(x), x[:, 1:])
    assert out.shape == (2, 6, *TINY)
    assert float(out.detach().min()) >= 0.0
    assert torch.all(out[x[:, 1:].expand_as(out) == 0] == 0)
    assert float(out.detach().sum()) > 0
    # the deepest stage reaches every voxel: a change far away moves the map on the calcium
    y = x.clone()
    y[:, 0, :4, :4, :4] += 0.5
    assert not torch.allclose(head(encoder(y), y[:, 1:]), out)


@pytest.mark.parametrize("pool", ["sum", "sum_peak"])
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", ["aidnet", "idnet"])
def test_cac_log_odds_never_fall_as_the_calcium_map_grows(name, num_classes, pool):
    """The calcium head's CAC log-odds rise with the map before GAP everywhere, whatever the
    weights, with either evidence pool: so Grad-CAM's channel weights are all positive. The
    stage head has no such property (its gradient takes both signs), which shows the check can
    fail."""
    from aidnet.explain.gradcam import cac_score

    torch.manual_seed(0)
    x = _calcium_input(2, batch=4)
    heads = ("calcium", "gated", "stage") if name == "aidnet" else ("calcium", "stage")
    for head in heads:
        model = build_model(
            name, num_classes=num_classes, features=(4, 8, 16), head=head, evidence_pool=pool
        )
        model.train()
        with torch.no_grad():  # random weights of both signs, BatchNorm statistics of real data
            for p in model.parameters():
                p.normal_(0.0, 0.5)
            model(x)
        model.eval()
        out = model.forward_single(x)
        (grad,) = torch.autograd.grad(cac_score(out.logits).sum(), out.features)
        if head != "stage":
            assert float(grad.min()) >= 0.0 and float(grad.max()) > 0.0
            same = torch.allclose(grad, grad[:, :, :1, :1, :1].expand_as(grad))
            # the sum's gradient is the same at every voxel of a channel (GAP); the peak adds
            # to its largest voxel only
            assert same == (pool == "sum")
        else:
            assert float(grad.min()) < 0.0 < float(grad.max())


def test_unknown_model_lists_known_names():
    with pytest.raises(AidnetError, match="aidnet, idnet, resnet101, densenet121"):
        build_model("unet")


def test_running_evidence_norm_is_batch_independent_in_training():
    """With ``norm_mode = "running"`` a scan's training-mode logits do not depend on the rest of its
    batch, the first batch sets the statistics and later ones move them by the momentum; in
    eval the layer is the plain BatchNorm. With batch statistics (the default) they do depend
    on the batch, which shows the check can fail."""
    from aidnet.models.heads import RisingClassifier

    torch.manual_seed(0)
    pooled = torch.rand(6, 4) * 0.01
    other = torch.randn(6, 5)
    for running in (False, True):
        head = RisingClassifier(4, 3, other_channels=5)
        head.norm_mode = "running" if running else "batch"
        head.train()
        head(pooled[:3], 1000, other[:3])  # statistics from a first batch
        stats = {k: v.clone() for k, v in head.norm.state_dict().items()}
        together = head(pooled[3:], 1000, other[3:])
        head.norm.load_state_dict(stats)  # as before that batch
        alone = head(
            pooled[3:4].expand(3, 4) * torch.tensor([[1.0], [2.0], [3.0]]),
            1000,
            other[3:4].expand(3, 5),
        )
        same = torch.allclose(together[0], alone[0], atol=1e-6)
        assert same == running
    raw = torch.log1p(pooled * 1000)
    head = RisingClassifier(4, 3, other_channels=5)
    head.norm_mode = "running"
    head.train()
    head(pooled[:3], 1000, other[:3])
    assert torch.allclose(head.norm.running_mean, raw[:3].mean(0))  # first batch: its own mean
    second = head(pooled[3:], 1000, other[3:])
    first_mean = raw[:3].mean(0)
    normed = (raw[3:] - first_mean) / torch.sqrt(raw[:3].var(0) + head.norm.eps)
    expected = torch.nn.functional.pad(normed @ torch.nn.functional.softplus(head.weight).T, (1, 0))
    assert torch.allclose(second, expected + head.other(other[3:]), atol=1e-5)  # old statistics
    # then the update: a plain mean of the two batch means (rate max(momentum, 1/2))
    assert torch.allclose(head.norm.running_mean, (raw[:3].mean(0) + raw[3:].mean(0)) / 2)
    head.eval()
    plain = RisingClassifier(4, 3, other_channels=5)
    plain.load_state_dict(head.state_dict())  # the same weights and buffers as a BatchNorm
    plain.eval()
    assert torch.equal(head(pooled, 1000, other), plain(pooled, 1000, other))


@pytest.mark.parametrize("mode", ["batch", "fixed"])
def test_a_fainter_calcium_map_costs_cross_entropy_only_on_a_fixed_scale(mode):
    """The calcium map dies when the negative-evidence penalty shrinks it: under batch
    statistics the cross-entropy cannot see a common factor on the map (it is a common shift of
    the log evidence), so nothing resists. On a fixed scale (``fixed``) a map 100 times fainter
    loses its CAC logits on the positive scans and the cross-entropy rises."""
    from aidnet.models.heads import RisingClassifier

    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 0, 1])
    # positives carry far more evidence than negatives, as a trained map does
    pooled = torch.where(labels > 0, 1.0, 0.02)[:, None] * (1 + torch.rand(6, 4))
    head = RisingClassifier(4, 3)
    head.norm_mode = mode
    with torch.no_grad():
        head.weight.fill_(1.0)
    head.train()
    head(pooled, 1000)  # the first batch (sets the statistics of "fixed")

    @torch.no_grad()
    def ce(scale: float) -> float:
        return float(torch.nn.functional.cross_entropy(head(pooled * scale, 1000), labels))

    ratio = ce(0.01) / ce(1.0)
    if mode == "batch":
        assert ratio == pytest.approx(1.0, abs=0.05)  # blind to the map's scale
    else:
        assert ratio > 2.0


def test_the_peak_evidence_is_the_maps_largest_voxel_per_channel():
    """``evidence_pool: sum_peak``: each channel gives the log of its sum and of its largest
    voxel, so one strong voxel moves the logits where the same mass spread thinly would be
    indistinguishable by the sum alone."""
    from aidnet.models.base import FeatureMaps
    from aidnet.models.heads import RisingClassifier

    torch.manual_seed(0)
    head = RisingClassifier(2, 3, peak=True)
    with torch.no_grad():
        head.weight.normal_()
    head.eval()
    pooled, peak = torch.rand(3, 2), torch.rand(3, 2) * 5
    raw = torch.cat([torch.log1p(pooled * 100), torch.log1p(peak)], dim=1)
    expected = torch.nn.functional.pad(
        head.norm(raw) @ torch.nn.functional.softplus(head.weight).T, (1, 0)
    )
    assert torch.allclose(head(pooled, 100, None, peak), expected + head.bias, atol=1e-6)
    with pytest.raises(ValueError, match="needs the map's peak"):
        head(pooled, 100)
    # through the network: equal sums, one concentrated and one spread thinly
    model = AIDNet(features=(4, 8, 16), evidence_pool="sum_peak").eval()
    with torch.no_grad():
        model.evidence.weight.fill_(1.0)
    spread = torch.full((1, 8, *TINY), 1e-3)
    spot = torch.zeros_like(spread)
    spot[0, :, 3, 3, 3] = float(spread[0, 0].sum())
    with torch.no_grad():
        logits = [
            model.forward_head(FeatureMaps(m, None, torch.zeros(1, 8))) for m in (spread, spot)
        ]
    assert float(logits[1][0, 1] - logits[0][0, 1]) > 0.5
    with pytest.raises(ValueError, match="evidence_pool"):
        AIDNet(evidence_pool="mean")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (1, 1, 0), (2, 2, 0)])
def test_a_single_volume_takes_the_fast_convolution_with_the_same_result(kernel, stride, padding):
    """Our Conv3d sends a batch of one to oneDNN (PyTorch would take its slow native kernel for
    so small a volume) and gives nn.Conv3d's output and gradients."""
    from aidnet.models.blocks import Conv3d

    torch.manual_seed(0)
    ours = Conv3d(8, 6, kernel_size=kernel, stride=stride, padding=padding, bias=True)
    plain = nn.Conv3d(8, 6, kernel_size=kernel, stride=stride, padding=padding, bias=True)
    plain.load_state_dict(ours.state_dict())
    x = torch.rand(1, 8, 6, 10, 12, requires_grad=True)
    with torch.autograd.profiler.profile() as prof:
        y = ours(x)
    assert "aten::mkldnn_convolution" in {e.name for e in prof.function_events}
    expected = plain(x)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(y.square().sum(), (x, ours.weight, ours.bias))
    reference = torch.autograd.grad(expected.square().sum(), (x, plain.weight, plain.bias))
    for g, r in zip(grads, reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4)
    two = torch.rand(2, 8, 6, 10, 12)  # larger batches and other types: nn.Conv3d's own path
    torch.testing.assert_close(ours(two), plain(two))


def test_a_single_volume_under_bfloat16_autocast_keeps_pytorchs_own_path():
    from aidnet.models.blocks import Conv3d

    conv = Conv3d(4, 4, kernel_size=3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(torch.rand(1, 4, 4, 6, 8))
    assert y.dtype == torch.bfloat16
