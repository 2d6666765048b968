"""Running one training over several processes: the thin setup step around the plain loop.

torchrun starts one process per GPU (or per CPU slot) and tells each its place through the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `start` reads that, joins
the process group (NCCL on CUDA, gloo on the CPU) and pins the process to its GPU; without
torchrun it returns the single-process `Distributed()` and nothing here does anything. The loop
in training.py asks only: which device, which sampler, sum these numbers over every rank, am I
rank 0, wait for the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_distributed
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from tlvision.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank `rank` of `world_size` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # a process group was joined (under torchrun, even with one process)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and logs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def start(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group when launched by it; the device this process uses.

    On CUDA each process takes the GPU of its LOCAL_RANK; `device` may name cuda or cuda:N (N is
    then ignored: torchrun decides).
    """
    if not launched_by_torchrun():
        return Distributed(), device
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs visible; "
                "give --nproc-per-node at most the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"--device {device}: distributed runs use cuda (NCCL) or cpu (gloo)")
    if not torch_distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_distributed.init_process_group(backend=backend)
    return Distributed(rank, world_size, local_rank, active=True), device


def stop(distributed: Distributed) -> None:
    """Leave the process group (every rank calls this once the run is done)."""
    if distributed.active and torch_distributed.is_initialized():
        torch_distributed.destroy_process_group()


def barrier(distributed: Distributed) -> None:
    """Wait until every rank gets here (rank 0 writing files, the others waiting for them)."""
    if distributed.active:
        torch_distributed.barrier()


def sum_over_ranks(
    distributed: Distributed, values: Sequence[float], device: torch.device
) -> list[float]:
    """Element-wise sums of `values` over every rank (loss sums, correct and seen counts)."""
    if not distributed.active:
        return list(values)
    # float64: counts stay exact far beyond any dataset size
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    torch_distributed.all_reduce(tensor, op=torch_distributed.ReduceOp.SUM)
    return [float(value) for value in tensor.cpu()]


def gather_lists(distributed: Distributed, items: list[T]) -> list[T]:
    """Every rank's `items`, concatenated in rank order (small lists: unreadable indices)."""
    if not distributed.active:
        return list(items)
    gathered: list[Any] = [None] * distributed.world_size
    torch_distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def broadcast_buffers(distributed: Distributed, model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP sends rank 0's buffers at the start of each forward, but each rank then updates its
    own in that forward; after the last batch they differ slightly. Validation and the saved
    model must use one set: rank 0's, the one the checkpoint holds.
    """
    if not distributed.active:
        return
    for buffer in model.buffers():
        torch_distributed.broadcast(buffer, src=0)


def wrap_model(distributed: Distributed, model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (gradients averaged over ranks), or `model`."""
    if not distributed.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # The body may be partly frozen (--freeze-until): those parameters get no gradient.
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)


def train_sampler(
    distributed: Distributed, dataset: Dataset[Any], seed: int
) -> DistributedSampler[Any] | None:
    """Each rank's share of a shuffled epoch; `set_epoch` reshuffles it from (seed, epoch).

    When the dataset size is not a multiple of the world size, DistributedSampler repeats up to
    world_size - 1 images so that every rank runs the same number of batches (DDP needs that).
    """
    if not distributed.active:
        return None
    return DistributedSampler(
        dataset, num_replicas=distributed.world_size, rank=distributed.rank, shuffle=True,
        seed=seed,
    )  # fmt: skip


class ShardSampler(Sampler[int]):
    """Every `world_size`-th index from `rank`, no padding: each image is evaluated once.

    (DistributedSampler pads the last shard with repeats, which would count some val images
    twice.) Evaluation needs no equal batch counts: its only collective is after the loop.
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard(distributed: Distributed, items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: every `world_size`-th from `rank`."""
    return list(items[distributed.rank :: distributed.world_size])


def launch(nproc: int, argv: Sequence[str]) -> int:
    """`tlvision ARGV` on `nproc` local processes through torchrun (torch.distributed.run)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: must be at least 1")
    try:
        torchrun_main(["--standalone", f"--nproc-per-node={nproc}", "-m", "tlvision", *argv])
    except ChildFailedError as error:
        # each failed rank has printed its own error; torchrun has listed the ranks
        return max((failure.exitcode for failure in error.failures.values()), default=1) or 1
    return 0
