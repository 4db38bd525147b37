"""RDN chunk forward in Triton: a lean sequential walk for the states, then the output, all chunks in parallel.

Per chunk (BT tokens, G = inclusive cumsum of g from the chunk start, Gp = G - g, GL = G at the chunk end,
S0/R0 the chunk-start states, T_beta, T_gamma, Mk, Mqi from wy.py), with the decay of every pair i, t
taken as exp(G_t - G_i) or exp(Gp_t - G_i), exponents <= 0 where used:

    U   = T_beta diag(beta) (V - diag(exp G) K S0)             pseudo-values of S
    X   = V - (exp(Gp) * K S0 + Mk U)                          v_t - S_{t-1}^T k_t (undecayed read)
    W   = T_gamma diag(gamma) (rho(X) - diag(exp G) K R0)      pseudo-values of R
    S1  = exp(GL) S0 + (K * exp(GL - G))^T U,   R1 likewise with W
    o   = scale * (exp(G) * Q S0 + Mq U + gamma * (exp(G) * Q R0 + Mqi W)),   Mq = Mqi without its diagonal

The walk (one program per (sequence, head, V-block): every quantity is column-wise in V once the K-reductions are done)
carries S and R in registers and does only what the recurrence needs: four [BT, K] x [K, BV] dots and three [BT, BT]
ones a chunk, no K x K work (that is wy.py's, chunk-parallel). It stores the chunk-start states (every other one where
only the output kernel reads them, which then runs at 64-token chunks: chunk.STATE_EVERY), U and W (for the output
kernel, one program per (chunk, head, V-block), and the backward's gradients) and, for the backward, X.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..rla.fused_recurrent import _rho
from ..triton_utils import dot_split, load_gate, walk_state_slot
from ._triton_helpers import (autotune, chunk_ids, chunk_prologue, dot_at, dot_cast, launch_configs, load_rows,
                              load_tile, load_tile_raw, load_tile_t, load_tile_t_raw, store_tile, store_tile_t,
                              walk_bounds)
from .wy import mqi_tile


@triton.jit
def chunk_decays(g, bos, T_seq, i_t, i_h, H: tl.constexpr, BT: tl.constexpr):
    """G, Gp and GL of one chunk; rows past the sequence end read g = 0 and keep G flat."""
    rows = i_t * BT + tl.arange(0, BT)
    b_g = tl.load(g + (bos + rows) * H + i_h, mask=rows < T_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_GL = tl.sum(tl.where(tl.arange(0, BT) == BT - 1, b_G, 0.0), axis=0)
    return b_G, b_G - b_g, b_GL


@triton.jit
def state_row(i_c, i_nh, T, H: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Row of a chunk-parallel program's chunk in the per-chunk state buffers [n_chunks, H, K, V]."""
    if IS_VARLEN:
        row = i_c  # chunk_tables orders the chunks as the state rows
    else:
        row = (i_nh // H) * tl.cdiv(T, BT) + i_c
    return row


# No autotuner: the launcher picks the width (chunk.WALK_WARPS). On the H200 (Triton 3.6) autotuning this walk
# at T = 32k, B = 1 (16-wide V-blocks) hit an illegal memory access twice, with {4, 8} warps x {1, 2} stages
# and with 4 or 8 warps at 1 stage; 4 warps, 1 stage alone ran there and passed the float64 checks
# (2026-11-30). Not narrowed down further.
@triton.jit(do_not_specialize=["T"])
def _rdn_walk_kernel(
    k, v, g, beta, gamma, t_beta, t_gamma, m_k, s0, r0,
    h_s, h_r, u_out, w_out, x_out, s_out, r_out,
    cu_seqlens, chunk_offsets, clip, x_inside, x_outside, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    U_PREC: tl.constexpr, X_PREC: tl.constexpr, W_PREC: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_R0: tl.constexpr, STORE_X: tl.constexpr, NUDGE_X: tl.constexpr,
    IS_VARLEN: tl.constexpr, RAW_K: tl.constexpr, SPLIT_S: tl.constexpr, STATE_EVERY: tl.constexpr,
):
    """U and W for the output kernel and the backward's gradients, X with STORE_X for the backward. U_PREC: the
    precision of T_beta's dot (U, which S's update carries on); X_PREC: of Mk's (X) and of k.S too without RAW_K;
    W_PREC: of T_gamma's (W); each may be "half3" (_triton_helpers.dot_at: three half dots of split operands, ~2^-16;
    U_PREC and X_PREC with RAW_K only) or "half" (both operands rounded, one half dot: chunk.INFER_HALF).
    SPLIT_S (with RAW_K): S's two dots with raw k split the state (dot_split, ~2^-16) instead of rounding it to k's
    dtype (dot_cast, 2^-9). The backward asks for both, tf32x3 and split (about fp32), because the clip's gradient
    jumps where |X| crosses c, and its mask comes from the X stored here. R never reaches X: its dots always round
    (dot_cast), as fla's walks. X is stored in the input dtype (half its fp32 bytes, for this store and its two
    readers); NUDGE_X (the clip, half inputs): an X whose rounding would cross c is stored as the input dtype's value
    next to c on its own side (``x_inside`` <= c < ``x_outside``, with X's sign), so that the mask read back from the
    stored X is the fp32 X's."""
    KS_PREC: tl.constexpr = DOT_PREC if X_PREC == "half" else X_PREC  # k.S's dot: "half" is for the matrices
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    bos, T_seq, boh, NT, i_h, tok_k, tok_v, tok_t = walk_bounds(cu_seqlens, chunk_offsets, i_nh, T, H, K, V, BT,
                                                                IS_VARLEN)
    if STATE_EVERY == 2 and not IS_VARLEN:  # the even chunks' start states alone (walk_state_slot; packed: the
        # launcher passes chunk_offsets at twice the chunk)
        boh = (i_nh // H) * tl.cdiv(tl.cdiv(T, BT), 2)

    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    b_r = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        b_s += load_tile(s0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)
    if HAS_R0:
        b_r += load_tile(r0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)

    for i_loop in range(0, NT):
        i_t = tl.cast(i_loop, tl.int64)
        h_off, h_rows = walk_state_slot(i_t, boh, i_h, H, K, V, STATE_EVERY)
        store_tile(h_s + h_off, b_s, 0, h_rows, V, i_v * BV, V, BK, BV)
        store_tile(h_r + h_off, b_r, 0, h_rows, V, i_v * BV, V, BK, BV)
        b_G, b_Gp, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
        b_beta = load_gate(beta, bos, T_seq, i_t, i_h, H, BT)
        b_gamma = load_gate(gamma, bos, T_seq, i_t, i_h, H, BT)
        # RAW_K: k stays in its input dtype, its dots with the fp32 states round those (dot_cast) or, S's with
        # SPLIT_S, split them into two half tiles (dot_split), so no fp32 copy of the [BT, K] tile (nor a decayed
        # one) is live in the loop. Else an fp32 k and plain dots at DOT_PREC (the launcher says when).
        if RAW_K:
            b_k = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        else:
            b_k = load_tile(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_tb = load_tile(t_beta + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_tc = load_tile(t_gamma + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_mk = load_tile(m_k + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_eG = tl.exp(b_G)[:, None]

        # Both k-state dots first, and v loaded just before it is used: this order, only, took ptxas's stack (sm_90,
        # K = V = 128, BV = 32, 4 warps; scripts/kernel_resources.py) from 240 to 88 bytes a thread here and from 368
        # to 240 in the backward's rerun (STORE_X, tf32x3); loading the chunk matrices late as well did not help both.
        if X_PREC == "half3":  # only with raw half k (chunk.py): k.S is then half dots whatever the precision
            b_ks = dot_split(b_k, b_s, DOT_PREC)
        elif SPLIT_S:
            b_ks = dot_split(b_k, b_s, X_PREC)
        else:
            b_ks = dot_cast(b_k, b_s, KS_PREC)
        b_kr = dot_cast(b_k, b_r, DOT_PREC)
        b_v = load_tile(v + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_u = dot_at(b_tb, b_beta[:, None] * (b_v - b_eG * b_ks), U_PREC, k.dtype.element_ty)
        b_x = b_v - (tl.exp(b_Gp)[:, None] * b_ks + dot_at(b_mk, b_u, X_PREC, k.dtype.element_ty))
        b_w = dot_at(b_tc, b_gamma[:, None] * (_rho(b_x, clip, RESIDUAL) - b_eG * b_kr), W_PREC, k.dtype.element_ty)

        store_tile(u_out + tok_v, b_u, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        store_tile(w_out + tok_v, b_w, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        if STORE_X:
            b_xs = b_x
            if NUDGE_X:
                inside = tl.abs(b_x) <= clip
                stays = inside == (tl.abs(b_x.to(x_out.dtype.element_ty).to(tl.float32)) <= clip)
                b_xs = tl.where(stays, b_x, tl.where(b_x < 0, -1.0, 1.0) * tl.where(inside, x_inside, x_outside))
            store_tile(x_out + tok_v, b_xs, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        # (K exp(GL - G))^T U as K^T (exp(GL - G) U): the decay goes on the [BT, BV] side.
        b_dL = tl.exp(b_GL - b_G)[:, None]
        if SPLIT_S:
            b_s = b_s * tl.exp(b_GL) + dot_split(tl.trans(b_k), b_dL * b_u, DOT_PREC)
        else:
            b_s = b_s * tl.exp(b_GL) + dot_cast(tl.trans(b_k), b_dL * b_u, DOT_PREC)
        b_r = b_r * tl.exp(b_GL) + dot_cast(tl.trans(b_k), b_dL * b_w, DOT_PREC)

    store_tile(s_out + i_nh * K * V, b_s, 0, K, V, i_v * BV, V, BK, BV)
    store_tile(r_out + i_nh * K * V, b_r, 0, K, V, i_v * BV, V, BK, BV)


@triton.jit(do_not_specialize=["T"])
def _rdn_walk_t_kernel(
    k, v, g, beta, gamma, t_beta, t_gamma, m_k, s0, r0,
    h_s, h_r, u_out, w_out, x_out, s_out, r_out,
    cu_seqlens, chunk_offsets, clip, x_inside, x_outside, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    U_PREC: tl.constexpr, X_PREC: tl.constexpr, W_PREC: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_R0: tl.constexpr, STORE_X: tl.constexpr, NUDGE_X: tl.constexpr,
    IS_VARLEN: tl.constexpr, SPLIT_S: tl.constexpr, STATE_EVERY: tl.constexpr, TMA: tl.constexpr = 0,
):
    """_rdn_walk_kernel (raw half k) transposed: it carries S^T, R^T [BV, K] and makes every [BT, BV] token tile as
    its transpose [BV, BT], so that every dot has the V-block's BV rows (the state, and the tiles the chain makes,
    on the left; k, k^T and the chunk matrices, inputs, on the right) where the untransposed walk's token dots have
    BT = 32 rows. Why: a left operand can stay in registers from the dot that made it, where a right one goes
    through shared memory, so the chain U -> X -> W never leaves registers (at 32 wide the dots are still mma.sync:
    Hopper's wgmma takes 64 rows or more a warpgroup, and 64 wide was slower; chunk.WALK_T has the times). Same
    math, dot for dot, as _rdn_walk_kernel (its docstring has the precisions); the per-token gates scale columns.
    TMA (chunk.WALK_TMA): k and v (1), and the chunk matrices (2), are descriptors (chunk._walk_descriptors), k's tile
    loaded once a chunk and read both ways. Their rows past the sequence's end are the next sequence's tokens: U's and
    W's columns there (beta, gamma 0) are then not 0 but are stored nowhere, X's in-sequence columns read them through
    Mk's zeros above its diagonal, and the state updates weigh them by a masked decay."""
    KS_PREC: tl.constexpr = DOT_PREC if X_PREC == "half" else X_PREC  # k.S's dot: "half" is for the matrices
    if TMA:
        KT = k.dtype
    else:
        KT = k.dtype.element_ty
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    bos, T_seq, boh, NT, i_h, tok_k, tok_v, tok_t = walk_bounds(cu_seqlens, chunk_offsets, i_nh, T, H, K, V, BT,
                                                                IS_VARLEN)
    if STATE_EVERY == 2 and not IS_VARLEN:  # the even chunks' start states alone (walk_state_slot; packed: the
        # launcher passes chunk_offsets at twice the chunk)
        boh = (i_nh // H) * tl.cdiv(tl.cdiv(T, BT), 2)

    b_st = tl.zeros([BV, BK], dtype=tl.float32)
    b_rt = tl.zeros([BV, BK], dtype=tl.float32)
    if HAS_S0:
        b_st += load_tile_t(s0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)
    if HAS_R0:
        b_rt += load_tile_t(r0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)

    for i_loop in range(0, NT):
        i_t = tl.cast(i_loop, tl.int64)
        h_off, h_rows = walk_state_slot(i_t, boh, i_h, H, K, V, STATE_EVERY)
        store_tile_t(h_s + h_off, b_st, 0, h_rows, V, i_v * BV, V, BK, BV)
        store_tile_t(h_r + h_off, b_rt, 0, h_rows, V, i_v * BV, V, BK, BV)
        b_G, b_Gp, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
        b_beta = load_gate(beta, bos, T_seq, i_t, i_h, H, BT)
        b_gamma = load_gate(gamma, bos, T_seq, i_t, i_h, H, BT)
        row = tl.cast(bos + i_t * BT, tl.int32)
        if TMA:
            b_k = load_rows(k, row, tl.cast(i_h * K, tl.int32), True)
            b_kt = tl.trans(b_k)
        else:
            b_kt = load_tile_t_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)  # k^T [K, BT]
        if TMA == 2:
            b_tbt = tl.trans(load_rows(t_beta, row, tl.cast(i_h * BT, tl.int32)))
            b_tct = tl.trans(load_rows(t_gamma, row, tl.cast(i_h * BT, tl.int32)))
            b_mkt = tl.trans(load_rows(m_k, row, tl.cast(i_h * BT, tl.int32)))
        else:
            b_tbt = load_tile_t(t_beta + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)  # T_beta^T
            b_tct = load_tile_t(t_gamma + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
            b_mkt = load_tile_t(m_k + tok_t, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_eG = tl.exp(b_G)[None, :]

        # (k S)^T = S^T k^T, (k R)^T likewise
        if X_PREC == "half3":
            b_kst = dot_split(b_st, b_kt, DOT_PREC)
        elif SPLIT_S:
            b_kst = dot_split(b_st, b_kt, X_PREC)
        else:
            b_kst = dot_cast(b_st, b_kt, KS_PREC)
        b_krt = dot_cast(b_rt, b_kt, DOT_PREC)
        if TMA:
            b_vt = tl.trans(load_rows(v, row, tl.cast(i_h * V + i_v * BV, tl.int32)))
        else:
            b_vt = load_tile_t(v + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_ut = dot_at(b_beta[None, :] * (b_vt - b_eG * b_kst), b_tbt, U_PREC, KT)
        b_xt = b_vt - (tl.exp(b_Gp)[None, :] * b_kst + dot_at(b_ut, b_mkt, X_PREC, KT))
        b_wt = dot_at(b_gamma[None, :] * (_rho(b_xt, clip, RESIDUAL) - b_eG * b_krt), b_tct, W_PREC, KT)

        store_tile_t(u_out + tok_v, b_ut, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        store_tile_t(w_out + tok_v, b_wt, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        if STORE_X:
            b_xs = b_xt
            if NUDGE_X:
                inside = tl.abs(b_xt) <= clip
                stays = inside == (tl.abs(b_xt.to(x_out.dtype.element_ty).to(tl.float32)) <= clip)
                b_xs = tl.where(stays, b_xt, tl.where(b_xt < 0, -1.0, 1.0) * tl.where(inside, x_inside, x_outside))
            store_tile_t(x_out + tok_v, b_xs, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        # S^T <- exp(GL) S^T + (exp(GL - G) U)^T k: k as the right operand [BT, K], loaded as it lies
        b_dL = tl.exp(b_GL - b_G)[None, :]
        if TMA:
            b_dL = tl.where((i_t * BT + tl.arange(0, BT) < T_seq)[None, :], b_dL, 0.0)
        else:
            b_k = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        if SPLIT_S:
            b_st = b_st * tl.exp(b_GL) + dot_split(b_dL * b_ut, b_k, DOT_PREC)
        else:
            b_st = b_st * tl.exp(b_GL) + dot_cast(b_dL * b_ut, b_k, DOT_PREC)
        b_rt = b_rt * tl.exp(b_GL) + dot_cast(b_dL * b_wt, b_k, DOT_PREC)

    store_tile_t(s_out + i_nh * K * V, b_st, 0, K, V, i_v * BV, V, BK, BV)
    store_tile_t(r_out + i_nh * K * V, b_rt, 0, K, V, i_v * BV, V, BK, BV)


@autotune(configs=launch_configs(), key=["H", "K", "V", "BT", "BK", "BV", "DOT_PREC"])
@triton.jit(do_not_specialize=["T"])
def _rdn_out_kernel(
    q, k, g, gamma, h_s, h_r, u, w, o, cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr, CHUNK_GROUP: tl.constexpr,
):
    """o of one (chunk, V-block). The chunk need not be the walk's: with chunk.STATE_EVERY 2 it is two of them (64
    tokens), whose start states are the walk's every other one (see there)."""
    i_c, i_v, i_nh = chunk_ids(2, H, (V + BV - 1) // BV, CHUNK_ORDER, CHUNK_GROUP)
    bos, T_seq, i_t, i_h, o_t, _, _, _ = chunk_prologue(cu_seqlens, chunk_indices, i_c, i_nh, T, H, BT, IS_VARLEN)
    h_off = (state_row(i_c, i_nh, T, H, BT, IS_VARLEN) * H + i_h) * K * V
    b_G, _, _ = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
    b_gamma = load_gate(gamma, bos, T_seq, i_t, i_h, H, BT)
    # q, k, the states, U and W raw: all come in the input dtype (chunk.py chunk_states, _Layout.tokens), so q.S
    # is one half dot and no fp32 [BT, K] or [K, BV] copy is live. Mq U and Mqi W are half dots too, Mq rounded to
    # the input dtype (2^-9 for bf16) as fla's chunk output rounds its intra-chunk matrix: at tf32 with fp32 U, W
    # they took U, W's shared tiles at twice the bytes and the tensor cores at half rate (this kernel 0.54 -> 0.44 ms
    # at B=16 T=2k H=16 K=V=128 bf16, H200, 2026-12-04; o's bf16 error 2.4e-3 -> 2.9e-3 against float64).
    b_q = load_tile_raw(q + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    b_k = load_tile_raw(k + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    b_u = load_tile_raw(u + (bos * H + i_h) * V, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    b_w = load_tile_raw(w + (bos * H + i_h) * V, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    b_s = load_tile_raw(h_s + h_off, 0, K, V, i_v * BV, V, BK, BV)
    b_r = load_tile_raw(h_r + h_off, 0, K, V, i_v * BV, V, BK, BV)

    b_mqi = mqi_tile(b_q, b_k, b_G, o_t, DOT_PREC)
    b_mq = tl.where(o_t[:, None] > o_t[None, :], b_mqi, 0.0)
    b_eG = tl.exp(b_G)[:, None]
    b_sq = b_eG * tl.dot(b_q, b_s, input_precision=DOT_PREC) + dot_cast(b_mq, b_u, DOT_PREC)
    b_rq = b_eG * tl.dot(b_q, b_r, input_precision=DOT_PREC) + dot_cast(b_mqi, b_w, DOT_PREC)
    b_o = scale * (b_sq + b_gamma[:, None] * b_rq)
    store_tile(o + (bos * H + i_h) * V, b_o, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
