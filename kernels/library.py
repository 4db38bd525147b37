"""The Triton path as torch.library custom ops, so torch.compile sees one opaque op per call.

``rla_kernels::chunk_fwd`` (with a fake for tracing and an autograd formula calling
``rla_kernels::chunk_bwd``) and ``rla_kernels::fused_recurrent_fwd`` (decode, no backward). ``variant``
('rla' or 'rdn') picks the kernel module; the kernels themselves are imported on first use, so this
file imports on machines without Triton and without the kernels written yet.

Custom ops cannot return None: missing initial states come in as None, and their gradients go out as
empty tensors that the autograd formula turns back into None.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backend import triton_function


def _num_sequences(q: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _empty_states(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    shape = (_num_sequences(q, cu_seqlens), q.shape[2], q.shape[3], v.shape[3])
    return q.new_empty(shape, dtype=torch.float32), q.new_empty(shape, dtype=torch.float32)


# ---- forward (training and prefill) ----

@torch.library.custom_op("rla_kernels::chunk_fwd", mutates_args=())
def chunk_fwd(variant: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, gamma: Tensor,
              S0: Optional[Tensor], R0: Optional[Tensor], cu_seqlens: Optional[Tensor],
              scale: float, clip: Optional[float], residual: str) -> tuple[Tensor, Tensor, Tensor]:
    fn = triton_function(variant, "chunk", f"chunk_{variant}_fwd")
    o, S_T, R_T = fn(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens)
    return o, S_T, R_T


@chunk_fwd.register_fake
def _chunk_fwd_fake(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual):
    return (torch.empty_like(v), *_empty_states(q, v, cu_seqlens))


# ---- backward ----

@torch.library.custom_op("rla_kernels::chunk_bwd", mutates_args=())
def chunk_bwd(variant: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, gamma: Tensor,
              S0: Optional[Tensor], R0: Optional[Tensor], cu_seqlens: Optional[Tensor],
              scale: float, clip: Optional[float], residual: str,
              do: Tensor, dS_T: Optional[Tensor], dR_T: Optional[Tensor]) -> list[Tensor]:
    fn = triton_function(variant, "chunk", f"chunk_{variant}_bwd")
    grads = fn(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do.contiguous(), dS_T, dR_T)
    dq, dk, dv, dg, dbeta, dgamma, dS0, dR0 = grads
    empty = q.new_empty(0, dtype=torch.float32)
    return [dq, dk, dv, dg, dbeta, dgamma,
            empty if S0 is None or dS0 is None else dS0,
            empty if R0 is None or dR0 is None else dR0]


@chunk_bwd.register_fake
def _chunk_bwd_fake(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual, do, dS_T, dR_T):
    empty = q.new_empty(0, dtype=torch.float32)
    return [torch.empty_like(x) for x in (q, k, v, g, beta, gamma)] + [
        empty if S0 is None else torch.empty_like(S0, dtype=torch.float32),
        empty if R0 is None else torch.empty_like(R0, dtype=torch.float32),
    ]


def _setup_context(ctx, inputs, output):
    variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual = inputs
    ctx.save_for_backward(q, k, v, g, beta, gamma, S0, R0, cu_seqlens)
    ctx.settings = (variant, scale, clip, residual)


def _backward(ctx, do, dS_T, dR_T):
    q, k, v, g, beta, gamma, S0, R0, cu_seqlens = ctx.saved_tensors
    variant, scale, clip, residual = ctx.settings
    dq, dk, dv, dg, dbeta, dgamma, dS0, dR0 = chunk_bwd(
        variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual, do, dS_T, dR_T)
    dS0 = None if S0 is None else dS0.to(S0.dtype)
    dR0 = None if R0 is None else dR0.to(R0.dtype)
    return None, dq, dk, dv, dg, dbeta, dgamma, dS0, dR0, None, None, None, None


chunk_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---- decode ----

@torch.library.custom_op("rla_kernels::fused_recurrent_fwd", mutates_args=())
def fused_recurrent_fwd(variant: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, gamma: Tensor,
                        S0: Optional[Tensor], R0: Optional[Tensor], cu_seqlens: Optional[Tensor],
                        scale: float, clip: Optional[float], residual: str) -> tuple[Tensor, Tensor, Tensor]:
    fn = triton_function(variant, "fused_recurrent", f"fused_recurrent_{variant}_fwd")
    o, S_T, R_T = fn(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens)
    return o, S_T, R_T


@fused_recurrent_fwd.register_fake
def _fused_recurrent_fwd_fake(variant, q, k, v, g, beta, gamma, S0, R0, cu_seqlens, scale, clip, residual):
    return (torch.empty_like(v), *_empty_states(q, v, cu_seqlens))
