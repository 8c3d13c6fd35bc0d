"""Several processes through PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

``aidnet train`` started by ``torchrun --nproc-per-node N`` (one process per GPU, or N CPU
processes with the gloo backend) reads the usual ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``
variables. Process 0 writes everything (cache, split, checkpoints, logs); the others wait for
it where they need its files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from aidnet.errors import AidnetError

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes, in place (itself when there is one)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def from_main(self, value: T) -> T:
        """Process 0's ``value`` on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, work: Callable[[bool], T]) -> T:
        """Run ``work(is_main)`` on process 0, then on the others (which then find its files).

        An error on process 0 is raised on every process, so none waits forever.
        """
        if not self.distributed:
            return work(True)
        result: T | None = None
        message = [None]
        if self.main:
            try:
                result = work(True)
            except AidnetError as exc:
                message = [str(exc)]  # type: ignore[list-item]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None:
            raise AidnetError(str(message[0]))
        if not self.main:
            result = work(False)
        return result  # type: ignore[return-value]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def start_processes(device: str | None) -> tuple[Processes, torch.device]:
    """This process's place in a ``torchrun`` job (or a single process) and its device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world > 1:
        if use_cuda:
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        else:
            dev = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=2))
        return Processes(world, rank, local_rank), dev
    if device:
        return Processes(), torch.device(device)
    return Processes(), torch.device("cuda" if use_cuda else "cpu")
