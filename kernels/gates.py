"""The converted layers' gates from their projections in one Triton launch, for inference.

    g     = -exp(A_log) * softplus(a + dt_bias)     float32 (Mamba-2's decay, in log space)
    beta  = sigmoid(b),  gamma = sigmoid(c)         in the projections' dtype

and a padding mask, when given, zeroes all three for padded tokens (a = 1, nothing written). In PyTorch ops
this is 8 launches a layer (13 with a mask), here 1: eager decoding of a small converted model is bound by
launches (see feature_map.py). Forward only; ``gates_reference`` is the same math in PyTorch, for tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .triton_utils import cdiv, next_power_of_2


def gates_reference(a, b, c, A_log, dt_bias, keep=None):
    """a, b, c [B, T, H] (c may be None), A_log and dt_bias [H], keep [B, T] -> (g, beta, gamma)."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    g = -A_log.to(dtype).exp() * F.softplus(a.to(dtype) + dt_bias.to(dtype))
    beta = torch.sigmoid(b)
    gamma = torch.sigmoid(c) if c is not None else None
    if keep is not None:
        g = g * keep[..., None].to(dtype)
        beta = beta * keep[..., None].to(beta.dtype)
        gamma = gamma * keep[..., None].to(gamma.dtype) if gamma is not None else None
    return g, beta, gamma


@triton.jit
def _gates_kernel(a, b, c, A_log, dt_bias, keep, g, beta, gamma, rows, H: tl.constexpr,
                  BR: tl.constexpr, BH: tl.constexpr, HAS_C: tl.constexpr, MASK: tl.constexpr):
    """One program per BR tokens, all H heads of each: [BR, BH] tiles of [B*T, H] row-major tensors."""
    i_r = tl.cast(tl.program_id(0), tl.int64) * BR + tl.arange(0, BR)
    heads = tl.arange(0, BH)
    in_rows = i_r < rows
    mask = in_rows[:, None] & (heads < H)[None, :]
    off = i_r[:, None] * H + heads[None, :]
    A = tl.load(A_log + heads, mask=heads < H, other=0.0).to(tl.float32)
    dt = tl.load(dt_bias + heads, mask=heads < H, other=0.0).to(tl.float32)
    x = tl.load(a + off, mask=mask, other=0.0).to(tl.float32) + dt[None, :]
    # softplus without overflow: max(x, 0) + log(1 + e^-|x|). It equals x to fp32 past torch's threshold of 20,
    # and rounds to 0 below about -17 where torch gives e^x (< 4e-8): a decay that rounds to 1 either way.
    soft = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
    b_g = -tl.exp(A)[None, :] * soft
    b_beta = 1.0 / (1.0 + tl.exp(-tl.load(b + off, mask=mask, other=0.0).to(tl.float32)))
    if MASK:
        m = tl.load(keep + i_r, mask=in_rows, other=0.0).to(tl.float32)[:, None]
        b_g = b_g * m
        b_beta = b_beta * m
    tl.store(g + off, b_g, mask=mask)
    tl.store(beta + off, b_beta.to(beta.dtype.element_ty), mask=mask)
    if HAS_C:
        b_gamma = 1.0 / (1.0 + tl.exp(-tl.load(c + off, mask=mask, other=0.0).to(tl.float32)))
        if MASK:
            b_gamma = b_gamma * m
        tl.store(gamma + off, b_gamma.to(gamma.dtype.element_ty), mask=mask)


def gates(a, b, c, A_log, dt_bias, keep=None):
    """``gates_reference`` in one launch (no autograd; g in float32): a, b, c contiguous [B, T, H]."""
    tensors = (a, b, c, A_log, dt_bias, keep)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("gates is forward-only: call it without autograd (the layer falls back to PyTorch "
                           "ops when gradients are wanted)")
    B, T, H = a.shape
    if a.dtype == torch.float64:
        raise ValueError("gates computes in float32: float64 inputs take the PyTorch ops")
    for name, t in (("b", b), ("c", c)):
        if t is not None and (t.shape != a.shape or t.dtype != a.dtype):
            raise ValueError(f"{name} must match a: {tuple(a.shape)} {a.dtype}; got {tuple(t.shape)} {t.dtype}")
    if A_log.shape != (H,) or dt_bias.shape != (H,):
        raise ValueError(f"A_log and dt_bias must be [H] = [{H}]; got {tuple(A_log.shape)}, {tuple(dt_bias.shape)}")
    if keep is not None and keep.shape != (B, T):
        raise ValueError(f"keep must be [B, T] = {[B, T]}; got {tuple(keep.shape)}")
    a, b = a.contiguous(), b.contiguous()
    c = c.contiguous() if c is not None else None
    keep = keep.contiguous() if keep is not None else None
    g = torch.empty(B, T, H, dtype=torch.float32, device=a.device)
    beta = torch.empty_like(b)
    gamma = torch.empty_like(c) if c is not None else None
    rows, BR = B * T, 16
    if rows:
        _gates_kernel[(cdiv(rows, BR),)](
            a, b, c if c is not None else a, A_log, dt_bias, keep if keep is not None else a,
            g, beta, gamma if gamma is not None else beta, rows,
            H=H, BR=BR, BH=next_power_of_2(H), HAS_C=c is not None, MASK=keep is not None)
    return g, beta, gamma
