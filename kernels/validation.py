"""Argument checks for the public ops, run before any kernel launch.

``check_shapes`` looks only at metadata (shapes, dtypes, devices, plain Python arguments) and never
synchronises with the device; the one exception is reading ``cu_seqlens`` when it is a CPU tensor, which
costs nothing. ``check_values`` (``validate=True``) also reads the data: gate ranges, finiteness,
monotone ``cu_seqlens``; that waits for the device, so it is opt-in. Every failure is a ValueError that
names the argument, what it got and what is accepted.
"""
from __future__ import annotations

import math
import numbers

import torch

from .residual import RESIDUAL_FUNCTIONS

# What the Triton kernels take: a chunk program holds all of K in one block (any V, in blocks, but for RDN's chunk
# kernels: rdn/chunk.py refuses V > 256 there, its decode step takes any V); float64 is for the oracles and the
# torch backend only.
TRITON_MAX_K = 256
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)} on {x.device}"
    if isinstance(x, (tuple, list)):  # say what it holds, not every element of its tensors
        return f"a {type(x).__name__} of {len(x)}: ({', '.join(_describe(e) for e in x)})"
    return f"{type(x).__name__} {x!r}"


def _finite_number(x) -> bool:
    """An int or float (numpy's too), not a bool, that is neither NaN nor infinite."""
    # a comparison, not math.isfinite: torch.compile (fullgraph) traces this, and breaks the graph on isfinite
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and -math.inf < x < math.inf


def check_shapes(q, k, v, g, beta, gamma, scale, clip, residual, initial_state, cu_seqlens, backend):
    """Metadata-only checks; returns N, the number of sequences (B, or len(cu_seqlens) - 1)."""
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("gamma", gamma)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {_describe(x)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor; got {_describe(x)}")
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D [B, T, H, K]; got {_describe(q)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, H, K] = {list(q.shape)}; got {_describe(k)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V]; got {_describe(v)}")
    V = v.shape[-1]
    for name, gate in (("g", g), ("beta", beta), ("gamma", gamma)):
        if gate.shape != q.shape[:3]:
            raise ValueError(f"{name} must be [B, T, H] = [{B}, {T}, {H}]; got {_describe(gate)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    for name, x in (("k", k), ("v", v), ("g", g), ("beta", beta), ("gamma", gamma)):
        if x.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}; got {_describe(x)}")
    if K == 0 or V == 0 or H == 0:
        raise ValueError(f"head count and head sizes must be positive; got q {list(q.shape)}, v {list(v.shape)}")
    if backend == "triton" and K > TRITON_MAX_K:
        raise ValueError(f"q, k: the triton backend supports head size K <= {TRITON_MAX_K}; got K={K} "
                         "(use backend='torch' for larger heads)")
    if backend == "triton" and q.dtype not in TRITON_DTYPES:
        raise ValueError(f"q, k, v: the triton backend takes dtypes {TRITON_DTYPES}; got {q.dtype} "
                         "(use backend='torch' or 'naive' for float64)")
    if scale is not None and not _finite_number(scale):
        raise ValueError(f"scale must be a finite number or None (meaning K ** -0.5); got {_describe(scale)}")
    if clip is not None and not (_finite_number(clip) and clip > 0):
        raise ValueError(f"clip must be a finite positive number or None (no clipping); got {_describe(clip)}")
    if residual not in RESIDUAL_FUNCTIONS:
        raise ValueError(f"residual must be one of {RESIDUAL_FUNCTIONS}; got {residual!r}")
    N = B if cu_seqlens is None else _check_cu_seqlens_shape(cu_seqlens, B, T, q.device)
    _check_initial_state(initial_state, (N, H, K, V), q.device)
    return N


def _check_cu_seqlens_shape(cu_seqlens, B, T, device):
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens must be a 1-D int32/int64 tensor [N + 1]; got {_describe(cu_seqlens)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be a 1-D int32/int64 tensor [N + 1] with N >= 1; got {_describe(cu_seqlens)}")
    if B != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1 (sequences packed along T); got B={B}")
    if cu_seqlens.device != device and cu_seqlens.device.type != "cpu":
        raise ValueError(f"cu_seqlens must be on the inputs' device {device} (or the CPU); got {_describe(cu_seqlens)}")
    # Values of a CPU tensor are free to read; a device tensor waits for validate=True. Tracing under
    # torch.compile cannot branch on data, so the check is left to eager calls.
    if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_cu_seqlens_values(cu_seqlens, T)
    return cu_seqlens.numel() - 1


def _check_cu_seqlens_values(cu_seqlens, T):
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
        shown = cu if len(cu) <= 10 else cu[:5] + ["..."] + cu[-3:]
        raise ValueError(f"cu_seqlens must start at 0, never decrease and end at T={T}; got {shown}")


def _check_initial_state(initial_state, shape, device):
    if initial_state is None:
        return
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise ValueError(f"initial_state must be None or a pair (S, R) of [N, H, K, V] tensors; got "
                         f"{_describe(initial_state)}")
    for name, state in zip(("initial_state[0] (S)", "initial_state[1] (R)"), initial_state):
        if state is None:
            continue
        if not isinstance(state, torch.Tensor) or not state.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor or None; got {_describe(state)}")
        if tuple(state.shape) != shape:
            raise ValueError(f"{name} must be [N, H, K, V] = {list(shape)}; got {_describe(state)}")
        if state.device != device:
            raise ValueError(f"{name} must be on q's device {device}; got {_describe(state)}")


def check_values(q, k, v, g, beta, gamma, initial_state, cu_seqlens):
    """Data checks for ``validate=True``: these read the tensors and synchronise with the device."""
    tensors = [("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("gamma", gamma)]
    if initial_state is not None:
        tensors += [(f"initial_state[{i}]", s) for i, s in enumerate(initial_state) if s is not None]
    for name, x in tensors:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must be finite everywhere; it holds {int((~torch.isfinite(x)).sum())} "
                             "NaN/inf entries")
    if bool((g > 0).any()):
        raise ValueError(f"g is the log decay and must be <= 0; got a maximum of {g.max().item():.4g}")
    for name, gate in (("beta", beta), ("gamma", gamma)):
        if bool(((gate < 0) | (gate > 1)).any()):
            raise ValueError(f"{name} must lie in [0, 1]; got values in [{gate.min().item():.4g}, "
                             f"{gate.max().item():.4g}]")
    if cu_seqlens is not None:
        _check_cu_seqlens_values(cu_seqlens.cpu(), q.shape[1])
