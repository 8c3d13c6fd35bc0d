"""Exact resume: killed mid-epoch, the selection window across a resume, old logs and old
checkpoints, and resumes refused for another model or a contradicting flag."""

from __future__ import annotations

import pytest
import torch
from training_helpers import TINY, assert_same_weights, weights

import aidnet.training.loop as loop
from aidnet.config import load_config
from aidnet.errors import AidnetError
from aidnet.training.checkpoint import load_checkpoint, save_checkpoint
from aidnet.training.loop import train
from cli_runner import invoke


@pytest.mark.slow
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
    # the resumed log holds each epoch once, with the straight run's figures (all but the
    # wall-clock seconds): epoch 2's loss sums carried across the kill
    logs = {r: (tmp_path / r / "log.csv").read_text().splitlines() for r in ("straight", "killed")}
    assert logs["killed"][0] == logs["straight"][0]
    seconds = logs["killed"][0].split(",").index("seconds")
    rows = {r: [line.split(",") for line in lines[1:]] for r, lines in logs.items()}
    assert [row[0] for row in rows["killed"]] == ["1", "2"]
    for row in (*rows["straight"], *rows["killed"]):
        del row[seconds]
    assert rows["killed"] == rows["straight"]


@pytest.mark.slow
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


def test_resume_refuses_the_checkpoint_of_another_model(cohort, cache, tmp_path):
    config = load_config("tiny", epochs=1, **TINY)
    train(config, cohort, tmp_path / "a", cache_dir=cache, progress=False)
    idnet = load_config("tiny", model="idnet", epochs=1, **TINY)
    train(idnet, cohort, tmp_path / "b", cache_dir=cache, progress=False)
    (tmp_path / "a" / "last.pt").write_bytes((tmp_path / "b" / "last.pt").read_bytes())
    with pytest.raises(AidnetError, match=r"last\.pt: checkpoint of model 'idnet'.*'aidnet'"):
        train(config, cohort, tmp_path / "a", cache_dir=cache, resume=True, progress=False)


def test_the_evidence_pool_travels_in_the_checkpoint(cohort, cache, tmp_path):
    """A ``sum_peak`` run's checkpoint rebuilds that classifier; a run of the other pool may not
    resume from it (one clear line), and a spec saved before the option loads as ``sum``."""
    from aidnet.training.checkpoint import build_from_checkpoint

    peak = load_config("tiny", epochs=1, evidence_pool="sum_peak", **TINY)
    train(peak, cohort, tmp_path / "peak", cache_dir=cache, progress=False)
    state = load_checkpoint(tmp_path / "peak" / "best.pt")
    assert state["model_spec"]["evidence_pool"] == "sum_peak"
    assert build_from_checkpoint(state, tmp_path / "best.pt").evidence.peak
    spec = dict(state["model_spec"], evidence_pool=None)
    with pytest.raises(AidnetError, match="weights do not fit model aidnet"):
        build_from_checkpoint(dict(state, model_spec=spec), tmp_path / "best.pt")
    plain = load_config("tiny", epochs=1, **TINY)
    train(plain, cohort, tmp_path / "plain", cache_dir=cache, progress=False)
    (tmp_path / "plain" / "last.pt").write_bytes((tmp_path / "peak" / "last.pt").read_bytes())
    with pytest.raises(AidnetError, match=r"evidence sum_peak, .*does not match"):
        train(plain, cohort, tmp_path / "plain", cache_dir=cache, resume=True, progress=False)
    with pytest.raises(AidnetError, match="evidence_pool must be sum or sum_peak, not max"):
        load_config("tiny", evidence_pool="max")


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
    result = invoke(
        ["train", "--manifest", str(cohort), "--out", str(run), "--preset", "tiny"]
        + [*flag, "--resume", "--cache", str(cache)],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output


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
