"""The public ops: ``rla(...)`` and ``rdn(...)``, one entry point over every backend.

Inputs follow fla: q, k [B, T, H, K]; v [B, T, H, V]; g (natural-log decay, <= 0), beta, gamma [B, T, H];
``scale`` (default K ** -0.5) multiplies the output only; varlen is B = 1 with ``cu_seqlens`` [N + 1].
States are the pair (S, R), each [N, H, K, V] float32 (in ``initial_state`` either may be None: zeros).
Returns ``(o, (S, R) or None)``, o in v's dtype.
"""
from __future__ import annotations

import torch

from .library import KEEP_NOTHING, KEEP_TOKENS, KEEP_WALK, ops
from .backend import choose_backend, is_decode, needs_grad
from .rdn.naive import naive_recurrent_rdn
from .rdn.torch_chunk import chunk_rdn_torch
from .rla.naive import naive_recurrent_rla
from .rla.torch_chunk import chunk_rla_torch
from .validation import check_shapes, check_values

_TORCH = {"rla": chunk_rla_torch, "rdn": chunk_rdn_torch}
_NAIVE = {"rla": naive_recurrent_rla, "rdn": naive_recurrent_rdn}


def rla(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", initial_state=None,
        output_final_state=False, cu_seqlens=None, use_qk_l2norm_in_kernel=False, backend=None, validate=False,
        recompute_states=True):
    """Residual Linear Attention (paper Section 3.4; semantics in ``rla/naive.py``).

    ``clip``: threshold c of the residual function, or None for none; ``residual``: 'clip' or 'tanh'.
    ``backend``: 'torch' | 'triton' | 'naive' | None (see ``backend.py``); ``validate=True`` also checks
    values (gate ranges, finiteness), which synchronises with the device.

    ``recompute_states`` (training with the Triton backend; memory against time): True (default), the forward keeps
    its residuals r (one [B, T, H, V] tensor in q's dtype, as large as v) and each chunk's decayed q.k products
    ([B, T, H, 64], half of r at V=128: chunk.py QK_KEPT) and the backward reruns its two state walks over them;
    False, the forward also keeps the chunk-start states S and R (in q's dtype) alive until the backward,
    which then skips the walks too. The forward runs the same kernels either way (same numbers, same time); only its
    buffers live longer.
    Measured at B=16 T=2048 H=16 K=V=128 bf16 on an H200 (2026-12-02 04:51, BENCHMARKS.md): fwd+bwd 4.26 -> 3.95 ms,
    forward unchanged. It keeps ``2 * B * ceil(T / 64) * H * K *
    V + B * T * H * (V + 64)`` elements of q's dtype per call until the backward runs (0.7 GB a layer at that shape;
    packed sequences: ``ceil(T / 64) + N - 1`` chunks instead of ``B * ceil(T / 64)``). Ignored where nothing is
    kept: without autograd, by the torch and naive backends, and by decode.
    """
    return _run("rla", q, k, v, g, beta, gamma, scale, clip, residual, initial_state, output_final_state,
                cu_seqlens, use_qk_l2norm_in_kernel, backend, validate, not recompute_states)


def rdn(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", initial_state=None,
        output_final_state=False, cu_seqlens=None, use_qk_l2norm_in_kernel=False, backend=None, validate=False,
        recompute_states=True):
    """Residual Delta Net (paper Section 3.4; semantics in ``rdn/naive.py``). Arguments as ``rla``, and:

    ``recompute_states`` (training with the Triton backend; memory against time): True (default), the forward keeps
    its walk's per-token tensors U, W and X (X rounded so that its side of the clip, the gradient's mask, stays),
    ``3 * B * T * H * V`` elements of q's dtype, and the backward rebuilds the chunk-start states from U and W with
    two linear walks instead of rerunning the walk (which is then never cut into segments, as below); False, the
    forward also keeps the chunk-start states S and R (in q's dtype) alive until the backward, which then skips those
    walks too.
    False, measured at H=16 K=V=128 bf16 on an H200: fwd+bwd 6.20 -> 5.69 ms against the default at B=16 T=2048,
    11.12 -> 10.06 at B=1 T=32768 (2026-12-03 08:26-09:37; BENCHMARKS.md); against a backward rerunning the
    walk (2026-12-01, before the per-token tensors were kept by default): backward 7.47 -> 5.64 ms for
    forward 2.34 -> 3.01 (profile, about 10:45; its walk runs at the rerun's precision and also stores X), fwd+bwd
    9.64 -> 9.03 (bench, 11:10). It keeps ``2 * B * ceil(T / 32) * H * K * V + 3 * B * T * H * V`` elements of q's
    dtype per call until the backward runs (1.48 GB a layer at that shape; packed
    sequences: ``ceil(T / 32) + N - 1`` chunks instead of ``B * ceil(T / 32)``). Its forward walk is never cut into
    segments (the default forward's is, at batch 1 and long T, without autograd). Ignored where nothing is kept:
    without autograd, by the torch and naive backends, and by decode. ``rla`` takes the same argument (it keeps its
    chunk states and residuals).

    Precision without autograd (Triton, bf16/fp16): no backward will read the clip's mask, so the forward's walk
    rounds its chunk matrices' operands to q's dtype, as fla's walks do (``rdn.chunk.INFER_HALF``; 10% faster walk).
    A no-grad forward's output can then differ from a grad-enabled forward's on the same inputs by a few steps of
    q's dtype; both stay within the float64 oracle's bounds (bf16 o 2.8e-3 on an H200; BENCHMARKS.md, entry
    "2026-12-04 18:12-18:53").
    """
    return _run("rdn", q, k, v, g, beta, gamma, scale, clip, residual, initial_state, output_final_state,
                cu_seqlens, use_qk_l2norm_in_kernel, backend, validate, not recompute_states)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| over the head dimension, in float32 at least, back in x's dtype (as the naive oracles do)."""
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    return (y / y.norm(dim=-1, keepdim=True).clamp_min(1e-6)).to(x.dtype)


def _decoding(q, N, initial_state, tensors) -> bool:
    """A few tokens per sequence from a state, without autograd (backend.is_decode)."""
    return is_decode(q.shape[0] * q.shape[1], N, initial_state is not None, needs_grad(tensors))


def _run(variant, q, k, v, g, beta, gamma, scale, clip, residual, initial_state, output_final_state,
         cu_seqlens, use_qk_l2norm, backend, validate, keep_walk):
    if not isinstance(q, torch.Tensor):  # before the backend choice, which reads q's device
        raise ValueError(f"q must be a torch.Tensor; got {type(q).__name__}")
    name = choose_backend(backend, q.device)
    N = check_shapes(q, k, v, g, beta, gamma, scale, clip, residual, initial_state, cu_seqlens, name)
    if validate:
        if torch.compiler.is_compiling():
            raise ValueError("validate=True reads tensor values (a device sync) and cannot run inside "
                             "torch.compile; validate the inputs in an eager call instead")
        check_values(q, k, v, g, beta, gamma, initial_state, cu_seqlens)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scale = float(scale)
    if clip is not None:
        clip = float(clip)
    if q.shape[0] * q.shape[1] == 0:  # no tokens: no work, and the kernels' grids would be empty (or divide by 0)
        name = "torch"
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    S0, R0 = (None, None) if initial_state is None else initial_state

    if name == "torch" and torch.compiler.is_compiling():
        o, S_T, R_T = ops.torch_chunk_fwd(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip,
                                          residual)
        return o, ((S_T, R_T) if output_final_state else None)
    if name == "torch":
        return _TORCH[variant](q, k, v, g, beta, gamma, scale, clip, residual, initial_state,
                               output_final_state, cu_seqlens)
    if name == "naive":
        if initial_state is not None:  # the oracle wants both states; None means zeros
            shape = (N, q.shape[2], q.shape[3], v.shape[3])
            initial_state = tuple(q.new_zeros(shape) if s is None else s for s in (S0, R0))
        return _NAIVE[variant](q, k, v, g, beta, gamma, scale, clip, residual, initial_state,
                               output_final_state, cu_seqlens)

    if cu_seqlens is not None:  # the kernels index it as a flat array: a strided view (cu[::2]) read past its elements
        cu_seqlens = cu_seqlens.to(q.device, non_blocking=True).contiguous()
    tensors = (q, k, v, g, beta, gamma, S0, R0)
    args = (variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual)
    if _decoding(q, N, initial_state, tensors):
        o, S_T, R_T = ops.fused_recurrent_fwd(*args)
    else:
        # [:3]: chunk_fwd's further outputs are for its own backward (library.py); keeping any of the walk pays
        # only when a backward will take it
        keep = (KEEP_WALK if keep_walk else KEEP_TOKENS) if needs_grad(tensors) else KEEP_NOTHING
        o, S_T, R_T = ops.chunk_fwd(*args, keep)[:3]
    return o, ((S_T, R_T) if output_final_state else None)
