"""Training runs a researcher can trust: batch order, exact resume mid-epoch, several
processes through torchrun (gloo on CPU), checkpoint errors, TensorBoard, prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import aidnet.training.loop as loop
import aidnet.training.precision as precision
from aidnet.cli import app
from aidnet.config import load_config
from aidnet.errors import AidnetError
from aidnet.phantom import make_cohort
from aidnet.training.batches import epoch_batches
from aidnet.training.checkpoint import load_checkpoint, save_checkpoint
from aidnet.training.loop import train

TINY = {"val_fraction": 0.25, "test_fraction": 0.25}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, subjects=16, seed=9, size="small", dicom_fraction=0.1)


@pytest.fixture(scope="module")
def cache(cohort, tmp_path_factory):
    """One preprocessed cache for every run of this module (training reads it)."""
    from aidnet.data.cache import preprocess_cohort
    from aidnet.data.manifest import read_manifest

    folder = tmp_path_factory.mktemp("cache")
    preprocess_cohort(read_manifest(cohort), folder, load_config("tiny").input_size, progress=False)
    return folder


def weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / name)["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if not a[key].is_floating_point() or atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            assert torch.allclose(a[key], b[key], atol=atol, rtol=0), (
                key,
                {k: float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()},
            )


def test_batches_are_one_global_order_cut_between_processes():
    one = epoch_batches(11, 2, seed=3, epoch=4)
    assert len(one) == 5 and all(len(b) == 2 for b in one)  # the odd item out is dropped
    assert len({i for b in one for i in b}) == 10
    ranks = [epoch_batches(11, 1, seed=3, epoch=4, world=2, rank=r) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    assert epoch_batches(11, 2, seed=3, epoch=5) != one  # a new order every epoch
    assert epoch_batches(1, 2, seed=0, epoch=0) == [[0]]  # fewer items than a batch: keep them
    with pytest.raises(ValueError, match="cannot fill one batch"):
        epoch_batches(3, 2, seed=0, epoch=0, world=2, rank=1)


def test_same_seed_same_weights(cohort, cache, tmp_path):
    config = load_config("tiny", epochs=1, **TINY)
    for name in ("a", "b"):
        train(config, cohort, tmp_path / name, cache_dir=cache, progress=False)
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    from aidnet.data.cache import recorded_cache_dir

    # evaluate/explain of the run find the cache its training filled
    assert recorded_cache_dir(tmp_path / "a") == cache


def test_loader_workers_that_outlive_an_epoch_train_the_same_weights(cohort, cache, tmp_path):
    """One DataLoader serves the whole run; with worker processes each batch carries its
    epoch, so the shifts (augmentation) of epoch 2 are epoch 2's, as without workers."""
    for workers in (0, 2):
        config = load_config("tiny", epochs=2, max_shift=2, num_workers=workers, **TINY)
        train(config, cohort, tmp_path / str(workers), cache_dir=cache, progress=False)
    assert_same_weights(weights(tmp_path / "0"), weights(tmp_path / "2"))


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_killed_mid_epoch_resume_gives_the_same_weights(
    cohort, cache, tmp_path, monkeypatch, ema_decay
):
    config = load_config(
        "tiny", epochs=2, checkpoint_steps=1, dropout=0.2, ema_decay=ema_decay, **TINY
    )
    train(config, cohort, tmp_path / "straight", cache_dir=cache, progress=False)

    saves = []
    real_save = loop.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if path.name == "last.pt" and state["next_epoch"] == 1 and state["next_step"] == 2:
            saves.append(state["next_step"])
            raise KeyboardInterrupt  # the process dies right after this checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, cohort, tmp_path / "killed", cache_dir=cache, progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert saves == [2]
    state = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (state["next_epoch"], state["next_step"]) == (1, 2)  # half-way through epoch 2
    train(config, cohort, tmp_path / "killed", cache_dir=cache, resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "killed"))
    assert_same_weights(
        weights(tmp_path / "straight", "best.pt"), weights(tmp_path / "killed", "best.pt")
    )
    if ema_decay:  # the weight average resumes exactly too
        averages = [
            load_checkpoint(tmp_path / r / "last.pt")["average"] for r in ("straight", "killed")
        ]
        assert averages[0]["updates"] == averages[1]["updates"] > 0
        assert_same_weights(averages[0]["weights"], averages[1]["weights"])
    log = (tmp_path / "killed" / "log.csv").read_text().splitlines()
    assert log == (tmp_path / "straight" / "log.csv").read_text().splitlines()[:1] + log[1:]
    assert [line.split(",")[0] for line in log[1:]] == ["1", "2"]


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


def test_validation_sees_a_dead_calcium_map(cohort, cache, tmp_path):
    from aidnet.models import build_model
    from aidnet.training.loop import model_spec, prepare_data, validation_scores

    config = load_config("tiny", **TINY)
    data = prepare_data(config, cohort, tmp_path, cache_dir=cache, progress=False)
    spec = {k: v for k, v in model_spec(config).items() if k not in ("input_size", "strategy")}
    model = build_model(**spec)
    val = data.items["val"]
    assert any((i.record.label or 0) > 0 for i in val)
    auc, acc, live = validation_scores(model, val, config, torch.device("cpu"))
    assert live > 0.0  # a fresh map holds evidence on CAC-positive scans
    norm = model.calcium_map.refine[1]  # ReLU(norm(conv(...))) * calcium: a negative bias kills it
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.fill_(-1.0)
    assert validation_scores(model, val, config, torch.device("cpu"))[2] == 0.0
    baseline = load_config("tiny", model="densenet121", **TINY)
    net = build_model(name="densenet121", in_channels=2, num_classes=baseline.num_classes)
    assert np.isnan(validation_scores(net, val, baseline, torch.device("cpu"))[2])


def test_a_dead_map_epoch_is_not_selected_and_a_dead_run_warns(
    cohort, cache, tmp_path, monkeypatch, capsys
):
    import aidnet.training.loop as loop

    config = load_config("tiny", epochs=3, **TINY)
    # epoch 2 scores best on validation AUC, but its calcium map is dead (not yet alive, so no
    # guard event: a map that dies after it was alive is the guard's, tests/test_guard.py)
    script = iter([(0.6, 0.5, 0.0), (0.9, 0.7, 0.0), (0.7, 0.6, 0.5)])
    monkeypatch.setattr(loop, "validation_scores", lambda *a: next(script))
    best = train(config, cohort, tmp_path / "a", cache_dir=cache, progress=False)
    assert load_checkpoint(best)["epoch"] == 2  # 0-based: the third epoch (0.7, live)
    assert "warning" not in capsys.readouterr().err
    script = iter([(0.6, 0.5, 0.0), (0.9, 0.7, 0.0), (0.7, 0.6, 0.0)])
    best = train(config, cohort, tmp_path / "b", cache_dir=cache, progress=False)
    assert load_checkpoint(best)["epoch"] == 1  # all dead: the best score
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "calcium map is zero" in err and str(tmp_path / "b") in err


def test_the_weight_average_by_hand():
    from aidnet.training.average import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    average = WeightAverage(model, decay=0.5)
    steps = []
    for value in (3.0, 5.0, 7.0):
        with torch.no_grad():
            model[0].weight.fill_(value)
        model.train()(torch.randn(4, 2))  # moves BatchNorm's statistics and its counter
        average.update(model)
        steps.append(value)
    # d = min(0.5, (1 + n) / (10 + n)) = 2/11, then 0.5, 0.5
    expected = 1.0
    for n, value in enumerate(steps, start=1):
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
    shadow = average.module.state_dict()
    assert torch.allclose(shadow["0.weight"], torch.full((1, 2), expected))
    assert shadow["1.num_batches_tracked"] == model[1].num_batches_tracked == 3  # copied
    assert not torch.equal(shadow["1.running_mean"], model[1].running_mean)  # averaged
    assert not any(p.requires_grad for p in average.module.parameters())
    copy = WeightAverage(model, decay=0.5)
    copy.load_state_dict(average.state_dict())
    assert copy.updates == 3
    assert_same_weights(copy.module.state_dict(), shadow)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_validation_and_best_use_the_weight_average(cohort, cache, tmp_path, monkeypatch):
    config = load_config("tiny", epochs=2, ema_decay=0.9, **TINY)
    seen = []

    def scripted(model, *args):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return (0.5 + len(seen) / 10, 0.5, 1.0)  # every epoch better than the last

    monkeypatch.setattr(loop, "validation_scores", scripted)
    best = load_checkpoint(train(config, cohort, tmp_path / "run", cache_dir=cache, progress=False))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert best["epoch"] == 1 and best["weights"] == "average"
    assert_same_weights(best["model"], last["average"]["weights"])
    assert_same_weights(seen[-1], last["average"]["weights"])
    differs = [not torch.equal(best["model"][k], last["model"][k]) for k in last["model"]]
    assert any(differs)  # the average is not the last step's weights
    with pytest.raises(AidnetError, match="ema_decay must be"):
        load_config("tiny", ema_decay=1.0)
    off = load_config("tiny", epochs=1, **TINY)
    assert off.ema_decay == 0.0
    monkeypatch.setattr(loop, "validation_scores", lambda *a: (0.5, 0.5, 1.0))
    plain = load_checkpoint(train(off, cohort, tmp_path / "off", cache_dir=cache, progress=False))
    assert plain["weights"] == "last step"
    assert_same_weights(plain["model"], weights(tmp_path / "off"))


# the validation AUC of epochs 1-4; 0.9 + 1e-16 (0.9000000000000001) ties with 0.9 as AUCs
# equal as rank statistics can when summed in another order
WINDOW = [0.9, 0.8, 0.6, 0.7]
TIED = [0.6, 0.9, 0.9 + 1e-16, 0.8]


@pytest.mark.parametrize(
    ("scores", "select_from", "chosen"), [(WINDOW, 0.0, 0), (WINDOW, 0.5, 3), (TIED, 0.0, 1)]
)
def test_best_is_chosen_in_the_selection_window(
    cohort, cache, tmp_path, monkeypatch, scores, select_from, chosen
):
    given = iter(scores)
    monkeypatch.setattr(loop, "validation_scores", lambda *a: (next(given), 0.5, 1.0))
    config = load_config("tiny", epochs=4, select_from=select_from, **TINY)
    best = load_checkpoint(train(config, cohort, tmp_path / "run", cache_dir=cache, progress=False))
    assert best["epoch"] == chosen and best["val_auc"] == scores[chosen]
    with pytest.raises(AidnetError, match="select_from must be"):
        load_config("tiny", select_from=1.0)


def test_the_selection_window_survives_a_resume(cohort, cache, tmp_path, monkeypatch):
    scores, seen, killed = [0.9, 0.8, 0.6, 0.7], [], []

    def scripted(*args):
        if len(seen) == 2 and not killed:
            killed.append(True)
            raise KeyboardInterrupt  # dies in epoch 3, after epoch 2's checkpoint
        seen.append(True)
        return (scores[len(seen) - 1], 0.5, 1.0)

    monkeypatch.setattr(loop, "validation_scores", scripted)
    config = load_config("tiny", epochs=4, select_from=0.5, **TINY)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, cohort, run, cache_dir=cache, progress=False)
    assert load_checkpoint(run / "best.pt")["epoch"] == 0  # provisional: before the window
    train(config, cohort, run, cache_dir=cache, resume=True, progress=False)
    # epoch 1's 0.9 lay outside the window: epoch 3 replaced it, and epoch 4 beat epoch 3
    assert load_checkpoint(run / "best.pt")["epoch"] == 3


def test_a_resumed_log_from_an_older_version_keeps_its_columns(tmp_path):
    from aidnet.training.logs import TrainLog

    old = "epoch,lr,loss,ce,contrastive,val_auc,val_accuracy,seconds"
    (tmp_path / "log.csv").write_text(old + "\n1,0.001,2.0,1.9,0.1,0.5,0.5,3.0\n")
    log = TrainLog(tmp_path)
    row = dict(zip(old.split(","), (2, 0.001, 1.5, 1.4, 0.1, 0.6, 0.7, 3.0), strict=True))
    log.epoch({**row, "negative": 0.25})
    log.close()
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines == [old, "1,0.001,2.0,1.9,0.1,0.5,0.5,3.0", "2,0.001,1.5,1.4,0.1,0.6,0.7,3.0"]


@pytest.mark.parametrize("name", ["densenet121"])
def test_a_baseline_trains_on_single_scans(cohort, tmp_path, name):
    config = load_config("tiny", model=name, epochs=1, input_size=(32, 32, 32), **TINY)
    best = train(config, cohort, tmp_path / "run", progress=False)
    assert load_checkpoint(best)["model_spec"]["name"] == name


def test_resume_refuses_the_checkpoint_of_another_model(cohort, cache, tmp_path):
    config = load_config("tiny", epochs=1, **TINY)
    train(config, cohort, tmp_path / "a", cache_dir=cache, progress=False)
    idnet = load_config("tiny", model="idnet", epochs=1, **TINY)
    train(idnet, cohort, tmp_path / "b", cache_dir=cache, progress=False)
    (tmp_path / "a" / "last.pt").write_bytes((tmp_path / "b" / "last.pt").read_bytes())
    with pytest.raises(AidnetError, match=r"last\.pt: checkpoint of model 'idnet'.*'aidnet'"):
        train(config, cohort, tmp_path / "a", cache_dir=cache, resume=True, progress=False)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (["--model", "idnet"], "--model aidnet, not idnet"),
        (["--head", "stage"], "--head calcium, not stage"),
        (["--negative-evidence", "0.5"], "--negative-evidence 0.1, not 0.5"),
        (["--ema-decay", "0.9"], "--ema-decay 0.0, not 0.9"),
        (["--grad-clip", "5"], "--grad-clip 0.0, not 5.0"),
        (["--select-from", "0.5"], "--select-from 0.0, not 0.5"),
        (["--cpu-amp"], "--cpu-amp False, not True"),
    ],
)
def test_resume_with_a_contradicting_flag_is_one_line(cohort, cache, tmp_path, flag, expected):
    run = tmp_path / "run"
    config = load_config("tiny", epochs=1, head="calcium", **TINY)
    train(config, cohort, run, cache_dir=cache, progress=False)
    result = CliRunner().invoke(
        app,
        ["train", "--manifest", str(cohort), "--out", str(run), "--preset", "tiny"]
        + [*flag, "--resume", "--cache", str(cache)],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output


def emulate_two_processes(config, cohort, cache, out) -> dict[str, torch.Tensor]:
    """What DDP does with 2 processes × batch 1 and per-process BatchNorm, in one process:
    per step, the mean of both processes' gradients; the BatchNorm buffers are process 0's
    (DDP broadcasts them from process 0 before every forward)."""
    from aidnet.data.datasets import PairDataset, make_pairs
    from aidnet.losses import PairLoss
    from aidnet.models import build_model
    from aidnet.training.batches import step_seed

    data = loop.prepare_data(config, cohort, out, cache_dir=cache, progress=False)
    dataset = PairDataset(
        make_pairs(data.items["train"]),
        config.num_classes,
        max_shift=config.max_shift,
        seed=config.seed,
    )
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=config.num_classes, features=config.features)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = PairLoss(config.lambda_, config.margin, config.negative_evidence)
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = loop.learning_rate(config, epoch)
        model.train()
        dataset.set_epoch(epoch)
        ranks = [
            epoch_batches(len(dataset), 1, seed=config.seed, epoch=epoch, world=2, rank=r)
            for r in (0, 1)
        ]
        for step, (batch0, batch1) in enumerate(zip(*ranks, strict=True)):
            optimizer.zero_grad()
            buffers = {k: v.clone() for k, v in model.named_buffers()}
            for rank, batch in ((1, batch1), (0, batch0)):  # process 0's buffers last
                if rank == 0:
                    for name, value in model.named_buffers():
                        value.copy_(buffers[name])
                x1, x2, y1, y2 = dataset[batch[0]]
                torch.manual_seed(step_seed(config.seed, epoch, step, rank))
                o1, o2 = model(x1[None], x2[None])
                maps = (o1.features, o2.features) if model.map_on_calcium else (None, None)
                labels = torch.tensor([y1]), torch.tensor([y2])
                loss, _ = loss_fn(o1.logits, o2.logits, *labels, *maps)
                (loss / 2).backward()
            optimizer.step()
    return model.state_dict()


def test_torchrun_two_cpu_processes(cohort, cache, tmp_path):
    """DDP with gloo: 2 processes × batch 1, checked against what DDP must compute."""
    yaml_path = tmp_path / "tiny.yaml"
    yaml_path.write_text(
        (Path(__file__).parents[1] / "src/aidnet/presets/tiny.yaml").read_text()
        + "val_fraction: 0.25\ntest_fraction: 0.25\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "aidnet.cli", "train", "--manifest", str(cohort)]
    command += ["--preset", str(yaml_path), "--batch-size", "1", "--cache", str(cache)]
    command += ["--out", str(tmp_path / "two")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 processes × batch 1 = global batch 2" in done.stdout
    assert done.stdout.count("epoch 2/2:") == 1  # process 0 reports, the other is quiet
    config = load_config(str(yaml_path), batch_size=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the two processes: the same order of float sums
    try:
        expected = emulate_two_processes(config, cohort, cache, tmp_path / "emulated")
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "two" / "splits.csv").read_text() == (
        tmp_path / "emulated" / "splits.csv"
    ).read_text()
    assert_same_weights(weights(tmp_path / "two"), expected, atol=1e-5)


def test_predict_one_scan_and_a_pair(cohort, cache, tmp_path):
    from aidnet.data.manifest import read_manifest

    run = tmp_path / "run"
    train(load_config("tiny", epochs=1, **TINY), cohort, run, cache_dir=cache, progress=False)
    records = read_manifest(cohort)
    scan, rescan = records[0], records[1]
    assert scan.subject == rescan.subject
    runner = CliRunner()
    result = runner.invoke(
        app, ["predict", "--checkpoint", str(run), str(scan.path), "--out", str(tmp_path / "one")]
    )
    assert result.exit_code == 0, result.output
    one = json.loads((tmp_path / "one" / "prediction.json").read_text())
    assert set(one["class_probabilities"]) == {"0", "1-399", ">=400"}
    assert sum(one["class_probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert one["p_cac"] == pytest.approx(
        one["class_probabilities"]["1-399"] + one["class_probabilities"][">=400"], abs=1e-6
    )
    assert one["model"] == "aidnet" and len(one["checkpoint_sha256"]) == 64
    assert one["disagreement"] is False and len(one["scans"]) == 1
    args = ["predict", "--checkpoint", str(run / "best.pt"), str(scan.path), str(rescan.path)]
    result = runner.invoke(app, args + ["--out", str(tmp_path / "pair")])
    assert result.exit_code == 0, result.output
    pair = json.loads((tmp_path / "pair" / "prediction.json").read_text())
    p = [s["p_cac"] for s in pair["scans"]]
    assert pair["p_cac"] == pytest.approx(sum(p) / 2, abs=1e-6)
    assert pair["scans"][0]["p_cac"] == pytest.approx(one["p_cac"], abs=1e-6)
    assert pair["disagreement"] == (
        pair["scans"][0]["predicted_class"] != pair["scans"][1]["predicted_class"]
    )
    # heat maps of each input on its own grid and affine, named scan/rescan (never the file name)
    import nibabel as nib

    from aidnet.io.read import read_volume

    assert pair["scans"][1]["heatmaps"]["gradcam"] == "rescan_gradcam.nii.gz"
    for key, record in (("scan", scan), ("rescan", rescan)):
        for name in ("gradcam", "attention"):
            image = nib.load(tmp_path / "pair" / f"{key}_{name}.nii.gz")
            source = nib.load(record.path)
            assert image.shape == source.shape
            np.testing.assert_allclose(image.affine, source.affine, atol=1e-4)
            values = np.asarray(image.dataobj)
            assert values.min() >= 0 and values.max() <= 1
            assert (tmp_path / "pair" / f"{key}_{name}.png").stat().st_size > 1000
    assert (
        read_volume(tmp_path / "pair" / "scan_gradcam.nii.gz").shape == read_volume(scan.path).shape
    )


def test_predict_with_bad_checkpoints_is_one_line(cohort, cache, tmp_path):
    from aidnet.data.manifest import read_manifest

    scan = str(read_manifest(cohort)[0].path)
    run = tmp_path / "run"
    train(load_config("tiny", epochs=1, **TINY), cohort, run, cache_dir=cache, progress=False)
    data = (run / "best.pt").read_bytes()
    state = load_checkpoint(run / "best.pt")
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pt")  # a pickled network, not weights
    # bytes changed inside one tensor's data: PyTorch itself loads this with wrong weights
    damaged = bytearray(data)
    with zipfile.ZipFile(run / "best.pt") as archive:
        for member in archive.infolist():
            if "/data/" in member.filename:  # each tensor's storage: invert its first bytes
                start = member.header_offset + 30 + len(member.filename) + len(member.extra)
                end = start + min(64, member.file_size)
                damaged[start:end] = bytes(255 - b for b in damaged[start:end])
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    changed = torch.load(tmp_path / "damaged.pt", weights_only=True)["model"]
    assert any(not torch.equal(v, state["model"][k]) for k, v in changed.items())
    state["model_spec"] = {**state["model_spec"], "name": "idnet"}
    save_checkpoint(tmp_path / "mismatch.pt", state)
    cases = {
        "cut.pt": "bytes that are not a whole PyTorch file",
        "other.pt": "not an aidnet checkpoint",
        "module.pt": "torch.nn.modules.linear.Linear), not only tensors",
        "damaged.pt": "damaged checkpoint",
        "mismatch.pt": "weights do not fit model idnet",
        "missing.pt": "checkpoint not found",
    }
    for name, message in cases.items():
        out = tmp_path / f"out-{name}"
        result = CliRunner().invoke(
            app, ["predict", "--checkpoint", str(tmp_path / name), scan, "--out", str(out)]
        )
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aidnet: error: "), result.output
        assert str(tmp_path / name) in lines[0] and message in lines[0], lines[0]
        assert not out.exists()


def test_predict_on_a_head_names_the_file(cohort, cache, tmp_path, head_ct):
    from aidnet.data.manifest import read_manifest
    from aidnet.io.nifti import write_nifti

    run = tmp_path / "run"
    train(load_config("tiny", epochs=1, **TINY), cohort, run, cache_dir=cache, progress=False)
    head = tmp_path / "head.nii.gz"
    write_nifti(head_ct.array.astype("int16"), head_ct.affine, head)
    good = str(read_manifest(cohort)[0].path)
    for inputs in ([str(head)], [good, str(head)]):  # alone, and as the rescan of a good scan
        out = tmp_path / f"out{len(inputs)}"
        result = CliRunner().invoke(
            app, ["predict", "--checkpoint", str(run), *inputs, "--out", str(out)]
        )
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"aidnet: error: {head}: no lungs found")
        assert not out.exists()  # not even the good scan's heat maps


def test_augmentation_shifts_but_never_mirrors(tmp_path):
    """The heart is on the left: augmentation moves a scan by a few voxels, never flips it."""

    from aidnet.data.cache import save_cached
    from aidnet.data.datasets import Item, PairDataset
    from aidnet.data.manifest import ScanRecord

    image = np.zeros((2, 8, 10, 12), np.float32)
    image[1, 4, 5, 9] = 1.0  # a marker on the patient's left (high X)
    items = []
    for visit in ("scan", "rescan"):
        path = tmp_path / f"{visit}.npz"
        save_cached(path, image, {})
        record = ScanRecord("s", visit, path, 0.0, {})
        items.append(Item(record, path))
    dataset = PairDataset([(items[0], items[1])], 3, max_shift=2, seed=0)
    moves = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        for scan in dataset[0][:2]:
            (z, y, x) = np.argwhere(scan[1].numpy() > 0)[0]
            assert abs(z - 4) <= 2 and abs(y - 5) <= 2 and abs(x - 9) <= 2
            moves.add((z - 4, y - 5, x - 9))
    assert len(moves) > 10  # it does move


def test_a_checkpoint_saved_before_the_calcium_head_loads_as_the_stage_head(tmp_path):
    """Runs written before the head option existed have no ``head`` in their model spec:
    they were stage-head models and must still load, predict and resume as such."""
    from aidnet.models import build_model
    from aidnet.training.checkpoint import build_from_checkpoint

    torch.manual_seed(0)
    old = build_model("aidnet", num_classes=3, features=(4, 8, 16), head="stage")
    spec = {"name": "aidnet", "num_classes": 3, "features": [4, 8, 16], "input_size": [8] * 3}
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"model": old.state_dict(), "model_spec": spec})
    state = load_checkpoint(path)
    model = build_from_checkpoint(state, path)
    assert not model.map_on_calcium
    x = torch.rand(1, 2, 8, 8, 8)
    old.eval(), model.eval()
    assert torch.equal(model.forward_single(x).logits, old.forward_single(x).logits)
    loop._check_resumable(
        {**state, "next_epoch": 1, "optimizer": {}}, {**spec, "head": "stage"}, path
    )
    with pytest.raises(AidnetError, match="head stage"):
        loop._check_resumable(
            {**state, "next_epoch": 1, "optimizer": {}}, {**spec, "head": "calcium"}, path
        )
