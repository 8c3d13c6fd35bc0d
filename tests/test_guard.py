"""The training guard: a non-finite loss, a loss jump or a dead calcium map is noticed within
the epoch, logged in one line, and training goes back to the last good epoch end with a lower
learning rate, or stops with one clear line; resume stays exact across a recovery."""

from __future__ import annotations

import math

import pytest
import torch

import aidnet.training.loop as loop
from aidnet.config import load_config
from aidnet.errors import AidnetError
from aidnet.phantom import make_cohort
from aidnet.training.checkpoint import load_checkpoint
from aidnet.training.guard import Guard
from aidnet.training.loop import train
from cli_runner import invoke

TINY = {"val_fraction": 0.25, "test_fraction": 0.25}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=16, seed=9, size="small")


@pytest.fixture(scope="module")
def cache(cohort, tmp_path_factory):
    from aidnet.data.cache import preprocess_cohort
    from aidnet.data.manifest import read_manifest

    folder = tmp_path_factory.mktemp("cache")
    preprocess_cohort(read_manifest(cohort), folder, load_config("tiny").input_size, progress=False)
    return folder


# -- the rules -----------------------------------------------------------------------------------


def test_non_finite_loss_or_norm_is_an_event():
    guard = Guard(3)
    assert guard.step(2.0, 10.0) is None
    assert guard.step(math.nan, 10.0).kind == "non-finite"
    assert guard.step(2.0, math.inf).kind == "non-finite"


def test_a_loss_jump_needs_a_full_window_twice_the_best_epoch_and_more_than_chance():
    guard = Guard(3, window=4)
    for _ in range(10):  # no finished epoch yet: nothing to compare with
        assert guard.step(50.0, 1.0) is None
    guard.epoch_done(2.0)
    assert [guard.step(4.5, 1.0) for _ in range(3)] == [None] * 3  # window not full
    event = guard.step(4.5, 1.0)
    assert event is not None and event.kind == "loss jump" and "2.000" in str(event)
    guard = Guard(3, window=4)
    guard.epoch_done(2.0)
    assert all(guard.step(3.9, 1.0) is None for _ in range(8))  # under twice the reference
    guard = Guard(3, window=4)
    guard.epoch_done(0.05)  # an overfitted run: 0.3 is 6x, but not a chance-level loss more
    assert all(guard.step(0.3, 1.0) is None for _ in range(8))
    assert guard.step(0.05 + math.log(3) + 0.2, 1.0) is None  # one step is not the window
    assert [guard.step(2.0, 1.0) for _ in range(4)][-1].kind == "loss jump"


def test_a_dead_map_is_one_only_after_it_was_alive():
    guard = Guard(3, dead_after=4)
    assert all(guard.step(2.0, 1.0, live=0, dead=2) is None for _ in range(5))  # never alive
    assert guard.step(2.0, 1.0, live=1, dead=1) is None
    assert guard.step(2.0, 1.0, live=0, dead=2) is None
    assert guard.step(2.0, 1.0, live=0, dead=0) is None  # no positives: no news
    event = guard.step(2.0, 1.0, live=0, dead=2)
    assert event is not None and event.kind == "dead map" and "4" in str(event)
    state = guard.state_dict()
    again = Guard(3, dead_after=4)
    again.load_state_dict(state)
    assert again.state_dict() == state


# -- in training ---------------------------------------------------------------------------------


def _spoil(monkeypatch, when, how):
    """Make the step(s) for which ``when(state)`` holds go wrong in the way ``how`` says."""
    real = loop.Trainer._forward_loss

    def spoiled(self, batch):
        loss, values = real(self, batch)
        if when(self.state):
            if how == "nan":
                loss = loss * math.nan
                values[0] = loss.detach()
            elif how == "jump":
                loss = loss + 20.0
                values[0] = loss.detach()
            elif how == "dead":  # every CAC-positive scan's map zero
                live, dead = values[-2:]
                values[-2:] = [live * 0, live + dead]
        return loss, values

    monkeypatch.setattr(loop.Trainer, "_forward_loss", spoiled)


@pytest.mark.parametrize("how", ["nan", "jump"])
def test_a_bad_step_goes_back_to_the_last_good_epoch_with_half_the_learning_rate(
    cohort, cache, tmp_path, monkeypatch, capsys, how
):
    config = load_config("tiny", epochs=3, lr_schedule="constant", **TINY)
    # epoch 3 (0-based 2) goes wrong until the first recovery
    _spoil(monkeypatch, lambda s: s.next_epoch == 2 and s.recoveries == 0, how)
    monkeypatch.setattr(loop, "Guard", lambda n: Guard(n, window=1))
    run = tmp_path / "run"
    train(config, cohort, run, cache_dir=cache, progress=False)
    lines = (run / "guard.log").read_text().splitlines()
    kind = {"nan": "non-finite", "jump": "loss jump"}[how]
    assert len(lines) == 1 and kind in lines[0] and "epoch 3 step" in lines[0]
    assert "back to epoch 2's end" in lines[0] and "x0.5" in lines[0]
    assert capsys.readouterr().err.count("guard:") == 1
    state = load_checkpoint(run / "last.pt")
    assert (state["recoveries"], state["lr_scale"], state["next_epoch"]) == (1, 0.5, 3)
    rows = (run / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"]
    lrs = [float(r.split(",")[1]) for r in rows]
    assert lrs == [config.lr, config.lr, config.lr / 2]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_dead_map_within_the_epoch_is_caught(cohort, cache, tmp_path, monkeypatch):
    config = load_config("tiny", epochs=2, **TINY)
    _spoil(monkeypatch, lambda s: s.next_epoch == 1 and s.recoveries == 0, "dead")
    monkeypatch.setattr(loop, "Guard", lambda n: Guard(n, dead_after=2))
    run = tmp_path / "run"
    train(config, cohort, run, cache_dir=cache, progress=False)
    (line,) = (run / "guard.log").read_text().splitlines()
    assert "dead map" in line and "epoch 2 step" in line and "back to epoch 1's end" in line


def test_a_dead_map_at_validation_after_a_live_one_is_caught(cohort, cache, tmp_path, monkeypatch):
    config = load_config("tiny", epochs=3, **TINY)
    script = iter([(0.6, 0.5, 1.0), (0.9, 0.7, 0.0), (0.65, 0.5, 1.0), (0.7, 0.6, 1.0)])
    monkeypatch.setattr(loop, "validation_scores", lambda *a: next(script))
    run = tmp_path / "run"
    best = train(config, cohort, run, cache_dir=cache, progress=False)
    (line,) = (run / "guard.log").read_text().splitlines()
    assert "epoch 2 validation: dead map" in line and "back to epoch 1's end" in line
    assert load_checkpoint(best)["epoch"] == 2  # the retried epochs; the dead one never counts
    rows = (run / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3"]


def test_spent_recoveries_stop_with_one_line(cohort, cache, tmp_path, monkeypatch):
    _spoil(monkeypatch, lambda s: s.next_epoch == 1, "nan")  # wrong however often retried
    config = load_config("tiny", epochs=2, guard_recoveries=2, **TINY)
    run = tmp_path / "run"
    with pytest.raises(AidnetError, match="training stopped at epoch 2 step 1: non-finite") as exc:
        train(config, cohort, run, cache_dir=cache, progress=False)
    assert "after 2 recoveries" in str(exc.value) and "best.pt holds epoch 1" in str(exc.value)
    assert "\n" not in str(exc.value)
    lines = (run / "guard.log").read_text().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("stop at epoch 2")
    assert (run / "best.pt").exists()  # what was computed stays
    # and from the command line: one line, non-zero exit, no traceback
    result = invoke(
        ["train", "--manifest", str(cohort), "--out", str(tmp_path / "cli"), "--preset", "tiny"]
        + ["--cache", str(cache), "--epochs", "2"],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "training stopped at epoch 2" in result.output


@pytest.mark.slow
def test_resume_after_a_recovery_is_exact(cohort, cache, tmp_path, monkeypatch):
    config = load_config("tiny", epochs=3, checkpoint_steps=1, dropout=0.2, **TINY)
    _spoil(monkeypatch, lambda s: (s.next_epoch, s.next_step, s.recoveries) == (1, 1, 0), "nan")
    train(config, cohort, tmp_path / "straight", cache_dir=cache, progress=False)
    real_save = loop.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if path.name == "last.pt" and state["recoveries"] == 1 and state["next_step"] == 1:
            raise KeyboardInterrupt  # dies one step into the retried epoch

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, cohort, tmp_path / "killed", cache_dir=cache, progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    train(config, cohort, tmp_path / "killed", cache_dir=cache, resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (a["recoveries"], b["recoveries"]) == (1, 1)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
