"""The ops as torch.library custom ops, so torch.compile sees one opaque op per call.

Triton path: ``NAMESPACE::chunk_fwd`` (with a fake for tracing and an autograd formula calling
``NAMESPACE::chunk_bwd``) and ``NAMESPACE::fused_recurrent_fwd`` (decode, no backward). ``variant``
('rla' or 'rdn') picks the kernel module; the kernels themselves are imported on first use, so this
file imports on machines without Triton and without the kernels written yet.

Torch path under torch.compile: ``NAMESPACE::torch_chunk_fwd``/``torch_chunk_bwd``. Traced inline, the
python loop over chunks unrolls into a graph that takes a minute to compile and recompiles for every
new number of chunks; as one op it compiles in seconds for any length. Its backward recomputes the
forward under autograd (no activations kept). Eager calls skip the op and use autograd directly.

Custom ops cannot return None: missing initial states come in as None, and their gradients go out as
empty tensors that the autograd formula turns back into None.

The namespace is ``rla_kernels_<hash of this file and shapes.py>`` (``NAMESPACE``; call the ops through
``ops``): torch's compile caches (inductor's FX graph cache, AOTAutograd's cache, kept across runs in
/tmp/torchinductor_$USER) key a custom op by its name, not its schema or autograd formula, so after a change here a compiled graph cached by the
previous version would call the new ops with the old arguments (seen 2026-12-01: "chunk_bwd() is missing value for
argument 'saved'"). A name that changes with this file makes those entries miss instead.

``chunk_fwd`` returns ``N_SAVED`` tensors more than the API hands on: what the variant's backward takes from its
forward instead of recomputing it (``_SAVED``; RDN's chunk matrices, and, as ``keep`` asks, the walk's per-token
tensors (RLA's residuals, RDN's U, W, X) or the whole walk (the chunk states too)), empty tensors where there is
nothing. A fixed count keeps the schema one for every variant and setting, and a saved tensor's shape follows from the
input shapes alone (the fake's; for packed sequences an upper bound on the chunk count, ``shapes.kept_rows``), so
torch.compile sees no data-dependent size. The autograd formula saves them and passes them to ``chunk_bwd`` as one
list.

``keep`` (the API's: KEEP_TOKENS with autograd, KEEP_WALK with ``rla/rdn(recompute_states=False)``, memory for
time; KEEP_NOTHING without autograd). Only variants in ``_KEEPS_WALK`` take it; the others refuse it (the API never
asks them).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from . import shapes
from .backend import triton_function
from .rdn.torch_chunk import chunk_rdn_torch
from .rla.torch_chunk import chunk_rla_torch

_TORCH_CHUNK = {"rla": chunk_rla_torch, "rdn": chunk_rdn_torch}
# shapes.py too: the fakes' saved-tensor shapes come from it
NAMESPACE = "rla_kernels_" + hashlib.sha1(
    Path(__file__).read_bytes() + Path(shapes.__file__).read_bytes()).hexdigest()[:10]


def _num_sequences(q: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _dense_like(x: Tensor, dtype=None) -> Tensor:
    """A contiguous tensor of x's shape: what the real ops return (they call .contiguous() to match)."""
    return x.new_empty(x.shape, dtype=dtype or x.dtype)


def _placeholder(q: Tensor) -> Tensor:
    """Stands for the gradient of an initial state that was None (custom ops cannot return None)."""
    return q.new_empty(0, dtype=torch.float32)


def _unaliased(outputs, inputs):
    """Custom ops may not return an input or two views of one buffer: clone those (rare, e.g. T = 0)."""
    inputs = [x for x in inputs if isinstance(x, Tensor)]
    seen_ids = {id(x) for x in inputs}
    seen_ptrs = {x.untyped_storage().data_ptr() for x in inputs if x.numel()}
    fresh = []
    for y in outputs:
        if id(y) in seen_ids or (y.numel() and y.untyped_storage().data_ptr() in seen_ptrs):
            y = y.clone()
        y = y.contiguous()
        seen_ids.add(id(y))
        if y.numel():
            seen_ptrs.add(y.untyped_storage().data_ptr())
        fresh.append(y)
    return fresh


def _empty_states(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    shape = (_num_sequences(q, cu_seqlens), q.shape[2], q.shape[3], v.shape[3])
    return q.new_empty(shape, dtype=torch.float32), q.new_empty(shape, dtype=torch.float32)


# chunk_fwd's outputs after (o, S_T, R_T): what a variant's backward takes from its forward, padded with empties.
N_SAVED = 6
# The forwards' chunk sizes (shapes.py, which {rdn,rla}/chunk.py's CHUNK_SIZE take too).
_RDN_CHUNK = shapes.RDN_CHUNK_SIZE
_RLA_CHUNK = shapes.RLA_CHUNK_SIZE


# What a forward keeps for its backward beyond what it always hands on (chunk_fwd's ``keep``): nothing (no autograd),
# the walk's per-token tensors (the default with autograd: RLA's residuals r, RDN's U, W, X; the variant's
# keep_tokens), or its whole walk (keep_walk: the chunk states too; the API's recompute_states=False).
KEEP_NOTHING, KEEP_TOKENS, KEEP_WALK = 0, 1, 2


def _rdn_saved(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], keep: int) -> list[tuple]:
    """(shape, dtype) of what RDN's forward hands its backward: T_beta, T_gamma, Mk as [3, B, T, H, 32] fp32
    (chunk.py save_wy, wy_shape); with KEEP_TOKENS also the walk's U, W, X [B, T, H, V], with KEEP_WALK first its
    h_s, h_r [rows, H, K, V] too (chunk.py keep_tokens, keep_walk, kept_walk_shapes; dtypes
    shapes.rdn_kept_walk_dtypes)."""
    walk = list(zip(shapes.kept_walk_shapes(q, v.shape[3], cu_seqlens, _RDN_CHUNK, per_token=3),
                    shapes.rdn_kept_walk_dtypes(q.dtype)))
    return [((3, *q.shape[:3], _RDN_CHUNK), torch.float32)] + _kept(walk, keep, 3)


def _rla_saved(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], keep: int) -> list[tuple]:
    """(shape, dtype) of what RLA's forward hands its backward: with KEEP_TOKENS the residuals r [B, T, H, V] in q's
    dtype and the chunks' decayed q.k products [B, T, H, 64] in the dots' (shapes.rla_qk_dtype), with KEEP_WALK first
    the chunk states h_S, h_R [rows, H, K, V] in q's dtype too (chunk.py keep_tokens, keep_walk, kept_walk_shapes,
    QK_KEPT at its default, 1)."""
    dtypes = (q.dtype, q.dtype, q.dtype, shapes.rla_qk_dtype(q.dtype))
    return _kept(list(zip(shapes.rla_kept_shapes(q, v.shape[3], cu_seqlens, _RLA_CHUNK), dtypes)), keep, 2)


def _kept(walk: list, keep: int, per_token: int) -> list:
    """What ``keep`` keeps of a walk's (shape, dtype) list, whose last ``per_token`` entries are its per-token
    tensors."""
    return walk if keep == KEEP_WALK else walk[-per_token:] if keep == KEEP_TOKENS else []


# Per variant: the saved tensors' (shape, dtype) (_rdn_saved, _rla_saved). The Triton forward returns them after
# (o, S_T, R_T): the chunk matrices when called with save_wy=True (variants in _WITH_WY, always), then what it kept of
# its walk as one tuple (keep_tokens=True or keep_walk=True); the backward takes them as wy= and walk=.
_SAVED = {"rdn": _rdn_saved, "rla": _rla_saved}
_WITH_WY = {"rdn"}
_KEEPS_WALK = {"rdn", "rla"}


def _padded(q: Tensor, saved) -> list[Tensor]:
    return list(saved) + [q.new_empty(0, dtype=torch.float32) for _ in range(N_SAVED - len(saved))]


# ---- forward (training and prefill) ----

@torch.library.custom_op(f"{NAMESPACE}::chunk_fwd", mutates_args=())
def chunk_fwd(variant: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, gamma: Tensor,
              S0: Optional[Tensor], R0: Optional[Tensor], cu_seqlens: Optional[Tensor],
              scale: float, clip: Optional[float], residual: str,
              keep: int = KEEP_NOTHING
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if keep not in (KEEP_NOTHING, KEEP_TOKENS, KEEP_WALK):
        raise ValueError(f"keep must be {KEEP_NOTHING} (nothing), {KEEP_TOKENS} (the walk's per-token tensors) or "
                         f"{KEEP_WALK} (the whole walk); got {keep!r}")
    if keep and variant not in _KEEPS_WALK:
        raise ValueError(f"keep={keep} is not {variant}'s; it has no walk to keep")
    fn = triton_function(variant, "chunk", f"chunk_{variant}_fwd")
    kw = {"save_wy": True} if variant in _WITH_WY else {}
    if keep:
        kw["keep_walk" if keep == KEEP_WALK else "keep_tokens"] = True
    o, S_T, R_T, *rest = fn(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, **kw)
    saved = [*rest[:-1], *rest[-1]] if keep else rest  # (wy,) and/or what was kept of the walk, flattened
    return tuple(_unaliased((o, S_T, R_T, *_padded(q, saved)), (q, k, v, g, beta, gamma, S0, R0)))


@chunk_fwd.register_fake
def _chunk_fwd_fake(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual, keep=KEEP_NOTHING):
    specs = _SAVED[variant](q, v, cu_seqlens, keep)
    saved = [q.new_empty(shape, dtype=dtype) for shape, dtype in specs]
    return (_dense_like(v), *_empty_states(q, v, cu_seqlens), *_padded(q, saved))


# ---- backward ----

@torch.library.custom_op(f"{NAMESPACE}::chunk_bwd", mutates_args=())
def chunk_bwd(variant: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, gamma: Tensor,
              S0: Optional[Tensor], R0: Optional[Tensor], cu_seqlens: Optional[Tensor],
              scale: float, clip: Optional[float], residual: str,
              do: Tensor, dS_T: Optional[Tensor], dR_T: Optional[Tensor], saved: list[Tensor]) -> list[Tensor]:
    fn = triton_function(variant, "chunk", f"chunk_{variant}_bwd")
    kw = {}
    n_wy = int(variant in _WITH_WY)
    if n_wy and saved[0].numel():
        kw["wy"] = saved[0]
    n_walk = len(_SAVED[variant](q, v, cu_seqlens, KEEP_WALK)) - n_wy
    # what the forward kept of its walk: all of it, its per-token tensors, or nothing (_padded's empty tensors)
    walk = tuple(t for t in saved[n_wy:n_wy + n_walk] if t.numel())
    if walk:
        kw["walk"] = walk
    grads = fn(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do.contiguous(), dS_T, dR_T, **kw)
    dq, dk, dv, dg, dbeta, dgamma, dS0, dR0 = grads
    dS0 = _placeholder(q) if S0 is None else (torch.zeros_like(S0) if dS0 is None else dS0).float()
    dR0 = _placeholder(q) if R0 is None else (torch.zeros_like(R0) if dR0 is None else dR0).float()
    return _unaliased((dq, dk, dv, dg, dbeta, dgamma, dS0, dR0),
                      (q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T, *saved))


@chunk_bwd.register_fake
def _chunk_bwd_fake(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual, do, dS_T, dR_T,
                    saved):
    return [_dense_like(x) for x in (q, k, v, g, beta, gamma)] + [
        _placeholder(q) if S0 is None else _dense_like(S0, torch.float32),
        _placeholder(q) if R0 is None else _dense_like(R0, torch.float32),
    ]


def _setup_context(ctx, inputs, output):
    """Saves the inputs and, from an op with saved outputs after (o, S_T, R_T) (chunk_fwd), those for the backward.
    Arguments after ``residual`` (chunk_fwd's keep) only shape the forward."""
    variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual = inputs[:13]
    saved = tuple(output[3:])
    ctx.mark_non_differentiable(*saved)
    # Unused outputs reach the backward as None, not as zeros: autograd would otherwise fill a zero cotangent for
    # every saved tensor too (U, W, X; with the kept walk its chunk states) and for unused final states, which the
    # kernels would then read. fwd+bwd through the API at B=16 T=2k H=16 K=V=128 bf16 (H200, 2026-12-02 14:26, first
    # configs): RDN 9.45 -> 9.26 ms, walk kept 9.21 -> 8.72; RLA 4.34 -> 4.31, walk kept 4.09 -> 3.87.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, g, beta, gamma, S0, R0, cu_seqlens, *saved)
    ctx.settings = (variant, scale, clip, residual)
    ctx.n_inputs = len(inputs)


def _autograd_through(bwd_op):
    """The autograd formula of a forward op whose gradients come from ``bwd_op`` (the forward's first 13
    arguments, then its cotangents and, if it has saved outputs, those as one list)."""

    def backward(ctx, do, dS_T, dR_T, *_):
        q, k, v, g, beta, gamma, S0, R0, cu_seqlens, *saved = ctx.saved_tensors
        variant, scale, clip, residual = ctx.settings
        if do is None:  # only the final states were used (not materialised: _setup_context)
            do = torch.zeros_like(v)
        dq, dk, dv, dg, dbeta, dgamma, dS0, dR0 = bwd_op(
            variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual, do, dS_T, dR_T,
            *((list(saved),) if saved else ()))
        dS0 = None if S0 is None else dS0.to(S0.dtype)
        dR0 = None if R0 is None else dR0.to(R0.dtype)
        return (None, dq, dk, dv, dg, dbeta, dgamma, dS0, dR0) + (None,) * (ctx.n_inputs - 9)

    return backward


chunk_fwd.register_autograd(_autograd_through(chunk_bwd), setup_context=_setup_context)


# ---- decode ----

@torch.library.custom_op(f"{NAMESPACE}::fused_recurrent_fwd", mutates_args=())
def fused_recurrent_fwd(variant: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, gamma: Tensor,
                        S0: Optional[Tensor], R0: Optional[Tensor], cu_seqlens: Optional[Tensor],
                        scale: float, clip: Optional[float], residual: str) -> tuple[Tensor, Tensor, Tensor]:
    fn = triton_function(variant, "fused_recurrent", f"fused_recurrent_{variant}_fwd")
    o, S_T, R_T = fn(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens)
    return tuple(_unaliased((o, S_T, R_T), (q, k, v, g, beta, gamma, S0, R0)))


@fused_recurrent_fwd.register_fake
def _fused_recurrent_fwd_fake(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual):
    return (_dense_like(v), *_empty_states(q, v, cu_seqlens))


# ---- torch backend as one op (used while compiling) ----

@torch.library.custom_op(f"{NAMESPACE}::torch_chunk_fwd", mutates_args=())
def torch_chunk_fwd(variant: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, gamma: Tensor,
                    S0: Optional[Tensor], R0: Optional[Tensor], cu_seqlens: Optional[Tensor],
                    scale: float, clip: Optional[float], residual: str) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        o, (S_T, R_T) = _TORCH_CHUNK[variant](q, k, v, g, beta, gamma, scale, clip, residual, (S0, R0),
                                              True, cu_seqlens)
    return tuple(_unaliased((o, S_T, R_T), (q, k, v, g, beta, gamma, S0, R0)))


@torch_chunk_fwd.register_fake
def _torch_chunk_fwd_fake(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual):
    shape = (_num_sequences(q, cu_seqlens), q.shape[2], q.shape[3], v.shape[3])
    state_dtype = torch.promote_types(v.dtype, torch.float32)
    return _dense_like(v), q.new_empty(shape, dtype=state_dtype), q.new_empty(shape, dtype=state_dtype)


@torch.library.custom_op(f"{NAMESPACE}::torch_chunk_bwd", mutates_args=())
def torch_chunk_bwd(variant: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, gamma: Tensor,
                    S0: Optional[Tensor], R0: Optional[Tensor], cu_seqlens: Optional[Tensor],
                    scale: float, clip: Optional[float], residual: str,
                    do: Tensor, dS_T: Optional[Tensor], dR_T: Optional[Tensor]) -> list[Tensor]:
    # An op's body runs below the autograd dispatch key, where tensors record no graph; torch.func.vjp
    # has its own transform and works there.
    has_state = [s is not None for s in (S0, R0)]
    primals = [q, k, v, g, beta, gamma] + [s for s in (S0, R0) if s is not None]

    def forward(*xs):
        states = iter(xs[6:])
        init = tuple(next(states) if present else None for present in has_state)
        o, (S_T, R_T) = _TORCH_CHUNK[variant](*xs[:6], scale, clip, residual, init, True, cu_seqlens)
        return o, S_T, R_T

    outputs, vjp = torch.func.vjp(forward, *primals)
    cotangents = tuple(torch.zeros_like(y) if d is None else d.to(y.dtype) for y, d in zip(outputs, (do, dS_T, dR_T)))
    grads = list(vjp(cotangents))
    state_grads = iter(grads[6:])
    grads = grads[:6] + [next(state_grads) if present else _placeholder(q) for present in has_state]
    return _unaliased(grads, (q, k, v, g, beta, gamma, S0, R0, cu_seqlens, do, dS_T, dR_T))


@torch_chunk_bwd.register_fake
def _torch_chunk_bwd_fake(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual,
                          do, dS_T, dR_T):
    return [_dense_like(x) for x in (q, k, v, g, beta, gamma)] + [
        _placeholder(q) if s is None else _dense_like(s) for s in (S0, R0)]


torch_chunk_fwd.register_autograd(_autograd_through(torch_chunk_bwd), setup_context=_setup_context)

ops = getattr(torch.ops, NAMESPACE)
