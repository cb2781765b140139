"""torchrun process groups (NCCL on GPUs, gloo on the CPU), the global → per-process batch split, and collectives.

``batch_size`` in the configs is the **global** batch, as in the paper and OpenTAD. Each process loads
``per_process`` videos per micro-batch and accumulates ``accum_steps`` micro-batches per optimizer step, so that
``per_process × accum_steps × world_size`` equals the global batch.
"""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, List, NoReturn, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 for a plain ``python -m``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK set by torchrun (0 for a plain ``python -m``): known before the process group is joined."""
    return int(os.environ.get("RANK", "0"))


def pick_device(choice: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is available, else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for, but torch sees no CUDA GPU")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Joins the torchrun process group when WORLD_SIZE > 1 (NCCL for CUDA, gloo for the CPU); else one process.
    ``timeout_s`` (config ``dist.timeout_s``): a collective that waits longer, e.g. on a hung rank, raises an error
    on the ranks still running, so the job fails (and ``torchrun --max-restarts`` restarts it) instead of hanging."""
    world_size = env_world_size()
    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout,
                                device_id=dev if dev.type == "cuda" else None, **restart_store(rank, world_size, timeout))
    return DistInfo(rank, world_size, local_rank, dev)


def restart_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dict:
    """Under torchrun, ``{"store": ...}``: its TCP store under a prefix per restart. After ``--max-restarts``
    relaunches the workers, torchrun's store still holds the dead workers' addresses, and a new gloo/NCCL group that
    reads them fails with "Connection refused" (pytorch/pytorch#167288). Elsewhere, and on torchrun's first launch,
    ``{}`` (torch's env:// init)."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return {}
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"  # the agent hosts the store
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0 and not agent, timeout=timeout)
    return {"store": dist.PrefixStore(f"lofi/restart{os.environ['TORCHELASTIC_RESTART_COUNT']}/", store)}


_RETIRED_GROUPS: list = []


def shutdown() -> None:
    """Destroys the process group but keeps its object alive until ``exit_process``: the last reference to a gloo
    group, dropped while the GIL is held (a DDP model freed as its frame returns), runs its destructor, which joins a
    gloo thread that waits for the GIL to free a tensor: a deadlock in about 1 of 6 runs of the 2-process test job
    on torch 2.11."""
    if dist.is_initialized():
        _RETIRED_GROUPS.append(dist.group.WORLD)
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """Ends the process with ``code``; call it after ``shutdown`` with every file closed. Under torchrun it flushes
    stdout/stderr and leaves with ``os._exit``, skipping interpreter teardown: a DDP model keeps the gloo group and
    its threads alive past destroy_process_group (pytorch/pytorch#107298), and teardown racing those threads aborted
    a finished worker ("terminate called without an active exception") in about 1 of 60 runs of the 2-process test
    job on a loaded machine. A single process exits normally."""
    if env_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def split_batch(global_batch: int, world_size: int, max_per_process: Optional[int] = None) -> tuple[int, int]:
    """(per-process micro-batch, accumulation steps) for ``global_batch`` over ``world_size`` processes.

    With ``max_per_process`` (what fits the memory budget), the micro-batch is the largest divisor of
    ``global_batch / world_size`` not above it, so accumulation reproduces the global batch exactly."""
    if global_batch % world_size:
        raise ValueError(f"batch_size: the global batch {global_batch} does not divide by the world size {world_size}")
    local = global_batch // world_size
    if max_per_process is None or max_per_process >= local:
        return local, 1
    micro = max(d for d in range(1, max(1, max_per_process) + 1) if local % d == 0)
    return micro, local // micro


def all_reduce_max(flag: float, device: torch.device) -> float:
    """The maximum of ``flag`` over all processes (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The element-wise sum of ``t`` over all processes, on ``t``'s device (``t`` itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    out = t.to(device)
    dist.all_reduce(out)
    return out.to(t.device)


def all_reduce_mean(values: List[float], device: torch.device) -> List[float]:
    """Element-wise mean over processes, for logged scalars."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """Every process's ``obj`` on rank 0 (in rank order), None on the others."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, info: DistInfo, sync_bn: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when several processes run (optionally with SyncBatchNorm)."""
    if not info.distributed:
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
