"""Chunk-local matrices of RDN, all chunks in parallel: the UT-transform inverses and the decayed k.k / q.k.

Inside a chunk of BT tokens (G = inclusive cumsum of g from the chunk start, Gp = G - g), the pseudo-values
of a gated delta rule with rate x (beta for S, gamma for R) solve the unit-lower-triangular system

    (I + A_x) U = diag(x) (values - diag(exp G) K M0),   A_x[t, i] = x_t exp(G_t - G_i) k_t . k_i  (i < t)

S and R share k and g, so both matrices come from one k k^T and differ only in the row scale. This
kernel stores, for every chunk, as [B*T, H, BT] fp32 (row t of the chunk's matrix at token t):

    T_beta = (I + A_beta)^{-1},  T_gamma = (I + A_gamma)^{-1}
    Mk[t, i]  = exp(Gp_t - G_i) k_t . k_i   (i < t)    the residual query's in-chunk read of S
    Mqi[t, i] = exp(G_t - G_i)  q_t . k_i   (i <= t)   the output query's (only when STORE_MQI)

so that the sequential walks (chunk_fwd.py, chunk_bwd.py) do no K x K work. Inversion is blockwise: forward
substitution, row by row (rows read back from memory), inside each 16 x 16 diagonal block, then block
forward substitution for the blocks below it, X_IJ = -X_II sum_{J <= M < I} A_IM X_MJ (stable: no powers
of A, as fla's solve_tril). A row-by-row loop over the whole 64 x 64 block cost 4.4 ms of the 8 ms
forward at T = 2k on the H200 (64 dependent full-tile reductions); the blocks keep that loop at 16 x 16
and hand the rest to tl.dot.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_helpers import autotune, chunk_coords, exp_masked, launch_configs, load_tile, store_tile


@triton.jit
def _diagonal_inverse(t, out, i_t, I: tl.constexpr, A, T_seq, H: tl.constexpr, BT: tl.constexpr):
    """(I + A)^{-1} for the strictly lower-triangular 16 x 16 diagonal block I, by forward substitution:
    row i of the inverse is e_i - sum_{j<i} A[i, j] (row j of the inverse). A is first written to the
    block's place in t and its rows are read back from there (the inverse overwrites it after): a row
    taken out of a register tile is a cross-warp reduction, a row read from memory is a load (fla's
    solve_tril does the same)."""
    o = tl.arange(0, 16)
    _store_block(t, out, A, i_t, I, I, T_seq, H, BT)
    tl.debug_barrier()  # the block's stores, from every thread, before any thread reads a row
    row0 = i_t * BT + I * 16
    rows = t + out + row0 * H * BT + I * 16
    inv = tl.where(o[:, None] == o[None, :], 1.0, 0.0)
    for i in range(1, 16):
        a_i = tl.load(rows + i * H * BT + o, mask=(o < i) & (row0 + i + 0 * o < T_seq), other=0.0)
        inv += tl.where(o[:, None] == i, -tl.sum(a_i[:, None] * inv, axis=0)[None, :], 0.0)
    tl.debug_barrier()  # every read done before the inverse is stored over the block
    return inv


@triton.jit
def _k_block(k, tok_k, row0, T_seq, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr):
    return load_tile(k + tok_k, row0, T_seq, H * K, 0, K, 16, BK)


@triton.jit
def _kk_block(b_ki, b_kj, b_Gi, b_Gj, DIAG: tl.constexpr, DOT_PREC: tl.constexpr):
    """exp(G_t - G_i) k_t . k_i for the rows of block I against the columns of block J (strictly below the
    diagonal when I = J; every entry of a block below the diagonal block is below it)."""
    b_kk = tl.dot(b_ki, tl.trans(b_kj), input_precision=DOT_PREC)
    if DIAG:
        o = tl.arange(0, 16)
        b_E = exp_masked(o[:, None] > o[None, :], b_Gi[:, None] - b_Gj[None, :])
    else:
        b_E = tl.exp(b_Gi[:, None] - b_Gj[None, :])
    return b_kk * b_E


@triton.jit
def _store_block(t, out, x, i_t, I: tl.constexpr, J: tl.constexpr, T_seq, H: tl.constexpr, BT: tl.constexpr):
    store_tile(t + out, x, i_t * BT + I * 16, T_seq, H * BT, J * 16, BT, 16, 16)


@triton.jit
def _blocked_inverse(t, out, i_t, T_seq, r0, r1, r2, r3,
                     B00, B10, B11, B20, B21, B22, B30, B31, B32, B33,
                     H: tl.constexpr, BT: tl.constexpr, MERGE_PREC: tl.constexpr):
    """Store (I + diag(r) B)^{-1} for the chunk (NB = BT / 16 blocks; r_I the rate of block I's rows,
    B_IJ = _kk_block), zeros above the diagonal included, rows past the sequence end left out."""
    NB: tl.constexpr = BT // 16
    zero = tl.zeros([16, 16], dtype=tl.float32)
    X00 = _diagonal_inverse(t, out, i_t, 0, r0[:, None] * B00, T_seq, H, BT)
    _store_block(t, out, X00, i_t, 0, 0, T_seq, H, BT)
    if NB > 1:
        A10 = r1[:, None] * B10
        X11 = _diagonal_inverse(t, out, i_t, 1, r1[:, None] * B11, T_seq, H, BT)
        X10 = -tl.dot(X11, tl.dot(A10, X00, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        _store_block(t, out, zero, i_t, 0, 1, T_seq, H, BT)
        _store_block(t, out, X10, i_t, 1, 0, T_seq, H, BT)
        _store_block(t, out, X11, i_t, 1, 1, T_seq, H, BT)
    if NB > 2:
        A20 = r2[:, None] * B20
        A21 = r2[:, None] * B21
        A30 = r3[:, None] * B30
        A31 = r3[:, None] * B31
        A32 = r3[:, None] * B32
        X22 = _diagonal_inverse(t, out, i_t, 2, r2[:, None] * B22, T_seq, H, BT)
        X33 = _diagonal_inverse(t, out, i_t, 3, r3[:, None] * B33, T_seq, H, BT)
        X21 = -tl.dot(X22, tl.dot(A21, X11, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        X20 = -tl.dot(X22, tl.dot(A20, X00, input_precision=MERGE_PREC)
                      + tl.dot(A21, X10, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        X32 = -tl.dot(X33, tl.dot(A32, X22, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        X31 = -tl.dot(X33, tl.dot(A31, X11, input_precision=MERGE_PREC)
                      + tl.dot(A32, X21, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        X30 = -tl.dot(X33, tl.dot(A30, X00, input_precision=MERGE_PREC)
                      + tl.dot(A31, X10, input_precision=MERGE_PREC)
                      + tl.dot(A32, X20, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        for J in tl.static_range(2, 4):
            _store_block(t, out, zero, i_t, 0, J, T_seq, H, BT)
            _store_block(t, out, zero, i_t, 1, J, T_seq, H, BT)
        _store_block(t, out, zero, i_t, 2, 3, T_seq, H, BT)
        _store_block(t, out, X20, i_t, 2, 0, T_seq, H, BT)
        _store_block(t, out, X21, i_t, 2, 1, T_seq, H, BT)
        _store_block(t, out, X22, i_t, 2, 2, T_seq, H, BT)
        _store_block(t, out, X30, i_t, 3, 0, T_seq, H, BT)
        _store_block(t, out, X31, i_t, 3, 1, T_seq, H, BT)
        _store_block(t, out, X32, i_t, 3, 2, T_seq, H, BT)
        _store_block(t, out, X33, i_t, 3, 3, T_seq, H, BT)


# Two warps as an option: most of the kernel is 16 x 16 tiles, where fewer warps mean fewer cross-warp steps.
@autotune(configs=launch_configs((4, 1), (2, 1), (8, 1)), key=["H", "K", "BT", "BK", "DOT_PREC", "STORE_MQI"])
@triton.jit(do_not_specialize=["T"])
def _rdn_wy_kernel(
    q, k, g, beta, gamma, t_beta, t_gamma, m_k, m_qi, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    DOT_PREC: tl.constexpr, STORE_MQI: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    NB: tl.constexpr = BT // 16
    # The merges are tiny 16 x 16 products; tf32x3 keeps them at fp32 accuracy for half inputs.
    MERGE_PREC: tl.constexpr = "tf32x3" if DOT_PREC == "tf32" else DOT_PREC
    i_c = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    bos, T_seq, i_t, i_h = chunk_coords(cu_seqlens, chunk_indices, i_c, i_nh, T, H, IS_VARLEN)
    o_t = tl.arange(0, BT)
    rows = i_t * BT + o_t
    in_seq = rows < T_seq
    gate_off = (bos + rows) * H + i_h
    b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_Gp = b_G - b_g
    tok_k = (bos * H + i_h) * K
    b_k = load_tile(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    out = (bos * H + i_h) * BT

    # Mk (and Mqi) on the whole chunk: one dot each.
    strict = o_t[:, None] > o_t[None, :]
    b_mk = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PREC) * exp_masked(strict, b_Gp[:, None] - b_G[None, :])
    store_tile(m_k + out, b_mk, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    if STORE_MQI:
        b_q = load_tile(q + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_qk = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
        b_mqi = b_qk * exp_masked(o_t[:, None] >= o_t[None, :], b_G[:, None] - b_G[None, :])
        store_tile(m_qi + out, b_mqi, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)

    # The inverses, in 16-row blocks: block I's keys, cumulative decays and rates.
    o16 = tl.arange(0, 16)
    r0 = i_t * BT + o16
    m0 = r0 < T_seq
    k0 = _k_block(k, tok_k, i_t * BT, T_seq, H, K, BK)
    G0 = tl.cumsum(tl.load(g + (bos + r0) * H + i_h, mask=m0, other=0.0).to(tl.float32), axis=0)
    be0 = tl.load(beta + (bos + r0) * H + i_h, mask=m0, other=0.0).to(tl.float32)
    ga0 = tl.load(gamma + (bos + r0) * H + i_h, mask=m0, other=0.0).to(tl.float32)
    B00 = _kk_block(k0, k0, G0, G0, True, DOT_PREC)
    # Placeholders for the blocks a smaller chunk does not have (never read then).
    B10 = B00
    B11 = B00
    B20 = B00
    B21 = B00
    B22 = B00
    B30 = B00
    B31 = B00
    B32 = B00
    B33 = B00
    be1 = be0
    be2 = be0
    be3 = be0
    ga1 = ga0
    ga2 = ga0
    ga3 = ga0
    if NB > 1:
        r1 = r0 + 16
        m1 = r1 < T_seq
        k1 = _k_block(k, tok_k, i_t * BT + 16, T_seq, H, K, BK)
        G1 = tl.sum(tl.where(o_t < 16, b_g, 0.0), axis=0) + tl.cumsum(
            tl.load(g + (bos + r1) * H + i_h, mask=m1, other=0.0).to(tl.float32), axis=0)
        be1 = tl.load(beta + (bos + r1) * H + i_h, mask=m1, other=0.0).to(tl.float32)
        ga1 = tl.load(gamma + (bos + r1) * H + i_h, mask=m1, other=0.0).to(tl.float32)
        B10 = _kk_block(k1, k0, G1, G0, False, DOT_PREC)
        B11 = _kk_block(k1, k1, G1, G1, True, DOT_PREC)
    if NB > 2:
        r2 = r0 + 32
        r3 = r0 + 48
        m2 = r2 < T_seq
        m3 = r3 < T_seq
        k2 = _k_block(k, tok_k, i_t * BT + 32, T_seq, H, K, BK)
        k3 = _k_block(k, tok_k, i_t * BT + 48, T_seq, H, K, BK)
        G2 = tl.sum(tl.where(o_t < 32, b_g, 0.0), axis=0) + tl.cumsum(
            tl.load(g + (bos + r2) * H + i_h, mask=m2, other=0.0).to(tl.float32), axis=0)
        G3 = tl.sum(tl.where(o_t < 48, b_g, 0.0), axis=0) + tl.cumsum(
            tl.load(g + (bos + r3) * H + i_h, mask=m3, other=0.0).to(tl.float32), axis=0)
        be2 = tl.load(beta + (bos + r2) * H + i_h, mask=m2, other=0.0).to(tl.float32)
        ga2 = tl.load(gamma + (bos + r2) * H + i_h, mask=m2, other=0.0).to(tl.float32)
        be3 = tl.load(beta + (bos + r3) * H + i_h, mask=m3, other=0.0).to(tl.float32)
        ga3 = tl.load(gamma + (bos + r3) * H + i_h, mask=m3, other=0.0).to(tl.float32)
        B20 = _kk_block(k2, k0, G2, G0, False, DOT_PREC)
        B21 = _kk_block(k2, k1, G2, G1, False, DOT_PREC)
        B22 = _kk_block(k2, k2, G2, G2, True, DOT_PREC)
        B30 = _kk_block(k3, k0, G3, G0, False, DOT_PREC)
        B31 = _kk_block(k3, k1, G3, G1, False, DOT_PREC)
        B32 = _kk_block(k3, k2, G3, G2, False, DOT_PREC)
        B33 = _kk_block(k3, k3, G3, G3, True, DOT_PREC)
    _blocked_inverse(t_beta, out, i_t, T_seq, be0, be1, be2, be3,
                     B00, B10, B11, B20, B21, B22, B30, B31, B32, B33, H, BT, MERGE_PREC)
    _blocked_inverse(t_gamma, out, i_t, T_seq, ga0, ga1, ga2, ga3,
                     B00, B10, B11, B20, B21, B22, B30, B31, B32, B33, H, BT, MERGE_PREC)
