"""The few collective operations a hand-written training loop needs to run data-parallel.

Under ``accelerate launch`` (or ``torchrun``) each process holds a full copy of the (4-bit) model and
works on its own share of the batch; these helpers make the processes agree. With one process they
do nothing, so the same loop runs unchanged in a notebook.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over every process (a new tensor; ``x`` is untouched)."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_mean(x: torch.Tensor) -> torch.Tensor:
    return all_sum(x) / world_size()


def all_gather(x: torch.Tensor) -> list[torch.Tensor]:
    """``x`` from every process, in rank order (``[x]`` with one process)."""
    if not is_distributed():
        return [x]
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return out


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes, as DDP would, in one flat all-reduce."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
