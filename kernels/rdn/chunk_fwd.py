"""RDN chunk forward in Triton: one sequential walk over the chunks, both states in registers.

Per chunk (BT tokens, G = inclusive cumsum of g from the chunk start, Gp = G - g, GL = G at the chunk end,
S0/R0 the chunk-start states, T_beta/T_gamma from wy.py), with the decay of every pair i, t taken as
exp(G_t - G_i) or exp(Gp_t - G_i), exponents <= 0 where used:

    U   = T_beta diag(beta) (V - diag(exp G) K S0)             pseudo-values of S
    sk  = exp(Gp) * K S0 + Mk U,   Mk[t,i] = exp(Gp_t - G_i) k_t.k_i  (i < t)     S_{t-1}^T k_t (undecayed)
    sq  = exp(G)  * Q S0 + Mq U,   Mq[t,i] = exp(G_t - G_i)  q_t.k_i  (i < t)     a_t S_{t-1}^T q_t
    r   = rho(v - sk)
    W   = T_gamma diag(gamma) (r - diag(exp G) K R0)            pseudo-values of R
    rq  = exp(G)  * Q R0 + Mqi W,  Mqi = Mq with the diagonal (i <= t)             R_t^T q_t
    o   = scale * (sq + gamma * rq)
    S1  = exp(GL) S0 + (K * exp(GL - G))^T U,   R1 likewise with W

Every quantity is column-wise in V once the K-reductions are done, so one program walks one V-block of
one (sequence, head) and the chunk states of S are read by both queries (k for the residual, q for the
output) without leaving registers. ``STORE_STATES`` also writes every chunk-start state (fp32), which the
backward's rerun of this walk needs.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..rla.fused_recurrent import _rho
from ._triton_helpers import autotune, exp_masked, launch_configs, load_tile, seq_bounds, store_tile


@triton.jit
def load_chunk(q, k, v, g, beta, gamma, t_beta, t_gamma, bos, T_seq, i_t, i_h, i_v,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """One chunk's inputs in fp32. Rows past the sequence end read as 0 (g = 0 keeps G flat, k = v = 0
    and beta = gamma = 0 make them add nothing)."""
    rows = i_t * BT + tl.arange(0, BT)
    in_seq = rows < T_seq
    gate_off = (bos + rows) * H + i_h
    b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_beta = tl.load(beta + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_gamma = tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_q = load_tile(q + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    b_k = load_tile(k + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    b_v = load_tile(v + (bos * H + i_h) * V, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    b_tb = load_tile(t_beta + (bos * H + i_h) * BT, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    b_tc = load_tile(t_gamma + (bos * H + i_h) * BT, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    return b_q, b_k, b_v, b_g, b_beta, b_gamma, b_tb, b_tc


@triton.jit
def chunk_forward(b_q, b_k, b_v, b_g, b_beta, b_gamma, b_tb, b_tc, b_s, b_r, clip,
                  BT: tl.constexpr, RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr):
    """The chunk step of the module docstring; returns its intermediates too (the backward reuses them)."""
    o_t = tl.arange(0, BT)
    strict = o_t[:, None] > o_t[None, :]
    incl = o_t[:, None] >= o_t[None, :]
    b_G = tl.cumsum(b_g, axis=0)
    b_Gp = b_G - b_g
    b_eG = tl.exp(b_G)[:, None]
    b_eGp = tl.exp(b_Gp)[:, None]

    b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PREC)
    b_qk = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
    b_Eg = exp_masked(incl, b_G[:, None] - b_G[None, :])
    b_Ep = exp_masked(strict, b_Gp[:, None] - b_G[None, :])
    b_Mk = b_kk * b_Ep
    b_Mqi = b_qk * b_Eg
    b_Mq = tl.where(strict, b_Mqi, 0.0)

    b_ks = tl.dot(b_k, b_s, input_precision=DOT_PREC)
    b_qs = tl.dot(b_q, b_s, input_precision=DOT_PREC)
    b_yv = b_v - b_eG * b_ks  # U = T_beta (beta * yv)
    b_u = tl.dot(b_tb, b_beta[:, None] * b_yv, input_precision=DOT_PREC)
    b_sk = b_eGp * b_ks + tl.dot(b_Mk, b_u, input_precision=DOT_PREC)
    b_sq = b_eG * b_qs + tl.dot(b_Mq, b_u, input_precision=DOT_PREC)
    b_x = b_v - b_sk
    b_res = _rho(b_x, clip, RESIDUAL)

    b_kr = tl.dot(b_k, b_r, input_precision=DOT_PREC)
    b_qr = tl.dot(b_q, b_r, input_precision=DOT_PREC)
    b_yr = b_res - b_eG * b_kr  # W = T_gamma (gamma * yr)
    b_w = tl.dot(b_tc, b_gamma[:, None] * b_yr, input_precision=DOT_PREC)
    b_rq = b_eG * b_qr + tl.dot(b_Mqi, b_w, input_precision=DOT_PREC)
    return (b_G, b_Gp, b_eG, b_eGp, b_kk, b_qk, b_Eg, b_Ep, b_Mk, b_Mq, b_Mqi,
            b_ks, b_qs, b_yv, b_u, b_sq, b_x, b_res, b_kr, b_qr, b_yr, b_w, b_rq)


@triton.jit
def advance_states(b_k, b_G, b_u, b_w, b_s, b_r, BT: tl.constexpr, DOT_PREC: tl.constexpr):
    """Both states to the chunk end: M1 = exp(GL) M0 + (K * exp(GL - G))^T pseudo-values."""
    b_GL = tl.sum(tl.where(tl.arange(0, BT) == BT - 1, b_G, 0.0), axis=0)
    b_kd = b_k * tl.exp(b_GL - b_G)[:, None]
    b_s = b_s * tl.exp(b_GL) + tl.dot(tl.trans(b_kd), b_u, input_precision=DOT_PREC)
    b_r = b_r * tl.exp(b_GL) + tl.dot(tl.trans(b_kd), b_w, input_precision=DOT_PREC)
    return b_s, b_r


@autotune(configs=launch_configs(), key=["H", "K", "V", "BT", "BK", "BV", "RESIDUAL", "DOT_PREC", "STORE_STATES"])
@triton.jit(do_not_specialize=["T"])
def _rdn_fwd_kernel(
    q, k, v, g, beta, gamma, t_beta, t_gamma, s0, r0,
    o, s_out, r_out, h_s, h_r,
    cu_seqlens, chunk_offsets, scale, clip, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_R0: tl.constexpr, STORE_STATES: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, T_seq, boh = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, BT, IS_VARLEN)
    NT = tl.cdiv(T_seq, BT)

    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    b_r = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        b_s += load_tile(s0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)
    if HAS_R0:
        b_r += load_tile(r0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)

    for i_loop in range(0, NT):
        i_t = tl.cast(i_loop, tl.int64)
        if STORE_STATES:
            h_off = ((boh + i_t) * H + i_h) * K * V
            store_tile(h_s + h_off, b_s, 0, K, V, i_v * BV, V, BK, BV)
            store_tile(h_r + h_off, b_r, 0, K, V, i_v * BV, V, BK, BV)
        b_q, b_k, b_v, b_g, b_beta, b_gamma, b_tb, b_tc = load_chunk(
            q, k, v, g, beta, gamma, t_beta, t_gamma, bos, T_seq, i_t, i_h, i_v, H, K, V, BT, BK, BV)
        (b_G, b_Gp, b_eG, b_eGp, b_kk, b_qk, b_Eg, b_Ep, b_Mk, b_Mq, b_Mqi,
         b_ks, b_qs, b_yv, b_u, b_sq, b_x, b_res, b_kr, b_qr, b_yr, b_w, b_rq) = chunk_forward(
            b_q, b_k, b_v, b_g, b_beta, b_gamma, b_tb, b_tc, b_s, b_r, clip, BT, RESIDUAL, DOT_PREC)
        b_o = scale * (b_sq + b_gamma[:, None] * b_rq)
        store_tile(o + (bos * H + i_h) * V, b_o, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_s, b_r = advance_states(b_k, b_G, b_u, b_w, b_s, b_r, BT, DOT_PREC)

    store_tile(s_out + i_nh * K * V, b_s, 0, K, V, i_v * BV, V, BK, BV)
    store_tile(r_out + i_nh * K * V, b_r, 0, K, V, i_v * BV, V, BK, BV)
