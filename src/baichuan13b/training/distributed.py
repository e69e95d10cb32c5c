"""One process or many: process-group setup (NCCL on GPUs, gloo on CPU), FSDP2 / DDP wrapping, collectives.

Launch with ``torchrun --nproc_per_node N -m baichuan13b finetune ...`` (or ``baichuan finetune --nproc N``).
Without torchrun's environment everything degrades to a single process and the collectives are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``device`` and the process-group backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, device, backend)


def cleanup(info: DistInfo) -> None:
    """Leave the process group (when this process joined one)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64 on the wire)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def choose_engine(info: DistInfo, finetuning_type: str, requested: str, deepspeed_stage: int | None) -> str:
    """``"single"``, ``"ddp"`` or ``"fsdp2"``: FSDP2 for full fine-tuning (a ZeRO-2/3 ``--deepspeed`` config maps
    here too), DDP for LoRA (adapters are small: replicating them is cheaper than sharding)."""
    if not info.distributed:
        return "single"
    if requested != "auto":
        return requested
    if finetuning_type == "lora":
        return "ddp"
    if deepspeed_stage is not None and deepspeed_stage < 2:
        return "ddp"
    return "fsdp2"


def wrap_model(model: nn.Module, info: DistInfo, engine: str) -> nn.Module:
    """The module to call in training: ``model`` itself, a DDP wrapper, or ``model`` sharded in place by FSDP2
    (one group per decoder layer plus the root: embeddings, final norm and ``lm_head``)."""
    if engine == "single":
        return model
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"unknown distributed engine {engine!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
