"""Kernel benchmark: our RLA/RDN ops beside fla's gated delta rule and simple GLA and FlashAttention.

Sequence ops run at a fixed token budget per call (B * T constant), forward and forward+backward, so a
linear-time op stays flat as T grows while attention grows with T. Decode times one new token per sequence
after contexts of growing length: our state is a constant-size matrix, an attention KV cache grows.

Every point is measured in isolation; one that fails (missing kernel, out of memory) is recorded with its
error and the run goes on. On CUDA the median of ``triton.testing.do_bench``; the CPU smoke mode (tiny
shapes, PyTorch backend) times with the host clock and exists to test this code path without a GPU.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..errors import describe

# rla_keep, rdn_keep: RLA, RDN with recompute_states=False (the backward takes the forward's whole walk, chunk
# states included, instead of rebuilding them from its per-token tensors; more memory). The torch backend of the CPU
# smoke run ignores that option, so there they time as rla, rdn.
SEQUENCE_OPS = ("rla", "rdn", "rla_keep", "rdn_keep", "fla_gdn", "fla_simple_gla", "sdpa_flash")
DECODE_OPS = ("rla", "rdn", "fla_gdn", "sdpa_flash")
MODES = ("fwd", "fwd+bwd")
FLA_OPS = ("fla_gdn", "fla_simple_gla")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Chained calls build a decode state; one piece per sequence keeps the prefill's memory bounded.
STATE_BUILD_PIECE = 8192


@dataclass
class Shape:
    batch: int
    seq_len: int
    heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    backend: str  # 'triton' on the GPU, 'torch' in the CPU smoke run


@dataclass
class Point:
    op: str
    mode: str  # "fwd", "fwd+bwd" or "decode"
    seq_len: int  # decode: the context length before the timed token
    batch: int
    ms: float | None = None
    error: str | None = None
    state_mb: float | None = None  # decode: bytes the op keeps per step (recurrent state or KV cache)
    eager_ms: float | None = None  # decode on CUDA: plain launches, Python overhead included (ms: graph replay)
    note: str | None = None


@dataclass
class Settings:
    seq_lens: list[int]
    tokens: int = 32768
    heads: int = 16
    head_dim: int = 128
    dtype: str = "bf16"
    ops: list[str] = field(default_factory=lambda: list(SEQUENCE_OPS))
    modes: list[str] = field(default_factory=lambda: list(MODES))
    decode_contexts: list[int] = field(default_factory=list)
    decode_batch: int = 8
    cpu_smoke: bool = False

    def command(self) -> str:
        """The invocation that reproduces this run, written out in full for BENCHMARKS.md."""
        join = lambda xs: ",".join(str(x) for x in xs)  # noqa: E731
        parts = ["rla-convert bench kernels", f"--seq-lens {join(self.seq_lens)}", f"--tokens {self.tokens}",
                 f"--heads {self.heads}", f"--head-dim {self.head_dim}", f"--dtype {self.dtype}",
                 f"--ops {join(self.ops)}", f"--modes {join(self.modes)}"]
        if self.decode_contexts:
            parts += [f"--decode-contexts {join(self.decode_contexts)}", f"--decode-batch {self.decode_batch}"]
        else:
            parts.append("--no-decode")
        if self.cpu_smoke:
            parts.append("--cpu-smoke")
        return " ".join(parts)


# ---------------------------------------------------------------------------------------------- inputs

def _gates(B, T, H, device, requires_grad):
    """Log decay near 0 and rates in (0, 1), as the layers produce them; leaves, so backward reaches them."""
    g = F.logsigmoid(torch.randn(B, T, H, device=device) + 4.0)
    beta = torch.rand(B, T, H, device=device)
    gamma = torch.rand(B, T, H, device=device)
    return [x.requires_grad_(requires_grad) for x in (g, beta, gamma)]


def _qkv(shape: Shape, T, requires_grad, heads_first=False):
    B, H, D = shape.batch, shape.heads, shape.head_dim
    dims = (B, H, T, D) if heads_first else (B, T, H, D)
    q = F.normalize(torch.randn(*dims, device=shape.device), dim=-1).to(shape.dtype)
    k = F.normalize(torch.randn(*dims, device=shape.device), dim=-1).to(shape.dtype)
    v = torch.randn(*dims, device=shape.device).to(shape.dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


# ------------------------------------------------------------------------------------ sequence ops
# Each builder returns (fn, leaves): fn runs one forward, or forward+backward; leaves get .grad reset.

def _our_op(name):
    """The public op (`rla_kernels.api.rla` / `.rdn`), imported when first timed."""
    try:
        from rla_kernels import api
    except ImportError as err:
        raise ImportError(f"rla_kernels.api is missing, so the public {name}() op is not available: {err}") from None
    return getattr(api, name)


def _build_ours(name, **options):
    """``options``: keywords of the public op (rla_keep, rdn_keep: recompute_states=False)."""
    def build(shape: Shape, backward: bool):
        op = _our_op(name)
        q, k, v = _qkv(shape, shape.seq_len, backward)
        g, beta, gamma = _gates(shape.batch, shape.seq_len, shape.heads, shape.device, backward)
        leaves = [q, k, v, g, beta, gamma]
        return _with_backward(lambda: op(q, k, v, g, beta, gamma, backend=shape.backend, **options)[0], leaves,
                              backward)

    return build


def _build_fla_gdn(shape: Shape, backward: bool):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    q, k, v = _qkv(shape, shape.seq_len, backward)
    g, beta, _ = _gates(shape.batch, shape.seq_len, shape.heads, shape.device, backward)
    return _with_backward(lambda: chunk_gated_delta_rule(q, k, v, g, beta)[0], [q, k, v, g, beta], backward)


def _build_fla_simple_gla(shape: Shape, backward: bool):
    from fla.ops.simple_gla import chunk_simple_gla

    q, k, v = _qkv(shape, shape.seq_len, backward)
    g, _, _ = _gates(shape.batch, shape.seq_len, shape.heads, shape.device, backward)
    return _with_backward(lambda: chunk_simple_gla(q, k, v, g)[0], [q, k, v, g], backward)


def _build_sdpa_flash(shape: Shape, backward: bool):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = _qkv(shape, shape.seq_len, backward, heads_first=True)

    def forward():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # flash or fail: no silent fallback to the math path
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return _with_backward(forward, [q, k, v], backward)


def _with_backward(forward, leaves, backward):
    if not backward:
        def fwd_only():
            with torch.no_grad():
                forward()
        return fwd_only, None
    do = None

    def fwd_bwd():
        nonlocal do
        o = forward()
        if do is None:
            do = torch.randn_like(o)
        o.backward(do)

    return fwd_bwd, leaves


SEQUENCE_BUILDERS = {
    "rla": _build_ours("rla"), "rdn": _build_ours("rdn"), "rla_keep": _build_ours("rla", recompute_states=False),
    "rdn_keep": _build_ours("rdn", recompute_states=False), "fla_gdn": _build_fla_gdn,
    "fla_simple_gla": _build_fla_simple_gla, "sdpa_flash": _build_sdpa_flash,
}


@contextlib.contextmanager
def fla_hopper_guard_lifted():
    """fla 0.6.0 refuses its gated chunk backward (``chunk_bwd_dqkwg``) on Hopper with Triton < 3.7.1
    (fla issue #640: wrong gradients were seen for some shapes). We lift that guard here, and only here,
    to TIME fla's backward next to ours: the results are discarded, never trusted. The guard reads the
    module global ``TRITON_ABOVE_3_7_1`` of ``fla.ops.common.chunk_o`` at call time."""
    try:
        import fla.ops.common.chunk_o as chunk_o
    except ImportError:
        yield
        return
    saved = getattr(chunk_o, "TRITON_ABOVE_3_7_1", None)
    chunk_o.TRITON_ABOVE_3_7_1 = True
    try:
        yield
    finally:
        chunk_o.TRITON_ABOVE_3_7_1 = saved


# -------------------------------------------------------------------------------------- decode ops
# Each builder returns (step, state_bytes, note): step decodes one token per sequence.

def _random_context(shape: Shape, T):
    q, k, v = _qkv(shape, T, False)
    g, beta, gamma = _gates(shape.batch, T, shape.heads, shape.device, False)
    return q, k, v, g, beta, gamma


@torch.no_grad()
def _build_state(name, shape: Shape, context: int):
    """Run the chunked op over `context` tokens, piece by piece with the state carried; (S, R) fp32."""
    op, state = _our_op(name), None
    for start in range(0, context, STATE_BUILD_PIECE):
        piece = _random_context(shape, min(STATE_BUILD_PIECE, context - start))
        _, state = op(*piece, initial_state=state, output_final_state=True, backend=shape.backend)
    return state[0].float().contiguous(), state[1].float().contiguous()


def _build_decode_ours(name):
    def build(shape: Shape, context: int):
        B, H, D = shape.batch, shape.heads, shape.head_dim
        note = None
        try:
            S, R = _build_state(name, shape, context)
        except (ImportError, AttributeError, NotImplementedError, RuntimeError, ValueError) as err:
            # Decode time does not depend on the state's values; say so and time the kernel anyway.
            note = f"random state: building it from the context failed ({_short(err)})"
            S = 0.1 * torch.randn(B, H, D, D, device=shape.device)
            R = 0.1 * torch.randn(B, H, D, D, device=shape.device)
        token = _random_context(shape, 1)
        if shape.backend == "triton":
            if name == "rla":
                from rla_kernels.rla.fused_recurrent import fused_recurrent_rla_fwd as kernel
            else:
                from rla_kernels.rdn.fused_recurrent import fused_recurrent_rdn_fwd as kernel

            # In place, as a decode cache uses it: no allocation of a new state per token.
            def step():
                kernel(*token, None, 1.0, "clip", S, R, None, inplace=True)
        else:
            op = _our_op(name)

            def step():
                op(*token, initial_state=(S, R), output_final_state=True, backend=shape.backend)
        return step, 2 * S.numel() * S.element_size(), note

    return build


def _build_decode_fla_gdn(shape: Shape, context: int):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    state = None
    with torch.no_grad():
        for start in range(0, context, STATE_BUILD_PIECE):
            q, k, v, g, beta, _ = _random_context(shape, min(STATE_BUILD_PIECE, context - start))
            _, state = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True)
    q, k, v, g, beta, _ = _random_context(shape, 1)

    def step():
        fused_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True)

    return step, state.numel() * state.element_size(), None


def _build_decode_sdpa(shape: Shape, context: int):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # A full KV cache of `context` tokens (what attention keeps), attended by one new query per sequence.
    _, k_cache, v_cache = _qkv(shape, context + 1, False, heads_first=True)
    q, _, _ = _qkv(shape, 1, False, heads_first=True)

    def step():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, k_cache, v_cache)

    return step, 2 * k_cache.numel() * k_cache.element_size(), None


DECODE_BUILDERS = {
    "rla": _build_decode_ours("rla"), "rdn": _build_decode_ours("rdn"),
    "fla_gdn": _build_decode_fla_gdn, "sdpa_flash": _build_decode_sdpa,
}


# ---------------------------------------------------------------------------------------- measuring

def median_ms(fn, grad_to_none, device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))
    fn()  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _short(err: BaseException) -> str:
    return describe(err, 160)


def _guarded(point: Point, device, measure) -> Point:
    try:
        measure(point)
    except torch.OutOfMemoryError:
        point.error = "out of memory"
    except Exception as err:  # noqa: BLE001 -- a benchmark reports any failure of one op and goes on
        point.error = _short(err)
    finally:
        if device.type == "cuda":
            with contextlib.suppress(Exception):  # a broken CUDA context raises here too: run() reports it
                torch.cuda.empty_cache()
    return point


def context_failure(device: torch.device) -> str | None:
    """After a point: None if the device still works, else why not. A kernel fault (illegal memory access)
    leaves the CUDA context unusable for the rest of the process, so every later point would fail."""
    if device.type != "cuda":
        return None
    try:
        torch.cuda.synchronize(device)
    except Exception as err:  # noqa: BLE001 -- whatever the driver raises, the context is gone
        return _short(err)
    return None


def sequence_point(op: str, mode: str, shape: Shape) -> Point:
    point = Point(op, mode, shape.seq_len, shape.batch)
    if op in FLA_OPS and shape.device.type != "cuda":
        point.error = "skipped: fla's Triton kernels need CUDA"
        return point

    def measure(p):
        guard = fla_hopper_guard_lifted() if op in FLA_OPS and mode == "fwd+bwd" else contextlib.nullcontext()
        with guard:
            fn, leaves = SEQUENCE_BUILDERS[op](shape, mode == "fwd+bwd")
            p.ms = median_ms(fn, leaves, shape.device)
        if op in FLA_OPS and mode == "fwd+bwd":
            p.note = "fla #640 guard lifted for timing"

    return _guarded(point, shape.device, measure)


def decode_point(op: str, context: int, shape: Shape) -> Point:
    point = Point(op, "decode", context, shape.batch)
    if op in FLA_OPS and shape.device.type != "cuda":
        point.error = "skipped: fla's Triton kernels need CUDA"
        return point

    def measure(p):
        step, state_bytes, p.note = DECODE_BUILDERS[op](shape, context)
        p.state_mb = state_bytes / 2**20
        with torch.no_grad():
            p.ms = median_ms(step, None, shape.device)
            if shape.device.type == "cuda":
                # One decode step is microseconds of GPU work, less than the Python that launches it: replay
                # it as a CUDA graph (what a serving loop does) to see the kernel, keep the eager time too.
                p.eager_ms = p.ms
                try:
                    import triton.testing

                    p.ms = float(triton.testing.do_bench_cudagraph(step, return_mode="median"))
                except Exception as err:  # noqa: BLE001 -- capture can fail; the eager time stands then
                    p.note = "; ".join(filter(None, [p.note, f"no CUDA graph ({_short(err)}): eager time"]))

    return _guarded(point, shape.device, measure)


def plan(settings: Settings) -> list[tuple]:
    """The points to measure, in order: (kind, op, mode or None, seq_len)."""
    points = [("seq", op, mode, T) for T in settings.seq_lens for op in settings.ops for mode in settings.modes]
    decode_ops = [op for op in settings.ops if op in DECODE_OPS]
    points += [("decode", op, None, L) for L in settings.decode_contexts for op in decode_ops]
    return points


def run(settings: Settings, device: torch.device, progress: bool = True) -> list[Point]:
    from tqdm.auto import tqdm

    dtype = DTYPES[settings.dtype]
    backend = "triton" if device.type == "cuda" else "torch"
    results = []
    broken = None  # set once the CUDA context is unusable: the remaining points are recorded, not measured
    for kind, op, mode, T in tqdm(plan(settings), desc="bench kernels", disable=not progress):
        torch.manual_seed(T)
        if kind == "seq":
            shape = Shape(max(1, settings.tokens // T), T, settings.heads, settings.head_dim, dtype, device, backend)
        else:
            shape = Shape(settings.decode_batch, 1, settings.heads, settings.head_dim, dtype, device, backend)
        if broken:
            point = Point(op, mode or "decode", T, shape.batch, error=f"not measured: {broken}")
        elif kind == "seq":
            point = sequence_point(op, mode, shape)
        else:
            point = decode_point(op, T, shape)
        if not broken and (failure := context_failure(device)):  # also after a success: a caught fault (graph replay) counts
            point.error = point.error or f"the CUDA context broke during this point: {failure}"
            broken = (f"the CUDA context broke at {op} {point.mode} T={T} ({failure}); rerun the remaining points "
                      f"in a new process")
        results.append(point)
        if not progress:  # a log line per point, so a run stopped at a time limit still reports what it measured
            p = results[-1]
            print(f"{p.op:15s} {p.mode:8s} T={p.seq_len:6d} B={p.batch:3d} "
                  + (f"{p.ms:9.3f} ms" if p.ms is not None else f"failed: {p.error}"), flush=True)
    return results


def environment(device: torch.device) -> dict:
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "date": datetime.date.today().isoformat()}
    # Versions from the package metadata: importing fla just to read its version costs seconds.
    for key, dist in (("triton", "triton"), ("fla", "flash-linear-attention")):
        try:
            info[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[key] = None
    return info


def results_document(settings: Settings, points: list[Point], device: torch.device) -> dict:
    return {"meta": {**environment(device), "command": settings.command(), "settings": asdict(settings)},
            "points": [asdict(p) for p in points]}


# Settings two result files must share for their points to sit in one table: the same device and per-call shape.
_MERGE_MUST_MATCH = ("tokens", "heads", "head_dim", "dtype")
_SETTINGS_KEYS = _MERGE_MUST_MATCH + ("seq_lens", "ops", "modes", "decode_contexts", "decode_batch")
_POINT_KEYS = ("op", "mode", "seq_len", "ms")


def check_results(doc) -> None:
    """ValueError naming the first thing missing unless ``doc`` has the layout of ``bench kernels --json``."""
    what = "not results of `rla-convert bench kernels --json`"
    if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or not isinstance(doc.get("points"), list):
        raise ValueError(f"{what} (it needs a meta object and a points list)")
    meta = doc["meta"]
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    missing = ([f"meta.{key}" for key in ("device", "date", "command") if key not in meta]
               + [f"meta.settings.{key}" for key in _SETTINGS_KEYS if key not in settings]
               + [f"points[{i}].{key}" for i, p in enumerate(doc["points"]) for key in _POINT_KEYS
                  if not isinstance(p, dict) or key not in p])
    if missing:
        raise ValueError(f"{what} (no {missing[0]})")


def merge_results(base: dict, new: dict, new_name: str) -> dict:
    """``base`` with every measured point of ``new`` in place of base's point at the same (op, mode, T), others kept.

    BENCHMARKS.md's current table grows from runs that each time some ops: meta.command then says which points came
    from which run (``new_name``, its date and its command) before base's own account. A point that failed in ``new``
    (no ms) does not replace a measured one; meta.command names those. ValueError naming the setting when the two
    runs are not comparable (another device, dtype, per-call shape or decode batch), or when ``new`` is not results
    of bench kernels."""
    check_results(new)
    b_meta, n_meta = base["meta"], new["meta"]
    must_match = _MERGE_MUST_MATCH
    if any(p["mode"] == "decode" for p in base["points"]) and any(p["mode"] == "decode" for p in new["points"]):
        must_match += ("decode_batch",)
    clashes = [f"{key} {b_meta['settings'][key]} vs {n_meta['settings'][key]}" for key in must_match
               if b_meta["settings"][key] != n_meta["settings"][key]]
    if b_meta["device"] != n_meta["device"]:
        clashes.insert(0, f"device {b_meta['device']!r} vs {n_meta['device']!r}")
    if clashes:
        raise ValueError(f"cannot merge {new_name} into these results: {'; '.join(clashes)} (merge runs of one "
                         f"device, dtype and shape)")
    key = lambda p: (p["op"], p["mode"], p["seq_len"])  # noqa: E731
    measured = {key(p) for p in base["points"] if p["ms"] is not None}
    keeps_base = lambda p: p["ms"] is None and key(p) in measured  # noqa: E731  (failed where base has a number)
    failed = [p for p in new["points"] if keeps_base(p)]
    taken = [p for p in new["points"] if not keeps_base(p)]
    replaced = {key(p) for p in taken}
    points = [p for p in base["points"] if key(p) not in replaced] + taken
    settings = dict(b_meta["settings"])
    for name in ("seq_lens", "ops", "modes", "decode_contexts"):
        settings[name] = sorted(set(settings[name]) | set(n_meta["settings"][name]))
    ops = sorted({p["op"] for p in taken})
    modes = sorted({p["mode"] for p in taken})
    command = f"merged: {', '.join(ops)} ({', '.join(modes)}) from {new_name} ({n_meta['date']}, '{n_meta['command']}')"
    if failed:
        command += ("; there failed, so kept from before: "
                    + ", ".join(f"{p['op']} {p['mode']} T={p['seq_len']}" for p in failed))
    meta = {**b_meta, "date": max(b_meta["date"], n_meta["date"]),
            "command": f"{command}; before that: {b_meta['command']}", "settings": settings}
    for lib in ("torch", "triton", "fla"):  # each version once, however many runs were merged
        versions = {v for m in (b_meta, n_meta) for v in str(m.get(lib)).split(", ")}
        meta[lib] = ", ".join(sorted(versions)) if len(versions) > 1 else b_meta.get(lib)
    return {"meta": meta, "points": points}
