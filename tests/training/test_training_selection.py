"""Which epoch is kept: validation of the calcium map, the weight average, the selection
window and ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import TINY, assert_same_weights, weights

import aidnet.training.loop as loop
from aidnet.config import load_config
from aidnet.errors import AidnetError
from aidnet.training.checkpoint import load_checkpoint
from aidnet.training.loop import train


def test_validation_sees_a_dead_calcium_map(cohort, cache, tmp_path):
    from aidnet.models import build_model
    from aidnet.training.loop import model_for, prepare_data, validation_scores

    config = load_config("tiny", **TINY)
    data = prepare_data(config, cohort, tmp_path, cache_dir=cache, progress=False)
    model = model_for(config)
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


@pytest.mark.slow
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
