"""One training run: the same seed gives the same weights, logs (CSV and TensorBoard),
gradient clipping, the evidence norm, CPU bfloat16, and a baseline on single scans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import TINY, assert_same_weights, weights

import aidnet.training.precision as precision
from aidnet.config import load_config
from aidnet.errors import AidnetError
from aidnet.training.checkpoint import load_checkpoint
from aidnet.training.loop import train


def test_same_seed_same_weights(cohort, cache, tmp_path):
    config = load_config("tiny", epochs=1, **TINY)
    for name in ("a", "b"):
        train(config, cohort, tmp_path / name, cache_dir=cache, progress=False)
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    from aidnet.data.cache import recorded_cache_dir

    # evaluate/explain of the run find the cache its training filled
    assert recorded_cache_dir(tmp_path / "a") == cache


def test_tensorboard_and_csv_logs(cohort, cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(load_config("tiny", epochs=2, **TINY), cohort, run, cache_dir=cache, progress=False)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train/loss", "train/contrastive", "val/auc", "train/loss_step"):
        assert tag in tags, tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    lines = (run / "log.csv").read_text().splitlines()
    header = (
        "epoch,lr,loss,ce,contrastive,negative,grad_norm_max,val_auc,val_accuracy,"
        "val_map_live,seconds"
    )
    assert lines[0] == header
    negative = [float(line.split(",")[5]) for line in lines[1:]]
    assert len(negative) == 2 and all(n > 0 for n in negative)  # calcium maps on CAC-0 scans
    assert all(float(line.split(",")[6]) > 0 for line in lines[1:])
    live = [float(line.split(",")[9]) for line in lines[1:]]
    assert all(0.0 <= v <= 1.0 for v in live)


def test_grad_clip_bounds_every_step(cohort, cache, tmp_path, monkeypatch):
    norms: list[float] = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    free = load_config("tiny", epochs=1, **TINY)
    train(free, cohort, tmp_path / "free", cache_dir=cache, progress=False)
    unclipped, norms[:] = list(norms), []
    logged = float((tmp_path / "free" / "log.csv").read_text().splitlines()[1].split(",")[6])
    assert logged == pytest.approx(max(unclipped), rel=1e-4)  # the log's norm is before clipping
    clip = 0.5 * min(unclipped)
    clipped = load_config("tiny", epochs=1, grad_clip=clip, **TINY)
    train(clipped, cohort, tmp_path / "clipped", cache_dir=cache, progress=False)
    assert len(norms) == len(unclipped) > 0
    assert all(n == pytest.approx(clip, rel=1e-4) for n in norms)  # every step scaled down
    free_w, clipped_w = weights(tmp_path / "free"), weights(tmp_path / "clipped")
    assert any(not torch.equal(free_w[k], clipped_w[k]) for k in free_w)
    with pytest.raises(AidnetError, match="grad_clip must be"):
        load_config("tiny", grad_clip=-1.0)


def test_evidence_norm_running_reaches_the_head(cohort, cache, tmp_path, monkeypatch):
    from aidnet.models.heads import RisingClassifier

    flags: list[str] = []
    real = RisingClassifier._normalise

    def spy(self, raw):
        if self.training:
            flags.append(self.norm_mode)
        return real(self, raw)

    monkeypatch.setattr(RisingClassifier, "_normalise", spy)
    for norm in ("batch", "running", "fixed"):
        config = load_config("tiny", epochs=1, evidence_norm=norm, **TINY)
        train(config, cohort, tmp_path / norm, cache_dir=cache, progress=False)
        assert flags and set(flags) == {norm}
        flags.clear()
    with pytest.raises(AidnetError, match="evidence_norm must be"):
        load_config("tiny", evidence_norm="group")


def test_cpu_amp_trains_and_validates_in_bfloat16(cohort, cache, tmp_path, monkeypatch, capsys):
    from aidnet.models.aidnet import AIDNet

    seen: list[tuple[bool, torch.dtype | None]] = []  # (training, autocast dtype) per call
    real = AIDNet.forward_single
    real_inputs = precision.conv_inputs
    probing: list[bool] = []  # the bfloat16 check's own float32 pass runs

    def inputs(*args):
        probing.append(True)
        try:
            return real_inputs(*args)
        finally:
            probing.pop()

    def spy(self, x):
        if probing:
            return real(self, x)
        on = torch.is_autocast_enabled("cpu")
        seen.append((self.training, torch.get_autocast_dtype("cpu") if on else None))
        out = real(self, x)
        assert out.logits.dtype == (torch.bfloat16 if on else torch.float32)
        return out

    monkeypatch.setattr(AIDNet, "forward_single", spy)
    monkeypatch.setattr(precision, "conv_inputs", inputs)
    # as if this CPU got the convolutions of the last stage (4 deep) wrong in bfloat16
    monkeypatch.setattr(precision, "bf16_error", lambda c, shape, *a: float(shape[2] == 4))
    # (cpu_amp, native bfloat16 on the CPU) -> autocast dtype; without it, float32 and a warning
    cases = [(False, True, None), (True, True, torch.bfloat16), (True, False, None)]
    for cpu_amp, native, expected in cases:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        config = load_config("tiny", epochs=1, cpu_amp=cpu_amp, **TINY)
        run = tmp_path / f"{cpu_amp}-{native}"
        capsys.readouterr()
        train(config, cohort, run, cache_dir=cache, progress=False)
        err = capsys.readouterr().err
        assert ("no native bfloat16" in err) == (cpu_amp and not native)
        # checked before a bfloat16 run: those convolutions then run in float32
        assert ("5 of 14 3-D convolutions give wrong results" in err) == (expected is not None)
        assert {mode for mode, _ in seen} == {True, False}  # training steps and validation
        assert {dtype for _, dtype in seen} == {expected}
        seen.clear()
        assert all(v.isfinite().all() for v in weights(run).values() if v.is_floating_point())
        row = (run / "log.csv").read_text().splitlines()[1].split(",")
        assert np.isfinite(float(row[1]))  # the loss
    assert load_config("tiny").cpu_amp is False and load_config("demo").cpu_amp is False


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121"])
def test_a_baseline_trains_on_single_scans(cohort, tmp_path, name):
    config = load_config("tiny", model=name, epochs=1, input_size=(32, 32, 32), **TINY)
    best = train(config, cohort, tmp_path / "run", progress=False)
    assert load_checkpoint(best)["model_spec"]["name"] == name
