"""RDN chunk backward in Triton: a reverse walk for the state adjoints (two walks: two launches, or one launch whose
second walk trails the first, ``_rdn_bwd_walks_kernel``), then every gradient, all chunks in parallel.

The forward is column-wise in V, so the adjoints of the states (dS, dR, carried from chunk end to chunk
start) and dv are exact per V-block, while the gradients of the shared inputs (q, k, g, beta, gamma) are
sums over V-blocks: the chunk-matrix kernel sums its [BT, BT] gradients and the rows that read no state over V,
the gradient kernel the state terms over its V loop, per K-block, and the rows, which cross K-blocks, are summed
by a small last pass.

The reverse walk (programs per (sequence, head, V-block)) carries only what links the chunks: from the
adjoints dS, dR of a chunk's end states, through the output reads, the UT transform of R, rho (zero gradient
where the clip saturates; the mask is the X the forward walk stored), the residual read of S and the UT
transform of S, to the adjoints of its start states:

    dW  = Kd dR + Mqi^T drq                 drq = scale * gamma * do,  Kd = K * exp(GL - G)
    dyr = T_gamma^T dW,   dX = rho'(X) * gamma * dyr
    dU  = Kd dS - Mk^T dX + Mq^T dsq        dsq = scale * do
    dyv = T_beta^T dU
    dR0 = exp(GL) dR + Q^T (exp(G) drq) - K^T (gamma exp(G) dyr)
    dS0 = exp(GL) dS - K^T (exp(Gp) dX + beta exp(G) dyv) + Q^T (exp(G) dsq)

The walks take this with T_gamma^T Kd, T_gamma^T Mqi^T, T_beta^T Kd, T_beta^T Mq^T and T_beta^T Mk^T made beforehand
(``_rdn_bwd_prep_k_kernel`` and ``_rdn_bwd_prep_p_kernel``), so that only two [BT, K] x [K, BV] dots a step are on a
walk's chain. It stores dS, dR at every chunk end, and per token dyr, dX and dyv (dv = dX + beta dyv). The gradients
then come chunk-parallel (see the comment above ``_rdn_bwd_mats_kernel``): per chunk, from the U and W the forward
walk stored, the gradients of the decay-weighted k.k and q.k matrices, dv and the rows that read no state; per
(chunk, K-block) dq and dk whole, from those and from the states, and the rows that read the states; the rows go to
beta, gamma and the within-chunk cumulative decay G, whose gradient becomes dg by a reverse cumsum per chunk.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..rla.chunk_fwd import _walk_states
from ..rla.fused_recurrent import _rho
from ..triton_utils import dot_split, load_gate
from ._triton_helpers import (autotune, chunk_ids, chunk_prologue, dot_cast, exp_masked, launch_configs, load_tile,
                              load_tile_raw, load_tile_t, load_tile_t_raw, store_tile, store_tile_t, walk_bounds)
from .chunk_fwd import chunk_decays, state_row
from .wy import mqi_tile


@triton.jit
def _rho_grad(x, res, clip, RESIDUAL: tl.constexpr):
    """d rho(x) / dx given x and res = rho(x): 1 inside the clip (ends included, as torch.clamp), 0 outside;
    1 - (res / c)^2 for c * tanh(x / c); 1 without a residual function."""
    if RESIDUAL == 1:
        d = tl.where(tl.abs(x) <= clip, 1.0, 0.0)
    elif RESIDUAL == 2:
        y = res / clip
        d = 1.0 - y * y
    else:
        d = x * 0.0 + 1.0
    return d


# The reverse walks' chunk operators, made chunk-parallel before them (as fla's gated delta rule makes its w and u
# before its walks), so that no [BT, BT] dot and no split dot is on a walk's chain. From the walk's recurrence
# (module docstring), with dL = exp(GL - G):
#     dyr = Kc dR + Pc drq,                Kc = T_gamma^T diag(dL) K,  Pc = T_gamma^T Mqi^T
#     dyv = Kb dS + Pb dsq - Qb dX,        Kb = T_beta^T diag(dL) K,   Pb = T_beta^T Mq^T,  Qb = T_beta^T Mk^T
# Kc and Kb ([BT, K] a chunk) are stored in k's dtype, the walks' dots with them round the state adjoint to it as
# fla's bwd_dhu rounds dh (one half dot, 2^-9); Pc, Pb, Qb ([BT, BT]) are made at ~fp32 (tf32x3) and stored in k's
# dtype too, so that the walks' dots with them are half dots (Pb do and Qb dX exact products; Pc drq rounds drq).
# Two kernels, each with its own autotuner: one kernel with a branch for each (until 2026-12-01) compiled every
# program with the [BT, BT] branch's registers (188 at 2 warps), the K-block programs too, which need far fewer.
# Separate kernels (not one specialised by a constexpr) so that each has its own config list and its own profile row.


# Kb and Kc, one program per (chunk, K-block, head). Registers by ptxas (sm_90, Triton 3.9, BT 32, K 128 bf16) at
# 2 / 4 / 1 warps: 110 / 72 / 190 at BKP 64 (9 / 7 / 10 programs an SM), 153 / 118 / 255 and 152 bytes of stack at
# 128 (chunk.PREP_BK). Two warps first (the fixed config): the most bytes in flight an SM short of one warp's serial
# dots, reasoned at BKP 64; at 128 the H200's tuner picked 1 warp (0.155 ms, 2026-12-01 19:28; 2 warps there untimed).
# k before the T's, T_gamma after Kb's store: the merged kernel's order (both T's, then k) takes 145 / 107 / 190.
@autotune(configs=launch_configs((2, 1), (4, 1), (1, 1)), key=["H", "K", "BT", "BKP", "DOT_PREC"])
@triton.jit(do_not_specialize=["T"])
def _rdn_bwd_prep_k_kernel(
    k, g, t_beta, t_gamma, k_b, k_c, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BKP: tl.constexpr,
    DOT_PREC: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr, CHUNK_GROUP: tl.constexpr,
):
    i_c, i_k, i_nh = chunk_ids(2, H, (K + BKP - 1) // BKP, CHUNK_ORDER, CHUNK_GROUP)
    bos, T_seq, i_t, i_h, _, _, _, _ = chunk_prologue(cu_seqlens, chunk_indices, i_c, i_nh, T, H, BT, IS_VARLEN)
    tok_k = (bos * H + i_h) * K
    tok_t = (bos * H + i_h) * BT
    b_G, _, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
    b_dL = tl.exp(b_GL - b_G)[:, None]
    b_k = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, i_k * BKP, K, BT, BKP)
    # T^T diag(dL) as (diag(dL) T)^T: the decay scales T's rows; dot_split keeps that fp32 operand to ~2^-16 before
    # the product rounds to k's dtype.
    b_tb = load_tile(t_beta + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    b_kb = dot_split(tl.trans(b_dL * b_tb), b_k, DOT_PREC)
    store_tile(k_b + tok_k, b_kb, i_t * BT, T_seq, H * K, i_k * BKP, K, BT, BKP)
    b_tc = load_tile(t_gamma + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    b_kc = dot_split(tl.trans(b_dL * b_tc), b_k, DOT_PREC)
    store_tile(k_c + tok_k, b_kc, i_t * BT, T_seq, H * K, i_k * BKP, K, BT, BKP)


# Pb, Qb and Pc, one program per (chunk, head), from the whole of q and k (for Mqi). Registers (as above) at 2 / 4 / 8
# warps: 234 / 247 / 248 (4 / 2 / 1 programs an SM; 1 warp: 255 and 176 bytes of stack, not listed). Capped at 2
# warps, ptxas needs no more than 200 (no stack: 5 programs an SM), first as the expected pick; at 168, 136 bytes of
# stack (6 an SM). Eight warps for fp32 inputs (ieee dots), where only they do not spill (178 registers).
@autotune(configs=launch_configs((2, 1, 200), (2, 1), (2, 1, 168), (4, 1), (8, 1)),
          key=["H", "K", "BT", "BK", "DOT_PREC"])
@triton.jit(do_not_specialize=["T"])
def _rdn_bwd_prep_p_kernel(
    q, k, g, t_beta, t_gamma, m_k, p_b, q_b, p_c, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    DOT_PREC: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr, CHUNK_GROUP: tl.constexpr,
):
    MERGE_PREC: tl.constexpr = "tf32x3" if DOT_PREC == "tf32" else DOT_PREC
    i_c, _, i_nh = chunk_ids(1, H, 1, CHUNK_ORDER, CHUNK_GROUP)
    bos, T_seq, i_t, i_h, o_t, _, _, _ = chunk_prologue(cu_seqlens, chunk_indices, i_c, i_nh, T, H, BT, IS_VARLEN)
    tok_k = (bos * H + i_h) * K
    tok_t = (bos * H + i_h) * BT
    b_G, _, _ = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
    b_q = load_tile_raw(q + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    b_kf = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    b_mqi = mqi_tile(b_q, b_kf, b_G, o_t, DOT_PREC)
    b_mq = tl.where(o_t[:, None] > o_t[None, :], b_mqi, 0.0)
    b_mk = load_tile(m_k + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    b_tbt = tl.trans(load_tile(t_beta + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT))
    b_tc = load_tile(t_gamma + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    store_tile(p_b + tok_t, tl.dot(b_tbt, tl.trans(b_mq), input_precision=MERGE_PREC),
               i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    store_tile(q_b + tok_t, tl.dot(b_tbt, tl.trans(b_mk), input_precision=MERGE_PREC),
               i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    store_tile(p_c + tok_t, tl.dot(tl.trans(b_tc), tl.trans(b_mqi), input_precision=MERGE_PREC),
               i_t * BT, T_seq, H * BT, 0, BT, BT, BT)


# The chunk-start states h_s, h_r rebuilt from the forward's kept U and W (chunk.py's _rebuild_states): two linear
# walks, S1 = exp(GL) S0 + (K exp(GL - G))^T U and R likewise with W, RLA's walk (_walk_states, no rate). They share k
# and the gates and neither waits on the other, so they run as one launch: axis 0 is (walk, K-block), S's programs
# first (its update split, as the forward walk's S path), then R's (rounded); g stands in for the unread rate. At B=1
# T=32k H=16 K=V=128 each walk alone had ~256 programs for 132 SMs (latency-bound): 2.41 ms as two launches, 1.39 as
# this one (H200, 2026-12-02; chunk.py's REBUILD_BK has the sweep).
@triton.jit(do_not_specialize=["T"])
def _rdn_bwd_rebuild_kernel(
    k, u, w, g, s0, r0, h_s, h_r, s_t, r_t,
    cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, HAS_S0: tl.constexpr, HAS_R0: tl.constexpr,
    IS_VARLEN: tl.constexpr, WALK_STEPS: tl.constexpr,
):
    NK: tl.constexpr = (K + BK - 1) // BK
    i_wk = tl.program_id(0)
    i_k = tl.cast(i_wk % NK, tl.int64)
    i_v = tl.cast(tl.program_id(1), tl.int64)
    i_nh = tl.cast(tl.program_id(2), tl.int64)
    if i_wk < NK:
        _walk_states(k, u, g, g, s0, h_s, h_s, s_t, cu_seqlens, chunk_offsets, T, i_k, i_v, i_nh,
                     H, K, V, BT, BK, BV, True, DOT_PREC, DOTS_FP32, HAS_S0, False, IS_VARLEN, WALK_STEPS, False)
    else:
        _walk_states(k, w, g, g, r0, h_r, h_r, r_t, cu_seqlens, chunk_offsets, T, i_k, i_v, i_nh,
                     H, K, V, BT, BK, BV, False, DOT_PREC, DOTS_FP32, HAS_R0, False, IS_VARLEN, WALK_STEPS, False)


# The reverse walk in two launches, as chunk.py's _reverse_walk calls them: the dR chain reads no dS, and the dS
# chain reads the R chain only through dX. So walk 1 carries dR alone and stores dyr and dX per token; walk 2
# carries dS alone and reads dX back (in the input dtype, chunk.py _Layout.tokens). Each step's chain is
# fla's bwd_dhu's: a [BT, K] x [K, BV] dot with the chunk operator (Kc or Kb), then the state update's K^T dot; the
# chunk-local terms (Pc drq; Pb dsq - Qb dX; Q^T(exp(G) dsq)) hang off the chain. Every big dot is one half dot
# (dot_cast: the adjoint tiles round to the input dtype, 2^-9, as fla's dh and dv); the clip's mask reads the X
# of the forward walk (its rerun), whose S path stays at ~fp32.
# Until 2026-12-01 the walks loaded Mqi, T and Mk and did the [BT, BT] dots on the chain, with split dots (6 half
# dots a step): 1.29 and 1.46 ms at B=16 T=2k H=16 K=V=128 bf16 (H200, Triton 3.6, profile_kernels.py), in git
# history before the prep kernel. Before that one walk carried both (3.27 ms).
@triton.jit
def _walk_r(
    i_v, i_nh, q, k, g, gamma, k_c, p_c, x, do, dr_t,
    h_dr, dr0, dyr_out, dx_out, done,
    cu_seqlens, chunk_offsets, scale, clip, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_DRT: tl.constexpr, IS_VARLEN: tl.constexpr, TRAILED: tl.constexpr,
):
    """Walk 1 of (sequence x head ``i_nh``, V-block ``i_v``): dR from chunk end to chunk start, h_dr at every chunk
    end, dyr and dX per token. ``TRAILED``: after each chunk's dX it publishes the chunks done in ``done`` (release:
    walk 2 of the same program pair reads them after its acquire)."""
    bos, T_seq, boh, NT, i_h, tok_k, tok_v, tok_t = walk_bounds(cu_seqlens, chunk_offsets, i_nh, T, H, K, V, BT,
                                                                IS_VARLEN)

    b_dr = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DRT:
        b_dr += load_tile(dr_t + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)
    if not TRAILED:
        # X a chunk ahead, in its own dtype: read only by dX's elementwise mask, the pipeliner left its load in the
        # step that uses it, and its latency was 16% of this walk's warp stalls (Nsight Compute, H200, B=16 T=2k H=16
        # K=V=128 bf16, the transposed walk, 2026-12-04: scripts/ncu_kernels.py). Past the first chunk it reloads
        # chunk 0. Backward wall at B=16 T=2k 3.97 -> 3.89 ms (autotuned); not in the trailed one-launch walks, where
        # it was slower (B=1 T=32k: 3.55 -> 3.80 ms).
        b_x_next = load_tile_raw(x + tok_v, tl.maximum(NT - 1, 0) * BT, T_seq, H * V, i_v * BV, V, BT, BV)

    for i_loop in range(0, NT):
        i_t = tl.cast(NT - 1 - i_loop, tl.int64)
        if not TRAILED:
            b_x = b_x_next.to(tl.float32)
            b_x_next = load_tile_raw(x + tok_v, tl.maximum(i_t - 1, 0) * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        h_off = ((boh + i_t) * H + i_h) * K * V
        store_tile(h_dr + h_off, b_dr, 0, K, V, i_v * BV, V, BK, BV)
        b_G, _, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
        b_gamma = load_gate(gamma, bos, T_seq, i_t, i_h, H, BT)
        b_kc = load_tile_raw(k_c + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_pc = load_tile_raw(p_c + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_do = load_tile(do + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_drq = b_gamma[:, None] * (scale * b_do)
        b_dyr = dot_cast(b_kc, b_dr, DOT_PREC) + dot_cast(b_pc, b_drq, DOT_PREC)
        b_q = load_tile_raw(q + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_k = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_eG = tl.exp(b_G)[:, None]
        b_dr = (tl.exp(b_GL) * b_dr + dot_cast(tl.trans(b_q), b_eG * b_drq, DOT_PREC)
                - dot_cast(tl.trans(b_k), (b_gamma[:, None] * b_eG) * b_dyr, DOT_PREC))
        if TRAILED:
            b_x = load_tile(x + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dx = _rho_grad(b_x, _rho(b_x, clip, RESIDUAL), clip, RESIDUAL) * (b_gamma[:, None] * b_dyr)
        store_tile(dyr_out + tok_v, b_dyr, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        store_tile(dx_out + tok_v, b_dx, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        if TRAILED:
            tl.debug_barrier()  # every thread's dX stores before the one release below
            tl.atomic_xchg(done, tl.cast(i_loop + 1, tl.int32), sem="release", scope="gpu")

    store_tile(dr0 + i_nh * K * V, b_dr, 0, K, V, i_v * BV, V, BK, BV)


@triton.jit
def _walk_s(
    i_v, i_nh, q, k, g, beta, k_b, p_b, q_b, dxc, do, ds_t,
    h_ds, ds0, dyv_out, done,
    cu_seqlens, chunk_offsets, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DST: tl.constexpr, IS_VARLEN: tl.constexpr, TRAILED: tl.constexpr,
):
    """Walk 2 of (``i_nh``, ``i_v``), after walk 1's dX (``dxc``): dS from chunk end to chunk start, h_ds at every
    chunk end, dyv per token. ``TRAILED``: walk 1 runs alongside; each chunk waits (acquire) until ``done`` says
    walk 1 has stored that chunk's dX."""
    bos, T_seq, boh, NT, i_h, tok_k, tok_v, tok_t = walk_bounds(cu_seqlens, chunk_offsets, i_nh, T, H, K, V, BT,
                                                                IS_VARLEN)

    b_ds = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DST:
        b_ds += load_tile(ds_t + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)

    for i_loop in range(0, NT):
        i_t = tl.cast(NT - 1 - i_loop, tl.int64)
        h_off = ((boh + i_t) * H + i_h) * K * V
        store_tile(h_ds + h_off, b_ds, 0, K, V, i_v * BV, V, BK, BV)
        b_G, b_Gp, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
        b_beta = load_gate(beta, bos, T_seq, i_t, i_h, H, BT)
        # Alone: each operand loaded just before its dot, the state's update in three steps (the anatomy probe's
        # order, docs/next/rdn-walk-anatomy.py): ptxas's stack at 64 wide 336 -> 88 bytes a thread, the walk 0.89 ->
        # 0.65 ms at B=16 T=2k H=16 K=V=128 bf16 (H200, 2026-12-02). Trailed, Pb and Qb load before the wait, as
        # before: that order there took the one-launch walks at B=1 T=32k from 3.89 to 4.94 ms.
        b_kb = load_tile_raw(k_b + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        # Pb (scale do) as scale (Pb do) and Qb dX: raw half operands, exact products (do, dX and the operators are
        # stored in the input dtype), where fp32 copies took tf32 dots at half rate and twice the registers.
        b_do = load_tile_raw(do + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        if TRAILED:
            b_pb = load_tile_raw(p_b + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
            b_qb = load_tile_raw(q_b + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
            seen = tl.atomic_add(done, 0, sem="acquire", scope="gpu")
            while seen <= i_loop:
                seen = tl.atomic_add(done, 0, sem="acquire", scope="gpu")
            tl.debug_barrier()  # every thread's dX loads after the acquire
        b_dx = load_tile_raw(dxc + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dyv = dot_cast(b_kb, b_ds, DOT_PREC)
        if not TRAILED:
            b_pb = load_tile_raw(p_b + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_dyv += scale * tl.dot(b_pb, b_do, input_precision=DOT_PREC)
        if not TRAILED:
            b_qb = load_tile_raw(q_b + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_dyv -= tl.dot(b_qb, b_dx, input_precision=DOT_PREC)
        b_dsq = scale * b_do.to(tl.float32)
        b_dx = b_dx.to(tl.float32)
        b_eG = tl.exp(b_G)[:, None]
        b_ds = tl.exp(b_GL) * b_ds
        b_q = load_tile_raw(q + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_ds += dot_cast(tl.trans(b_q), b_eG * b_dsq, DOT_PREC)
        b_k = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_ds -= dot_cast(tl.trans(b_k), tl.exp(b_Gp)[:, None] * b_dx + (b_beta[:, None] * b_eG) * b_dyv, DOT_PREC)
        store_tile(dyv_out + tok_v, b_dyv, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)

    store_tile(ds0 + i_nh * K * V, b_ds, 0, K, V, i_v * BV, V, BK, BV)


# The two walks transposed (TRANSPOSED in the kernels below; chunk.DR_WALK_T, DS_WALK_T), as the forward walk is
# (chunk_fwd._rdn_walk_t_kernel): each carries its adjoint as dR^T (dS^T) [BV, K] and makes every [BT, BV] token tile
# as its transpose, so that every dot has the V-block's BV rows (wgmma at 64 wide, 4 warps) and the adjoint tiles
# the chain makes are left operands (registers, not shared memory). Same math, dot for dot and rounding for rounding,
# as _walk_r and _walk_s. ptxas (sm_90, K = V = 128, 64 wide, 4 warps; scripts/kernel_resources.py --census): dR's
# walk 241 registers, no stack, HMMA 0 / HGMMA 16 (untransposed: 255, 144 bytes, 48 / 8); dS's 254, none, 0 / 20
# (255, 88 bytes, 64 / 8). Yet only dR's is faster on the H200 (dS's is off by default; chunk.DR_WALK_T has the times).
@triton.jit
def _walk_r_t(
    i_v, i_nh, q, k, g, gamma, k_c, p_c, x, do, dr_t,
    h_dr, dr0, dyr_out, dx_out, done,
    cu_seqlens, chunk_offsets, scale, clip, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_DRT: tl.constexpr, IS_VARLEN: tl.constexpr, TRAILED: tl.constexpr,
):
    bos, T_seq, boh, NT, i_h, tok_k, tok_v, tok_t = walk_bounds(cu_seqlens, chunk_offsets, i_nh, T, H, K, V, BT,
                                                                IS_VARLEN)

    b_drt = tl.zeros([BV, BK], dtype=tl.float32)
    if HAS_DRT:
        b_drt += load_tile_t(dr_t + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)
    if not TRAILED:  # X a chunk ahead (_walk_r says why; trailed, at B=1 T=32k, it was slower: 3.55 -> 3.80 ms)
        b_xt_next = load_tile_t_raw(x + tok_v, tl.maximum(NT - 1, 0) * BT, T_seq, H * V, i_v * BV, V, BT, BV)

    for i_loop in range(0, NT):
        i_t = tl.cast(NT - 1 - i_loop, tl.int64)
        if not TRAILED:
            b_xt = b_xt_next.to(tl.float32)
            b_xt_next = load_tile_t_raw(x + tok_v, tl.maximum(i_t - 1, 0) * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        h_off = ((boh + i_t) * H + i_h) * K * V
        store_tile_t(h_dr + h_off, b_drt, 0, K, V, i_v * BV, V, BK, BV)
        b_G, _, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
        b_gamma = load_gate(gamma, bos, T_seq, i_t, i_h, H, BT)[None, :]
        b_kct = load_tile_t_raw(k_c + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)  # Kc^T [K, BT]
        b_pct = load_tile_t_raw(p_c + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_drqt = b_gamma * (scale * load_tile_t(do + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV))
        b_dyrt = dot_cast(b_drt, b_kct, DOT_PREC) + dot_cast(b_drqt, b_pct, DOT_PREC)
        b_q = load_tile_raw(q + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_k = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_eG = tl.exp(b_G)[None, :]
        b_drt = (tl.exp(b_GL) * b_drt + dot_cast(b_eG * b_drqt, b_q, DOT_PREC)
                 - dot_cast((b_gamma * b_eG) * b_dyrt, b_k, DOT_PREC))
        if TRAILED:
            b_xt = load_tile_t(x + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dxt = _rho_grad(b_xt, _rho(b_xt, clip, RESIDUAL), clip, RESIDUAL) * (b_gamma * b_dyrt)
        store_tile_t(dyr_out + tok_v, b_dyrt, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        store_tile_t(dx_out + tok_v, b_dxt, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        if TRAILED:
            tl.debug_barrier()  # every thread's dX stores before the one release below
            tl.atomic_xchg(done, tl.cast(i_loop + 1, tl.int32), sem="release", scope="gpu")

    store_tile_t(dr0 + i_nh * K * V, b_drt, 0, K, V, i_v * BV, V, BK, BV)


@triton.jit
def _walk_s_t(
    i_v, i_nh, q, k, g, beta, k_b, p_b, q_b, dxc, do, ds_t,
    h_ds, ds0, dyv_out, done,
    cu_seqlens, chunk_offsets, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DST: tl.constexpr, IS_VARLEN: tl.constexpr, TRAILED: tl.constexpr,
):
    bos, T_seq, boh, NT, i_h, tok_k, tok_v, tok_t = walk_bounds(cu_seqlens, chunk_offsets, i_nh, T, H, K, V, BT,
                                                                IS_VARLEN)

    b_dst = tl.zeros([BV, BK], dtype=tl.float32)
    if HAS_DST:
        b_dst += load_tile_t(ds_t + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)

    for i_loop in range(0, NT):
        i_t = tl.cast(NT - 1 - i_loop, tl.int64)
        h_off = ((boh + i_t) * H + i_h) * K * V
        store_tile_t(h_ds + h_off, b_dst, 0, K, V, i_v * BV, V, BK, BV)
        b_G, b_Gp, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
        b_beta = load_gate(beta, bos, T_seq, i_t, i_h, H, BT)[None, :]
        b_kbt = load_tile_t_raw(k_b + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)  # Kb^T [K, BT]
        b_dot = load_tile_t_raw(do + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        if TRAILED:
            b_pbt = load_tile_t_raw(p_b + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
            b_qbt = load_tile_t_raw(q_b + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
            seen = tl.atomic_add(done, 0, sem="acquire", scope="gpu")
            while seen <= i_loop:
                seen = tl.atomic_add(done, 0, sem="acquire", scope="gpu")
            tl.debug_barrier()  # every thread's dX loads after the acquire
        b_dxt = load_tile_t_raw(dxc + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dyvt = dot_cast(b_dst, b_kbt, DOT_PREC)
        if not TRAILED:
            b_pbt = load_tile_t_raw(p_b + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_dyvt += scale * tl.dot(b_dot, b_pbt, input_precision=DOT_PREC)
        if not TRAILED:
            b_qbt = load_tile_t_raw(q_b + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_dyvt -= tl.dot(b_dxt, b_qbt, input_precision=DOT_PREC)
        b_dsqt = scale * b_dot.to(tl.float32)
        b_dxt = b_dxt.to(tl.float32)
        b_eG = tl.exp(b_G)[None, :]
        b_dst = tl.exp(b_GL) * b_dst
        b_q = load_tile_raw(q + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_dst += dot_cast(b_eG * b_dsqt, b_q, DOT_PREC)
        b_k = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_dst -= dot_cast(tl.exp(b_Gp)[None, :] * b_dxt + (b_beta * b_eG) * b_dyvt, b_k, DOT_PREC)
        store_tile_t(dyv_out + tok_v, b_dyvt, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)

    store_tile_t(ds0 + i_nh * K * V, b_dst, 0, K, V, i_v * BV, V, BK, BV)


@triton.jit(do_not_specialize=["T"])
def _rdn_bwd_walk_r_kernel(
    q, k, g, gamma, k_c, p_c, x, do, dr_t,
    h_dr, dr0, dyr_out, dx_out,
    cu_seqlens, chunk_offsets, scale, clip, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_DRT: tl.constexpr, IS_VARLEN: tl.constexpr, TRANSPOSED: tl.constexpr,
):
    """Walk 1 alone, a program a (V-block, sequence x head)."""
    i_v, i_nh = tl.cast(tl.program_id(0), tl.int64), tl.cast(tl.program_id(1), tl.int64)
    if TRANSPOSED:
        _walk_r_t(i_v, i_nh, q, k, g, gamma, k_c, p_c, x, do, dr_t, h_dr, dr0, dyr_out, dx_out, dr0,
                  cu_seqlens, chunk_offsets, scale, clip, T, H, K, V, BT, BK, BV, RESIDUAL, DOT_PREC, HAS_DRT,
                  IS_VARLEN, False)
    else:
        _walk_r(i_v, i_nh, q, k, g, gamma, k_c, p_c, x, do, dr_t, h_dr, dr0, dyr_out, dx_out, dr0,
                cu_seqlens, chunk_offsets, scale, clip, T, H, K, V, BT, BK, BV, RESIDUAL, DOT_PREC, HAS_DRT,
                IS_VARLEN, False)


@triton.jit(do_not_specialize=["T"])
def _rdn_bwd_walk_s_kernel(
    q, k, g, beta, k_b, p_b, q_b, dxc, do, ds_t,
    h_ds, ds0, dyv_out,
    cu_seqlens, chunk_offsets, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, HAS_DST: tl.constexpr, IS_VARLEN: tl.constexpr, TRANSPOSED: tl.constexpr,
):
    """Walk 2 alone, after walk 1's launch, a program a (V-block, sequence x head)."""
    i_v, i_nh = tl.cast(tl.program_id(0), tl.int64), tl.cast(tl.program_id(1), tl.int64)
    if TRANSPOSED:
        _walk_s_t(i_v, i_nh, q, k, g, beta, k_b, p_b, q_b, dxc, do, ds_t, h_ds, ds0, dyv_out, ds0,
                  cu_seqlens, chunk_offsets, scale, T, H, K, V, BT, BK, BV, DOT_PREC, HAS_DST, IS_VARLEN, False)
    else:
        _walk_s(i_v, i_nh, q, k, g, beta, k_b, p_b, q_b, dxc, do, ds_t, h_ds, ds0, dyv_out, ds0,
                cu_seqlens, chunk_offsets, scale, T, H, K, V, BT, BK, BV, DOT_PREC, HAS_DST, IS_VARLEN, False)


@triton.jit(do_not_specialize=["T", "PAIRS"])
def _rdn_bwd_walks_kernel(
    q, k, g, beta, gamma, k_c, p_c, k_b, p_b, q_b, x, do, dr_t, ds_t,
    h_dr, dr0, dyr_out, dx_out, h_ds, ds0, dyv_out, progress,
    cu_seqlens, chunk_offsets, scale, clip, T, PAIRS,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_DRT: tl.constexpr, HAS_DST: tl.constexpr, IS_VARLEN: tl.constexpr,
    TRANSPOSED_R: tl.constexpr, TRANSPOSED_S: tl.constexpr,
):
    """Both walks in one launch, walk 2 trailing walk 1 by a chunk or more (for when one walk's programs leave the
    SMs half idle). ``progress`` (int32, zeroed): a ticket counter, then each (sequence x head, V-block) pair's
    chunks done by walk 1. A program's role comes from the ticket it draws, not its program id: the first PAIRS
    tickets walk 1, the rest walk 2, so every walk 1 a walk 2 waits on belongs to a program already running,
    whatever order the hardware starts programs in (no deadlock)."""
    ticket = tl.atomic_add(progress, 1)
    pair = ticket % PAIRS
    NV = tl.cdiv(V, BV)
    i_v = tl.cast(pair % NV, tl.int64)
    i_nh = tl.cast(pair // NV, tl.int64)
    done = progress + 1 + pair
    if ticket < PAIRS:
        if TRANSPOSED_R:
            _walk_r_t(i_v, i_nh, q, k, g, gamma, k_c, p_c, x, do, dr_t, h_dr, dr0, dyr_out, dx_out, done,
                      cu_seqlens, chunk_offsets, scale, clip, T, H, K, V, BT, BK, BV, RESIDUAL, DOT_PREC, HAS_DRT,
                      IS_VARLEN, True)
        else:
            _walk_r(i_v, i_nh, q, k, g, gamma, k_c, p_c, x, do, dr_t, h_dr, dr0, dyr_out, dx_out, done,
                    cu_seqlens, chunk_offsets, scale, clip, T, H, K, V, BT, BK, BV, RESIDUAL, DOT_PREC, HAS_DRT,
                    IS_VARLEN, True)
    else:
        if TRANSPOSED_S:
            _walk_s_t(i_v, i_nh, q, k, g, beta, k_b, p_b, q_b, dx_out, do, ds_t, h_ds, ds0, dyv_out, done,
                      cu_seqlens, chunk_offsets, scale, T, H, K, V, BT, BK, BV, DOT_PREC, HAS_DST, IS_VARLEN, True)
        else:
            _walk_s(i_v, i_nh, q, k, g, beta, k_b, p_b, q_b, dx_out, do, ds_t, h_ds, ds0, dyv_out, done,
                    cu_seqlens, chunk_offsets, scale, T, H, K, V, BT, BK, BV, DOT_PREC, HAS_DST, IS_VARLEN, True)


# The gradients, chunk-parallel, split as fla splits its gated delta rule's backward so that no program holds both
# a chunk's whole [K, V] states and [BT, K] accumulators. The reverse walk stored the column-wise adjoints (dyr, dX,
# dyv), the forward walk (its rerun, or the kept forward walk) U and W. Then three launches:
#   _rdn_bwd_mats_kernel, per (chunk, head), V-block by V-block: the five [BT, BT] chunk-matrix gradients, turned
#     into the two products that reach dq and dk (dkk + dkk^T, dqk), dv, and the rows that read no state;
#   _rdn_bwd_grad_kernel, per (chunk, K-block, head): its K-block of dq and dk, whole (those products against its q
#     and k columns, then the state reads), written once in the input dtype, and the rows that read the states from
#     its own K-side products (sum_v a (k S) = sum_k k (a S^T)), a slab a K-block;
#   _rdn_bwd_dg_kernel, per (chunk, head): the slabs summed into dbeta, dgamma, and dg's reverse cumsum.
# At B=16 T=2k H=16 K=V=128 bf16 on the H200 the gradients took 3.34 + 2.03 ms as a dq/dk and a gates kernel
# (2026-11-30), 2.09 + 4.10 as a rows kernel (recomputing U, W from the states, summing the rows) and a gradient
# kernel that redid the chunk matrices in each K-block program (2026-12-01 morning), 4.31 as these two (the rerun
# walk storing U, W instead: +0.11 ms there; backward 11.33 -> 9.57 ms, 2026-12-01 07:35;
# docs/next/rdn-backward-plan.md, P6), 0.82 + 2.39 since the token tensors are bf16 and read raw (2026-12-01 11:08,
# backward 7.28 ms). Two kernels, not two passes of one: the five [BT, BT] sums and the six state
# dots in one V loop spilled 5-6.6 KiB a thread (ptxas sm_90, 2026-12-01), and one pass 1 a chunk reads the token
# tensors once, not once a K-block. (4 warps, 2 stages) first: the H200 autotuner's pick at B=16 T=2k and B=1 T=32k
# (0.73 ms; the first config was (8, 1) until 2026-12-04, about twice that), so fixed-config runs run production's.
@autotune(configs=launch_configs((4, 2), (8, 1), (4, 1), (8, 2)),
          key=["H", "K", "V", "BT", "BKF", "BV", "RESIDUAL", "DOT_PREC"])
@triton.jit(do_not_specialize=["T", "NTH"])
def _rdn_bwd_mats_kernel(
    q, k, v, g, beta, gamma, x, do, u, w, dyr, dxc, dyv,
    mats, rows_part, dv,
    cu_seqlens, chunk_indices, scale, clip, T, NTH,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BKF: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
    CHUNK_ORDER: tl.constexpr, CHUNK_GROUP: tl.constexpr,
):
    """The gradients of a chunk's decay-weighted k.k and q.k matrices (A_x = x_t (k_t.k_i) exp(G_t - G_i), i < t,
    for x = beta, gamma; Mk = (k_t.k_i) exp(Gp_t - G_i); Mq, Mqi = (q_t.k_i) exp(G_t - G_i)), summed over V:
    d(I + A)^{-1} gives dA = -(T^T dU) U^T, strictly lower. Writes the two products that reach dq and dk
    (``mats`` [2, B, T, H, BT] fp32: dkk + dkk^T, dqk), dv, and the rows that read no state (``rows_part``
    [4, B*T*H]: dG, dGp, dbeta, dgamma; with dyv.v and dyr.rho(X)). A log-decay gradient is the matrix gradient
    times the matrix: rows get +, columns get -."""
    i_c, _, i_nh = chunk_ids(1, H, 1, CHUNK_ORDER, CHUNK_GROUP)
    bos, T_seq, i_t, i_h, o_t, _, in_seq, row_off = chunk_prologue(
        cu_seqlens, chunk_indices, i_c, i_nh, T, H, BT, IS_VARLEN)
    strict = o_t[:, None] > o_t[None, :]
    incl = o_t[:, None] >= o_t[None, :]
    tok_k = (bos * H + i_h) * K
    tok_v = (bos * H + i_h) * V
    tok_t = (bos * H + i_h) * BT
    block = tl.cast(NTH, tl.int64)
    mat_block = tl.cast(NTH, tl.int64) * BT

    b_G, b_Gp, _ = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
    b_beta = load_gate(beta, bos, T_seq, i_t, i_h, H, BT)
    b_gamma = load_gate(gamma, bos, T_seq, i_t, i_h, H, BT)

    b_dAb = tl.zeros([BT, BT], dtype=tl.float32)
    b_dAc = tl.zeros([BT, BT], dtype=tl.float32)
    b_dMk = tl.zeros([BT, BT], dtype=tl.float32)
    b_dMq = tl.zeros([BT, BT], dtype=tl.float32)
    b_dMqi = tl.zeros([BT, BT], dtype=tl.float32)
    b_dbv = tl.zeros([BT], dtype=tl.float32)
    b_dcx = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        # Every operand raw: do and the walks' U, W, dyr, dX, dyv are stored in the input dtype (chunk.py
        # _Layout.tokens), so the five sums are exact-product half dots; the scalings come after the loop.
        b_do = load_tile_raw(do + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_u = load_tile_raw(u + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_w = load_tile_raw(w + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dyr = load_tile_raw(dyr + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dx = load_tile_raw(dxc + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dyv = load_tile_raw(dyv + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dMqi += tl.dot(b_do, tl.trans(b_w), input_precision=DOT_PREC)
        b_dAc += tl.dot(b_dyr, tl.trans(b_w), input_precision=DOT_PREC)
        b_dMk += tl.dot(b_dx, tl.trans(b_u), input_precision=DOT_PREC)
        b_dMq += tl.dot(b_do, tl.trans(b_u), input_precision=DOT_PREC)
        b_dAb += tl.dot(b_dyv, tl.trans(b_u), input_precision=DOT_PREC)
        b_v = load_tile(v + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_x = load_tile(x + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dyv = b_dyv.to(tl.float32)
        b_dbv += tl.sum(b_dyv * b_v, axis=1)
        b_dcx += tl.sum(b_dyr.to(tl.float32) * _rho(b_x, clip, RESIDUAL), axis=1)
        store_tile(dv + tok_v, b_beta[:, None] * b_dyv + b_dx.to(tl.float32), i_t * BT, T_seq, H * V, i_v * BV, V,
                   BT, BV)

    # The matrices themselves, from the whole of q and k (raw: one exact product a pair).
    b_qf = load_tile_raw(q + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BKF)
    b_kf = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BKF)
    b_kk = tl.dot(b_kf, tl.trans(b_kf), input_precision=DOT_PREC)
    b_Eg = exp_masked(incl, b_G[:, None] - b_G[None, :])
    b_Ep = exp_masked(strict, b_Gp[:, None] - b_G[None, :])
    b_Mk = b_kk * b_Ep
    b_Mqi = tl.dot(b_qf, tl.trans(b_kf), input_precision=DOT_PREC) * b_Eg
    b_Mq = tl.where(strict, b_Mqi, 0.0)
    b_dAb = -tl.where(strict, b_dAb, 0.0)
    b_dAc = -tl.where(strict, b_dAc, 0.0)
    b_dMk = -tl.where(strict, b_dMk, 0.0)  # summed as dX U^T; Mk's adjoint is dsk U^T, dsk = -dX
    b_dMq = scale * tl.where(strict, b_dMq, 0.0)
    # gamma after the sum: the unscaled (scale do) W^T also gives dgamma's row rowsum(Mqi * it)
    b_dMqi = scale * tl.where(incl, b_dMqi, 0.0)
    b_dcx += tl.sum(b_dMqi * b_Mqi, axis=1)  # sum_v dsq (Mqi W): dgamma's, through rq
    b_dMqi = b_gamma[:, None] * b_dMqi

    b_kkEs = tl.where(strict, b_kk * b_Eg, 0.0)
    b_dA_rows = b_dAb * b_beta[:, None] + b_dAc * b_gamma[:, None]
    b_db = tl.sum(b_dAb * b_kkEs, axis=1)
    b_dc = tl.sum(b_dAc * b_kkEs, axis=1)
    b_dkk = b_dA_rows * tl.where(strict, b_Eg, 0.0) + b_dMk * b_Ep
    b_Dm = b_dA_rows * b_kkEs + b_dMq * b_Mq + b_dMqi * b_Mqi
    b_dG = tl.sum(b_Dm, axis=1) - tl.sum(b_Dm, axis=0)
    b_Dk = b_dMk * b_Mk
    b_dGp = tl.sum(b_Dk, axis=1)
    b_dG -= tl.sum(b_Dk, axis=0)
    b_dqk = (b_dMq + b_dMqi) * b_Eg
    store_tile(mats + tok_t, b_dkk + tl.trans(b_dkk), i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    store_tile(mats + mat_block + tok_t, b_dqk, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    tl.store(rows_part + row_off, b_dG, mask=in_seq)
    tl.store(rows_part + block + row_off, b_dGp, mask=in_seq)
    tl.store(rows_part + 2 * block + row_off, b_db + b_dbv, mask=in_seq)
    tl.store(rows_part + 3 * block + row_off, b_dc + b_dcx, mask=in_seq)


@triton.jit
def _store_tile_t(base, value_t, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """``store_tile`` of the transpose of ``value_t`` [BC, BR]: rows row0.., columns col0.. of the matrix."""
    rows = row0 + tl.arange(0, BR)
    cols = col0 + tl.arange(0, BC)
    ptrs = base + rows[None, :] * row_stride + cols[:, None]
    mask = (rows < n_rows)[None, :] & (cols < n_cols)[:, None]
    tl.store(ptrs, value_t.to(base.dtype.element_ty), mask=mask)


# The gradient kernel's V loop is only loads and accumulating dots: its seven state dots go into six fp32
# products, summed over V, and every row gate (scale, exp(G), exp(Gp), exp(GL - G), beta, gamma, the sign of
# dsk = -dX), the row sums and the mats kernel's two dots come once, after the loop. Row gates commute with the
# dots and with the sum over V, so the products are the same exact-product half dots as before; only the fp32
# order of the gating changes. The products are held transposed, [BK, BT] = state tile x token tile^T: with
# BK = 64 rows a dot is a Hopper warpgroup MMA (wgmma) reading both operands from the pipeline's shared memory,
# where a [BT = 32, BK] product is an mma.sync whose every warp holds the whole token tile in registers. The
# epilogue stays transposed (a token's gate scales a column, its row sum is a column sum, dq and dk are stored
# through transposed pointers): no layout change of the six accumulators. With the register cap (maxnreg 128)
# two 8-warp programs fit an SM (ptxas spills ~100-180 bytes a thread, in the epilogue); docs/next/rdn-grad-plan.md.
# On the H200 (Triton 3.6, B=16 T=2k H=16 K=V=128 bf16, 2026-12-01 13:29-13:41) the autotuner never picked those:
# 4 warps and 3 stages at 32-wide V-blocks (1.62 ms), 4 warps and 2 stages at 64 (1.41 ms, chunk.GRAD_BV).
# Until 2026-12-01 the loop gated each V-block's [BT, BK] products and took five row sums a turn (cross-warp
# reductions through shared memory), with dq, dk, dkd and the fp32 q, k tiles live across it: 255 registers and
# 24-32 stack bytes at four warps, 2.39-2.57 ms at B=16 T=2k H=16 K=V=128 bf16 (H200); in git history.
# (4, 2) first, the H200 autotuner's pick (1.29 ms, B=16 T=2k H=16 K=V=128 bf16, 2026-12-04 15:27; 1.50 when
# <S0, dS> + <R0, dR> had a second loop that re-read the state tiles from L2, 1.74 at (4, 1) before): two programs
# an SM. Before the sum read the V loop's tiles behind a wait on its last dot (the + 0.0 there), or had a loop of
# its own, every 2- and 3-stage config here raced (dk and dg changed from run to run, docs/next/rdn-grad-determinism.py)
# and the list was (4, 1), (8, 1); `scripts/kernel_resources.py --hazards` finds no such race at any of these configs
# now (Triton 3.6 and 3.9, sm_90), and tests/test_kernel_resources.py keeps it so.
GRAD_LAUNCHES = ((4, 2), (8, 1), (4, 1), (8, 2), (4, 3), (8, 3), (8, 2, 128), (8, 3, 128))  # (warps, stages[, maxnreg])
@autotune(configs=launch_configs(*GRAD_LAUNCHES),
          key=["H", "K", "V", "BT", "BK", "BV", "DOT_PREC"])
@triton.jit(do_not_specialize=["T", "NTH"])
def _rdn_bwd_grad_kernel(
    q, k, g, beta, gamma, h_s, h_r, h_ds, h_dr, do, u, w, dyr, dxc, dyv, mats, rows_part,
    dq, dk, dg_part,
    cu_seqlens, chunk_indices, scale, T, NTH,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr, CHUNK_GROUP: tl.constexpr,
):
    """dq and dk of K-block i_k: the terms that read the chunk's start states S0, R0 and end adjoints dS, dR, then
    _rdn_bwd_mats_kernel's two products against this block's q and k columns. The rows that read the states come
    from this block's K-side products (sum_v a (k S) = sum_k k (a S^T)); block 0 adds the mats kernel's rows.
    Every block writes four slabs ``dg_part`` [4, NK, B*T*H] (dg's rows, -dGp, dbeta, dgamma) that
    _rdn_bwd_dg_kernel sums."""
    i_c, i_k, i_nh = chunk_ids(2, H, (K + BK - 1) // BK, CHUNK_ORDER, CHUNK_GROUP)
    bos, T_seq, i_t, i_h, o_t, rows, in_seq, row_off = chunk_prologue(
        cu_seqlens, chunk_indices, i_c, i_nh, T, H, BT, IS_VARLEN)
    h_off = (state_row(i_c, i_nh, T, H, BT, IS_VARLEN) * H + i_h) * K * V
    tok_k = (bos * H + i_h) * K
    tok_v = (bos * H + i_h) * V
    tok_t = (bos * H + i_h) * BT
    block = tl.cast(NTH, tl.int64)

    # The state reads of this K-block: M1 = exp(GL) M0 + Kd^T (U or W); rq = exp(G) Q R0 + ...; yr = res - exp(G)
    # K R0; sk = exp(Gp) K S0 + ...; sq = exp(G) Q S0 + ...; yv = v - exp(G) K S0. Their adjoints' products,
    # ungated and transposed, [BK, BT] (a state tile times a token tile^T; the comment above the kernel says why):
    b_pqr_t = tl.zeros([BK, BT], dtype=tl.float32)  # R0 do^T       -> dq, gate scale exp(G) gamma
    b_pqs_t = tl.zeros([BK, BT], dtype=tl.float32)  # S0 do^T       -> dq, gate scale exp(G)
    b_pkr_t = tl.zeros([BK, BT], dtype=tl.float32)  # R0 dyr^T      -> dk, gate -gamma exp(G)
    b_pkv_t = tl.zeros([BK, BT], dtype=tl.float32)  # S0 dyv^T      -> dk, gate -beta exp(G)
    b_pkx_t = tl.zeros([BK, BT], dtype=tl.float32)  # S0 dX^T       -> dk, gate -exp(Gp)
    b_pkd_t = tl.zeros([BK, BT], dtype=tl.float32)  # dS U^T + dR W^T -> dk, gate exp(GL - G)
    b_hdh = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        # Every operand raw: the states and do, U, W, dyr, dX, dyv are in the input dtype (chunk.py
        # _Layout.tokens), so each dot is one exact-product half dot.
        b_s = load_tile_raw(h_s + h_off, i_k * BK, K, V, i_v * BV, V, BK, BV)
        b_r = load_tile_raw(h_r + h_off, i_k * BK, K, V, i_v * BV, V, BK, BV)
        b_ds = load_tile_raw(h_ds + h_off, i_k * BK, K, V, i_v * BV, V, BK, BV)
        b_dr = load_tile_raw(h_dr + h_off, i_k * BK, K, V, i_v * BV, V, BK, BV)
        b_do = load_tile_raw(do + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_u = load_tile_raw(u + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_w = load_tile_raw(w + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dyr = load_tile_raw(dyr + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dyv = load_tile_raw(dyv + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_dx = load_tile_raw(dxc + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_pkd_t = tl.dot(b_ds, tl.trans(b_u), b_pkd_t, input_precision=DOT_PREC)
        b_pkd_t = tl.dot(b_dr, tl.trans(b_w), b_pkd_t, input_precision=DOT_PREC)
        b_pqr_t = tl.dot(b_r, tl.trans(b_do), b_pqr_t, input_precision=DOT_PREC)
        b_pqs_t = tl.dot(b_s, tl.trans(b_do), b_pqs_t, input_precision=DOT_PREC)
        b_pkr_t = tl.dot(b_r, tl.trans(b_dyr), b_pkr_t, input_precision=DOT_PREC)
        b_pkv_t = tl.dot(b_s, tl.trans(b_dyv), b_pkv_t, input_precision=DOT_PREC)
        # <S0, dS> + <R0, dR> from the same tiles. A load read both by a dot and as registers gets one shared slot
        # at 2 stages (Triton 3.6 LowerLoops.cpp lowerLoads: the extra wgmma slot only for a load whose one use is
        # the dot's local_alloc), refilled for the next V-block at the end of the body; the last dot's result read
        # in the loop (the + 0.0, exact: a +0-started accumulator is never -0) makes it not "properly async"
        # (WGMMAPipeline.cpp dotCanBeProperlyAsync, rule 2), so a warp_group_dot_wait {pendings = 0} follows it,
        # before that refill: every dot reading the slots is done (scripts/kernel_resources.py --hazards).
        b_hdh += tl.sum(b_ds.to(tl.float32) * b_s.to(tl.float32) + b_dr.to(tl.float32) * b_r.to(tl.float32), axis=1)
        b_pkx_t = tl.dot(b_s, tl.trans(b_dx), b_pkx_t, input_precision=DOT_PREC) + 0.0

    # Gated and summed in the loop's [BK, BT] orientation (a token's gate scales a column, its row sum is a column
    # sum): no layout change of the six accumulators.
    b_G, b_Gp, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
    b_beta = load_gate(beta, bos, T_seq, i_t, i_h, H, BT)
    b_gamma = load_gate(gamma, bos, T_seq, i_t, i_h, H, BT)
    first = in_seq & ((o_t * 0 + i_k) == 0)  # the mats kernel's rows count once
    b_dG = tl.load(rows_part + row_off, mask=first, other=0.0)
    b_dGp = tl.load(rows_part + block + row_off, mask=first, other=0.0)
    b_db = tl.load(rows_part + 2 * block + row_off, mask=first, other=0.0)
    b_dc = tl.load(rows_part + 3 * block + row_off, mask=first, other=0.0)
    b_DKK = load_tile(mats + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    # The second matrix's offset and exp(G) made here, after the loop: made before it (an int64, a [BT] vector) they
    # took ptxas's spill stack from 112 to 120 bytes (Triton 3.9), and on the H200 (Triton 3.6, 2026-12-04) the kernel
    # ran 1.455 ms where docs/next/rdn-grad-anatomy.py's copy, in this order, ran 1.347.
    b_DQK = load_tile(mats + block * BT + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    b_kb_t = tl.trans(load_tile(k + tok_k, i_t * BT, T_seq, H * K, i_k * BK, K, BT, BK))
    b_qb_t = tl.trans(load_tile(q + tok_k, i_t * BT, T_seq, H * K, i_k * BK, K, BT, BK))
    b_eG = tl.exp(b_G)[None, :]

    # dq, and the rows through q: sum_v a (q R) = sum_k q (a R^T).
    b_pqr_t = (scale * b_eG) * b_pqr_t
    b_pqs_t = (scale * b_eG) * b_pqs_t
    b_dq_t = tl.dot(b_kb_t, tl.trans(b_DQK), input_precision=DOT_PREC) + b_gamma[None, :] * b_pqr_t + b_pqs_t
    _store_tile_t(dq + tok_k, b_dq_t, i_t * BT, T_seq, H * K, i_k * BK, K, BT, BK)
    b_tqr = tl.sum(b_qb_t * b_pqr_t, axis=0)
    b_dG += tl.sum(b_qb_t * b_pqs_t, axis=0) + b_gamma * b_tqr
    b_dc += b_tqr

    # dk, and the rows through k. Kd = K exp(GL - G): its gradient goes to dk, and its decay's to dG (-Dd per
    # row, sum(Dd) at the end).
    b_pkr_t = b_eG * b_pkr_t
    b_pkv_t = b_eG * b_pkv_t
    b_pkx_t = -tl.exp(b_Gp)[None, :] * b_pkx_t
    b_dec = tl.exp(b_GL - b_G)
    b_pkd_t = b_pkd_t * b_dec[None, :]
    b_dk_t = tl.dot(b_kb_t, tl.trans(b_DKK), input_precision=DOT_PREC)
    b_dk_t += tl.dot(b_qb_t, b_DQK, input_precision=DOT_PREC)
    b_dk_t += b_pkx_t - b_beta[None, :] * b_pkv_t - b_gamma[None, :] * b_pkr_t + b_pkd_t
    _store_tile_t(dk + tok_k, b_dk_t, i_t * BT, T_seq, H * K, i_k * BK, K, BT, BK)
    b_tkr = tl.sum(b_kb_t * b_pkr_t, axis=0)
    b_tkv = tl.sum(b_kb_t * b_pkv_t, axis=0)
    b_dG -= b_gamma * b_tkr + b_beta * b_tkv
    b_dGp += tl.sum(b_kb_t * b_pkx_t, axis=0)
    b_db -= b_tkv
    b_dc -= b_tkr
    b_Dd = tl.sum(b_kb_t * b_pkd_t, axis=0)

    # GL's share, exp(GL) (<S0, dS> + <R0, dR>), and Kd's, sum(Dd): both on the chunk's last row, whose dG reaches
    # every row's dg through the reverse cumsum; put on its last row in the sequence, they reach the same.
    b_end = tl.exp(b_GL) * tl.sum(b_hdh, axis=0) + tl.sum(b_Dd, axis=0)
    b_part = b_dG + b_dGp
    b_part += tl.where(rows == tl.minimum(T_seq, i_t * BT + BT) - 1, b_end, 0.0) - b_Dd
    nk = tl.cast(tl.num_programs(1), tl.int64)
    tl.store(dg_part + i_k * block + row_off, b_part, mask=in_seq)
    tl.store(dg_part + (nk + i_k) * block + row_off, -b_dGp, mask=in_seq)
    tl.store(dg_part + (2 * nk + i_k) * block + row_off, b_db, mask=in_seq)
    tl.store(dg_part + (3 * nk + i_k) * block + row_off, b_dc, mask=in_seq)


@triton.jit(do_not_specialize=["T", "NTH"])
def _rdn_bwd_dg_kernel(
    dg_part, dg, dbeta, dgamma, cu_seqlens, chunk_indices, T, NTH,
    H: tl.constexpr, BT: tl.constexpr, NK: tl.constexpr, IS_VARLEN: tl.constexpr,
    CHUNK_ORDER: tl.constexpr, CHUNK_GROUP: tl.constexpr,
):
    """dg, dbeta, dgamma of one chunk (the finisher of _rdn_bwd_grad_kernel): the K-blocks' four slabs summed, dg
    as the reverse cumsum of its rows plus -dGp (fla's chunk_local_cumsum(reverse=True) in its gated delta rule)."""
    i_c, _, i_nh = chunk_ids(1, H, 1, CHUNK_ORDER, CHUNK_GROUP)
    _, _, _, _, o_t, _, in_seq, row_off = chunk_prologue(cu_seqlens, chunk_indices, i_c, i_nh, T, H, BT, IS_VARLEN)
    block = tl.cast(NTH, tl.int64)
    b_p = tl.zeros([BT], dtype=tl.float32)
    for j in range(0, NK):
        b_p += tl.load(dg_part + j * block + row_off, mask=in_seq, other=0.0)
    b_dg = tl.sum(tl.where(o_t[:, None] >= o_t[None, :], b_p[:, None], 0.0), axis=0)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dc = tl.zeros([BT], dtype=tl.float32)
    for j in range(0, NK):
        b_dg += tl.load(dg_part + (NK + j) * block + row_off, mask=in_seq, other=0.0)
        b_db += tl.load(dg_part + (2 * NK + j) * block + row_off, mask=in_seq, other=0.0)
        b_dc += tl.load(dg_part + (3 * NK + j) * block + row_off, mask=in_seq, other=0.0)
    tl.store(dbeta + row_off, b_db.to(dbeta.dtype.element_ty), mask=in_seq)
    tl.store(dgamma + row_off, b_dc.to(dgamma.dtype.element_ty), mask=in_seq)
    tl.store(dg + row_off, b_dg.to(dg.dtype.element_ty), mask=in_seq)
