"""torch.distributed glue for ``torchrun ... -m logitcache train``.

Nothing here is a distributed system of our own: torchrun starts the processes and sets the
environment, torch.distributed (NCCL on GPUs, gloo on CPUs) moves the tensors, DDP averages
gradients. Each rank takes its slice of every global batch (``batch[rank::world]``), replays
those views and reads those samples' teacher logits; rank 0 alone writes files.

BatchNorm statistics are computed over the global batch, so N processes train the same model
as one process with the same global batch: ``nn.SyncBatchNorm`` on GPUs, and on CPUs (which
SyncBatchNorm does not support) :class:`GlobalBatchNorm2d`, which all-gathers each rank's
statistics. ``sync_bn=False`` keeps plain per-rank BatchNorm, trading that equivalence for speed.
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


class _AllGather(torch.autograd.Function):
    """(world, *x.shape): every rank's ``x``; each rank's gradient is the sum over ranks of the
    gradients of its row. (torch.distributed.nn's all_gather is deprecated.)"""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank's batch (gloo-capable).

    Each rank's (mean, sum of squared deviations, count) per channel are all-gathered with an
    autograd-aware collective and combined exactly (Chan et al.'s parallel variance), so that
    gradients flow through the global mean and variance as in single-process BatchNorm over the
    concatenated batch. One collective forward and one backward per layer: on CPUs each costs
    about a millisecond of latency (gloo, measured here), which E[x²] − E[x]² in one all-reduce
    would halve again, but that cancels catastrophically for channels whose variance is small
    next to their mean (1e-2 weight differences over an epoch of DKD on digits).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        c, shape = x.shape[1], (1, x.shape[1], 1, 1)
        count = x.numel() // c
        mean_local = x.mean(dim=(0, 2, 3))
        centred = x - mean_local.view(shape)  # two passes: torch.var_mean is twice as slow on CPU
        stats = torch.cat([mean_local, (centred * centred).sum(dim=(0, 2, 3)), x.new_full((1,), float(count))])
        gathered = _AllGather.apply(stats)  # (world, 2c + 1)
        counts, means = gathered[:, -1:], gathered[:, :c]
        n = counts.sum()
        mean = (counts * means).sum(dim=0) / n
        var = (gathered[:, c : 2 * c].sum(dim=0) + (counts * (means - mean) ** 2).sum(dim=0)) / n  # biased, as BatchNorm normalises with
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach() * n / (n - 1))
        # (x - mean) * scale + bias, folded into one pass over the activations.
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias + (mean_local - mean) * scale
        return torch.addcmul(shift.view(shape), centred, scale.view(shape))


def _to_global_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        bn = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        return bn
    for name, child in module.named_children():
        setattr(module, name, _to_global_bn(child))
    return module


def wrap_ddp(model: nn.Module, device: torch.device, *, sync_bn: bool = True) -> nn.Module:
    """DistributedDataParallel for the current device type, with global-batch BatchNorm unless
    ``sync_bn`` is False (then each rank normalises its own share, as plain DDP does).

    The BatchNorm layers are replaced in place, so ``model`` itself (whose state dict keeps the
    usual names) is what gets checkpointed.
    """
    if device.type == "cuda":
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_bn else model
        return nn.parallel.DistributedDataParallel(converted, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(_to_global_bn(model) if sync_bn else model)
