"""RDN chunk backward in Triton: the reverse walk over the chunks.

One program per (sequence, head, V-block), as in the forward: the forward is column-wise in V, so the
adjoints of the states (dS, dR, carried from chunk end to chunk start) and dv are exact per V-block,
while the gradients of the shared inputs (q, k, g, beta, gamma) are sums over V-blocks: each program
writes its partial sums and the launcher adds them.

Per chunk, from the chunk-start states (stored by the forward rerun) the program recomputes the forward
intermediates (chunk_fwd.chunk_forward), then runs the chain rule of that step backwards: through the
chunk-end states, the output reads, the UT transform of R (d(I+A)^{-1} gives dA = -(T^T dW) W^T, strictly
lower), rho (zero gradient where the clip saturates), the residual read of S, the output read of S,
and the UT transform of S; finally the decay-weighted k.k and q.k matrices hand their gradients to k, q,
beta, gamma and to the within-chunk cumulative decay G, whose gradient becomes dg by a reverse cumsum.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_helpers import autotune, launch_configs, load_tile, seq_bounds, store_tile
from .chunk_fwd import chunk_forward, load_chunk


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


@triton.jit
def _clip_input_fp32(b_k, b_v, b_s, b_tb, b_beta, b_eG, b_eGp, b_Mk):
    """x = v - sk again, its S-path dots at tf32x3 (~fp32) instead of tf32, for the clip's mask only.

    The clip's gradient jumps where |x| crosses c: an element whose x lies within the rounding error of x
    of +-c gets the other side than the exact recurrence, and its dv (and the rest of its chain) moves
    by a whole dL/dr ~ 0.1..1 against ||dv|| ~ 60 in the bf16 K=128 GPU check: one such element decides
    dv's relative error there (1.3e-2), the other gradients hardly notice. tf32 leaves x with a relative
    error ~5e-4; these three dots (k S0, T_beta (beta yv), Mk U) are the in-chunk part of it, and tf32x3
    removes that part (the chunk-start state S0 from the forward walk keeps its own). Only the mask reads
    this x; everything else keeps the tf32 values of chunk_forward."""
    b_ks = tl.dot(b_k, b_s, input_precision="tf32x3")
    b_u = tl.dot(b_tb, b_beta[:, None] * (b_v - b_eG * b_ks), input_precision="tf32x3")
    return b_v - (b_eGp * b_ks + tl.dot(b_Mk, b_u, input_precision="tf32x3"))


@triton.jit
def _sum_all(x):
    return tl.sum(tl.sum(x, axis=1), axis=0)


@autotune(configs=launch_configs(), key=["H", "K", "V", "BT", "BK", "BV", "RESIDUAL", "DOT_PREC"])
@triton.jit(do_not_specialize=["T", "NTH"])
def _rdn_bwd_kernel(
    q, k, v, g, beta, gamma, t_beta, t_gamma, h_s, h_r, do, ds_t, dr_t,
    dq_part, dk_part, dg_part, dbeta_part, dgamma_part, dv, ds0, dr0,
    cu_seqlens, chunk_offsets, scale, clip, T, NTH,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_DST: tl.constexpr, HAS_DRT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, T_seq, boh = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, BT, IS_VARLEN)
    NT = tl.cdiv(T_seq, BT)
    o_t = tl.arange(0, BT)
    strict = o_t[:, None] > o_t[None, :]
    incl = o_t[:, None] >= o_t[None, :]
    last = o_t == BT - 1
    # Partial sums of this V-block: NTH = B*T*H (token, head) rows per block.
    part_kh = tl.cast(NTH, tl.int64) * K * i_v + (bos * H + i_h) * K
    part_h = tl.cast(NTH, tl.int64) * i_v + bos * H + i_h

    # Adjoints of the state at the end of the current chunk.
    b_ds = tl.zeros([BK, BV], dtype=tl.float32)
    b_dr = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DST:
        b_ds += load_tile(ds_t + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)
    if HAS_DRT:
        b_dr += load_tile(dr_t + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV)

    for i_loop in range(0, NT):
        i_t = tl.cast(NT - 1 - i_loop, tl.int64)
        h_off = ((boh + i_t) * H + i_h) * K * V
        b_s = load_tile(h_s + h_off, 0, K, V, i_v * BV, V, BK, BV)
        b_r = load_tile(h_r + h_off, 0, K, V, i_v * BV, V, BK, BV)
        b_q, b_k, b_v, b_g, b_beta, b_gamma, b_tb, b_tc = load_chunk(
            q, k, v, g, beta, gamma, t_beta, t_gamma, bos, T_seq, i_t, i_h, i_v, H, K, V, BT, BK, BV)
        (b_G, b_Gp, b_eG, b_eGp, b_kk, b_qk, b_Eg, b_Ep, b_Mk, b_Mq, b_Mqi,
         b_ks, b_qs, b_yv, b_u, b_sq, b_x, b_res, b_kr, b_qr, b_yr, b_w, b_rq) = chunk_forward(
            b_q, b_k, b_v, b_g, b_beta, b_gamma, b_tb, b_tc, b_s, b_r, clip, BT, RESIDUAL, DOT_PREC)
        b_do = load_tile(do + (bos * H + i_h) * V, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)

        # o = scale * (sq + gamma * rq)
        b_dsq = scale * b_do
        b_drq = (scale * b_gamma)[:, None] * b_do
        b_dc = scale * tl.sum(b_do * b_rq, axis=1)

        # Chunk-end states M1 = exp(GL) M0 + Kd^T (U or W), Kd = K * exp(GL - G).
        b_GL = tl.sum(tl.where(last, b_G, 0.0), axis=0)
        b_eGL = tl.exp(b_GL)
        b_dec = tl.exp(b_GL - b_G)
        b_kd = b_k * b_dec[:, None]
        b_dGL = b_eGL * (_sum_all(b_ds * b_s) + _sum_all(b_dr * b_r))
        b_dkd = tl.dot(b_u, tl.trans(b_ds), input_precision=DOT_PREC)
        b_dkd += tl.dot(b_w, tl.trans(b_dr), input_precision=DOT_PREC)
        b_du = tl.dot(b_kd, b_ds, input_precision=DOT_PREC)
        b_dw = tl.dot(b_kd, b_dr, input_precision=DOT_PREC)
        b_ds0 = b_eGL * b_ds
        b_dr0 = b_eGL * b_dr

        # rq = exp(G) * Q R0 + Mqi W
        b_dr0 += tl.dot(tl.trans(b_q), b_eG * b_drq, input_precision=DOT_PREC)
        b_dq = b_eG * tl.dot(b_drq, tl.trans(b_r), input_precision=DOT_PREC)
        b_dG = tl.sum(b_eG * b_drq * b_qr, axis=1)
        b_dMqi = tl.where(incl, tl.dot(b_drq, tl.trans(b_w), input_precision=DOT_PREC), 0.0)
        b_dw += tl.dot(tl.trans(b_Mqi), b_drq, input_precision=DOT_PREC)

        # W = T_gamma (gamma * yr), yr = res - exp(G) * K R0
        b_dx = tl.dot(tl.trans(b_tc), b_dw, input_precision=DOT_PREC)
        b_dAc = -tl.where(strict, tl.dot(b_dx, tl.trans(b_w), input_precision=DOT_PREC), 0.0)
        b_dres = b_gamma[:, None] * b_dx
        b_dc += tl.sum(b_dx * b_yr, axis=1)
        b_dkr = -(b_gamma[:, None] * b_eG) * b_dx
        b_dr0 += tl.dot(tl.trans(b_k), b_dkr, input_precision=DOT_PREC)
        b_dk = tl.dot(b_dkr, tl.trans(b_r), input_precision=DOT_PREC)
        b_dG += tl.sum(b_dkr * b_kr, axis=1)

        # res = rho(v - sk)
        if RESIDUAL == 1:
            if DOT_PREC == "tf32":
                b_x = _clip_input_fp32(b_k, b_v, b_s, b_tb, b_beta, b_eG, b_eGp, b_Mk)
        b_dxv = _rho_grad(b_x, b_res, clip, RESIDUAL) * b_dres
        b_dv = b_dxv
        b_dsk = -b_dxv

        # sk = exp(Gp) * K S0 + Mk U
        b_ds0 += tl.dot(tl.trans(b_k), b_eGp * b_dsk, input_precision=DOT_PREC)
        b_dk += b_eGp * tl.dot(b_dsk, tl.trans(b_s), input_precision=DOT_PREC)
        b_dGp = tl.sum(b_eGp * b_dsk * b_ks, axis=1)
        b_dMk = tl.where(strict, tl.dot(b_dsk, tl.trans(b_u), input_precision=DOT_PREC), 0.0)
        b_du += tl.dot(tl.trans(b_Mk), b_dsk, input_precision=DOT_PREC)

        # sq = exp(G) * Q S0 + Mq U
        b_ds0 += tl.dot(tl.trans(b_q), b_eG * b_dsq, input_precision=DOT_PREC)
        b_dq += b_eG * tl.dot(b_dsq, tl.trans(b_s), input_precision=DOT_PREC)
        b_dG += tl.sum(b_eG * b_dsq * b_qs, axis=1)
        b_dMq = tl.where(strict, tl.dot(b_dsq, tl.trans(b_u), input_precision=DOT_PREC), 0.0)
        b_du += tl.dot(tl.trans(b_Mq), b_dsq, input_precision=DOT_PREC)

        # U = T_beta (beta * yv), yv = v - exp(G) * K S0
        b_dy = tl.dot(tl.trans(b_tb), b_du, input_precision=DOT_PREC)
        b_dAb = -tl.where(strict, tl.dot(b_dy, tl.trans(b_u), input_precision=DOT_PREC), 0.0)
        b_dv += b_beta[:, None] * b_dy
        b_db = tl.sum(b_dy * b_yv, axis=1)
        b_dks = -(b_beta[:, None] * b_eG) * b_dy
        b_ds0 += tl.dot(tl.trans(b_k), b_dks, input_precision=DOT_PREC)
        b_dk += tl.dot(b_dks, tl.trans(b_s), input_precision=DOT_PREC)
        b_dG += tl.sum(b_dks * b_ks, axis=1)

        # The decay-weighted matrices: A_x = x_t (k_t.k_i) exp(G_t - G_i) (i < t) for x = beta, gamma;
        # Mk = (k_t.k_i) exp(Gp_t - G_i); Mq, Mqi = (q_t.k_i) exp(G_t - G_i). A log-decay gradient is the
        # matrix gradient times the matrix: rows get +, columns get -.
        b_kkEs = tl.where(strict, b_kk * b_Eg, 0.0)
        b_dA_rows = b_dAb * b_beta[:, None] + b_dAc * b_gamma[:, None]
        b_db += tl.sum(b_dAb * b_kkEs, axis=1)
        b_dc += tl.sum(b_dAc * b_kkEs, axis=1)
        b_dkk = b_dA_rows * tl.where(strict, b_Eg, 0.0) + b_dMk * b_Ep
        b_Dm = b_dA_rows * b_kkEs + b_dMq * b_Mq + b_dMqi * b_Mqi
        b_dG += tl.sum(b_Dm, axis=1) - tl.sum(b_Dm, axis=0)
        b_Dk = b_dMk * b_Mk
        b_dGp += tl.sum(b_Dk, axis=1)
        b_dG -= tl.sum(b_Dk, axis=0)
        b_dqk = (b_dMq + b_dMqi) * b_Eg
        b_dk += tl.dot(b_dkk + tl.trans(b_dkk), b_k, input_precision=DOT_PREC)
        b_dk += tl.dot(tl.trans(b_dqk), b_q, input_precision=DOT_PREC)
        b_dq += tl.dot(b_dqk, b_k, input_precision=DOT_PREC)

        # Kd = K * exp(GL - G); GL is G at the chunk's last row (padded rows keep G flat).
        b_dk += b_dkd * b_dec[:, None]
        b_Dd = tl.sum(b_dkd * b_kd, axis=1)
        b_dG -= b_Dd
        b_dG += tl.where(last, b_dGL + tl.sum(b_Dd, axis=0), 0.0)
        # Gp = G - g and G = cumsum(g): dg_s = -dGp_s + sum_{t >= s} (dG_t + dGp_t).
        b_dG += b_dGp
        b_dg = tl.sum(tl.where(incl, b_dG[:, None], 0.0), axis=0) - b_dGp

        rows = i_t * BT + o_t
        in_seq = rows < T_seq
        store_tile(dv + (bos * H + i_h) * V, b_dv, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        store_tile(dq_part + part_kh, b_dq, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        store_tile(dk_part + part_kh, b_dk, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        tl.store(dg_part + part_h + rows * H, b_dg, mask=in_seq)
        tl.store(dbeta_part + part_h + rows * H, b_db, mask=in_seq)
        tl.store(dgamma_part + part_h + rows * H, b_dc, mask=in_seq)
        b_ds = b_ds0
        b_dr = b_dr0

    store_tile(ds0 + i_nh * K * V, b_ds, 0, K, V, i_v * BV, V, BK, BV)
    store_tile(dr0 + i_nh * K * V, b_dr, 0, K, V, i_v * BV, V, BK, BV)
