"""The q/k feature map of the converted layers in one Triton launch a tensor, for inference.

Per row x of a head (fp32 inside):

    x = x * cos + rotate_half(x) * sin      (RoPE, when cos/sin are given; rotate_half(x) = [-x2, x1])
    x = x * keep_t                          (padding mask, when given)
    y = silu(x) * rsqrt(sum(silu(x)^2) + eps)

written in ``out_dtype`` with its heads repeated ``heads // source heads`` times (repeat_interleave, the GQA
convention of rla_convert's layer). Eager decoding of a small converted model is bound by kernel launches
(~60 a layer, ~20 us each on the H200): in PyTorch ops this map costs ~13 of them for q and k (RoPE 5,
SiLU 1, norm 5, a concatenation and the repeat), here 2. Forward only: the layer uses it when no gradient is
wanted, and its PyTorch ops otherwise. ``feature_map_reference`` is the same math in PyTorch, for tests.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_utils import next_power_of_2

EPS = 1e-6  # inside the square root, as the layer's _l2norm


def feature_map_reference(x, cos=None, sin=None, keep=None, heads=None, out_dtype=None, eps=EPS):
    """x [B, T, Hs, D]; cos/sin [B or 1, T, D]; keep [B, T]; -> [B, T, heads, D] in out_dtype (computed in x's
    dtype promoted to at least float32; the kernel computes in float32 and refuses float64)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    y = x.to(dtype)
    if cos is not None:
        half = y.shape[-1] // 2
        rotated = torch.cat([-y[..., half:], y[..., :half]], -1)
        y = y * cos[:, :, None].to(dtype) + rotated * sin[:, :, None].to(dtype)
    if keep is not None:
        y = y * keep[:, :, None, None].to(dtype)
    y = torch.nn.functional.silu(y)
    y = y * torch.rsqrt(y.pow(2).sum(-1, keepdim=True) + eps)
    heads = heads or x.shape[2]
    if heads != x.shape[2]:
        y = y.repeat_interleave(heads // x.shape[2], dim=2)
    return y.to(out_dtype or x.dtype)


@triton.jit
def _feature_map_kernel(x, cos, sin, keep, out, T, eps,
                        sx_b, sx_t, sx_h, sc_b, sc_t, sk_b, sk_t,
                        HS: tl.constexpr, H: tl.constexpr, HALF: tl.constexpr, BH: tl.constexpr,
                        BD: tl.constexpr, ROPE: tl.constexpr, MASK: tl.constexpr):
    """One program per token: every output head of it, [BH, 2 x BD] (the two halves of each row apart, so
    RoPE's rotation is a swap of halves)."""
    i_bt = tl.cast(tl.program_id(0), tl.int64)
    i_b = i_bt // T
    i_t = i_bt % T
    heads = tl.arange(0, BH)
    d = tl.arange(0, BD)
    src = heads // (H // HS)  # repeat_interleave: output head h reads source head h // repeat
    mask = (heads < H)[:, None] & (d < HALF)[None, :]
    base = x + i_b * sx_b + i_t * sx_t + src[:, None] * sx_h + d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    if ROPE:
        c_off = i_b * sc_b + i_t * sc_t + d
        c1 = tl.load(cos + c_off, mask=d < HALF, other=0.0).to(tl.float32)[None, :]
        c2 = tl.load(cos + c_off + HALF, mask=d < HALF, other=0.0).to(tl.float32)[None, :]
        s1 = tl.load(sin + c_off, mask=d < HALF, other=0.0).to(tl.float32)[None, :]
        s2 = tl.load(sin + c_off + HALF, mask=d < HALF, other=0.0).to(tl.float32)[None, :]
        r1 = x1 * c1 - x2 * s1
        r2 = x2 * c2 + x1 * s2
        x1 = r1
        x2 = r2
    if MASK:
        m = tl.load(keep + i_b * sk_b + i_t * sk_t).to(tl.float32)
        x1 = x1 * m
        x2 = x2 * m
    y1 = x1 / (1.0 + tl.exp(-x1))
    y2 = x2 / (1.0 + tl.exp(-x2))
    inv = 1.0 / tl.sqrt(tl.sum(y1 * y1 + y2 * y2, axis=1) + eps)
    o = out + ((i_b * T + i_t) * H + heads[:, None]) * (2 * HALF) + d[None, :]
    tl.store(o, (y1 * inv[:, None]).to(out.dtype.element_ty), mask=mask)
    tl.store(o + HALF, (y2 * inv[:, None]).to(out.dtype.element_ty), mask=mask)


def feature_map(x, cos=None, sin=None, keep=None, heads=None, out_dtype=None, eps=EPS):
    """``feature_map_reference`` in one launch (no autograd): x [B, T, Hs, D] with unit stride along D."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, cos, sin, keep)):
        raise RuntimeError("feature_map is forward-only: call it without autograd (the layer falls back to "
                           "PyTorch ops when gradients are wanted)")
    B, T, HS, D = x.shape
    H = heads or HS
    if D % 2 or H % HS or x.stride(3) != 1:
        raise ValueError(f"feature_map needs an even head dim, heads a multiple of the source heads and unit stride "
                         f"along D; got D={D}, {HS} -> {H} heads, strides {x.stride()}")
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin come together")
    rope = cos is not None
    # transformers builds position_ids as cache_position[None]: cos/sin then come as [1, T, D] for every row
    if rope and (cos.shape not in ((B, T, D), (1, T, D)) or sin.shape != cos.shape or cos.stride(2) != 1
                 or sin.stride() != cos.stride()):
        raise ValueError(f"cos and sin must be [B, T, D] = {[B, T, D]} (or [1, T, D]) with one stride pattern and "
                         f"unit stride along D; got {tuple(cos.shape)} {cos.stride()} and {tuple(sin.shape)} {sin.stride()}")
    if x.dtype == torch.float64:
        raise ValueError("feature_map computes in float32: float64 inputs take the PyTorch ops")
    if keep is not None and keep.shape != (B, T):
        raise ValueError(f"keep must be [B, T] = {[B, T]}; got {tuple(keep.shape)}")
    out = torch.empty(B, T, H, D, dtype=out_dtype or x.dtype, device=x.device)
    if out.numel():
        _feature_map_kernel[(B * T,)](
            x, cos if rope else x, sin if rope else x, keep if keep is not None else x, out, T, eps,
            x.stride(0), x.stride(1), x.stride(2),
            cos.stride(0) if rope and cos.shape[0] > 1 else 0, cos.stride(1) if rope else 0,
            keep.stride(0) if keep is not None else 0, keep.stride(1) if keep is not None else 0,
            HS=HS, H=H, HALF=D // 2, BH=next_power_of_2(H), BD=next_power_of_2(D // 2),
            ROPE=rope, MASK=keep is not None)
    return out
