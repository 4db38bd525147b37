"""Residual Delta Net, training/prefill path: Triton chunk kernels, forward and backward.

The two entry points the API layer wraps in an autograd function (states fp32 [N, H, K, V]; S0/R0 None
mean zeros, and then dS0/dR0 come back None):

    chunk_rdn_fwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens) -> (o, S_T, R_T)
    chunk_rdn_bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T)
        -> (dq, dk, dv, dg, dbeta, dgamma, dS0, dR0)

Semantics are exactly ``naive.py``. Kernels: wy.py (per-chunk inverses of the UT transform, chunk-parallel),
chunk_fwd.py (a sequential walk per (sequence, head, V-block) holding S and R), chunk_bwd.py (the reverse
walk). The backward reruns the forward walk to store the chunk-start states instead of keeping them
alive between forward and backward (the API saves only the inputs).
"""
from __future__ import annotations

import torch
import triton

from ..rla.fused_recurrent import _RESIDUAL_CLIP, _RESIDUAL_IDENTITY, _RESIDUAL_TANH, _check_inputs
from ._triton_helpers import chunk_tables
from .chunk_bwd import _rdn_bwd_kernel
from .chunk_fwd import _rdn_fwd_kernel
from .wy import _rdn_wy_kernel

CHUNK_SIZE = 64
# The backward kernel keeps about three times the forward's tiles alive: at 64-token chunks and K = 128 it
# asks for 272 KiB of shared memory on sm_90 (H100 has 227) and ptxas takes ~13 min; at 32 it needs
# 148 KiB and compiles in ~1.5 min (Triton 3.9, measured ahead of time on the CPU machine). The backward
# reruns the forward itself, so it may chunk differently from the forward call: the math is exact.
BWD_CHUNK_SIZE = 32
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _Layout:
    """Shapes, launch geometry and varlen bookkeeping shared by the kernels of one call."""

    def __init__(self, q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size):
        self.N = _check_inputs(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, False)
        if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
            raise ValueError(f"q, k, v must share one dtype among float32, bfloat16, float16; got "
                             f"{q.dtype}, {k.dtype}, {v.dtype}")
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        if self.K > 256 or self.V > 256:
            raise ValueError(f"head dims K and V must be at most 256 (a program holds all of K); got K={self.K}, "
                             f"V={self.V}")
        if chunk_size not in (16, 32, 64):
            raise ValueError(f"chunk_size must be 16, 32 or 64; got {chunk_size}")
        self.BT = chunk_size
        self.BK = max(16, triton.next_power_of_2(self.K))
        self.BV = max(16, min(32, triton.next_power_of_2(self.V)))
        self.NV = triton.cdiv(self.V, self.BV)
        self.residual_code = (_RESIDUAL_IDENTITY if clip is None
                              else _RESIDUAL_CLIP if residual == "clip" else _RESIDUAL_TANH)
        self.clip = 1.0 if clip is None else float(clip)
        # Every dot runs on fp32 operands: exact (ieee) for fp32 inputs; tf32 for half inputs, whose own
        # rounding (~4e-3) dominates tf32's.
        self.dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
        self.cu_seqlens = cu_seqlens
        self.varlen = cu_seqlens is not None
        if self.varlen:
            self.chunk_indices, self.chunk_offsets = chunk_tables(cu_seqlens, self.BT)
            self.n_chunks = self.chunk_indices.shape[0]
            self.wy_grid = (self.n_chunks, self.H)
        else:
            self.chunk_indices = self.chunk_offsets = None
            nt = triton.cdiv(self.T, self.BT)
            self.n_chunks = self.B * nt
            self.wy_grid = (nt, self.B * self.H)

    def state(self, q):
        return q.new_empty(self.N, self.H, self.K, self.V, dtype=torch.float32)


def _contiguous(*xs):
    return [None if x is None else x.contiguous() for x in xs]


def _wy(L: _Layout, k, g, beta, gamma):
    t_beta = k.new_empty(L.B, L.T, L.H, L.BT, dtype=torch.float32)
    t_gamma = torch.empty_like(t_beta)
    if L.n_chunks:
        _rdn_wy_kernel[L.wy_grid](
            k, g, beta, gamma, t_beta, t_gamma, L.cu_seqlens, L.chunk_indices, L.T,
            H=L.H, K=L.K, BT=L.BT, BK=L.BK, DOT_PREC=L.dot_prec, IS_VARLEN=L.varlen)
    return t_beta, t_gamma


def _walk(L: _Layout, q, k, v, g, beta, gamma, t_beta, t_gamma, S0, R0, scale, store_states):
    """The forward walk: o, final states and, when asked, every chunk-start state."""
    o = torch.empty_like(v)
    S_T, R_T = L.state(q), L.state(q)
    h_s = h_r = None
    if store_states:
        h_s = q.new_empty(L.n_chunks, L.H, L.K, L.V, dtype=torch.float32)
        h_r = torch.empty_like(h_s)
    _rdn_fwd_kernel[(L.NV, L.N * L.H)](
        q, k, v, g, beta, gamma, t_beta, t_gamma, S0, R0,
        o, S_T, R_T, h_s, h_r,
        L.cu_seqlens, L.chunk_offsets, scale, L.clip, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec,
        HAS_S0=S0 is not None, HAS_R0=R0 is not None, STORE_STATES=store_states, IS_VARLEN=L.varlen,
    )
    return o, S_T, R_T, h_s, h_r


def chunk_rdn_fwd(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", S0=None, R0=None,
                  cu_seqlens=None, *, chunk_size: int = CHUNK_SIZE):
    """RDN forward over whole sequences: ``(o, S_T, R_T)``, o in v's dtype, states fp32 [N, H, K, V]."""
    L = _Layout(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size)
    scale = L.K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta, gamma, S0, R0 = _contiguous(q, k, v, g, beta, gamma, S0, R0)
    t_beta, t_gamma = _wy(L, k, g, beta, gamma)
    o, S_T, R_T, _, _ = _walk(L, q, k, v, g, beta, gamma, t_beta, t_gamma, S0, R0, scale, False)
    return o, S_T, R_T


def chunk_rdn_bwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T,
                  *, chunk_size: int = CHUNK_SIZE):
    """Gradients ``(dq, dk, dv, dg, dbeta, dgamma, dS0, dR0)``, each in its input's dtype (states fp32).

    ``dS_T``/``dR_T`` None mean the final states were not used; ``dS0``/``dR0`` are None when
    ``S0``/``R0`` are None.
    """
    L = _Layout(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, chunk_size)
    if chunk_size > BWD_CHUNK_SIZE:
        L = _Layout(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, BWD_CHUNK_SIZE)
    if do.shape != v.shape:
        raise ValueError(f"do must have v's shape {tuple(v.shape)}; got {tuple(do.shape)}")
    for name, d in (("dS_T", dS_T), ("dR_T", dR_T)):
        if d is not None and tuple(d.shape) != (L.N, L.H, L.K, L.V):
            raise ValueError(f"{name} must be [N, H, K, V] = {[L.N, L.H, L.K, L.V]}; got {tuple(d.shape)}")
    scale = L.K ** -0.5 if scale is None else float(scale)
    q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T = _contiguous(q, k, v, g, beta, gamma, S0, R0, do, dS_T, dR_T)
    t_beta, t_gamma = _wy(L, k, g, beta, gamma)
    _, _, _, h_s, h_r = _walk(L, q, k, v, g, beta, gamma, t_beta, t_gamma, S0, R0, scale, True)

    # Shared inputs get one partial gradient per V-block (summed below); dv and the states are exact.
    dq_part = q.new_empty(L.NV, *q.shape, dtype=torch.float32)
    dk_part = torch.empty_like(dq_part)
    dg_part = q.new_empty(L.NV, *g.shape, dtype=torch.float32)
    dbeta_part = torch.empty_like(dg_part)
    dgamma_part = torch.empty_like(dg_part)
    dv = torch.empty_like(v)
    dS0, dR0 = L.state(q), L.state(q)
    _rdn_bwd_kernel[(L.NV, L.N * L.H)](
        q, k, v, g, beta, gamma, t_beta, t_gamma, h_s, h_r, do, dS_T, dR_T,
        dq_part, dk_part, dg_part, dbeta_part, dgamma_part, dv, dS0, dR0,
        L.cu_seqlens, L.chunk_offsets, scale, L.clip, L.T, L.B * L.T * L.H,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec,
        HAS_DST=dS_T is not None, HAS_DRT=dR_T is not None, IS_VARLEN=L.varlen,
    )
    dq = dq_part.sum(0).to(q.dtype)
    dk = dk_part.sum(0).to(k.dtype)
    dg = dg_part.sum(0).to(g.dtype)
    dbeta = dbeta_part.sum(0).to(beta.dtype)
    dgamma = dgamma_part.sum(0).to(gamma.dtype)
    return (dq, dk, dv, dg, dbeta, dgamma,
            None if S0 is None else dS0, None if R0 is None else dR0)
