"""Several processes through torchrun (gloo on CPU), checked against what DDP must compute."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import assert_same_weights, weights

import aidnet.training.loop as loop
from aidnet.config import load_config
from aidnet.training.batches import epoch_batches


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


@pytest.mark.slow
def test_torchrun_two_cpu_processes(cohort, cache, tmp_path):
    """DDP with gloo: 2 processes × batch 1, checked against what DDP must compute."""
    yaml_path = tmp_path / "tiny.yaml"
    yaml_path.write_text(
        (Path(__file__).parents[2] / "src/aidnet/presets/tiny.yaml").read_text()
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
