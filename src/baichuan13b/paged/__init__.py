"""The paged KV cache with automatic prefix reuse, in the layout of nano-vllm: one small file per layer.

* :mod:`.sequence`: :class:`Sequence`, the token ids of one request and where its keys/values are;
* :mod:`.block_manager`: :class:`BlockManager`, fixed-size blocks, chained hashes of full blocks, reference
  counts and LRU eviction of unreferenced cached blocks (pure Python, no tensors);
* :mod:`.scheduler`: :class:`Scheduler`, admission by free blocks, the batch cap, chunked prefill, preemption of
  the newest sequence when blocks run out (pure Python);
* :mod:`.runner`: :class:`ModelRunner`, the key/value pool (:class:`~baichuan13b.cache.PagedKVCache`) and one
  forward pass over a batch of sequences through their block tables.
* :mod:`.batch_order`: :func:`~.batch_order.prefix_plan`, the order in which to run prompts known in advance
  (``baichuan eval``) so that every block several of them share is computed once (pure Python).

The serving engine, ``model.chat`` (the terminal chat and the web page) and ``baichuan eval`` all run on these.
See docs/design.md ("Paged KV cache").
"""

from .block_manager import BlockManager, OutOfBlocksError
from .runner import ModelRunner
from .scheduler import Scheduler, StepPlan
from .sequence import Sequence

__all__ = ["BlockManager", "ModelRunner", "OutOfBlocksError", "Scheduler", "Sequence", "StepPlan"]
