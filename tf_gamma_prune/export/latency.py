"""Latency of ``.tflite`` models on the CPU interpreter (XNNPACK), and fair comparisons.

:func:`benchmark_latency` times one model; :func:`compare_latency` times a
reference and a candidate in alternating turns (``timing="steady"``: one
untimed re-warm run, then ``block`` back-to-back timed runs per turn), so that
machine noise hits both alike; :func:`latency_side_by_side` times any number of
models in one loop, a fresh random order every turn; :func:`time_in_turns` is
the loop they all use.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Literal, Sequence

import numpy as np

from tf_gamma_prune.errors import ArgumentError
from tf_gamma_prune.export.interpreter import make_interpreter
from tf_gamma_prune.export.model_file import TFLiteSource, read_tflite


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """Wall-clock latency of ``interpreter.invoke()`` in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    num_threads: int
    runs: int
    warmup: int
    samples_ms: tuple[float, ...] = dataclasses.field(repr=False, default=())

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], num_threads: int, warmup: int) -> "LatencyReport":
        s = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            median_ms=float(np.median(s)),
            p10_ms=float(np.percentile(s, 10)),
            p90_ms=float(np.percentile(s, 90)),
            num_threads=num_threads,
            runs=len(s),
            warmup=warmup,
            samples_ms=tuple(float(v) for v in s),
        )


class _TimedModel:
    """An interpreter with fixed random inputs, timed one ``invoke`` at a time."""

    def __init__(self, tflite: TFLiteSource, num_threads: int, seed: int = 0):
        self.interpreter = make_interpreter(tflite, num_threads)
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(seed)
        for detail in self.interpreter.get_input_details():
            shape = [max(int(d), 1) for d in detail["shape"]]
            dtype = np.dtype(detail["dtype"])
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                value = rng.integers(max(info.min, -128), min(info.max, 127), size=shape, endpoint=True).astype(dtype)
            else:
                value = rng.random(shape, dtype=np.float32).astype(dtype)
            self.interpreter.set_tensor(detail["index"], value)

    def invoke_timed(self) -> float:
        """Run once; return the elapsed milliseconds."""
        start = time.perf_counter_ns()
        self.interpreter.invoke()
        return (time.perf_counter_ns() - start) / 1e6


def benchmark_latency(
    tflite: TFLiteSource, num_threads: int = 1, warmup: int = 5, runs: int = 50
) -> LatencyReport:
    """Time the model on the LiteRT CPU interpreter (XNNPACK) with random inputs.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    >>> from tf_gamma_prune.export import to_tflite
    >>> benchmark_latency(to_tflite(m), runs=5).median_ms > 0
    True
    """
    if runs < 1 or warmup < 0:
        raise ArgumentError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup}).")
    timed = _TimedModel(tflite, num_threads)
    for _ in range(warmup):
        timed.invoke_timed()
    return LatencyReport.from_samples([timed.invoke_timed() for _ in range(runs)], num_threads, warmup)


@dataclasses.dataclass(frozen=True)
class LatencyComparison:
    """Latency of two models timed side by side at one thread count."""

    num_threads: int
    a: LatencyReport
    b: LatencyReport

    @property
    def speedup(self) -> float:
        """``a.median_ms / b.median_ms``: above 1 when ``b`` is faster."""
        return self.a.median_ms / self.b.median_ms


LatencyTiming = Literal["steady", "interleaved"]


def _check_timing(timing: str, runs: int, warmup: int, block: int) -> None:
    if runs < 1 or warmup < 0 or block < 1:
        raise ArgumentError(
            f"runs and block must be >= 1 and warmup >= 0 (got runs={runs}, block={block}, warmup={warmup})."
        )
    if timing not in ("steady", "interleaved"):
        raise ArgumentError(f"timing must be 'steady' or 'interleaved' (got {timing!r}).")


def time_in_turns(
    invokers: Sequence[Callable[[], float]],
    order: Callable[[int], Iterable[int]],
    timing: LatencyTiming = "steady",
    runs: int = 50,
    warmup: int = 5,
    block: int = 10,
) -> list[list[float]]:
    """Time several models side by side; the protocol of :func:`compare_latency`.

    Each invoker runs one model once and returns its milliseconds. Every
    model first runs ``warmup`` untimed invocations. Then the models take
    turns in the order ``order(turn_index)`` gives (indices into
    ``invokers``): with ``timing="steady"`` a turn is one untimed invocation
    (it refills the caches the previous model evicted) and up to ``block``
    timed ones back to back; with ``"interleaved"`` it is one timed invocation.

    Returns:
        ``runs`` milliseconds per invoker, in the order of ``invokers``.

    >>> fake = [lambda: 1.0, lambda: 2.0]
    >>> [len(s) for s in time_in_turns(fake, lambda i: (0, 1), runs=7, warmup=0, block=3)]
    [7, 7]
    """
    _check_timing(timing, runs, warmup, block)
    steady = timing == "steady"
    turns = [block] * (runs // block) + ([runs % block] if runs % block else []) if steady else [1] * runs
    for invoke in invokers:
        for _ in range(warmup):
            invoke()
    samples: list[list[float]] = [[] for _ in invokers]
    for i, count in enumerate(turns):
        for k in order(i):
            if steady:
                invokers[k]()
            samples[k].extend(invokers[k]() for _ in range(count))
    return samples


def compare_latency(
    a: TFLiteSource,
    b: TFLiteSource,
    threads: Sequence[int] = (1, 2),
    warmup: int = 5,
    runs: int = 50,
    progress: Callable[[str], None] | None = None,
    timing: LatencyTiming = "steady",
    block: int = 10,
) -> list[LatencyComparison]:
    """Time ``a`` and ``b`` side by side, alternating, at each thread count.

    ``timing="steady"`` (default) measures what an app that runs one model
    on a stream sees, as TFLite's ``benchmark_model`` does: the models take
    turns (a b, b a, a b, ...); a turn is one untimed invocation, which
    refills the caches the other model evicted, then up to ``block`` timed
    invocations back to back. ``timing="interleaved"`` alternates single
    invocations (a b, b a, ...), so every timed run starts with the other
    model's data in the caches: a cold-cache figure, slower for models whose
    weights do not stay in cache. Either way slow drifts of the machine
    (thermal throttling, other processes) hit both models alike. Each model
    first runs ``warmup`` untimed invocations and is then timed ``runs``
    times per thread count.

    Args:
        progress: called with a one-line status after each thread count, e.g.
            ``lambda line: print(line, file=sys.stderr)``.
        timing: ``"steady"`` or ``"interleaved"`` (see above).
        block: steady timing: timed invocations per turn.

    Returns:
        One :class:`LatencyComparison` per thread count; ``.speedup`` is a/b.

    Example:

    >>> import keras
    >>> big = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(32, 3)])
    >>> small = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3)])
    >>> from tf_gamma_prune.export import to_tflite
    >>> [c.num_threads for c in compare_latency(to_tflite(big), to_tflite(small), runs=4)]
    [1, 2]
    """
    _check_timing(timing, runs, warmup, block)
    data_a, data_b = read_tflite(a), read_tflite(b)
    results = []
    for n_threads in threads:
        timed = (_TimedModel(data_a, n_threads), _TimedModel(data_b, n_threads))
        samples = time_in_turns(
            [m.invoke_timed for m in timed], lambda i: (0, 1) if i % 2 == 0 else (1, 0), timing, runs, warmup, block
        )
        comparison = LatencyComparison(
            n_threads,
            LatencyReport.from_samples(samples[0], n_threads, warmup),
            LatencyReport.from_samples(samples[1], n_threads, warmup),
        )
        results.append(comparison)
        if progress is not None:
            progress(
                f"[{len(results)}/{len(threads)}] threads={n_threads}: a {comparison.a.median_ms:.3f} ms, "
                f"b {comparison.b.median_ms:.3f} ms, speed-up a/b {comparison.speedup:.2f}x ({timing})"
            )
    return results


def latency_side_by_side(
    models: Sequence[TFLiteSource],
    num_threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    block: int = 10,
    seed: int = 0,
) -> list[LatencyReport]:
    """Time several ``.tflite`` models in one loop (steady turns, a fresh random order each).

    Ratios between the reports are fair (machine drift hits every model alike);
    absolute figures of a long loop run a little slower than a pair's, because
    more models evict more of the caches between turns.

    Returns:
        One :class:`LatencyReport` per model, in the order of ``models``.

    >>> import keras
    >>> from tf_gamma_prune.export import to_tflite
    >>> convs = [keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(n, 3)])
    ...          for n in (32, 16, 8)]
    >>> reports = latency_side_by_side([to_tflite(m) for m in convs], runs=6)
    >>> [r.runs for r in reports]
    [6, 6, 6]
    """
    if len(models) < 1:
        raise ArgumentError("latency_side_by_side needs at least one model.")
    timed = [_TimedModel(read_tflite(m), num_threads) for m in models]
    rng = np.random.default_rng(seed)
    samples = time_in_turns([t.invoke_timed for t in timed],
                            lambda i: rng.permutation(len(timed)).tolist(),
                            "steady", runs, warmup, block)
    return [LatencyReport.from_samples(s, num_threads, warmup) for s in samples]
