"""RLA chunk backward in Triton (notation of chunk_fwd.py; dO1 = scale do, dO2 = scale gamma_t do).

Gradients come in the order the dependencies allow, per chunk and going backwards in time:

1. R path. With dh_R' the gradient of the chunk-END state R,
       Y_i = sum_{t>=i} exp(G_t - G_i) (q_t.k_i) dO2_t + exp(G_L - G_i) dh_R'^T k_i,
   dr_i = gamma_i Y_i, through rho: de_i = dr_i rho'(e_i) (0 where the clip saturates, 1 - (r/c)^2 for
   tanh), and since e = v - u: dv_i += de_i, du_i = -de_i. Also dgamma_i += r_i.Y_i.
2. S path, read by two queries (q_t decayed by exp(G_t), k_t by exp(Gm_t)):
       X_i = sum_{t>i} [exp(G_t - G_i) (q_t.k_i) dO1_t + exp(Gm_t - G_i) (k_t.k_i) du_t] + exp(G_L - G_i) dh_S'^T k_i,
   dv_i += beta_i X_i, dbeta_i = v_i.X_i.
3. State gradients at the chunk start:
       dh_S = exp(G_L) dh_S' + sum_t exp(G_t) q_t dO1_t^T + exp(Gm_t) k_t du_t^T,
       dh_R = exp(G_L) dh_R' + sum_t exp(G_t) q_t dO2_t^T.

Only step 3 is sequential, and dh_R does not depend on anything but dO2. ``_rla_bwd_du_walk_kernel`` (chunk.DU_WALK)
carries dh_R and dh_S backwards together and does step 1 inside each chunk's step, from the carried dh_R', before dh_S
takes du; where that walk would leave SMs idle with nothing beside it, ``_dstate_walk_kernel`` carries dh_R alone (one
dot a chunk), ``_rla_bwd_du_kernel`` does step 1 for every chunk in parallel, and the same walk kernel carries dh_S
with du in it (two dots a chunk). Either way each chunk's dh_R' and dh_S' are stored, and ``_rla_bwd_dv_kernel``
does step 2 for every chunk in parallel. dq, dk, dg and gamma's
output term need sums over all of V, in two chunk-parallel kernels: ``_rla_bwd_intra_kernel``, one
program per chunk, sums the token-to-token matrices over V (M and Mk, what dq and dk read of the other
tokens; stored [BT, BT] per chunk) and gamma's in-chunk term; ``_rla_bwd_dqkg_kernel``, one program per
K-block looping over V-blocks, sums the state terms and combines. (One kernel did both until 2026-11-30:
eight [BT, BK] and [BT, BT] fp32 accumulators live through its V loop, 3.4 of the 6.6 ms backward at
B=16, T=2k, H=16, D=128 on the H200.) Everything the second sums over K -- q.k products, dg's
q.dq - k.dk, gamma's q^T h_R -- is linear in the K-block contributions, so each K-block writes its
partial dg and dgamma and the launcher adds them.

dg uses the scalar-decay trick: treat G_t and Gm_t as free variables. Every factor exp(G_t - G_i) adds
its term to dG_t and subtracts it from dG_i, so dG_t = q_t.dq_t - k_t.dk_t(as key), dGm_t = k_t.dk_t(as
query), plus the chunk-end factor exp(G_L) of the carried states: <h_end, dh'> on the last row. Then
G_t = sum_{j<=t} g_j and Gm_t = sum_{j<t} g_j give dg_j = sum_{t>=j} (dG_t + dGm_t) - dGm_j.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..triton_utils import autotune, dot_split, exp_where, load_tile, load_tile_t, store_tile, warps_stages_configs
from .chunk_fwd import _chunk_coords, _chunk_gates, _chunk_program, _walk_seq


@triton.jit
def _drho_from_residual(r, clip, RESIDUAL: tl.constexpr):
    """rho'(e) written through r = rho(e): clip passes the gradient where it did not saturate
    (|r| < c; the boundary |e| = c has measure zero), c tanh(e/c) has slope 1 - (r/c)^2. With r stored in a
    half dtype: r as stored and clip as c rounded to it (the residual kernel keeps every non-saturated r
    strictly inside)."""
    if RESIDUAL == 1:
        d = tl.where(tl.abs(r) < clip, 1.0, 0.0)
    elif RESIDUAL == 2:
        y = r / clip
        d = 1.0 - y * y
    else:
        d = tl.full(r.shape, 1.0, tl.float32)
    return d


@triton.jit
def _residual_value(r_stored, clip, clip_mask, RESIDUAL: tl.constexpr):
    """r in fp32 from its stored value (input dtype: see chunk.py's _Layout.res_dtype). A saturated clip residual
    stores c rounded (clip_mask, e.g. 0.69921875 for c = 0.7 in bf16); it is +-c exactly, as the fp32 r was."""
    r = r_stored.to(tl.float32)
    if RESIDUAL == 1:
        r = tl.where(tl.abs(r) >= clip_mask, tl.where(r < 0, -clip, clip), r)
    return r


@triton.jit
def _dstate_walk_step(q, do, k, du, g, rate, bos, T_seq, i_t, i_h, i_k, i_v, scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, HAS_RATE: tl.constexpr, HAS_KEYS: tl.constexpr, DOT_PREC: tl.constexpr,
                      DT: tl.constexpr):
    """Chunk i_t's step of _dstate_walk_kernel, dh <- exp(G_L) dh + update: returns (exp(G_L), update),
    neither of which depends on the state gradient. A chunk past the sequence's end gives (1, 0): dh unchanged."""
    tok_k = (bos * H + i_h) * K
    tok_v = (bos * H + i_h) * V
    b_g, b_G, b_GL, gate_off, in_seq = _chunk_gates(g, bos, T_seq, i_t, i_h, H, BT)
    # As the forward walk: q^T and k^T raw from memory, every gate on the [BT, BV] side: the gated do and du are
    # the only operands rounded to DT (a decayed q or k tile was a second rounding).
    b_qt = load_tile_t(q + tok_k, i_t * BT, T_seq, H * K, i_k * BK, K, BT, BK).to(DT)
    b_w = tl.exp(b_G) * scale
    if HAS_RATE:
        b_w *= tl.load(rate + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_do = load_tile(do + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
    b_upd = tl.dot(b_qt, (b_do * b_w[:, None]).to(DT), input_precision=DOT_PREC)
    if HAS_KEYS:
        b_kt = load_tile_t(k + tok_k, i_t * BT, T_seq, H * K, i_k * BK, K, BT, BK).to(DT)
        b_du = load_tile(du + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
        b_upd = tl.dot(b_kt, (b_du * tl.exp(b_G - b_g)[:, None]).to(DT), b_upd, input_precision=DOT_PREC)
    return tl.exp(b_GL), b_upd


# Pinned to one launch config, as RDN's walks are: autotuning RDN's walk at B=1, T=32k (16-wide V-blocks)
# hit a CUDA illegal memory access (cause not found), and a walk has little to tune.
@autotune(configs=warps_stages_configs(warps=(4,), stages=(2,)),
          key=["H", "K", "V", "BT", "BK", "BV", "HAS_RATE", "HAS_KEYS", "DOT_PREC", "DOTS_FP32", "WALK_STEPS"])
@triton.jit(do_not_specialize=["T"])
def _dstate_walk_kernel(
    q, do, k, du, g, rate, dh_t, dh, dh0,
    cu_seqlens, chunk_offsets, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_RATE: tl.constexpr, HAS_KEYS: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr,
    HAS_DHT: tl.constexpr, IS_VARLEN: tl.constexpr, WALK_STEPS: tl.constexpr,
):
    """A state gradient carried backwards over a sequence's chunks,
        dh <- exp(G_L) dh + sum_t exp(G_t) q_t (scale rate_t do_t)^T [+ exp(Gm_t) k_t du_t^T],
    dh_R with rate = gamma, dh_S with rate = 1 and the key-query term. Stores each chunk's END-state
    gradient (read by the chunk-parallel kernels) in dh's dtype, the input dtype, without the rounding error
    the forward walk keeps for h_S (see the du kernel), and the initial state's (fp32). One program per
    (K-block, V-block, sequence x head). WALK_STEPS (1 or 2) chunks a loop turn: with 2, chunks 2i+1 and 2i, the
    forward walk's pairs."""
    i_k = tl.cast(tl.program_id(0), tl.int64)
    i_v = tl.cast(tl.program_id(1), tl.int64)
    i_nh = tl.cast(tl.program_id(2), tl.int64)
    i_h, bos, T_seq, boh, NT = _walk_seq(cu_seqlens, chunk_offsets, i_nh, T, H, BT, IS_VARLEN)
    DT = q.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dh += load_tile(dh_t + i_nh * K * V, i_k * BK, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    n_turns = tl.cdiv(NT, WALK_STEPS)
    for i_loop in range(0, n_turns):
        # the turn's last chunk; with two steps and NT odd, the first turn's is one past the end, as in the forward
        # (a chunk before 0 would load the previous sequence's rows)
        i_t = tl.cast((n_turns - i_loop) * WALK_STEPS - 1, tl.int64)
        n_rows = K
        if WALK_STEPS == 2:
            n_rows = tl.where(i_t < NT, K, 0)  # past the end: the row is the next sequence's
        store_tile(dh + ((boh + i_t) * H + i_h) * K * V, b_dh, i_k * BK, n_rows, V, i_v * BV, V, BK, BV)
        b_a, b_upd = _dstate_walk_step(q, do, k, du, g, rate, bos, T_seq, i_t, i_h, i_k, i_v, scale, H, K, V, BT,
                                       BK, BV, HAS_RATE, HAS_KEYS, DOT_PREC, DT)
        if WALK_STEPS == 2:
            # chunk i_t - 1's step reads no state gradient: its loads and dots issue beside chunk i_t's
            b_a0, b_upd0 = _dstate_walk_step(q, do, k, du, g, rate, bos, T_seq, i_t - 1, i_h, i_k, i_v, scale, H, K,
                                             V, BT, BK, BV, HAS_RATE, HAS_KEYS, DOT_PREC, DT)
            b_dh = b_dh * b_a + b_upd
            store_tile(dh + ((boh + i_t - 1) * H + i_h) * K * V, b_dh, i_k * BK, K, V, i_v * BV, V, BK, BV)
            b_a, b_upd = b_a0, b_upd0
        b_dh = b_dh * b_a + b_upd
    store_tile(dh0 + i_nh * K * V, b_dh, i_k * BK, K, V, i_v * BV, V, BK, BV)


@triton.jit
def _decayed_kq(qk, tok_a, i_c, T_seq, b_k, b_qt, b_G, H: tl.constexpr, BT: tl.constexpr, DOT_PREC: tl.constexpr,
                DT: tl.constexpr, HAS_QK: tl.constexpr, TMA: tl.constexpr = False, row=0, i_h=0):
    """[key i, query t] exp(G_t - G_i) (k_i.q_t) for i <= t, else 0, in the dots' dtype DT: the forward's stored
    products (qk: chunk.QK_KEPT) read transposed, or (without them) made from k [BT, K] and q^T [K, BT]. TMA: qk is a
    descriptor of [tokens, H x BT] and ``row`` the chunk's first token (its queries past the sequence's end are the
    next sequence's: the caller's gamma of 0 there takes them out)."""
    if HAS_QK and TMA:
        b_Aq = tl.trans(qk.load([row, tl.cast(i_h * BT, tl.int32)])).to(DT)
    elif HAS_QK:
        b_Aq = load_tile_t(qk + tok_a, i_c * BT, T_seq, H * BT, 0, BT, BT, BT).to(DT)
    else:
        o_t = tl.arange(0, BT)
        key_le_query = o_t[:, None] <= o_t[None, :]  # [key i, query t]: transposed, so sums over t are dots
        b_Aq = tl.dot(b_k, b_qt, input_precision=DOT_PREC) * exp_where(key_le_query, b_G[None, :] - b_G[:, None])
        b_Aq = b_Aq.to(DT)
    return b_Aq


@triton.jit
def _in_chunk_y(qk, tok_a, i_c, T_seq, b_k, b_qt, b_do, b_G, b_gamma, scale, H: tl.constexpr, BT: tl.constexpr,
                DOT_PREC: tl.constexpr, DT: tl.constexpr, HAS_QK: tl.constexpr, TMA: tl.constexpr = False, row=0,
                i_h=0):
    """Y's in-chunk part for a chunk's keys i, sum_{t >= i} exp(G_t - G_i) (k_i.q_t) scale gamma_t do_t ([BT, BV]
    fp32) (_decayed_kq's products): step 1 of the du kernel and of the one reverse walk."""
    b_Aq = _decayed_kq(qk, tok_a, i_c, T_seq, b_k, b_qt, b_G, H, BT, DOT_PREC, DT, HAS_QK, TMA, row, i_h)
    return tl.dot(b_Aq, (b_do * (scale * b_gamma)[:, None]).to(DT), input_precision=DOT_PREC)


@triton.jit
def _du_through_rho(b_Y, b_gamma, res, du, dgamma_part, part_off, gate_off, in_seq, clip, clip_mask, tok_v, i_c,
                    T_seq, i_v, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                    RESIDUAL: tl.constexpr, TMA: tl.constexpr = False, row=0, i_h=0):
    """From Y (the residuals' gradient before gamma): the residual's dgamma share of this V-block, sum_v r Y, stored at
    part_off, and du = -gamma Y rho'(r) through rho (its mask read from the rerun's r: see chunk_fwd's residual
    kernel), stored in du's dtype, the input dtype, and returned as stored. r is loaded only here (fewer live tiles
    through the dots before): as stored for the mask, as +-c where saturated. TMA: res is a descriptor (rows past the
    sequence's end meet gamma 0 and a masked store)."""
    if TMA:
        b_r_stored = res.load([row, tl.cast(i_h * V + i_v * BV, tl.int32)]).to(tl.float32)
    else:
        b_r_stored = load_tile(res + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
    b_r = _residual_value(b_r_stored, clip, clip_mask, RESIDUAL)
    tl.store(dgamma_part + part_off + gate_off, tl.sum(b_r * b_Y, axis=1), mask=in_seq)
    b_du = (-(b_gamma[:, None] * b_Y * _drho_from_residual(b_r_stored, clip_mask, RESIDUAL))).to(du.dtype.element_ty)
    store_tile(du + tok_v, b_du, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    return b_du


@triton.jit
def _du_walk_step(q, k, g, gamma, res, do, du, dgamma_part, dh_r, qk, b_dhr, b_dhs, bos, T_seq, i_t, i_h, i_v, scale,
                  clip, clip_mask, part_off, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, DT: tl.constexpr,
                  HAS_QK: tl.constexpr, TMA: tl.constexpr = False):
    """Chunk i_t's step of _rla_bwd_du_walk_kernel, from the chunk-END gradients b_dhr, b_dhs (fp32): step 1 (du and
    the residual's dgamma share, stored), then step 3 for both states. Returns the chunk-START gradients. The same
    operations as the du kernel (dh_R' rounded as the dh walk stores it) and the dh walk's steps (du as stored), so
    the same values; a chunk past the sequence's end stores nothing and leaves both gradients as they are. TMA: q, k,
    do, res and qk are descriptors (chunk._du_walk_descriptors) whose rows past the sequence's end are the next
    sequence's tokens: every term they reach is weighed by gamma (0 there) but dh_S's q do^T, whose weight is masked."""
    tok_k = (bos * H + i_h) * K
    tok_v = (bos * H + i_h) * V
    o_t = tl.arange(0, BT)
    rows = i_t * BT + o_t
    in_seq = rows < T_seq
    gate_off = (bos + rows) * H + i_h
    b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_gamma = tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_GL = tl.sum(b_g, axis=0)
    row = tl.cast(bos + i_t * BT, tl.int32)
    if TMA:
        b_qt = tl.trans(q.load([row, tl.cast(i_h * K, tl.int32)])).to(DT)
        b_k = k.load([row, tl.cast(i_h * K, tl.int32)]).to(DT)
        b_do = do.load([row, tl.cast(i_h * V + i_v * BV, tl.int32)]).to(tl.float32)
        b_w = tl.where(in_seq, tl.exp(b_G) * scale, 0.0)
    else:
        b_qt = load_tile_t(q + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
        b_k = load_tile(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
        b_do = load_tile(do + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
        b_w = tl.exp(b_G) * scale
    b_a = tl.exp(b_GL)

    # Step 1's Y from the in-chunk queries and the carried dh_R'; dh_R steps back as soon as Y has read it, and each
    # [K, BV] update is added to its gradient when made, so that one of them is live at a time (255 registers).
    b_Y = _in_chunk_y(qk, (bos * H + i_h) * BT, i_t, T_seq, b_k, b_qt, b_do, b_G, b_gamma, scale, H, BT, DOT_PREC, DT,
                      HAS_QK, TMA, row, i_h)
    b_Y += tl.exp(b_GL - b_G)[:, None] * tl.dot(b_k, b_dhr.to(dh_r.dtype.element_ty).to(DT), input_precision=DOT_PREC)
    b_dhr = b_dhr * b_a + tl.dot(b_qt, (b_do * (b_w * b_gamma)[:, None]).to(DT), input_precision=DOT_PREC)
    # dh_S steps back with du as stored
    b_du = _du_through_rho(b_Y, b_gamma, res, du, dgamma_part, part_off, gate_off, in_seq, clip, clip_mask, tok_v,
                           i_t, T_seq, i_v, H, V, BT, BV, RESIDUAL, TMA, row, i_h)
    # k^T as k's tile transposed (a view of the same shared copy: a second load took 16 KB more a stage)
    b_upd_s = tl.dot(b_qt, (b_do * b_w[:, None]).to(DT), input_precision=DOT_PREC)
    b_upd_s = tl.dot(tl.trans(b_k), (b_du.to(tl.float32) * tl.exp(b_G - b_g)[:, None]).to(DT), b_upd_s,
                     input_precision=DOT_PREC)
    return b_dhr, b_dhs * b_a + b_upd_s


@triton.jit(do_not_specialize=["T", "part_stride"])
def _rla_bwd_du_walk_kernel(
    q, k, g, gamma, res, do, du, dgamma_part, dhr_t, dhs_t, dh_r, dh_s, dR0, dS0, qk,
    cu_seqlens, chunk_offsets, scale, clip, clip_mask, T, part_stride,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr,
    HAS_DRT: tl.constexpr, HAS_DST: tl.constexpr, IS_VARLEN: tl.constexpr, WALK_STEPS: tl.constexpr,
    HAS_QK: tl.constexpr, TMA: tl.constexpr,
):
    """Steps 1 and 3 in one reverse walk (chunk.DU_WALK 1): dh_R and dh_S carried together, du made from the carried
    dh_R' of each chunk before dh_S takes it, so neither the du kernel nor a second walk runs. Stores each chunk's
    END-state gradients (as _dstate_walk_kernel does), du and the residual's dgamma share per V-block, and the
    initial states' gradients (fp32). One program per (V-block, sequence x head), all of K in it (du sums over K).
    WALK_STEPS (1 or 2) chunks a loop turn, as the dh walk's. TMA: q, k, do, res and qk are descriptors."""
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    i_h, bos, T_seq, boh, NT = _walk_seq(cu_seqlens, chunk_offsets, i_nh, T, H, BT, IS_VARLEN)
    if TMA:
        DT = q.dtype
    else:
        DT = q.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32
    part_off = i_v * part_stride

    b_dhr = tl.zeros([BK, BV], dtype=tl.float32)
    b_dhs = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DRT:
        b_dhr += load_tile(dhr_t + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    if HAS_DST:
        b_dhs += load_tile(dhs_t + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    n_turns = tl.cdiv(NT, WALK_STEPS)
    for i_loop in range(0, n_turns):
        # the turn's last chunk; with two steps and NT odd, the first turn's is one past the end (its row is the next
        # sequence's: not stored)
        i_t = tl.cast((n_turns - i_loop) * WALK_STEPS - 1, tl.int64)
        n_rows = K
        if WALK_STEPS == 2:
            n_rows = tl.where(i_t < NT, K, 0)
        h_off = ((boh + i_t) * H + i_h) * K * V
        store_tile(dh_r + h_off, b_dhr, 0, n_rows, V, i_v * BV, V, BK, BV)
        store_tile(dh_s + h_off, b_dhs, 0, n_rows, V, i_v * BV, V, BK, BV)
        b_dhr, b_dhs = _du_walk_step(q, k, g, gamma, res, do, du, dgamma_part, dh_r, qk, b_dhr, b_dhs, bos, T_seq,
                                     i_t, i_h, i_v, scale, clip, clip_mask, part_off, H, K, V, BT, BK, BV, RESIDUAL,
                                     DOT_PREC, DT, HAS_QK, TMA)
        if WALK_STEPS == 2:
            h_off = ((boh + i_t - 1) * H + i_h) * K * V
            store_tile(dh_r + h_off, b_dhr, 0, K, V, i_v * BV, V, BK, BV)
            store_tile(dh_s + h_off, b_dhs, 0, K, V, i_v * BV, V, BK, BV)
            b_dhr, b_dhs = _du_walk_step(q, k, g, gamma, res, do, du, dgamma_part, dh_r, qk, b_dhr, b_dhs, bos,
                                         T_seq, i_t - 1, i_h, i_v, scale, clip, clip_mask, part_off, H, K, V, BT, BK,
                                         BV, RESIDUAL, DOT_PREC, DT, HAS_QK, TMA)
    store_tile(dR0 + i_nh * K * V, b_dhr, 0, K, V, i_v * BV, V, BK, BV)
    store_tile(dS0 + i_nh * K * V, b_dhs, 0, K, V, i_v * BV, V, BK, BV)


@autotune(configs=warps_stages_configs(),
          key=["H", "K", "V", "BT", "BK", "BV", "RESIDUAL", "DOT_PREC", "DOTS_FP32", "HAS_QK"])
@triton.jit(do_not_specialize=["T", "part_stride"])
def _rla_bwd_du_kernel(
    q, k, g, gamma, res, do, dh_r, du, dgamma_part, qk,
    cu_seqlens, chunk_indices, scale, clip, clip_mask, T, part_stride,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, IS_VARLEN: tl.constexpr,
    CHUNK_ORDER: tl.constexpr, HAS_QK: tl.constexpr,
):
    """Step 1 (the R path) for every chunk in parallel, from the stored dh_R': du, and the residual's
    share of dgamma per V-block. One program per (V-block, chunk, head)."""
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_t, i_nh = _chunk_program(1, H, CHUNK_ORDER)
    bos, T_seq, i_c, i_row, i_h = _chunk_coords(cu_seqlens, chunk_indices, i_t, i_nh, T, H, BT, IS_VARLEN)
    DT = q.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    o_t = tl.arange(0, BT)
    rows = i_c * BT + o_t
    in_seq = rows < T_seq
    gate_off = (bos + rows) * H + i_h
    b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_gamma = tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_GL = tl.sum(b_g, axis=0)
    tok_k = (bos * H + i_h) * K
    tok_v = (bos * H + i_h) * V
    b_k = load_tile(k + tok_k, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_qt = b_k  # unread with HAS_QK
    if not HAS_QK:
        b_qt = tl.trans(load_tile(q + tok_k, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT))
    b_do = load_tile(do + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
    h_off = (i_row * H + i_h) * K * V
    b_dhr = load_tile(dh_r + h_off, 0, K, V, i_v * BV, V, BK, BV).to(DT)

    b_to_end = tl.exp(b_GL - b_G)
    b_Y = _in_chunk_y(qk, (bos * H + i_h) * BT, i_c, T_seq, b_k, b_qt, b_do, b_G, b_gamma, scale, H, BT, DOT_PREC, DT,
                      HAS_QK)
    # dh' reaches dv, dbeta and dgamma through k^T dh' only, and dS_T, dR_T make most of ||dv|| (last tokens):
    # the stored dh' is one rounding to the input dtype (as RDN's and fla's dv read dh), whose 2^-9 goes straight
    # into them. Until plan P6 the walk also stored the rounding error (lo) for a second dot here, ~16 bits: 0.54 GB
    # more written and read at B=16 T=2k H=16 K=V=128 bf16, for (emulated with the GPU's rounding, K=128 T=1000 clip)
    # dv 2.5e-3 -> 1.9e-3, dbeta 1.7e-3 -> 0.6e-3, dgamma 1.4e-3 -> 0.5e-3 (docs/next/rla-p6.md). fp32: fp32 dh'.
    # On the H200 (2026-12-01, gpu_check_rla.py, bf16 K=128 clip): dv 2.5e-3, dbeta 1.8e-3, dgamma 1.9e-3, and du
    # 0.43 -> 0.31 ms, dv 0.56 -> 0.49, both dh walks 0.78 -> 0.67 (B=16 T=2k H=16 K=V=128).
    b_Y += b_to_end[:, None] * tl.dot(b_k, b_dhr, input_precision=DOT_PREC)
    _du_through_rho(b_Y, b_gamma, res, du, dgamma_part, i_v * part_stride, gate_off, in_seq, clip, clip_mask, tok_v,
                    i_c, T_seq, i_v, H, V, BT, BV, RESIDUAL)


@autotune(configs=warps_stages_configs(), key=["H", "K", "V", "BT", "BK", "BV", "DOT_PREC", "DOTS_FP32", "HAS_QK"])
@triton.jit(do_not_specialize=["T", "part_stride"])
def _rla_bwd_dv_kernel(
    q, k, v, g, beta, do, du, dh_s, dv, dbeta_part, qk,
    cu_seqlens, chunk_indices, scale, T, part_stride,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr,
    HAS_QK: tl.constexpr,
):
    """Step 2 (the S path) for every chunk in parallel, from the stored dh_S' and du: dv, and dbeta per
    V-block. One program per (V-block, chunk, head)."""
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_t, i_nh = _chunk_program(1, H, CHUNK_ORDER)
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
    b_G = tl.cumsum(b_g, axis=0)
    b_Gm = b_G - b_g
    b_GL = tl.sum(b_g, axis=0)
    tok_k = (bos * H + i_h) * K
    tok_v = (bos * H + i_h) * V
    b_k = load_tile(k + tok_k, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_v = load_tile(v + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
    b_dO1 = load_tile(do + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32) * scale
    b_du = load_tile(du + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
    h_off = (i_row * H + i_h) * K * V
    b_dhs = load_tile(dh_s + h_off, 0, K, V, i_v * BV, V, BK, BV).to(DT)

    # Values beta_i v_i, read by the q queries (decay from G_t) and the k queries (from Gm_t), i < t.
    key_lt_query = o_t[:, None] < o_t[None, :]  # [key i, query t]
    b_qt = b_k  # unread with HAS_QK
    if not HAS_QK:
        b_qt = tl.trans(load_tile(q + tok_k, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT))
    # the du walk's products with the diagonal (i = t) off: the S path's queries read S_{t-1}
    b_Aq = _decayed_kq(qk, (bos * H + i_h) * BT, i_c, T_seq, b_k, b_qt, b_G, H, BT, DOT_PREC, DT, HAS_QK)
    b_Aq = tl.where(key_lt_query, b_Aq, tl.zeros_like(b_Aq))
    b_Ak = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PREC)
    b_Ak = b_Ak * exp_where(key_lt_query, b_Gm[None, :] - b_G[:, None])
    b_X = tl.dot(b_Aq, b_dO1.to(DT), input_precision=DOT_PREC)
    b_X += tl.dot(b_Ak.to(DT), b_du.to(DT), input_precision=DOT_PREC)
    b_to_end = tl.exp(b_GL - b_G)
    b_X += b_to_end[:, None] * tl.dot(b_k, b_dhs, input_precision=DOT_PREC)  # dh_S' as stored (see du)
    tl.store(dbeta_part + i_v * part_stride + gate_off, tl.sum(b_v * b_X, axis=1), mask=in_seq)
    store_tile(dv + tok_v, b_beta[:, None] * b_X - b_du, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV)


@autotune(configs=warps_stages_configs(), key=["H", "K", "V", "BT", "BK", "BV", "DOT_PREC", "DOTS_FP32"])
@triton.jit(do_not_specialize=["T"])
def _rla_bwd_intra_kernel(
    q, k, v, g, beta, gamma, res, do, du, m_out, mk_out, dgamma_intra,
    cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr,
):
    """One program per (chunk, head): the chunk's token-to-token matrices, summed over all of V,
        M  = [t > i] exp(G_t - G_i) beta_i (dO1_t . v_i) + exp(G_t - G_i) gamma_t gamma_i (dO1_t . r_i)
        Mk = [t > i] exp(Gm_t - G_i) beta_i (du_t . v_i)
    (what dq, dk read of the other tokens, as query t and key i), stored [BT, BT] per chunk (in the input
    dtype: the dq/dk kernel's dots cast them to it) for the dq/dk kernel, and gamma's output term through the chunk,
    sum_i A_ti D_ti gamma_i (dO1_t . r_i) with the whole q.k product A (so the dq/dk kernel, one program per
    K-block, holds no [BT, BT] V-sums in its V loop)."""
    i_t, i_nh = _chunk_program(0, H, CHUNK_ORDER)
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
    b_Gm = b_G - b_g
    tok_v = (bos * H + i_h) * V
    # Raw tiles into accumulating dots (both operands from shared memory on the GPU), scale after the loop: the
    # exact products of the stored values, where do scale was rounded to the input dtype until 2026-12-01.
    b_P1 = tl.zeros([BT, BT], dtype=tl.float32)  # do_t . v_i
    b_Q = tl.zeros([BT, BT], dtype=tl.float32)  # do_t . r_i
    b_P3 = tl.zeros([BT, BT], dtype=tl.float32)  # du_t . v_i
    for i_loop in range(0, tl.cdiv(V, BV)):
        i_v = tl.cast(i_loop, tl.int64)
        b_v = load_tile(v + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
        b_r = load_tile(res + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
        b_do = load_tile(do + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
        b_du = load_tile(du + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
        b_P1 = tl.dot(b_do, tl.trans(b_v), b_P1, input_precision=DOT_PREC)
        b_Q = tl.dot(b_do, tl.trans(b_r), b_Q, input_precision=DOT_PREC)
        b_P3 = tl.dot(b_du, tl.trans(b_v), b_P3, input_precision=DOT_PREC)
    b_P1 *= scale  # dO1_t . v_i
    b_Q *= scale  # dO1_t . r_i
    incl = o_t[:, None] >= o_t[None, :]
    strict = o_t[:, None] > o_t[None, :]
    b_D = exp_where(incl, b_G[:, None] - b_G[None, :])
    b_Dm = exp_where(strict, b_Gm[:, None] - b_G[None, :])
    b_M = tl.where(strict, b_P1 * b_beta[None, :], 0.0) * b_D + b_Q * (b_gamma[:, None] * b_gamma[None, :]) * b_D
    b_Mk = b_P3 * b_beta[None, :] * b_Dm
    m_off = (i_row * H + i_h) * BT * BT
    store_tile(m_out + m_off, b_M, 0, BT, BT, 0, BT, BT, BT)
    store_tile(mk_out + m_off, b_Mk, 0, BT, BT, 0, BT, BT, BT)
    tok_k = (bos * H + i_h) * K
    b_q = load_tile(q + tok_k, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_k = load_tile(k + tok_k, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_A = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
    tl.store(dgamma_intra + gate_off, tl.sum(b_A * b_D * b_gamma[None, :] * b_Q, axis=1), mask=in_seq)


# BK in the key: the launch knob DQKG_BK (chunk.py) changes it at fixed K, and profile_kernels.py --tune must tune
# each width, not reuse the first one's config.
@autotune(configs=warps_stages_configs(),
          key=["H", "K", "V", "BT", "BK", "BV", "RESIDUAL", "DOT_PREC", "DOTS_FP32"])
@triton.jit(do_not_specialize=["T", "part_stride"])
def _rla_bwd_dqkg_kernel(
    q, k, v, g, beta, gamma, h_s, h_r, res, do, du, dh_s, dh_r, m_in, mk_in,
    dq, dk, dg_part, dgamma_part,
    cu_seqlens, chunk_indices, scale, clip, clip_mask, T, part_stride,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, IS_VARLEN: tl.constexpr,
    CHUNK_ORDER: tl.constexpr,
):
    """dq, dk and per K-block dg and gamma's output term through h_R (see the module docstring): four [BT, BK]
    state sums through the V loop (dq's through h_S and h_R, dk's through h_S and through the chunk-end gradients),
    so that dg and dgamma take their row sums of single terms here."""
    i_k = tl.cast(tl.program_id(0), tl.int64)
    i_t, i_nh = _chunk_program(1, H, CHUNK_ORDER)
    bos, T_seq, i_c, i_row, i_h = _chunk_coords(cu_seqlens, chunk_indices, i_t, i_nh, T, H, BT, IS_VARLEN)
    DT = q.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    o_t = tl.arange(0, BT)
    rows = i_c * BT + o_t
    in_seq = rows < T_seq
    gate_off = (bos + rows) * H + i_h
    b_beta = tl.load(beta + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_gamma = tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    tok_v = (bos * H + i_h) * V

    # Over the V loop only the state terms are accumulated ([BT, BK] each); the token-to-token matrices M
    # and Mk, summed over V, come from _rla_bwd_intra_kernel. dO2 = gamma_t dO1 is folded in later.
    b_Zs = tl.zeros([BT, BK], dtype=tl.float32)  # h_S dO1_t
    b_Zr = tl.zeros([BT, BK], dtype=tl.float32)  # h_R dO1_t
    b_dk_h = tl.zeros([BT, BK], dtype=tl.float32)  # h_S du_t
    b_dk_end = tl.zeros([BT, BK], dtype=tl.float32)  # beta_i dh_S' v_i + gamma_i dh_R' r_i
    b_hdh = tl.zeros([BK], dtype=tl.float32)  # <h_start, dh_end> of both states, per K row
    h_off = (i_row * H + i_h) * K * V
    for i_loop in range(0, tl.cdiv(V, BV)):
        i_v = tl.cast(i_loop, tl.int64)
        b_dO1 = (load_tile(do + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32) * scale).to(DT)
        b_du = load_tile(du + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
        b_hs = load_tile(h_s + h_off, i_k * BK, K, V, i_v * BV, V, BK, BV)
        b_hr = load_tile(h_r + h_off, i_k * BK, K, V, i_v * BV, V, BK, BV)
        b_Zs += tl.dot(b_dO1, tl.trans(b_hs.to(DT)), input_precision=DOT_PREC)
        b_Zr += tl.dot(b_dO1, tl.trans(b_hr.to(DT)), input_precision=DOT_PREC)
        b_dk_h += tl.dot(b_du, tl.trans(b_hs.to(DT)), input_precision=DOT_PREC)
        b_dhs = load_tile(dh_s + h_off, i_k * BK, K, V, i_v * BV, V, BK, BV)
        b_dhr = load_tile(dh_r + h_off, i_k * BK, K, V, i_v * BV, V, BK, BV)
        # the stored (input-dtype) states, products in fp32: what fla's dg_last reads of its h and dh
        b_hdh += tl.sum(b_hs.to(tl.float32) * b_dhs.to(tl.float32), axis=1)
        b_hdh += tl.sum(b_hr.to(tl.float32) * b_dhr.to(tl.float32), axis=1)
        b_vb = (load_tile(v + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
                * b_beta[:, None]).to(DT)
        # r is stored rounded to the input dtype: gamma r rounded again would add a second 2^-9 (bf16, no clip:
        # dk 9.0e-3 -> 1.04e-2, dg 5.8e-3 -> 7.8e-3 against float64, emulated), so gamma r (exact in fp32 up to
        # 2^-24) enters as hi + lo halves: r's own rounding is the only one left, as before r was stored half.
        b_rg = _residual_value(load_tile(res + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV), clip, clip_mask,
                               RESIDUAL) * b_gamma[:, None]
        b_dk_end += tl.dot(b_vb, tl.trans(b_dhs.to(DT)), input_precision=DOT_PREC)
        # not dot_split(..., b_dk_end): with the sum as the dots' accumulator nothing in the loop waits on them, and
        # Triton 3.9 refills b_dhr's shared slot under the running wgmma (kernel_resources.py --hazards, 2026-12-05)
        b_dk_end += dot_split(b_rg, tl.trans(b_dhr.to(DT)), DOT_PREC)

    # The decays and q, k's offset made here, after the V loop that does not read them: made before it they were
    # held across it (ptxas spill stack 104 -> 96 bytes at 4 warps, Triton 3.9, B=16 T=2k; the RDN gradient kernel's
    # like change, docs/next/rdn-grad-anatomy.py, 2026-12-04).
    b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_Gm = b_G - b_g
    b_GL = tl.sum(b_g, axis=0)
    b_to_end = tl.exp(b_GL - b_G)
    tok_k = (bos * H + i_h) * K
    b_q = load_tile(q + tok_k, i_c * BT, T_seq, H * K, i_k * BK, K, BT, BK).to(DT)
    b_k = load_tile(k + tok_k, i_c * BT, T_seq, H * K, i_k * BK, K, BT, BK).to(DT)
    m_off = (i_row * H + i_h) * BT * BT
    b_M = load_tile(m_in + m_off, 0, BT, BT, 0, BT, BT, BT)
    b_Mk = load_tile(mk_in + m_off, 0, BT, BT, 0, BT, BT, BT)
    # gamma's output term through the start state R (the in-chunk term comes from the intra kernel)
    b_qf = b_q.to(tl.float32)
    b_dgamma = tl.exp(b_G) * tl.sum(b_qf * b_Zr, axis=1)
    b_dq = tl.exp(b_G)[:, None] * (b_Zs + b_gamma[:, None] * b_Zr)
    b_dq += tl.dot(b_M.to(DT), b_k, input_precision=DOT_PREC)
    b_dk_query = tl.exp(b_Gm)[:, None] * b_dk_h + tl.dot(b_Mk.to(DT), b_k, input_precision=DOT_PREC)
    b_dk_end = b_to_end[:, None] * b_dk_end
    b_dk_key = tl.dot(tl.trans(b_M).to(DT), b_q, input_precision=DOT_PREC)
    b_dk_key += tl.dot(tl.trans(b_Mk).to(DT), b_k, input_precision=DOT_PREC) + b_dk_end

    b_kf = b_k.to(tl.float32)
    b_dG = tl.sum(b_qf * b_dq, axis=1) - tl.sum(b_kf * b_dk_key, axis=1)
    last = tl.minimum(BT, T_seq - i_c * BT) - 1
    carried = tl.exp(b_GL) * tl.sum(b_hdh, axis=0) + tl.sum(tl.sum(b_kf * b_dk_end, axis=1), axis=0)
    b_dG += tl.where(o_t == last, carried, 0.0)
    b_dGm = tl.sum(b_kf * b_dk_query, axis=1)
    b_tot = b_dG + b_dGm
    b_dg = tl.sum(b_tot, axis=0) - tl.cumsum(b_tot, axis=0) + b_tot - b_dGm

    store_tile(dq + tok_k, b_dq.to(dq.dtype.element_ty), i_c * BT, T_seq, H * K, i_k * BK, K, BT, BK)
    store_tile(dk + tok_k, (b_dk_query + b_dk_key).to(dk.dtype.element_ty), i_c * BT, T_seq, H * K, i_k * BK, K, BT, BK)
    tl.store(dg_part + i_k * part_stride + gate_off, b_dg, mask=in_seq)
    tl.store(dgamma_part + i_k * part_stride + gate_off, b_dgamma, mask=in_seq)


@triton.jit
def _rla_bwd_sums_kernel(dg_part, n_dg, dbeta_part, n_dbeta, dgamma_part, n_dgamma, dgamma_intra, dg, dbeta, dgamma,
                         E, BLOCK: tl.constexpr):
    """The backward's per-block partial sums reduced in one launch (plan P7): dg = sum of dg_part's n_dg rows,
    dbeta of dbeta_part's n_dbeta, dgamma = dgamma_intra + the sum of dgamma_part's n_dgamma, each row E (= the gates'
    numel) fp32 values, each result stored in its own dtype. Replaces four torch sums, two adds and a zero fill
    (dgamma_intra's: every token it covers, the intra kernel writes). One program per BLOCK gates."""
    o = tl.cast(tl.program_id(0), tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < E
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for p in range(0, n_dg):
        acc += tl.load(dg_part + tl.cast(p, tl.int64) * E + o, mask=m, other=0.0)
    tl.store(dg + o, acc.to(dg.dtype.element_ty), mask=m)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for p in range(0, n_dbeta):
        acc += tl.load(dbeta_part + tl.cast(p, tl.int64) * E + o, mask=m, other=0.0)
    tl.store(dbeta + o, acc.to(dbeta.dtype.element_ty), mask=m)
    acc = tl.load(dgamma_intra + o, mask=m, other=0.0)
    for p in range(0, n_dgamma):
        acc += tl.load(dgamma_part + tl.cast(p, tl.int64) * E + o, mask=m, other=0.0)
    tl.store(dgamma + o, acc.to(dgamma.dtype.element_ty), mask=m)
