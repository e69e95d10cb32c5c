"""baichuan13b: Baichuan-13B / Baichuan-7B in pure PyTorch, loading the official checkpoints without remote code.

::

    from baichuan13b import BaichuanForCausalLM, BaichuanTokenizer, GenerationConfig
    tokenizer = BaichuanTokenizer.from_pretrained(path)
    model = BaichuanForCausalLM.from_pretrained(path, torch_dtype=torch.float16, device_map="auto")
    model.generation_config = GenerationConfig.from_pretrained(path)
    print(model.chat(tokenizer, [{"role": "user", "content": "世界上第二高的山峰是哪座"}]))
"""

from .cache import KVCache
from .config import PRESETS, ModelConfig
from .generation import GenerationConfig
from .model import BaichuanForCausalLM, CausalLMOutput, ContextLengthError
from .tokenizer import BaichuanTokenizer, StreamDecoder

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "BaichuanForCausalLM",
    "BaichuanTokenizer",
    "CausalLMOutput",
    "ContextLengthError",
    "GenerationConfig",
    "KVCache",
    "ModelConfig",
    "StreamDecoder",
    "__version__",
]
