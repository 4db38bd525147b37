"""Residual Linear Attention, decode path: one Triton program walks a few tokens keeping S and R in registers.

Semantics are exactly ``naive.py`` (state [K, V], a_t = exp(g_t), scale on the output only):

    r_t = rho(v_t - S_{t-1}^T k_t)
    R_t = a_t R_{t-1} + gamma_t k_t r_t^T                       (RDN: gated delta rule on R with values r_t)
    o_t = scale * (a_t S_{t-1}^T q_t + gamma_t R_t^T q_t)
    S_t = a_t S_{t-1} + beta_t k_t v_t^T                        (RDN: gated delta rule on S with values v_t)

One program per (sequence, head, V-block). A V-block holds the columns S[:, block] and R[:, block] over all
of K, and every quantity above is column-wise in V once the K-reductions are done, so V-blocks never talk to
each other. Forward only: decoding does not need a backward. The same kernel serves RDN (``DELTA_RULE``);
``rdn/fused_recurrent.py`` is its public entry point.

Written to also run under TRITON_INTERPRET=1 on CPU: fixed launch config (no autotuner, which would also
re-run an in-place kernel and corrupt the state it benchmarks), ``tl.cast`` rather than ``.to(tl.int64)``,
and tanh from ``exp`` (Triton 3.6 has no ``tl.tanh``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..residual import RESIDUAL_FUNCTIONS
from ..triton_utils import cdiv, next_power_of_2

# Residual codes passed to the kernel as a constexpr, so each variant compiles without dead branches.
_RESIDUAL_IDENTITY, _RESIDUAL_CLIP, _RESIDUAL_TANH = 0, 1, 2


@triton.jit
def _rho(x, clip, RESIDUAL: tl.constexpr):
    """The residual function of kernels/residual.py on a block of fp32 values."""
    if RESIDUAL == 1:
        x = tl.minimum(tl.maximum(x, -clip), clip)
    elif RESIDUAL == 2:
        y = x / clip
        # tanh(|y|) = (1 - e) / (1 + e), e = exp(-2|y|) in (0, 1]: no overflow. Below |y| = 2^-6 the
        # subtraction loses digits, so use the Taylor series there (error < y^7 ~ 4e-13 relative).
        ay = tl.abs(y)
        e = tl.exp(-2.0 * ay)
        t_big = (1.0 - e) / (1.0 + e)
        y2 = ay * ay
        t_small = ay * (1.0 - y2 * (1.0 / 3.0 - y2 * (2.0 / 15.0)))
        t = tl.where(ay < 0.015625, t_small, t_big)
        x = clip * tl.where(y < 0, -t, t)
    return x


@triton.jit(do_not_specialize=["T"])
def _fused_recurrent_fwd_kernel(
    q, k, v, g, beta, gamma, o,
    s0, r0, s_out, r_out, cu_seqlens,
    scale, clip, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DELTA_RULE: tl.constexpr, RESIDUAL: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_R0: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # Axis 0 is (sequence, head): it can exceed the 65535 limit of axis 1 for large decode batches.
    i_nh = tl.cast(tl.program_id(0), tl.int64)
    i_v = tl.cast(tl.program_id(1), tl.int64)
    i_n = i_nh // H
    i_h = i_nh % H
    if IS_VARLEN:
        bos = tl.cast(tl.load(cu_seqlens + i_n), tl.int64)
        eos = tl.cast(tl.load(cu_seqlens + i_n + 1), tl.int64)
    else:
        bos = i_n * T
        eos = bos + T

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    mask_k = o_k < K
    mask_v = o_v < V
    mask_kv = mask_k[:, None] & mask_v[None, :]
    state_offsets = i_nh * K * V + o_k[:, None] * V + o_v[None, :]

    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    b_r = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        b_s += tl.load(s0 + state_offsets, mask=mask_kv, other=0.0).to(tl.float32)
    if HAS_R0:
        b_r += tl.load(r0 + state_offsets, mask=mask_kv, other=0.0).to(tl.float32)

    for t in range(bos, eos):
        row = tl.cast(t, tl.int64) * H + i_h  # index of (token, head) in the flattened [B*T, H] layout
        b_q = tl.load(q + row * K + o_k, mask=mask_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + row * K + o_k, mask=mask_k, other=0.0).to(tl.float32)
        b_val = tl.load(v + row * V + o_v, mask=mask_v, other=0.0).to(tl.float32)
        b_a = tl.exp(tl.load(g + row).to(tl.float32))
        b_beta = tl.load(beta + row).to(tl.float32)
        b_gamma = tl.load(gamma + row).to(tl.float32)

        # Both reads of S use the state before token t: the residual undecayed, the output decayed.
        b_sk = tl.sum(b_s * b_k[:, None], axis=0)
        b_sq = tl.sum(b_s * b_q[:, None], axis=0)
        b_res = _rho(b_val - b_sk, clip, RESIDUAL)

        b_r = b_r * b_a
        if DELTA_RULE:
            # R <- a (I - gamma k k^T) R + gamma k r^T: the error is taken against the decayed R.
            b_res = b_res - tl.sum(b_r * b_k[:, None], axis=0)
        b_r += b_gamma * b_k[:, None] * b_res[None, :]

        b_o = scale * (b_a * b_sq + b_gamma * tl.sum(b_r * b_q[:, None], axis=0))
        tl.store(o + row * V + o_v, b_o.to(o.dtype.element_ty), mask=mask_v)

        b_s = b_s * b_a
        if DELTA_RULE:
            # k^T (a S) = a * (S^T k), already computed above.
            b_val = b_val - b_a * b_sk
        b_s += b_beta * b_k[:, None] * b_val[None, :]

    tl.store(s_out + state_offsets, b_s, mask=mask_kv)
    tl.store(r_out + state_offsets, b_r, mask=mask_kv)


def _check_inputs(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, inplace):
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, T, H, K]; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V]; got {tuple(v.shape)}")
    for name, gate in (("g", g), ("beta", beta), ("gamma", gamma)):
        if gate.shape != q.shape[:3]:
            raise ValueError(f"{name} must be [B, T, H] = [{B}, {T}, {H}]; got {tuple(gate.shape)}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be a positive number or None (no clipping); got {clip!r}")
    if residual not in RESIDUAL_FUNCTIONS:
        raise ValueError(f"residual must be one of {RESIDUAL_FUNCTIONS}; got {residual!r}")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1 (sequences packed along T); got B={B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64) or len(cu_seqlens) < 2:
            raise ValueError(f"cu_seqlens must be a 1-D int32/int64 tensor [N + 1]; got {cu_seqlens.dtype} "
                             f"{tuple(cu_seqlens.shape)}")
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    want = (N, H, K, v.shape[-1])
    for name, state in (("S0", S0), ("R0", R0)):
        if state is not None and tuple(state.shape) != want:
            raise ValueError(f"{name} must be [N, H, K, V] = {list(want)}; got {tuple(state.shape)}")
        if inplace and (state is None or state.dtype != torch.float32 or not state.is_contiguous()):
            raise ValueError(f"inplace=True needs {name} as a contiguous float32 tensor {list(want)} to write "
                             f"the new state into; got {None if state is None else (state.dtype, tuple(state.shape))}")
    return N


def fused_recurrent_fwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens,
                        *, delta_rule: bool, inplace: bool = False):
    """Shared launcher of the RLA (``delta_rule=False``) and RDN (``delta_rule=True``) decode kernel."""
    N = _check_inputs(q, k, v, g, beta, gamma, clip, residual, S0, R0, cu_seqlens, inplace)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K ** -0.5
    q, k, v, g, beta, gamma = (x.contiguous() for x in (q, k, v, g, beta, gamma))
    if not inplace:
        # The kernel only reads S0/R0 through its own blocks, so any float dtype works; make them dense.
        S0 = None if S0 is None else S0.contiguous()
        R0 = None if R0 is None else R0.contiguous()
    o = torch.empty_like(v)
    if inplace:
        S_T, R_T = S0, R0  # each program reads its block of the state before writing the same block
    else:
        S_T = q.new_empty(N, H, K, V, dtype=torch.float32)
        R_T = q.new_empty(N, H, K, V, dtype=torch.float32)

    BK = next_power_of_2(K)
    # Small V-blocks give a decode batch of a few sequences enough programs to fill the GPU. Each program
    # holds two [BK, BV] fp32 states; ptxas for sm_90 (Triton 3.9 here) gives 166 registers and no spill at
    # K=128, BV=8, one warp, and at K=256, BV=8, two warps; BV=16 on one warp spills.
    BV = min(8, next_power_of_2(V))
    residual_code = _RESIDUAL_IDENTITY if clip is None else (_RESIDUAL_CLIP if residual == "clip" else _RESIDUAL_TANH)
    grid = (N * H, cdiv(V, BV))
    _fused_recurrent_fwd_kernel[grid](
        q, k, v, g, beta, gamma, o,
        S0, R0, S_T, R_T, cu_seqlens,
        float(scale), float(clip) if clip is not None else 1.0, T,
        H=H, K=K, V=V, BK=BK, BV=BV,
        DELTA_RULE=delta_rule, RESIDUAL=residual_code,
        HAS_S0=S0 is not None, HAS_R0=R0 is not None, IS_VARLEN=cu_seqlens is not None,
        num_warps=1 if BK <= 128 else 2, num_stages=1,
    )
    return o, S_T, R_T


def fused_recurrent_rla_fwd(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip",
                            S0=None, R0=None, cu_seqlens=None, *, inplace: bool = False):
    """RLA decode forward: ``(o, S_T, R_T)``; states fp32 [N, H, K, V], ``S0``/``R0`` None mean zeros.

    ``inplace=True`` writes the final states into ``S0``/``R0`` (contiguous fp32, required) and returns
    them, as a decode cache wants.
    """
    return fused_recurrent_fwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens,
                               delta_rule=False, inplace=inplace)
