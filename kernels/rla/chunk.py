"""Residual Linear Attention, training/prefill path: Triton chunk kernels, forward and backward.

The two entry points the API layer wraps in an autograd function (states fp32 [N, H, K, V]; S0/R0 None
mean zeros and then dS0/dR0 come back None):

    chunk_rla_fwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens) -> (o, S_T, R_T)
    chunk_rla_bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T)
        -> (dq, dk, dv, dg, dbeta, dgamma, dS0, dR0)

Semantics are exactly ``naive.py``. The forward is chunk_fwd.py (a sequential walk that stores the chunk
states of S and R once and makes the residuals, then a chunk-parallel output pass reading those states).
The backward reruns that walk instead of keeping its states alive between forward and backward, then
runs chunk_bwd.py (a reverse walk for the state gradients and dv, then a chunk-parallel pass for dq, dk, dg).
"""
from __future__ import annotations

import torch
import triton

from ..triton_utils import INTERPRET, dot_precision, prepare_chunk_indices, prepare_chunk_offsets
from .chunk_bwd import _rla_bwd_dqkg_kernel, _rla_bwd_states_kernel
from .chunk_fwd import _rla_fwd_output_kernel, _rla_fwd_states_kernel
from .fused_recurrent import _RESIDUAL_CLIP, _RESIDUAL_IDENTITY, _RESIDUAL_TANH, _check_inputs

CHUNK_SIZE = 64
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _Layout:
    """Shapes, launch geometry and varlen bookkeeping shared by every kernel of one call."""

    def __init__(self, q, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size):
        N = _check_inputs(q, q, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, False)
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        self.N = N
        if q.dtype not in _DTYPES:
            raise ValueError(f"q, k, v must be float32, bfloat16 or float16; got {q.dtype}")
        if self.K > 256:
            raise ValueError(f"head dim K must be at most 256 (a chunk kernel holds all of K); got {self.K}")
        if chunk_size not in (16, 32, 64, 128):
            raise ValueError(f"chunk_size must be 16, 32, 64 or 128; got {chunk_size}")
        self.BT = chunk_size
        self.BK = max(16, triton.next_power_of_2(self.K))
        # Sequential kernels: narrow V-blocks give more programs to walk in parallel and fewer registers.
        self.BV_seq = max(16, min(32, triton.next_power_of_2(self.V)))
        self.BV_par = max(16, min(64, triton.next_power_of_2(self.V)))
        # The dq/dk/dg pass splits K (see chunk_bwd.py) and pipelines its V loop; with fp32 tiles a
        # 64-wide V-block would need ~224 KiB of shared memory at K=128 (H100: 227 KiB), so 32.
        self.BK_par = min(64, self.BK)
        self.BV_dqkg = min(32 if q.dtype == torch.float32 else 64, self.BV_par)
        self.residual_code = (_RESIDUAL_IDENTITY if clip is None
                              else _RESIDUAL_CLIP if residual == "clip" else _RESIDUAL_TANH)
        self.clip = 1.0 if clip is None else float(clip)
        self.dot_prec = dot_precision(q.dtype)
        # The interpreter (3.9) gets tl.dot on bf16/fp16 operands wrong: it computes every dot in fp32.
        self.dots_fp32 = INTERPRET or q.dtype == torch.float32
        self.cu_seqlens = cu_seqlens
        self.varlen = cu_seqlens is not None
        if self.varlen:
            self.chunk_indices = prepare_chunk_indices(cu_seqlens, self.BT)
            self.chunk_offsets = prepare_chunk_offsets(cu_seqlens, self.BT)
            self.n_chunks = self.chunk_indices.shape[0]
            self.parallel_grid = lambda BV: (triton.cdiv(self.V, BV), self.n_chunks, self.H)
        else:
            self.chunk_indices = self.chunk_offsets = None
            self.n_chunks = self.B * triton.cdiv(self.T, self.BT)
            nt = triton.cdiv(self.T, self.BT)
            self.parallel_grid = lambda BV: (triton.cdiv(self.V, BV), nt, self.B * self.H)


def _contiguous(*xs):
    return [None if x is None else x.contiguous() for x in xs]


def _run_states(L: _Layout, k, v, g, beta, gamma, S0, R0):
    """The sequential forward walk: chunk-start states, residuals and final states (all fp32)."""
    h_s = k.new_empty(L.n_chunks, L.H, L.K, L.V, dtype=torch.float32)
    h_r = torch.empty_like(h_s)
    res = v.new_empty(v.shape, dtype=torch.float32)
    S_T = k.new_empty(L.N, L.H, L.K, L.V, dtype=torch.float32)
    R_T = torch.empty_like(S_T)
    grid = (triton.cdiv(L.V, L.BV_seq), L.N * L.H)
    _rla_fwd_states_kernel[grid](
        k, v, g, beta, gamma, S0, R0, h_s, h_r, res, S_T, R_T,
        L.cu_seqlens, L.chunk_offsets, L.clip, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_seq,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32,
        HAS_S0=S0 is not None, HAS_R0=R0 is not None, IS_VARLEN=L.varlen,
    )
    return h_s, h_r, res, S_T, R_T


def chunk_rla_fwd(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", S0=None, R0=None,
                  cu_seqlens=None, *, chunk_size: int = CHUNK_SIZE):
    """RLA forward over whole sequences: ``(o, S_T, R_T)``, o in v's dtype, states fp32 [N, H, K, V]."""
    if k.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share dtype and q, k shape; got q {q.dtype} {tuple(q.shape)}, "
                         f"k {k.dtype} {tuple(k.shape)}, v {v.dtype}")
    L = _Layout(q, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size)
    scale = L.K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta, gamma, S0, R0 = _contiguous(q, k, v, g, beta, gamma, S0, R0)
    h_s, h_r, res, S_T, R_T = _run_states(L, k, v, g, beta, gamma, S0, R0)
    o = torch.empty_like(v)
    _rla_fwd_output_kernel[L.parallel_grid(L.BV_par)](
        q, k, v, g, beta, gamma, h_s, h_r, res, o,
        L.cu_seqlens, L.chunk_indices, scale, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_par,
        DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, IS_VARLEN=L.varlen,
    )
    return o, S_T, R_T


def chunk_rla_bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T,
                  *, chunk_size: int = CHUNK_SIZE):
    """Gradients ``(dq, dk, dv, dg, dbeta, dgamma, dS0, dR0)``, each in its input's dtype.

    ``dS_T``/``dR_T`` None mean the final states were not used; ``dS0``/``dR0`` are None when ``S0``/``R0``
    are None.
    """
    if k.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share dtype and q, k shape; got q {q.dtype} {tuple(q.shape)}, "
                         f"k {k.dtype} {tuple(k.shape)}, v {v.dtype}")
    L = _Layout(q, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size)
    if do.shape != v.shape:
        raise ValueError(f"do must have v's shape {tuple(v.shape)}; got {tuple(do.shape)}")
    for name, d in (("dS_T", dS_T), ("dR_T", dR_T)):
        if d is not None and tuple(d.shape) != (L.N, L.H, L.K, L.V):
            raise ValueError(f"{name} must be [N, H, K, V] = {[L.N, L.H, L.K, L.V]}; got {tuple(d.shape)}")
    scale = L.K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T = _contiguous(
        q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T)
    h_s, h_r, res, _, _ = _run_states(L, k, v, g, beta, gamma, S0, R0)

    # Reverse walk: per-chunk gradients of the chunk-END states, dv, the key-query gradient du, and
    # per-V-block partial sums of dbeta and of gamma's residual term (reduced over V-blocks below).
    nv = triton.cdiv(L.V, L.BV_seq)
    dh_s = torch.empty_like(h_s)
    dh_r = torch.empty_like(h_r)
    du = torch.empty_like(res)
    dv = torch.empty_like(v)
    dbeta_part = q.new_empty(nv, *beta.shape, dtype=torch.float32)
    dgamma_part = torch.empty_like(dbeta_part)
    dS0 = q.new_empty(L.N, L.H, L.K, L.V, dtype=torch.float32)
    dR0 = torch.empty_like(dS0)
    _rla_bwd_states_kernel[(nv, L.N * L.H)](
        q, k, v, g, beta, gamma, res, do, dS_T, dR_T,
        dh_s, dh_r, du, dv, dbeta_part, dgamma_part, dS0, dR0,
        L.cu_seqlens, L.chunk_offsets, scale, L.clip, L.T, beta.numel(),
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV_seq,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32,
        HAS_DST=dS_T is not None, HAS_DRT=dR_T is not None, IS_VARLEN=L.varlen,
    )

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    nk = triton.cdiv(L.K, L.BK_par)
    dg_part = q.new_empty(nk, *g.shape, dtype=torch.float32)
    dgamma_out_part = torch.empty_like(dg_part)
    grid = (nk,) + L.parallel_grid(L.V)[1:]  # per K-block, chunk and head; each loops over V-blocks
    _rla_bwd_dqkg_kernel[grid](
        q, k, v, g, beta, gamma, h_s, h_r, res, do, du, dh_s, dh_r,
        dq, dk, dg_part, dgamma_out_part,
        L.cu_seqlens, L.chunk_indices, scale, L.T, g.numel(),
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK_par, BV=L.BV_dqkg,
        DOT_PREC=L.dot_prec, DOTS_FP32=L.dots_fp32, IS_VARLEN=L.varlen,
    )
    dg = dg_part.sum(0)
    dbeta = dbeta_part.sum(0)
    dgamma = dgamma_out_part.sum(0) + dgamma_part.sum(0)
    return (dq, dk, dv, dg.to(g.dtype), dbeta.to(beta.dtype), dgamma.to(gamma.dtype),
            None if S0 is None else dS0.to(S0.dtype), None if R0 is None else dR0.to(R0.dtype))
