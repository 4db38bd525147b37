"""Model-level benchmark: a teacher and its converted model side by side.

Measured per model: prefill time against context length; time per generated token, cache memory and
peak device memory after contexts of growing length (eager, and optionally through torch.compile);
batch decoding throughput. Every point that fails (out of memory, a context the model cannot take) is
recorded as such and the run goes on. The models are measured one after the other, each moved to the
device only for its own points, so peak memory counts one model's weights, never both.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import importlib.metadata
import shlex
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ..compat import cache_argument, output_cache
from ..errors import describe
from .graphed import GraphedGreedyStep, GreedyStep


@dataclass
class Point:
    model: str
    measure: str  # "prefill", "decode", "throughput", "decode_compiled", "throughput_compiled"
    context: int
    batch: int
    ms: float | None = None  # prefill: whole call; decode: per generated token (median)
    tokens_per_s: float | None = None
    cache_mb: float | None = None
    peak_mb: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)
    note: str | None = None


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COMPILED_WARMUP = 3  # untimed steps before a compiled decode is timed: the compile and one recompile
CUDA_GRAPH = "cuda-graph"  # the compile mode that replays a captured greedy step instead of torch.compile


@dataclass
class Settings:
    """One run of `rla-convert bench model`; saved with the results so the command can be reproduced."""

    teacher: str
    converted: str
    contexts: list[int]
    decode_contexts: list[int]
    batches: list[int]
    throughput_context: int
    dtype: str = "bf16"
    compile_decode: bool = False
    compile_mode: str = "default"
    steps: int = 16
    cpu_smoke: bool = False

    def command(self) -> str:
        """The invocation that reproduces this run, written out in full for BENCHMARKS.md."""
        join = lambda xs: ",".join(str(x) for x in xs)  # noqa: E731
        parts = ["rla-convert bench model", shlex.quote(self.teacher), shlex.quote(self.converted),
                 f"--contexts {join(self.contexts)}", f"--decode-contexts {join(self.decode_contexts)}",
                 f"--batches {join(self.batches)}", f"--throughput-context {self.throughput_context}",
                 f"--dtype {self.dtype}", f"--steps {self.steps}"]
        parts.append(f"--compile-decode --compile-mode {self.compile_mode}" if self.compile_decode else "--no-compile-decode")
        if self.cpu_smoke:
            parts.append("--cpu-smoke")
        return " ".join(parts)


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


OUT_OF_MEMORY = "out of memory"


def _short(err: BaseException) -> str:
    return describe(err, 120)


def _guard(point: Point, fn) -> Point:
    try:
        fn(point)
    except torch.OutOfMemoryError:
        point.error = OUT_OF_MEMORY
    except Exception as err:  # noqa: BLE001 -- a benchmark records any failure of one point and goes on
        point.error = _short(err)
    # Free after the except block: inside it the traceback still holds the failed point's tensors.
    _free_device_memory()
    return point


def _free_device_memory():
    # Only device memory is worth a collection (a third of a second with transformers loaded): the CPU
    # allocator returns what the dropped tensors held without help.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


@torch.no_grad()
def prefill_point(name, model, context, batch, device, repeats=3) -> Point:
    def run(point):
        ids = _tokens(model, batch, context, device)
        prefill = lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1)  # noqa: E731
        prefill()  # warm-up outside the peak: a kernel's first call may autotune, with scratch buffers of its own
        _reset_peak(device)
        point.ms = Timer(device)(prefill, repeats=repeats, warmup=0)
        point.tokens_per_s = batch * context / point.ms * 1e3
        point.peak_mb = _peak_mb(device)

    return _guard(Point(name, "prefill", context, batch), run)


@torch.no_grad()
def decode_point(name, model, context, batch, device, steps=16, step_model=None, warmup=0) -> Point:
    """Prefill `context` tokens, then time `steps` single-token steps against the filled cache.

    ``step_model`` (a compiled model, say) runs the steps in place of ``model``; ``warmup`` steps run
    untimed first, so compilation is not counted as decoding.
    """
    step_model = model if step_model is None else step_model  # not `or`: a compiled module has no truth value

    def run(point):
        ids = _tokens(model, batch, context, device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        _reset_peak(device)  # the decode's own peak: weights, cache and one step's work (prefill points have theirs)
        cache = output_cache(out)
        point.cache_mb = cache_nbytes(cache) / 2**20
        if point.cache_mb == 0:
            # A step without state would time a model that forgot its context: not a decode number.
            raise RuntimeError("the cache holds no state after the prefill: cached decoding is broken for this model")
        token = out.logits[:, -1:].argmax(-1)
        cache_kw = {cache_argument(model): cache}
        for _ in range(warmup):
            out = step_model(input_ids=token, use_cache=True, **cache_kw)
            token = out.logits[:, -1:].argmax(-1)
        timer, times = Timer(device), []
        for _ in range(steps):
            def step():
                nonlocal out
                out = step_model(input_ids=token, use_cache=True, **cache_kw)
            times.append(timer(step, repeats=1, warmup=0))
            token = out.logits[:, -1:].argmax(-1)
        _step_times(point, times, device)
        point.extra["cache_mb_after_decode"] = cache_nbytes(cache) / 2**20

    return _guard(Point(name, "decode", context, batch), run)


def _step_times(point: Point, times: list[float], device) -> None:
    """A decode point's per-token time (median, the first steps left out as warm-up), rate and peak memory."""
    point.ms = statistics.median(times[2:] if len(times) > 4 else times)
    point.tokens_per_s = point.batch / point.ms * 1e3
    point.peak_mb = _peak_mb(device)


def position_limit(model) -> int | None:
    """Longest sequence a model with a learned position table can take (GPT-2, OPT); None for RoPE & co.

    Past it the embedding lookup fails, and on CUDA a failed lookup is a device-side assert that breaks
    every later point: such contexts are skipped up front instead.
    """
    learned = any(isinstance(m, torch.nn.Embedding) and ("pos" in name.rsplit(".", 1)[-1] or name.endswith("wpe"))
                  for name, m in model.named_modules())
    return getattr(model.config.get_text_config(), "max_position_embeddings", None) if learned else None


def plan(contexts, decode_contexts, batches, throughput_context, compile_decode=False,
         decode_batch=1) -> list[tuple[str, int, int]]:
    """(measure, context, batch) for one model, in the order they are measured."""
    out = [("prefill", c, 1) for c in contexts]
    out += [("decode", c, decode_batch) for c in decode_contexts]
    if compile_decode:
        out += [("decode_compiled", c, 1) for c in decode_contexts]
    out += [("throughput", throughput_context, b) for b in batches]
    if compile_decode:
        out += [("throughput_compiled", throughput_context, b) for b in batches]
    return out


def _skip_reason(model, measure, context, batch, steps, failed_oom) -> str | None:
    limit = position_limit(model)
    tokens = context if measure == "prefill" else context + steps + (COMPILED_WARMUP if measure.endswith("_compiled") else 0)
    if limit is not None and tokens > limit:
        return f"skipped: context {context} ({tokens} tokens with the decode steps) exceeds the model's {limit} learned positions"
    for m, c, b in failed_oom:
        # A longer context (or a larger batch) than one that ran out of memory needs more: skip it.
        if _family(m) == _family(measure) and context >= c and batch >= b:
            return f"skipped: {m} ran out of memory at context {c}, batch {b}"
    return None


def _family(measure: str) -> str:
    """Compiled decode holds what eager decode holds: one's out-of-memory stands for the other's."""
    return measure.removesuffix("_compiled")


def _note(model, context) -> str | None:
    trained = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if trained and context > trained and position_limit(model) is None:
        return f"beyond the {trained} positions the model was trained for: speed and memory only"
    return None


def _compiled_decode_point(name, model, context, batch, device, steps, compiled: dict, mode: str) -> Point:
    """Decode whose steps run through torch.compile (compiled once per model, on first use), or, with
    ``mode`` 'cuda-graph', replay a captured CUDA graph of a whole greedy step (bench/graphed.py)."""
    if mode == CUDA_GRAPH:
        return graphed_decode_point(name, model, context, batch, device, steps)
    try:
        if "fn" not in compiled:
            compiled["fn"] = torch.compile(model, mode=mode, dynamic=True)
    except Exception as err:  # noqa: BLE001 -- no compiler here is a failed point, not a failed run
        return Point(name, "decode_compiled", context, batch, error=_short(err))
    return decode_point(name, model, context, batch, device, steps=steps, step_model=compiled["fn"],
                        warmup=COMPILED_WARMUP)


@torch.no_grad()
def graphed_decode_point(name, model, context, batch, device, steps=16) -> Point:
    """Prefill `context` tokens, capture one greedy step as a CUDA graph, time `steps` replays."""

    def run(point):
        if device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        ids = _tokens(model, batch, context, device)
        step = GreedyStep(model, ids, max_new_tokens=steps + COMPILED_WARMUP, cache_kwarg=cache_argument(model))
        _reset_peak(device)  # after the prefill, before the capture: the graph's own buffers count
        point.cache_mb = cache_nbytes(step.cache) / 2**20
        replay = GraphedGreedyStep(step, warmup=COMPILED_WARMUP - 1)
        timer = Timer(device)
        _step_times(point, [timer(replay, repeats=1, warmup=0) for _ in range(steps)], device)
        caches = []
        if len(step.recurrent) < len(step.cache.layers):  # a teacher's or a hybrid's softmax layers
            caches.append("static KV cache")
        if step.recurrent:
            caches.append("recurrent states, in place")
        point.extra["cache"] = " and ".join(caches)

    return _guard(Point(name, "decode_compiled", context, batch), run)


def _attention_without_cudnn(device):
    """SDPA as serving runs it: flash first. torch 2.11 picks cuDNN attention on an H100, and it rebuilds
    its plan for each new KV length: 2 ms of host time per layer per decode step (measured there, against
    7 us of kernel), which would time that rebuild rather than the teacher."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _recompiles_per_layer(model):
    """Dynamo specialises a layer's forward on its integer layer index: one compile per layer, not the 8
    it allows by default (past which it falls back to eager, silently, and 'compiled' would be eager)."""
    layers = getattr(model.config.get_text_config(), "num_hidden_layers", None) or 64
    return torch._dynamo.config.patch(recompile_limit=max(8, layers + 8))


def _measure_model(name, model, device, work, steps, compile_mode, on_point):
    with _attention_without_cudnn(device), _recompiles_per_layer(model):
        _measure_points(name, model, device, work, steps, compile_mode, on_point)


def _measure_points(name, model, device, work, steps, compile_mode, on_point):
    failed_oom, compiled = [], {}
    for measure, context, batch in work:
        reason = _skip_reason(model, measure, context, batch, steps, failed_oom)
        if reason:
            point = Point(name, measure, context, batch, error=reason)
        elif measure == "prefill":
            point = prefill_point(name, model, context, batch, device)
        elif measure.endswith("_compiled"):
            point = _compiled_decode_point(name, model, context, batch, device, steps, compiled, compile_mode)
        else:
            point = decode_point(name, model, context, batch, device, steps=steps)
        point.measure = measure
        if point.error == OUT_OF_MEMORY:
            failed_oom.append((measure, context, batch))
        if point.error is None:
            point.note = _note(model, context)
        on_point(point)


def run_model_bench(models: dict, device, prefill_contexts, decode_contexts, decode_batch, throughput_batches,
                    throughput_context, progress=True, compile_decode=False, compile_mode="default", steps=16,
                    report=None) -> list[Point]:
    """models: name -> loaded model. Returns every point, failures included.

    Each model is moved to ``device`` for its own points and back to the CPU after them (when the device
    is not the CPU). ``report(point)`` is called as each point is measured.
    """
    work = plan(prefill_contexts, decode_contexts, throughput_batches, throughput_context, compile_decode,
                decode_batch)
    bar = tqdm(total=len(work) * len(models), desc="bench model", disable=not progress)
    points = []

    def on_point(point):
        points.append(point)
        bar.update()
        if report:
            report(point)

    for name, model in models.items():
        bar.set_postfix_str(name)
        _measure_model(name, model.to(device), device, work, steps, compile_mode, on_point)
        if device.type != "cpu":
            model.to("cpu")
        _free_device_memory()
    bar.close()
    return points


def point_line(point: Point) -> str:
    """One log line per point (--no-progress): a run stopped at a time limit still shows what it measured."""
    head = f"{point.model:10s} {point.measure:15s} context={point.context:6d} batch={point.batch:3d}"
    if point.error:
        return f"{head}  {point.error}"
    unit = "ms" if point.measure == "prefill" else "ms/token"
    parts = [f"{point.ms:10.3f} {unit}", f"{point.tokens_per_s:10.1f} tok/s"]
    if point.cache_mb is not None:
        parts.append(f"cache {point.cache_mb:.3f} MB")
    if point.peak_mb is not None:
        parts.append(f"peak {point.peak_mb:.0f} MB")
    return f"{head}  " + "  ".join(parts)


def model_info(model, name: str) -> dict:
    """What the results document says about one model: its path, type and size."""
    config = model.config.get_text_config()
    conversion = getattr(model.config, "conversion", None) or {}
    return {"name": name, "model_type": model.config.model_type, "variant": conversion.get("variant"),
            "params": sum(p.numel() for p in model.parameters()),
            "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
            "max_position_embeddings": getattr(config, "max_position_embeddings", None)}


def environment(device: torch.device) -> dict:
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "sdpa": "flash, efficient, math (no cuDNN)" if device.type == "cuda" else None}
    for key, dist in (("transformers", "transformers"), ("triton", "triton")):
        try:
            info[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[key] = None
    return info


def results_document(settings: Settings, points: list[Point], device: torch.device, models: dict) -> dict:
    return {"meta": {**environment(device), "command": settings.command(), "settings": asdict(settings),
                     "models": models},
            "points": points_as_dicts(points)}


def points_as_dicts(points: list[Point]) -> list[dict]:
    return [asdict(p) for p in points]
