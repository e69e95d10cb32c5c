"""Server metrics in the Prometheus text exposition format (no client library needed).

Counters and histograms are updated from the engine thread and the event loop, so each takes a lock; gauges are
read from the engine when ``/metrics`` is scraped.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


class Counter:
    """A monotonically increasing count, optionally per label values."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {labels}")
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for labels, v in items:
            yield f"{self.name}{_labels(self.label_names, labels)} {v:g}"


class Gauge:
    """A value read at scrape time from ``read()``."""

    def __init__(self, name: str, help: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {float(self.read()):g}"


class Histogram:
    """Cumulative buckets, sum and count (Prometheus histogram semantics)."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help = name, help
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        if math.isnan(value):
            raise ValueError(f"{self.name}: cannot observe NaN")
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        for bound, c in zip(self.buckets, counts):
            yield f'{self.name}_bucket{{le="{bound:g}"}} {c}'
        yield f'{self.name}_bucket{{le="+Inf"}} {count}'
        yield f"{self.name}_sum {total:g}"
        yield f"{self.name}_count {count}"


class ServerMetrics:
    """Everything ``/metrics`` reports. Gauges are attached by :meth:`add_gauge` (the engine's live state)."""

    def __init__(self, prefix: str = "baichuan"):
        p = prefix
        self.requests = Counter(f"{p}_http_requests_total", "HTTP requests answered, by path and status code",
                                ("path", "status"))
        self.request_seconds = Histogram(f"{p}_http_request_duration_seconds",
                                         "Time from request arrival to the end of the response", LATENCY_BUCKETS)
        self.prompt_tokens = Counter(f"{p}_prompt_tokens_total", "Prompt tokens prefilled")
        self.prefix_cache_hit_tokens = Counter(f"{p}_prefix_cache_hit_tokens_total",
                                               "Prompt tokens whose keys and values came from the prefix cache")
        self.preemptions = Counter(f"{p}_preemptions_total",
                                   "Sequences preempted (KV blocks ran out; requeued and recomputed)")
        self.generation_tokens = Counter(f"{p}_generation_tokens_total", "Tokens generated")
        self.finished = Counter(f"{p}_sequences_finished_total",
                                "Generations ended, by reason (stop, length, abort, error)", ("reason",))
        self.queue_seconds = Histogram(f"{p}_queue_time_seconds", "Time a request waited for a batch slot",
                                       LATENCY_BUCKETS)
        self.ttft_seconds = Histogram(f"{p}_time_to_first_token_seconds",
                                      "Time from submission to the first generated token", LATENCY_BUCKETS)
        self.tpot_seconds = Histogram(f"{p}_time_per_output_token_seconds",
                                      "Mean time between generated tokens of a request", TOKEN_LATENCY_BUCKETS)
        self.e2e_seconds = Histogram(f"{p}_generation_duration_seconds",
                                     "Time from submission to the last generated token", LATENCY_BUCKETS)
        self.batch_size = Histogram(f"{p}_decode_batch_size", "Sequences decoded together per step",
                                    BATCH_BUCKETS)
        self.step_seconds = Histogram(f"{p}_engine_step_seconds", "Duration of one scheduler iteration",
                                      TOKEN_LATENCY_BUCKETS)
        self._gauges: list[Gauge] = []

    def add_gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._gauges.append(Gauge(name, help, read))

    def render(self) -> str:
        """The Prometheus text format (version 0.0.4)."""
        metrics = [self.requests, self.request_seconds, self.prompt_tokens, self.prefix_cache_hit_tokens,
                   self.preemptions, self.generation_tokens, self.finished,
                   self.queue_seconds, self.ttft_seconds, self.tpot_seconds, self.e2e_seconds, self.batch_size,
                   self.step_seconds, *self._gauges]
        return "\n".join(line for m in metrics for line in m.render()) + "\n"
