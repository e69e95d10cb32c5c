"""Decode speed against the memory-bandwidth roofline: the seed's speed table, reproduced and explained.

Batch-1 decoding reads every weight once per token, so its ceiling is ``bandwidth / weight bytes``. This module
measures the device's copy bandwidth in the same run, then tokens/s, ms/token, achieved GB/s, % of roofline,
time to first token and peak memory.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..config import PRESETS, ModelConfig
from ..model import BaichuanForCausalLM

if TYPE_CHECKING:
    from ..quantization.convert import QuantizationConfig


@dataclass
class SpeedResult:
    """One benchmark run. Bandwidth figures count bytes read per decode step (weights, not the KV cache)."""

    name: str
    device: str
    dtype: str
    quantize: str | None
    compiled: bool
    batch: int
    prompt_len: int
    gen_len: int
    parameters: int
    weight_bytes_per_token: int
    copy_bandwidth_gbs: float
    time_to_first_token_s: float
    tokens_per_s: float  # per sequence
    aggregate_tokens_per_s: float
    ms_per_token: float
    achieved_gbs: float
    roofline_tokens_per_s: float
    percent_of_roofline: float
    peak_memory_bytes: int
    torch_version: str

    def line(self) -> str:
        return (f"{self.name:14s} {self.dtype:8s} {self.quantize or '-':5s} batch {self.batch:3d}: "
                f"{self.tokens_per_s:8.1f} tok/s ({self.aggregate_tokens_per_s:8.1f} aggregate), "
                f"{self.ms_per_token:7.2f} ms/token, {self.achieved_gbs:7.1f} GB/s = "
                f"{self.percent_of_roofline:5.1f}% of roofline {self.roofline_tokens_per_s:.1f} tok/s; "
                f"TTFT {self.time_to_first_token_s * 1e3:.0f} ms; peak {self.peak_memory_bytes / 2**30:.2f} GiB")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 10) -> float:
    """Measured device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 28)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def random_model(config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                 seed: int = 0, quantize: "QuantizationConfig | None" = None) -> BaichuanForCausalLM:
    """Random weights created directly on ``device`` in ``dtype`` (no float32 host copy): fast at 13B.

    With ``quantize`` the model is built quantized: each quantized module's random ``dtype`` weight is made and
    quantized one matrix at a time, so memory peaks at the quantized model plus one float matrix (the 13B in
    int8 fits a 24 GB machine, which its 26 GB of bfloat16 weights do not)."""
    from ..quantization.convert import quantize_model
    from ..quantization.modules import QUANTIZED_MODULES

    with torch.device("meta"):
        model = BaichuanForCausalLM(config).to(dtype)
    if quantize is not None:
        quantize_model(model, quantize, dtype)  # empty meta modules: nothing allocated yet
    model.to_empty(device=device)  # allocated in ``dtype`` directly: no float32 copy anywhere
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, config.initializer_range, generator=gen)
        for name, m in model.named_modules():
            if isinstance(m, QUANTIZED_MODULES):
                w = torch.empty(m.float_shape, dtype=dtype, device=device).normal_(0.0, config.initializer_range,
                                                                           generator=gen)
                m.set_float_weight(w, f"{name}.weight")
                del w
    model.model.init_position_buffers(device)
    return model.eval()


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights read by one decode step: everything but the embedding table (one row is read)."""
    total = 0
    for module_name, module in model.named_modules():
        if module_name == "model.embed_tokens":
            continue
        if hasattr(module, "nbytes_by_dtype"):  # quantized: also counts a weight held in a kernel layout
            total += sum(module.nbytes_by_dtype().values())
            continue
        for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if t is None or name in ("alibi_slopes", "rope_inv_freq"):
                continue
            total += t.numel() * t.element_size()
    return total


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read peak memory from /proc/self/status")


@torch.inference_mode()
def measure(model: BaichuanForCausalLM, *, name: str, batch: int = 1, prompt_len: int = 32, gen_len: int = 128,
            compile: bool = False, bandwidth_gbs: float | None = None, quantize: str | None = None,
            warmup: bool = True, stream: Callable[..., Iterator[torch.Tensor]] | None = None) -> SpeedResult:
    """Greedy-decode ``gen_len`` tokens after a random ``prompt_len`` prompt and time it.

    ``stream`` is the decode loop timed: this project's ``stream_tokens`` by default, or a baseline with the same
    signature (:func:`baichuan13b.bench.original.original_stream`)."""
    from ..generation import stream_tokens

    loop = stream or stream_tokens
    device = model.device
    bandwidth_gbs = bandwidth_gbs or copy_bandwidth(device)
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt_len), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
    kwargs: dict[str, Any] = dict(max_new_tokens=gen_len, eos_token_id=None, do_sample=False,
                                  repetition_penalty=1.0, compile=compile)
    if warmup:  # compile and warm the kernels at the same shapes
        for _ in loop(model, ids, **{**kwargs, "max_new_tokens": min(gen_len, 8)}):
            pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    steps = loop(model, ids, **kwargs)
    first = next(steps)
    first.tolist()  # the first token is on the host: time to first token
    ttft = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    last = first
    for last in steps:
        n += 1
    last.tolist()
    _sync(device)
    decode_s = time.perf_counter() - t1
    per_seq = n / decode_s if n else 0.0
    wbytes = weight_bytes_per_token(model)
    achieved = wbytes * per_seq / 1e9  # one read of the weights per step, whatever the batch
    roofline = bandwidth_gbs * 1e9 / wbytes
    return SpeedResult(
        name=name, device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        dtype=str(model.dtype).replace("torch.", ""), quantize=quantize, compiled=compile, batch=batch,
        prompt_len=prompt_len, gen_len=gen_len, parameters=model.num_parameters(),
        weight_bytes_per_token=wbytes, copy_bandwidth_gbs=bandwidth_gbs, time_to_first_token_s=ttft,
        tokens_per_s=per_seq, aggregate_tokens_per_s=per_seq * batch, ms_per_token=1e3 / per_seq if per_seq else 0,
        achieved_gbs=achieved, roofline_tokens_per_s=roofline, percent_of_roofline=100 * per_seq / roofline,
        peak_memory_bytes=_peak_memory(device), torch_version=torch.__version__,
    )


def config_from_spec(spec: str) -> ModelConfig:
    """A preset name (``baichuan-13b``, ``baichuan-7b``, ``llama-13b``, ...), a preset with fewer decoder layers
    (``baichuan-13b:2``: the real matrix shapes, for machines that cannot hold the whole model), or a path to a
    config.json."""
    if spec in PRESETS:
        return ModelConfig.from_name(spec)
    name, sep, layers = spec.rpartition(":")
    if sep and name in PRESETS:
        if not (layers.isdigit() and int(layers) > 0):
            raise ValueError(f"--random-weights {spec!r}: the number of layers after ':' must be a positive "
                             f"integer, got {layers!r}")
        return ModelConfig.from_name(name, num_hidden_layers=int(layers))
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"--random-weights {spec!r} is neither a preset ({', '.join(sorted(PRESETS))}, "
                         "optionally PRESET:LAYERS) nor a config.json")
    return ModelConfig.from_json_file(path)


def write_json(results: list[SpeedResult], path: str | Path) -> None:
    from ..files import atomic_write_text

    atomic_write_text(path, json.dumps([asdict(r) for r in results], indent=2) + "\n")


def prepare(model, args: Any, quantize: str | None = "flag", prepack: bool | None = None):
    """Quantize (``--quantize``, or ``quantize`` when given) and lay out the CPU weights (``--cpu-layout``;
    ``--no-prepack`` off) as chat loads; with ``--compile`` only the streamed layout (compiled steps cannot
    trace oneDNN's packed one)."""
    from ..cpu_linear import pack_linear_weights, resolve_layout

    quantize = args.quantize if quantize == "flag" else quantize
    if quantize:
        model.quantize(8 if quantize == "int8" else 4, group_size=args.group_size,
                       quantize_lm_head=args.quantize_lm_head)
    if (args.prepack if prepack is None else prepack):
        layout = resolve_layout(getattr(args, "cpu_layout", "auto"), getattr(args, "batch", 1), model)
        if getattr(args, "compile", False) and layout == "packed":
            return model  # compiled steps cannot trace oneDNN's layout: plain weights
        pack_linear_weights(model, layout=layout)
    return model
