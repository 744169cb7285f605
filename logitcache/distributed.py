"""torch.distributed glue for ``torchrun ... -m logitcache train``.

Nothing here is a distributed system of our own: torchrun starts the processes and sets the
environment, torch.distributed (NCCL on GPUs, gloo on CPUs) moves the tensors, DDP averages
gradients. Each rank takes its slice of every global batch (``batch[rank::world]``), replays
those views and reads those samples' teacher logits; rank 0 alone writes files.

BatchNorm statistics are computed over the global batch, so N processes train the same model
as one process with the same global batch: ``nn.SyncBatchNorm`` on GPUs, and on CPUs (which
SyncBatchNorm does not support) :class:`GlobalBatchNorm2d`, which all-reduces the batch sums.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn


@contextlib.contextmanager
def distributed_context() -> Iterator[tuple[int, int]]:
    """(rank, world size): joins the torchrun process group when ``WORLD_SIZE > 1``."""
    if torchrun_rank() is None:
        yield 0, 1
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process uses the GPU of its LOCAL_RANK."""
    ranks = torchrun_rank()
    if device.type == "cuda" and ranks is not None:
        return torch.device("cuda", ranks[2])
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_flag(value: bool) -> bool:
    """Rank 0's value of ``value`` on every rank (e.g. "the checks passed")."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([int(value)])
    dist.broadcast(t, src=0)
    return bool(t.item())


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank's batch (gloo-capable).

    The per-channel sums, then the sums of squared deviations from the global mean, are
    all-reduced with an autograd-aware all_reduce, so gradients flow through the global mean
    and variance exactly as in single-process BatchNorm over the concatenated batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:c] / n
        # Two passes, like single-process BatchNorm: E[x²] − E[x]² cancels catastrophically for
        # channels whose variance is small next to their mean, and that error grew into 1e-2
        # weight differences over an epoch of DKD on digits.
        centred = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / n  # biased, as BatchNorm normalises with
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach() * n / (n - 1))
        shape = (1, c, 1, 1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def _to_global_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        bn = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        return bn
    for name, child in module.named_children():
        setattr(module, name, _to_global_bn(child))
    return module


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm plus DistributedDataParallel, for the current device type.

    The BatchNorm layers are replaced in place, so ``model`` itself (whose state dict keeps the
    usual names) is what gets checkpointed.
    """
    if device.type == "cuda":
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(converted, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(_to_global_bn(model))
