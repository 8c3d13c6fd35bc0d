"""The order of training batches: a function of (seed, epoch) only, so a run can stop after
any step and continue with exactly the next batch, and so ``torchrun`` processes share one
global order (each process takes its slice of every global batch)."""

from __future__ import annotations

import numpy as np
import torch


def epoch_batches(
    n: int, batch_size: int, *, seed: int, epoch: int, world: int = 1, rank: int = 0
) -> list[list[int]]:
    """Dataset indices of every step of ``epoch`` for process ``rank`` of ``world``.

    One seeded permutation of ``range(n)`` is cut into global batches of
    ``batch_size * world``; process ``rank`` takes positions ``[rank * batch_size, (rank + 1) *
    batch_size)`` of each. An incomplete last global batch is dropped when there is at least one
    complete one (a batch of one pair would weigh a single pair as much as a full batch), so
    every process runs the same number of steps. With ``world = 2`` and ``batch_size = 1``
    the two processes see exactly the batches that one process sees with ``batch_size = 2``.
    """
    if n <= 0:
        return []
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    order_list = order.tolist()
    span = batch_size * world
    if world > 1 and n < span:
        raise ValueError(
            f"{n} training items cannot fill one batch of {batch_size} on each of {world} processes"
        )
    stop = (n // span) * span if n >= span else n
    return [
        order_list[i : i + span][rank * batch_size : (rank + 1) * batch_size]
        for i in range(0, stop, span)
    ]


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The torch seed of one training step (dropout): resuming after any step reproduces it."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1)[0])


class BatchList:
    """A batch sampler whose batches the training loop sets before each epoch (one DataLoader,
    and its workers, for the whole run)."""

    def __init__(self) -> None:
        self.batches: list[list] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
