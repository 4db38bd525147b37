"""Model-level benchmark: a teacher and its converted model side by side.

Measured per model: prefill time against context length; time per generated token, cache memory and
peak device memory after contexts of growing length; batch decoding throughput. Every point that fails
(out of memory, a context the model cannot take) is recorded as such and the run goes on.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm


@dataclass
class Point:
    model: str
    measure: str  # "prefill", "decode", "throughput"
    context: int
    batch: int
    ms: float | None = None  # prefill: whole call; decode: per generated token (median)
    tokens_per_s: float | None = None
    cache_mb: float | None = None
    peak_mb: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def cache_nbytes(cache) -> int:
    """Bytes held by the tensors of a transformers cache (KV tensors, recurrent and conv states)."""
    seen, total = set(), 0

    def visit(obj, depth=0):
        nonlocal total
        if depth > 4:
            return
        if isinstance(obj, torch.Tensor):
            if obj.data_ptr() not in seen:
                seen.add(obj.data_ptr())
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                visit(x, depth + 1)
        elif isinstance(obj, dict):
            for x in obj.values():
                visit(x, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            for x in vars(obj).values():
                visit(x, depth + 1)

    visit(cache)
    return total


class Timer:
    """Milliseconds of device work: CUDA events on a GPU, a synchronised host clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, repeats: int = 3, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def _tokens(model, batch: int, length: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(length * 131 + batch)
    vocab = model.config.get_text_config().vocab_size
    return torch.randint(3, vocab, (batch, length), generator=g).to(device)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _guard(point: Point, fn) -> Point:
    try:
        fn(point)
    except torch.OutOfMemoryError:
        point.error = "out of memory"
        torch.cuda.empty_cache()
    except (RuntimeError, ValueError, IndexError) as err:
        point.error = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return point


@torch.no_grad()
def prefill_point(name, model, context, batch, device, repeats=3) -> Point:
    def run(point):
        ids = _tokens(model, batch, context, device)
        _reset_peak(device)
        point.ms = Timer(device)(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1), repeats=repeats)
        point.tokens_per_s = batch * context / point.ms * 1e3
        point.peak_mb = _peak_mb(device)

    return _guard(Point(name, "prefill", context, batch), run)


@torch.no_grad()
def decode_point(name, model, context, batch, device, steps=16) -> Point:
    """Prefill `context` tokens, then time `steps` single-token steps against the filled cache."""

    def run(point):
        ids = _tokens(model, batch, context, device)
        _reset_peak(device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        point.cache_mb = cache_nbytes(cache) / 2**20
        token = out.logits[:, -1:].argmax(-1)
        timer, times = Timer(device), []
        for _ in range(steps):
            def step():
                nonlocal out
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
            times.append(timer(step, repeats=1, warmup=0))
            token = out.logits[:, -1:].argmax(-1)
        point.ms = statistics.median(times[2:] if len(times) > 4 else times)  # first steps warm up
        point.tokens_per_s = batch / point.ms * 1e3
        point.peak_mb = _peak_mb(device)
        point.extra["cache_mb_after_decode"] = cache_nbytes(cache) / 2**20

    return _guard(Point(name, "decode", context, batch), run)


def run_model_bench(models: dict, device, prefill_contexts, decode_contexts, decode_batch, throughput_batches,
                    throughput_context, progress=True) -> list[Point]:
    """models: name -> loaded model on `device`. Returns every point, failures included."""
    plan = []
    for name, model in models.items():
        plan += [(prefill_point, "prefill", name, model, c, 1) for c in prefill_contexts]
        plan += [(decode_point, "decode", name, model, c, decode_batch) for c in decode_contexts]
        plan += [(decode_point, "throughput", name, model, throughput_context, b) for b in throughput_batches]
    points = []
    for fn, measure, name, model, context, batch in tqdm(plan, desc="bench model", disable=not progress):
        point = fn(name, model, context, batch, device)
        point.measure = measure
        points.append(point)
    return points


def points_as_dicts(points: list[Point]) -> list[dict]:
    return [asdict(p) for p in points]
