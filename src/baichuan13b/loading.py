"""Load an official Baichuan checkpoint into a :class:`~baichuan13b.model.BaichuanForCausalLM`.

The model is built on the ``meta`` device and the weights are streamed shard by shard, tensor by tensor, straight
into the target dtype and device, so that peak host memory is about the model in its target dtype plus one
(memory-mapped) shard.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from .config import ModelConfig
from .devices import check_devices, plan_devices, resolve_dtype, unit_of
from .errors import CheckpointError
from .hub import resolve_model_path
from .weights import SKIPPED_SUFFIXES, find_weight_files, iter_tensors

if TYPE_CHECKING:
    from .model import BaichuanForCausalLM

__all__ = ["load_model"]


def _shown(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def load_model(
    path_or_id: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | str | None = None,
    device_map: str | torch.device | int | Mapping[str, Any] | None = None,
    progress: bool = True,
    config: ModelConfig | None = None,
    strict: bool = True,
    quantize: str | int | None = None,
    group_size: int = 128,
    tensor_parallel: tuple[int, int] | None = None,
) -> "BaichuanForCausalLM":
    """Load an official Baichuan checkpoint (folder or hub id) into a :class:`BaichuanForCausalLM`.

    The model is built on the ``meta`` device, then the weight files are streamed one at a time, each tensor
    copied straight into ``torch_dtype`` on its device (see :func:`plan_devices` for ``device_map``); a file is
    released before the next is opened, so peak host memory is about the model in the target dtype plus one
    shard.  Tensors named ``*.rotary_emb.inv_freq`` (persistent buffers of the Baichuan-7B checkpoints) are
    skipped: the position tables are recomputed from the config.  With an index, every tensor must sit in the
    shard the index names.  The model is returned in eval mode with ``generation_config`` read from
    ``generation_config.json`` (or derived from the config when that file is absent).

    Args:
        path_or_id: checkpoint folder or hub id (see :func:`resolve_model_path`).
        torch_dtype: see :func:`resolve_dtype`; None means float32, ``"auto"`` the config's ``torch_dtype``.
        device_map: see :func:`plan_devices`; None means CPU.
        progress: show a tqdm bar (stderr) over the bytes loaded.
        config: use this config instead of the folder's ``config.json``.
        strict: when False, unexpected tensors are skipped and missing parameters are initialised as
            :meth:`BaichuanForCausalLM.from_config` would, with a warning naming them; shape mismatches are
            always errors.
        quantize: ``"int8"`` or ``"int4"`` to quantize the decoder's linear weights as they arrive, on their
            target device (the float model never exists; see :mod:`baichuan13b.quantization`), with int4
            groups of ``group_size``. A folder whose config.json has a ``quantization_config`` is loaded as
            saved, without re-quantization (asking for another quantization is an error).
        tensor_parallel: ``(rank, world)``: build this rank's shard of a tensor-parallel model (see
            :mod:`baichuan13b.tensor_parallel`) and read only its slices of the parallel weights from the files
            (safetensors slices, views of the memory-mapped ``.bin``), so that host memory per rank is about the
            sharded weights / world + the replicated ones + one tensor. With ``quantize``, each rank quantizes
            its own shard (int8: per output channel of the shard; int4: the shard's input width must be a
            multiple of the group size). A folder saved quantized cannot be loaded this way (its stored scales
            belong to the whole weights): load the float checkpoint with ``quantize``.

    Raises:
        CheckpointError: missing, unexpected (strict) or mis-shaped tensors (named, with both shapes), corrupt
            or non-tensor files, an index that disagrees with its shards, a bad ``device_map``/``torch_dtype``.
    """
    from tqdm.auto import tqdm

    from .generation import GenerationConfig
    from .model import BaichuanForCausalLM

    folder = resolve_model_path(path_or_id)
    if config is None:
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"no config.json in {folder}")
        config = ModelConfig.from_json_file(config_file)
    dtype = resolve_dtype(torch_dtype, config)
    plan = plan_devices(config, device_map)
    check_devices(plan)
    weights = find_weight_files(folder)

    with torch.device("meta"):
        model = BaichuanForCausalLM(config)
    select = None
    if tensor_parallel is not None:
        from . import tensor_parallel as tp

        rank, world = tensor_parallel
        if "quantization_config" in config.extra:
            raise CheckpointError(f"{folder} is saved quantized; tensor parallelism needs the float checkpoint "
                                  "(quantize while loading with --quantize instead)")
        try:
            tp.shard_layers(model, rank, world)  # meta: only the shapes change
        except ValueError as e:
            raise CheckpointError(f"{folder}: {e}") from e
        select = _tensor_parallel_selector(config, rank, world)
    quant = None  # receives the tensors of quantized modules
    if quantize is not None or "quantization_config" in config.extra:
        from .quantization import QuantizationConfig, QuantizationError, prepare_quantized_load

        try:
            saved = config.extra.get("quantization_config")
            saved = QuantizationConfig.from_dict(saved) if saved is not None else None
            quant = prepare_quantized_load(model, saved, quantize, group_size, dtype)
        except QuantizationError as e:
            raise CheckpointError(f"{folder}: {e}") from e
    params: dict[str, nn.Parameter] = dict(model.named_parameters())  # tied lm_head.weight appears once
    all_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    tied_aliases = all_names - set(params)  # e.g. lm_head.weight when tie_word_embeddings
    loaded: set[str] = set()
    unexpected: list[str] = []
    seen_in: dict[str, str] = {}
    total_bytes = sum(p.numel() for p in params.values()) * torch.empty((), dtype=dtype).element_size()
    total_bytes += quant.nbytes() if quant is not None else 0

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"Loading {folder.name or folder}",
               disable=not progress)
    try:
        for file in weights.files:
            expected_here = ({n for n, s in weights.weight_map.items() if s == file.name}
                             if weights.weight_map is not None else None)
            for name, tensor in iter_tensors(file, select):
                if name in seen_in:
                    raise CheckpointError(f"tensor {name} appears in both {seen_in[name]} and {file.name}")
                seen_in[name] = file.name
                if name.endswith(SKIPPED_SUFFIXES):
                    continue
                if weights.weight_map is not None and weights.weight_map.get(name) != file.name:
                    listed = weights.weight_map.get(name)
                    raise CheckpointError(
                        f"tensor {name} is in shard {file.name} but the index {weights.index.name} "
                        + (f"puts it in {listed}" if listed else "does not list it")
                    )
                if name in tied_aliases:
                    _check_shape(name, tensor, params["model.embed_tokens.weight"], file)
                    continue  # the tied head shares the embedding weight
                if quant is not None and quant.handles(name):
                    try:
                        nbytes = quant.put(name, tensor, plan[unit_of(name)], file.name)
                    except QuantizationError as e:
                        raise CheckpointError(str(e)) from e
                    loaded.add(name)
                    bar.update(nbytes)
                    del tensor
                    continue
                param = params.get(name)
                if param is None:
                    if strict:
                        raise CheckpointError(
                            f"unexpected tensor {name} in {file.name}: this model (architecture "
                            f"{config.architecture}) has no such parameter"
                        )
                    unexpected.append(name)
                    continue
                _check_shape(name, tensor, param, file)
                if not tensor.is_floating_point():
                    raise CheckpointError(f"tensor {name} in {file.name} has dtype {tensor.dtype}; integer "
                                          "tensors need a quantization_config in config.json")
                device = plan[unit_of(name)]
                # A fresh tensor: never an alias of the memory-mapped file, always contiguous.
                value = torch.empty(tensor.shape, dtype=dtype, device=device)
                value.copy_(tensor)
                _install(model, name, value)
                loaded.add(name)
                bar.update(value.numel() * value.element_size())
                del tensor, value
            if expected_here is not None:
                absent = sorted(expected_here - {n for n, s in seen_in.items() if s == file.name})
                if absent:
                    raise CheckpointError(f"tensor {absent[0]} is listed in {weights.index.name} for shard "
                                          f"{file.name} but is not in that file"
                                          + (f" ({len(absent) - 1} more missing)" if len(absent) > 1 else ""))
    finally:
        bar.close()

    missing = [n for n in params if n not in loaded] + (quant.missing() if quant is not None else [])
    if missing and strict:
        raise CheckpointError(f"checkpoint {folder} is missing {len(missing)} tensor(s): {_shown(missing)}")
    if missing:
        warnings.warn(f"checkpoint {folder} is missing {len(missing)} tensor(s), initialised randomly: "
                      f"{_shown(missing)}", stacklevel=2)
        _init_missing(model, [n for n in missing if n in params], config, dtype, plan)
        for name in quant.missing() if quant is not None else []:
            quant.put_random(name, plan[unit_of(name)], config.initializer_range)
    if unexpected:
        warnings.warn(f"checkpoint {folder} has {len(unexpected)} tensor(s) this model does not use, skipped: "
                      f"{_shown(unexpected)}", stacklevel=2)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.init_position_buffers(model.model.embed_tokens.weight.device)
    if tensor_parallel is not None:
        tp.add_all_reduce_hooks(model)  # on the final modules (quantized ones included)
        tp.shard_position_buffers(model, *tensor_parallel)
    model.eval()
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    else:
        model.generation_config = GenerationConfig.from_model_config(config)
    return model


def _tensor_parallel_selector(config: ModelConfig, rank: int, world: int):
    """``iter_tensors`` selector reading rank ``rank``'s slices of the parallel weights (after checking the whole
    tensor's shape, so that a mismatch is reported in checkpoint terms)."""
    from .tensor_parallel import full_shape, shard_ranges

    def select(name: str, shape: tuple[int, ...]):
        ranges = shard_ranges(config, name, rank, world)
        if ranges is not None and tuple(shape) != full_shape(config, name):
            raise CheckpointError(f"tensor {name} has shape {list(shape)}, the model expects "
                                  f"{list(full_shape(config, name))} (does config.json match the weights?)")
        return ranges

    return select


def _check_shape(name: str, tensor: torch.Tensor, param: torch.Tensor, file: Path) -> None:
    if tuple(tensor.shape) != tuple(param.shape):
        raise CheckpointError(f"tensor {name} in {file.name} has shape {list(tensor.shape)}, the model expects "
                              f"{list(param.shape)} (does config.json match the weights?)")


def _install(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(value, requires_grad=True)


def _init_missing(model: nn.Module, names: list[str], config: ModelConfig, dtype: torch.dtype,
                  plan: Mapping[str, torch.device]) -> None:
    params = dict(model.named_parameters())
    for name in names:
        shape = params[name].shape
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            value = torch.ones(shape, dtype=dtype)
        else:
            value = (torch.randn(shape) * config.initializer_range).to(dtype)
        _install(model, name, value.to(plan[unit_of(name)]))
