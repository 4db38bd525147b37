"""RLA chunk forward in Triton: one sequential state walk, then chunk-parallel outputs.

Per (sequence, head), chunks of BT tokens, G = inclusive cumsum of the log decay g inside a chunk,
Gm = G - g (the exclusive sum), h_S / h_R the states at the chunk start ([K, V], fp32):

    u_t  = S_{t-1}^T k_t = exp(Gm_t) h_S^T k_t + sum_{i<t}  exp(Gm_t - G_i) beta_i  (k_i.k_t) v_i
    r_t  = rho(v_t - u_t)
    o1_t = a_t S_{t-1}^T q_t = exp(G_t) h_S^T q_t + sum_{i<t}  exp(G_t - G_i) beta_i  (k_i.q_t) v_i
    o2_t = R_t^T q_t         = exp(G_t) h_R^T q_t + sum_{i<=t} exp(G_t - G_i) gamma_i (k_i.q_t) r_i
    o_t  = scale * (o1_t + gamma_t o2_t)

``_rla_fwd_states_kernel`` walks the chunks of a sequence in order (one program per sequence, head and
V-block: everything is column-wise in V once the K-reductions are done, as K is held whole). It stores
every chunk-start state h_S, h_R once, answers the key queries u_t from h_S, turns them into residuals
r_t, and advances both states. ``_rla_fwd_output_kernel`` then answers the q queries from the same
stored states, all chunks in parallel. The backward (chunk_bwd.py) reruns the walk to get h and r back.

Every decay factor is exp of a non-positive number where it is used (masked entries go through
tl.where, never a multiply by 0, so an overflowed exp cannot become NaN).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..triton_utils import autotune, dot_split, exp_where, load_tile, store_tile, warps_stages_configs
from .fused_recurrent import _rho


@triton.jit
def _seq_bounds(cu_seqlens, chunk_offsets, i_n, T, NT_fixed, IS_VARLEN: tl.constexpr):
    """First token, length and first state row of sequence i_n (int64)."""
    if IS_VARLEN:
        bos = tl.cast(tl.load(cu_seqlens + i_n), tl.int64)
        eos = tl.cast(tl.load(cu_seqlens + i_n + 1), tl.int64)
        boh = tl.cast(tl.load(chunk_offsets + i_n), tl.int64)
    else:
        bos = i_n * T
        eos = bos + T
        boh = i_n * NT_fixed
    return bos, eos - bos, boh


@autotune(configs=warps_stages_configs(), key=["H", "K", "V", "BT", "BV", "RESIDUAL", "DOT_PREC", "DOTS_FP32"])
@triton.jit(do_not_specialize=["T"])
def _rla_fwd_states_kernel(
    k, v, g, beta, gamma, s0, r0,
    h_s, h_r, res, s_out, r_out,
    cu_seqlens, chunk_offsets, clip, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_R0: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, T_seq, boh = _seq_bounds(cu_seqlens, chunk_offsets, i_n, T, tl.cdiv(T, BT), IS_VARLEN)
    NT = tl.cdiv(T_seq, BT)
    DT = k.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    o_t = tl.arange(0, BT)
    strict = o_t[:, None] > o_t[None, :]  # [query t, key i]: i < t

    b_hs = tl.zeros([BK, BV], dtype=tl.float32)
    b_hr = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        b_hs += load_tile(s0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    if HAS_R0:
        b_hr += load_tile(r0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV).to(tl.float32)

    for i_loop in range(0, NT):
        i_t = tl.cast(i_loop, tl.int64)
        # Chunk-start states, stored once: the output kernel and the backward read them.
        h_off = ((boh + i_t) * H + i_h) * K * V
        store_tile(h_s + h_off, b_hs, 0, K, V, i_v * BV, V, BK, BV)
        store_tile(h_r + h_off, b_hr, 0, K, V, i_v * BV, V, BK, BV)

        b_k = load_tile(k + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
        b_v = load_tile(v + (bos * H + i_h) * V, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
        rows = i_t * BT + o_t
        in_seq = rows < T_seq
        gate_off = (bos + rows) * H + i_h
        # Rows past the end load g = 0 (so G stays flat) and k = v = 0 (so they add nothing).
        b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + gate_off, mask=in_seq, other=0.0).to(tl.float32)
        b_gamma = tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
        b_G = tl.cumsum(b_g, axis=0)
        b_Gm = b_G - b_g
        b_GL = tl.sum(b_g, axis=0)

        # Key queries u_t = S_{t-1}^T k_t: the undecayed state before token t.
        b_A = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PREC)
        b_A = b_A * exp_where(strict, b_Gm[:, None] - b_G[None, :]) * b_beta[None, :]
        # u decides the clip's mask (r = rho(v - u)), and the backward's mask comes from this walk: an
        # element within u's rounding of +-c lands on the other side than exact math and moves its dv by a
        # whole gamma Y (bf16 K=128: dv 1e-2 against float64). So the S path keeps ~16 bits: the fp32 state
        # h_S, the decayed matrix A and the S increment are hi + lo bf16 halves (dot_split), k and v exact.
        b_u = dot_split(b_k, b_hs, DOT_PREC) * tl.exp(b_Gm)[:, None]
        b_u += dot_split(b_A, b_v, DOT_PREC)
        b_res = _rho(b_v.to(tl.float32) - b_u, clip, RESIDUAL)
        store_tile(res + (bos * H + i_h) * V, b_res, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)

        # Advance both states to the chunk end.
        b_to_end = tl.exp(b_GL - b_G)
        b_ks = b_k.to(tl.float32) * (b_to_end * b_beta)[:, None]
        b_kr = (b_k.to(tl.float32) * (b_to_end * b_gamma)[:, None]).to(DT)
        b_hs = b_hs * tl.exp(b_GL) + dot_split(tl.trans(b_ks), b_v, DOT_PREC)
        b_hr = b_hr * tl.exp(b_GL) + tl.dot(tl.trans(b_kr), b_res.to(DT), input_precision=DOT_PREC)

    store_tile(s_out + i_nh * K * V, b_hs, 0, K, V, i_v * BV, V, BK, BV)
    store_tile(r_out + i_nh * K * V, b_hr, 0, K, V, i_v * BV, V, BK, BV)


@triton.jit
def _chunk_coords(cu_seqlens, chunk_indices, i_t, i_nh, T, H: tl.constexpr, BT: tl.constexpr,
                  IS_VARLEN: tl.constexpr):
    """For a chunk-parallel program: (sequence start, sequence length, chunk in sequence, global chunk
    row in the state buffers, head), all int64. Axis 1 is the chunk; axis 2 is (sequence, head) for
    equal-length batches and the head alone for packed ones."""
    if IS_VARLEN:
        i_n = tl.cast(tl.load(chunk_indices + i_t * 2), tl.int64)
        i_c = tl.cast(tl.load(chunk_indices + i_t * 2 + 1), tl.int64)
        bos = tl.cast(tl.load(cu_seqlens + i_n), tl.int64)
        T_seq = tl.cast(tl.load(cu_seqlens + i_n + 1), tl.int64) - bos
        i_h = i_nh
        i_row = i_t  # chunk_indices lists chunks in state-buffer order
    else:
        i_n = i_nh // H
        i_h = i_nh % H
        i_c = i_t
        bos = i_n * T
        T_seq = T + 0 * i_n
        i_row = i_n * tl.cdiv(T, BT) + i_t
    return bos, T_seq, i_c, i_row, i_h


@autotune(configs=warps_stages_configs(), key=["H", "K", "V", "BT", "BV", "DOT_PREC", "DOTS_FP32"])
@triton.jit(do_not_specialize=["T"])
def _rla_fwd_output_kernel(
    q, k, v, g, beta, gamma, h_s, h_r, res, o,
    cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_t = tl.cast(tl.program_id(1), tl.int64)
    i_nh = tl.cast(tl.program_id(2), tl.int64)
    bos, T_seq, i_c, i_row, i_h = _chunk_coords(cu_seqlens, chunk_indices, i_t, i_nh, T, H, BT, IS_VARLEN)
    DT = q.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    o_t = tl.arange(0, BT)
    rows = i_c * BT + o_t
    in_seq = rows < T_seq
    gate_off = (bos + rows) * H + i_h
    b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_beta = tl.load(beta + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_gamma = tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)

    h_off = (i_row * H + i_h) * K * V
    b_q = load_tile(q + (bos * H + i_h) * K, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_k = load_tile(k + (bos * H + i_h) * K, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_v = load_tile(v + (bos * H + i_h) * V, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
    b_r = load_tile(res + (bos * H + i_h) * V, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    b_hs = load_tile(h_s + h_off, 0, K, V, i_v * BV, V, BK, BV)
    b_hr = load_tile(h_r + h_off, 0, K, V, i_v * BV, V, BK, BV)

    # Inter-chunk: both states read by the same queries, decayed from the chunk start.
    b_o = tl.dot(b_q, b_hs.to(DT), input_precision=DOT_PREC)
    b_o += b_gamma[:, None] * tl.dot(b_q, b_hr.to(DT), input_precision=DOT_PREC)
    b_o *= tl.exp(b_G)[:, None]
    # Intra-chunk: one q.k matrix, two masks (strict for S, inclusive for R).
    b_A = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
    decay_ok = o_t[:, None] >= o_t[None, :]
    b_A = b_A * exp_where(decay_ok, b_G[:, None] - b_G[None, :])
    b_As = tl.where(o_t[:, None] > o_t[None, :], b_A * b_beta[None, :], 0.0)
    b_Ar = b_A * (b_gamma[:, None] * b_gamma[None, :])
    b_o += tl.dot(b_As.to(DT), b_v, input_precision=DOT_PREC)
    b_o += tl.dot(b_Ar.to(DT), b_r.to(DT), input_precision=DOT_PREC)

    store_tile(o + (bos * H + i_h) * V, b_o * scale, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV)
