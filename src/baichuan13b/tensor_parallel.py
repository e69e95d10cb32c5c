"""Tensor parallelism over several processes with torch.distributed (``torchrun``), Megatron style.

Each rank keeps a slice of every block: ``W_pack`` (q, k and v of its heads), ``gate_proj`` and ``up_proj`` are
split by output rows (column parallel); ``o_proj`` and ``down_proj`` by input columns (row parallel), followed by
one all-reduce each, so a block costs two all-reduces. ALiBi slopes are split with the heads; embeddings, norms
and ``lm_head`` are replicated, so every rank computes the same logits and samples the same tokens (given the
same seed). Module and parameter names do not change.

Loading for tensor parallelism (``load_model(..., tensor_parallel=(rank, world))``, what the CLI does under
``torchrun``) builds the sharded shapes on the meta device and reads only this rank's slices from the files
(:func:`shard_ranges`), so a rank never holds the whole model; ``--quantize`` then quantizes each rank's shard.

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


def check_tensor_parallel(config, world: int) -> None:
    """``ValueError`` unless the heads and the MLP width split evenly over ``world`` ranks."""
    heads, inter = config.num_attention_heads, config.intermediate_size
    if heads % world or inter % world:
        raise ValueError(f"tensor parallelism over {world} ranks needs num_attention_heads ({heads}) and "
                         f"intermediate_size ({inter}) divisible by {world}")


def shard_ranges(config, name: str, rank: int, world: int) -> list[tuple[int, int, int]] | None:
    """The part of checkpoint tensor ``name`` that rank ``rank`` of ``world`` keeps, as ``(dim, start, stop)``
    ranges concatenated along ``dim``; None for a replicated tensor (embeddings, norms, ``lm_head``).

    ``W_pack`` keeps the q, k and v rows of its heads (three ranges), ``gate_proj`` / ``up_proj`` a block of
    rows (column parallel), ``o_proj`` / ``down_proj`` a block of columns (row parallel). Pure function: the
    loader reads only these slices, :func:`apply_tensor_parallel` cuts the same ones from a loaded model.
    """
    parts = name.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"] or parts[-1] != "weight":
        return None
    leaf = ".".join(parts[3:-1])
    hidden, inter = config.hidden_size, config.intermediate_size
    if leaf == "self_attn.W_pack":
        local = hidden // world  # local heads * head_dim, in each of q, k and v
        return [(0, j * hidden + rank * local, j * hidden + (rank + 1) * local) for j in range(3)]
    if leaf in ("mlp.gate_proj", "mlp.up_proj"):
        rows = inter // world
        return [(0, rank * rows, (rank + 1) * rows)]
    if leaf == "self_attn.o_proj":
        cols = hidden // world
        return [(1, rank * cols, (rank + 1) * cols)]
    if leaf == "mlp.down_proj":
        cols = inter // world
        return [(1, rank * cols, (rank + 1) * cols)]
    return None


def full_shape(config, name: str) -> tuple[int, int] | None:
    """The unsharded shape of a tensor that :func:`shard_ranges` slices (None for the others)."""
    leaf = ".".join(name.split(".")[3:-1])
    hidden, inter = config.hidden_size, config.intermediate_size
    return {"self_attn.W_pack": (3 * hidden, hidden), "mlp.gate_proj": (inter, hidden),
            "mlp.up_proj": (inter, hidden), "self_attn.o_proj": (hidden, hidden),
            "mlp.down_proj": (hidden, inter)}.get(leaf)


def take_ranges(tensor: torch.Tensor, ranges: list[tuple[int, int, int]]) -> torch.Tensor:
    """The ranges of ``tensor`` (views when one range; one concatenated copy otherwise)."""
    pieces = [tensor.narrow(dim, start, stop - start) for dim, start, stop in ranges]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=ranges[0][0])


def shard_layers(model: BaichuanForCausalLM, rank: int, world: int) -> None:
    """Cut every decoder layer's parallel weights to this rank's part, in place (also on the meta device, where
    only the shapes change: the loader then reads just these parts). No communication hooks."""
    config = model.config
    check_tensor_parallel(config, world)
    local_heads, d = config.num_attention_heads // world, config.head_dim
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        attn.num_heads, attn.hidden_size = local_heads, local_heads * d
        for module_name, linear in (("self_attn.W_pack", attn.W_pack), ("self_attn.o_proj", attn.o_proj),
                                    ("mlp.gate_proj", layer.mlp.gate_proj), ("mlp.up_proj", layer.mlp.up_proj),
                                    ("mlp.down_proj", layer.mlp.down_proj)):
            ranges = shard_ranges(config, f"model.layers.{i}.{module_name}.weight", rank, world)
            weight = take_ranges(linear.weight, ranges).clone()  # own memory (a copy, not a view of the whole)
            linear.weight = nn.Parameter(weight, requires_grad=False)
            linear.out_features, linear.in_features = weight.shape


def add_all_reduce_hooks(model: BaichuanForCausalLM) -> None:
    """Sum the row-parallel layers' partial outputs over the ranks (on whatever module, float or quantized, sits
    at ``o_proj`` / ``down_proj`` now)."""
    for layer in model.model.layers:
        layer.self_attn.o_proj.register_forward_hook(_all_reduce_output)
        layer.mlp.down_proj.register_forward_hook(_all_reduce_output)


def shard_position_buffers(model: BaichuanForCausalLM, rank: int, world: int) -> None:
    """Keep the ALiBi slopes of this rank's heads (call after the position buffers are computed)."""
    local_heads = model.config.num_attention_heads // world
    slopes = model.model.alibi_slopes
    model.model.alibi_slopes = slopes[rank * local_heads : (rank + 1) * local_heads].clone()
    model.tensor_parallel = (rank, world)


def _all_reduce_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of the row-parallel layers: sum the partial outputs of all ranks."""
    # Functional collective: traceable by torch.compile (fullgraph decode steps under tensor parallelism).
    from torch.distributed import _functional_collectives as funcol

    return funcol.all_reduce(output, "sum", dist.group.WORLD)


def apply_tensor_parallel(model: BaichuanForCausalLM, rank: int | None = None,
                          world: int | None = None) -> BaichuanForCausalLM:
    """Shard a loaded ``model`` in place for this rank of the default process group and return it.

    Loading with ``load_model(..., tensor_parallel=(rank, world))`` gives the same model while reading only this
    rank's slices from the checkpoint (host memory: one shard of the parallel weights, not the whole model).
    """
    rank = dist.get_rank() if rank is None else rank
    world = dist.get_world_size() if world is None else world
    shard_layers(model, rank, world)
    add_all_reduce_hooks(model)
    shard_position_buffers(model, rank, world)
    return model
