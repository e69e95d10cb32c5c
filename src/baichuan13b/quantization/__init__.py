"""Weight-only int8 / int4 quantization: on the fly, while loading, saved and reloaded.

::

    model = BaichuanForCausalLM.from_pretrained(path, torch_dtype="bfloat16", quantize="int4")  # while loading
    model.quantize(8)                                   # or in place, on a float model
    model.save_pretrained(out)                          # quantized safetensors + quantization_config
    BaichuanForCausalLM.from_pretrained(out)            # no re-quantization

See ``docs/quantization.md`` for the formats and kernels.
"""

from .convert import QuantizationConfig, QuantizedTensorSink, check_quantizable, prepare_quantized_load, quantize_model
from .functional import (
    INT4_GROUP_SIZES,
    QuantizationError,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)
from .memory import MemoryReport, estimate_memory, format_report, memory_report, weight_bytes_by_dtype
from .modules import (
    QUANTIZED_MODULES,
    WeightOnlyInt4Embedding,
    WeightOnlyInt4Linear,
    WeightOnlyInt8Embedding,
    WeightOnlyInt8Linear,
)

__all__ = [
    "INT4_GROUP_SIZES",
    "QUANTIZED_MODULES",
    "MemoryReport",
    "QuantizationConfig",
    "QuantizationError",
    "QuantizedTensorSink",
    "WeightOnlyInt4Embedding",
    "WeightOnlyInt4Linear",
    "WeightOnlyInt8Embedding",
    "WeightOnlyInt8Linear",
    "check_quantizable",
    "dequantize_int4",
    "dequantize_int8",
    "estimate_memory",
    "format_report",
    "memory_report",
    "prepare_quantized_load",
    "quantize_int4",
    "quantize_int8",
    "quantize_model",
    "weight_bytes_by_dtype",
]
