"""An OpenAI-compatible HTTP server with continuous batching (``baichuan serve``).

* :mod:`.engine`: :class:`Engine`, the scheduler thread over the paged KV cache of :mod:`baichuan13b.paged`
  (admission by free blocks, prefix reuse, preemption, chunked prefill, per-request sampling, abort);
* :mod:`.protocol`: request / response models and OpenAI-shaped errors;
* :mod:`.api`: :func:`create_app`, the FastAPI application, and :func:`serve` (uvicorn);
* :mod:`.metrics`: Prometheus text metrics.
"""

from .engine import Engine, EngineError, EngineStoppedError, Event, QueueFullError

__all__ = ["Engine", "EngineError", "EngineStoppedError", "Event", "QueueFullError"]
