"""Tensor parallelism over several processes with torch.distributed (``torchrun``), Megatron style.

Each rank keeps a slice of every block: ``W_pack`` (q, k and v of its heads), ``gate_proj`` and ``up_proj`` are
split by output rows (column parallel); ``o_proj`` and ``down_proj`` by input columns (row parallel), followed by
one all-reduce each, so a block costs two all-reduces. ALiBi slopes are split with the heads; embeddings, norms
and ``lm_head`` are replicated, so every rank computes the same logits and samples the same tokens (given the
same seed). Module and parameter names do not change.

::

    torchrun --nproc_per_node 2 -m baichuan13b generate --model PATH --prompt "..."

NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from .model import BaichuanForCausalLM


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> tuple[int, int]:
    """Join the ``torchrun`` process group if there is one: (rank, world size); (0, 1) when not launched so."""
    world = world_size_from_env()
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        # Every rank computes the same logits; seeding the global RNG alike makes sampling agree too.
        torch.manual_seed(int(os.environ.get("BAICHUAN_TP_SEED", "0")))
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    """True on rank 0 (or without torch.distributed): the rank that reads input and prints."""
    return not dist.is_initialized() or dist.get_rank() == 0


def broadcast_object(obj=None):
    """``obj`` from rank 0 to every rank (identity without a process group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local_device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` on GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _shard_rows(linear: nn.Linear, rank: int, world: int) -> None:
    w = linear.weight  # [out, in]
    rows = w.shape[0] // world
    linear.weight = nn.Parameter(w[rank * rows : (rank + 1) * rows].clone(), requires_grad=False)
    linear.out_features = rows


def _shard_columns(linear: nn.Linear, rank: int, world: int) -> None:
    w = linear.weight  # [out, in]
    cols = w.shape[1] // world
    linear.weight = nn.Parameter(w[:, rank * cols : (rank + 1) * cols].clone(), requires_grad=False)
    linear.in_features = cols


def _all_reduce_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of the row-parallel layers: sum the partial outputs of all ranks."""
    # Functional collective: traceable by torch.compile (fullgraph decode steps under tensor parallelism).
    from torch.distributed import _functional_collectives as funcol

    return funcol.all_reduce(output, "sum", dist.group.WORLD)


def apply_tensor_parallel(model: BaichuanForCausalLM, rank: int | None = None,
                          world: int | None = None) -> BaichuanForCausalLM:
    """Shard ``model`` in place for this rank of the default process group and return it."""
    rank = dist.get_rank() if rank is None else rank
    world = dist.get_world_size() if world is None else world
    config = model.config
    heads, inter = config.num_attention_heads, config.intermediate_size
    if heads % world or inter % world:
        raise ValueError(f"tensor parallelism over {world} ranks needs num_attention_heads ({heads}) and "
                         f"intermediate_size ({inter}) divisible by {world}")
    local_heads, d = heads // world, config.head_dim
    for layer in model.model.layers:
        attn = layer.self_attn
        w = attn.W_pack.weight  # [3 * hidden, hidden]
        w = w.view(3, heads, d, config.hidden_size)[:, rank * local_heads : (rank + 1) * local_heads]
        attn.W_pack.weight = nn.Parameter(w.reshape(3 * local_heads * d, config.hidden_size).clone(),
                                          requires_grad=False)  # [3 * local_heads * d, hidden]
        attn.W_pack.out_features = 3 * local_heads * d
        attn.num_heads, attn.hidden_size = local_heads, local_heads * d
        _shard_columns(attn.o_proj, rank, world)
        _shard_rows(layer.mlp.gate_proj, rank, world)
        _shard_rows(layer.mlp.up_proj, rank, world)
        _shard_columns(layer.mlp.down_proj, rank, world)
        attn.o_proj.register_forward_hook(_all_reduce_output)
        layer.mlp.down_proj.register_forward_hook(_all_reduce_output)
    slopes = model.model.alibi_slopes
    model.model.alibi_slopes = slopes[rank * local_heads : (rank + 1) * local_heads].clone()
    model.tensor_parallel = (rank, world)
    return model
