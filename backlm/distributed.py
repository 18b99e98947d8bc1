"""The process group: which rank this is, joining torchrun's group, and the few collectives the
loop and its callbacks need. With one process every helper returns its input unchanged."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank, world size, local rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only rank that writes files and talks to the user."""
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group when launched by torchrun; else one process."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get(
            "BACKLM_DIST_BACKEND", "") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def _active(info: DistInfo) -> bool:
    if info.world <= 1:
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def all_reduce_mean(values: list[float], info: DistInfo, device: Any) -> list[float]:
    """The mean of ``values`` over every rank (float64 on ``device``)."""
    if not _active(info):
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / info.world).tolist()


def gather_lists(items: list[Any], info: DistInfo) -> list[Any]:
    """Every rank's ``items`` concatenated in rank order (picklable objects)."""
    if not _active(info):
        return items
    import torch.distributed as dist

    every: list[Any] = [None] * info.world
    dist.all_gather_object(every, items)
    return [x for rank_items in every for x in rank_items]


def broadcast_flags(flags: tuple[bool, ...], info: DistInfo, device: Any) -> tuple[bool, ...]:
    """Rank 0's ``flags`` on every rank, so all ranks take the same decision together."""
    if not _active(info):
        return flags
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return tuple(bool(x) for x in t.tolist())
