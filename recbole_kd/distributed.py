"""RecBole's distributed mode (``nproc``, ``world_size``, ``ip``, ``port``, ``offset``) for every model:
the process-group helpers the trainers use (launching the processes is :mod:`recbole_kd.launch`).

    python -m recbole_kd --model=KD-SASRec --dataset=ml-100k --nproc=2                # 1 machine, 2 processes
    python -m recbole_kd ... --nproc=2 --world_size=4 --ip=HOST0 --port=5678 --offset=0   # on HOST0
    python -m recbole_kd ... --nproc=2 --world_size=4 --ip=HOST0 --port=5678 --offset=2   # on HOST1

The launching process builds what every rank shares first (a distilled model's teacher, a
transfer model's source model: trained once, into the zoo folder), then spawns ``nproc``
workers; each joins the process group (gloo on CPU, nccl on GPU, see ``compat``), trains on its
shard of the training data (gradients averaged by DDP, global batch = ``train_batch_size``), and
rank 0 evaluates on the *whole* validation / test data and broadcasts the result, so the
reported numbers follow exactly the single-process protocol (same users, same evaluator).
Only rank 0 writes checkpoints and the result file.
"""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist
from torch import nn

# settings that ask for distributed mode
DIST_KEYS = ("nproc", "world_size", "ip", "port", "offset")


def requested(config) -> bool:
    """RecBole's rule: distributed unless ``nproc == 1`` and ``world_size <= 0``."""
    nproc = int(config["nproc"] or 1)
    world = int(config["world_size"] if config["world_size"] is not None else -1)
    return not (nproc == 1 and world <= 0)


def active(config) -> bool:
    return not config["single_spec"]


def global_rank(config) -> int:
    return int(config["local_rank"] or 0) + int(config["offset"] or 0) if active(config) else 0


def is_main(config) -> bool:
    return global_rank(config) == 0


def world_size(config) -> int:
    return int(config["world_size"]) if active(config) else 1


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (plain Python values)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class Bundle(nn.Module):
    """The modules one DDP wrapper keeps in sync (the student plus learned helpers such as a KD
    projection). RecBole's trainer calls the wrapper with a dummy input only to arm the gradient
    all-reduce, so ``forward`` is the identity."""

    def __init__(self, *modules):
        super().__init__()
        self.parts = nn.ModuleList([m for m in modules if m is not None])

    def forward(self, x):
        return x


def wrap(config, *modules):
    """A DDP wrapper over ``modules`` for this process (CPU modules take ``device_ids=None``)."""
    from torch.nn.parallel import DistributedDataParallel

    modules = [m for m in modules if m is not None]
    module = modules[0] if len(modules) == 1 else Bundle(*modules)
    device = config["device"]
    ids = [device.index if device.index is not None else int(config["local_rank"])] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def comm_device() -> torch.device:
    """Where collective tensors must live: CUDA for nccl, CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def ranks_in_sync(module: nn.Module) -> bool:
    """True when every rank holds the same parameters (DDP kept them in sync)."""
    flat = torch.cat([p.detach().float().reshape(-1).cpu() for p in module.parameters()])
    mine = torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1) % 9973).sum()]).double()
    mine = mine.to(comm_device())
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def shard(index: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    """This rank's part of one global batch (contiguous, so length-grouped batches stay grouped).
    Every rank gets at least one row (a batch smaller than the world repeats its last rows, as
    torch's ``DistributedSampler`` pads), so all ranks take the same number of steps."""
    part = torch.tensor_split(index, world)[rank]
    if part.numel() == 0:
        part = index[-1:] if index.numel() else index
    return part


def broadcast_parts(parts: list, counts: list[int], like: torch.Tensor) -> torch.Tensor:
    """Concatenate row blocks computed on different ranks: block ``r`` (``counts[r]`` rows) is
    computed on rank ``r`` and broadcast to all. ``parts`` holds this rank's block, ``like`` gives
    the trailing shape and dtype."""
    rank = dist.get_rank()
    device = comm_device()
    out = torch.empty((sum(counts),) + tuple(like.shape[1:]), dtype=like.dtype)
    start = 0
    for r, n in enumerate(counts):
        if n:
            block = parts.to(device) if r == rank else torch.empty((n,) + tuple(like.shape[1:]), dtype=like.dtype,
                                                                   device=device)
            dist.broadcast(block, src=r)
            out[start : start + n] = block.cpu()
        start += n
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
