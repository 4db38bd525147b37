"""Chunk-local matrices of RDN, all chunks in parallel: the UT-transform inverses and the decayed k.k / q.k.

Inside a chunk of BT tokens (G = inclusive cumsum of g from the chunk start, Gp = G - g), the pseudo-values
of a gated delta rule with rate x (beta for S, gamma for R) solve the unit-lower-triangular system

    (I + A_x) U = diag(x) (values - diag(exp G) K M0),   A_x[t, i] = x_t exp(G_t - G_i) k_t . k_i  (i < t)

S and R share k and g, so both matrices come from one k k^T and differ only in the row scale. _rdn_wy_kernel
stores, for every chunk, as [B*T, H, BT] fp32 (row t of the chunk's matrix at token t):

    T_beta = (I + A_beta)^{-1},  T_gamma = (I + A_gamma)^{-1}
    Mk[t, i]  = exp(Gp_t - G_i) k_t . k_i   (i < t)    the residual query's in-chunk read of S

and ``mqi_tile``, for the output kernel (chunk_fwd.py) and the backward's walk operators (chunk_bwd.py), each making
its own from the chunk's q and k:

    Mqi[t, i] = exp(G_t - G_i)  q_t . k_i   (i <= t)   the output query's

so that the sequential walks (chunk_fwd.py, chunk_bwd.py) do no K x K work. One k k^T dot gives Mk, and
A_x = diag(x exp(g)) Mk, since exp(G_t - G_i) = exp(g_t) exp(Gp_t - G_i); the inversions read Mk's blocks back
from memory. Inversion is blockwise: forward substitution, row by row, inside each 16 x 16 diagonal block,
then block forward substitution for the blocks below it, X_IJ = -X_II sum_{J <= M < I} A_IM X_MJ (stable: no
powers of A, as fla's solve_tril). A row-by-row loop over the whole 64 x 64 block cost 4.4 ms of the 8 ms
forward at T = 2k on the H200 (64 dependent full-tile reductions); the blocks keep that loop at 16 x 16
and hand the rest to tl.dot. Ten k-block dots per chunk before 2026-11-30 evening held [16, K] tiles and
their products live at once: ptxas (sm_90a) gave 255 registers and 736-1312 bytes of spills a thread at
64-token chunks, K = 128. Until 2026-12-01 the diagonal blocks were solved one after another (4 blocks x 15
dependent row steps at BT = 32, each waiting on a load: 0.59 ms at B=16 T=2k H=16 K=128 bf16, H200);
_diagonal_inverses now takes the 15 steps once for all blocks of both matrices (docs/next/rdn-chunk-kernels.md):
0.13 ms there, the autotuner's pick one warp (2026-12-01 16:49).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_helpers import (autotune, chunk_ids, chunk_prologue, exp_masked, launch_configs, load_tile, load_tile_raw,
                              store_tile)


@triton.jit
def _row_scale(x, g, bos, i_h, row0, T_seq, H: tl.constexpr):
    """x_t exp(g_t) for the 16 rows from row0 (past the sequence end 0): A_x's rows are these times Mk's,
    as exp(G_t - G_i) = exp(g_t) exp(Gp_t - G_i). Both factors are at most 1 for g <= 0, so nothing
    overflows where exp(-g_t) would."""
    r = row0 + tl.arange(0, 16)
    m = r < T_seq
    off = (bos + r) * H + i_h
    return (tl.load(x + off, mask=m, other=0.0).to(tl.float32)
            * tl.exp(tl.load(g + off, mask=m, other=0.0).to(tl.float32)))


@triton.jit
def _a_block(m_k, out, s_I, i_t, I: tl.constexpr, J: tl.constexpr, T_seq, H: tl.constexpr, BT: tl.constexpr):
    """Block (I, J) of A_x = diag(x exp(g)) Mk, read back from the Mk this program stored."""
    return s_I[:, None] * load_tile(m_k + out, i_t * BT + I * 16, T_seq, H * BT, J * 16, BT, 16, 16)


@triton.jit
def _diagonal_inverses(t_beta, t_gamma, m_k, beta, gamma, g, out, bos, i_h, i_t, T_seq,
                       H: tl.constexpr, BT: tl.constexpr):
    """Store (I + A)^{-1} of every 16 x 16 diagonal block of both matrices (A_beta, A_gamma) by forward substitution,
    all NB = 2 BT / 16 blocks at once, so that the 15 dependent row steps are taken once for all of them (they were
    taken once a block, 60 steps at BT = 32, each waiting on a load). The inverses are one [NB, 16, 16] tile held
    transposed, inv[p, c, j] = (block p's inverse)[j, c] (blocks of T_beta, then of T_gamma): a step's sum over j
    runs along the last axis, which Triton gives to lanes: at one warp the sum is shuffles, no shared memory.
    Step i: row i of every block becomes e_i - sum_{j<i} A[i, j] (row j of its inverse); A's rows are read from the
    stored Mk and scaled by the token's x exp(g) (loads off the chain: the unrolled loop lets them go first)."""
    NBM: tl.constexpr = BT // 16  # blocks a matrix
    NB: tl.constexpr = 2 * NBM
    o_p = tl.arange(0, NB)
    o_16 = tl.arange(0, 16)
    first = (o_p % NBM) * 16  # the block's first chunk row
    is_b = (o_p < NBM)[:, None]
    inv = tl.where(o_16[None, :, None] == o_16[None, None, :], 1.0, 0.0) + tl.zeros([NB, 16, 16], dtype=tl.float32)
    for i in tl.static_range(1, 16):
        row = (i_t * BT + first + i)[:, None]  # [NB, 1]: the sequence row of block p's step
        live = row < T_seq
        off = (bos + row) * H + i_h
        x = tl.where(is_b, tl.load(beta + off, mask=live, other=0.0).to(tl.float32),
                     tl.load(gamma + off, mask=live, other=0.0).to(tl.float32))
        a = x * tl.exp(tl.load(g + off, mask=live, other=0.0).to(tl.float32)) * tl.load(
            m_k + out + row * H * BT + first[:, None] + o_16[None, :], mask=live & (o_16[None, :] < i), other=0.0)
        step = tl.sum(a[:, None, :] * inv, axis=2)  # [NB, 16]: sum_j A[i, j] inv_j[c]
        inv = tl.where(o_16[None, None, :] == i, inv - step[:, :, None], inv)  # row i was e_i
    rows = (i_t * BT + first)[:, None, None] + o_16[None, None, :]
    ptrs = out + rows * H * BT + first[:, None, None] + o_16[None, :, None]
    in_seq = rows < T_seq
    tl.store(t_beta + ptrs, inv, mask=in_seq & is_b[:, :, None])
    tl.store(t_gamma + ptrs, inv, mask=in_seq & (~is_b)[:, :, None])


@triton.jit
def _diagonal_block(t, out, i_t, I: tl.constexpr, T_seq, H: tl.constexpr, BT: tl.constexpr):
    """Diagonal block I of the inverse, as _diagonal_inverses stored it (rows past the sequence end read 0: their
    columns of A are 0, so they meet nothing in the merges, and their rows are not stored)."""
    return load_tile(t + out, i_t * BT + I * 16, T_seq, H * BT, I * 16, BT, 16, 16)


@triton.jit
def _store_block(t, out, x, i_t, I: tl.constexpr, J: tl.constexpr, T_seq, H: tl.constexpr, BT: tl.constexpr):
    store_tile(t + out, x, i_t * BT + I * 16, T_seq, H * BT, J * 16, BT, 16, 16)


@triton.jit
def _blocked_inverse(t, m_k, x, g, out, bos, i_h, i_t, T_seq,
                     H: tl.constexpr, BT: tl.constexpr, MERGE_PREC: tl.constexpr):
    """Store (I + A_x)^{-1} for the chunk, A_x = diag(x exp(g)) Mk (NB = BT / 16 blocks of 16 rows), zeros
    above the diagonal included, rows past the sequence end left out. Blocks of A are loaded where they
    are used, so that few [16, 16] tiles are live at once."""
    NB: tl.constexpr = BT // 16
    zero = tl.zeros([16, 16], dtype=tl.float32)
    X00 = _diagonal_block(t, out, i_t, 0, T_seq, H, BT)
    if NB > 1:
        s1 = _row_scale(x, g, bos, i_h, i_t * BT + 16, T_seq, H)
        X11 = _diagonal_block(t, out, i_t, 1, T_seq, H, BT)
        X10 = -tl.dot(X11, tl.dot(_a_block(m_k, out, s1, i_t, 1, 0, T_seq, H, BT), X00,
                                  input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        _store_block(t, out, zero, i_t, 0, 1, T_seq, H, BT)
        _store_block(t, out, X10, i_t, 1, 0, T_seq, H, BT)
    if NB > 2:
        s2 = _row_scale(x, g, bos, i_h, i_t * BT + 32, T_seq, H)
        s3 = _row_scale(x, g, bos, i_h, i_t * BT + 48, T_seq, H)
        A20 = _a_block(m_k, out, s2, i_t, 2, 0, T_seq, H, BT)
        A21 = _a_block(m_k, out, s2, i_t, 2, 1, T_seq, H, BT)
        X22 = _diagonal_block(t, out, i_t, 2, T_seq, H, BT)
        X21 = -tl.dot(X22, tl.dot(A21, X11, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        X20 = -tl.dot(X22, tl.dot(A20, X00, input_precision=MERGE_PREC)
                      + tl.dot(A21, X10, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        A30 = _a_block(m_k, out, s3, i_t, 3, 0, T_seq, H, BT)
        A31 = _a_block(m_k, out, s3, i_t, 3, 1, T_seq, H, BT)
        A32 = _a_block(m_k, out, s3, i_t, 3, 2, T_seq, H, BT)
        X33 = _diagonal_block(t, out, i_t, 3, T_seq, H, BT)
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
        _store_block(t, out, X30, i_t, 3, 0, T_seq, H, BT)
        _store_block(t, out, X31, i_t, 3, 1, T_seq, H, BT)
        _store_block(t, out, X32, i_t, 3, 2, T_seq, H, BT)


@triton.jit
def mqi_tile(b_q, b_k, b_G, o_t, DOT_PREC: tl.constexpr):
    """Mqi of a chunk from its q and k tiles and G: (q_t . k_i) exp(G_t - G_i), i <= t (the forward output kernel's,
    and the backward's operator kernel's, chunk_bwd._rdn_bwd_prep_p_kernel)."""
    return tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC) * exp_masked(
        o_t[:, None] >= o_t[None, :], b_G[:, None] - b_G[None, :])


# One warp first (the fixed config, the one the float64 check runs): _diagonal_inverses' step sums then never leave
# the warp (shuffles only; the steps' rows are gathered before the chain starts), at 138 registers a thread
# against 96 at four warps, where Triton 3.9 splits the summed axis over two warps (a barrier or more a step). Two
# warps were the H200's pick for the old row-by-row kernel (2026-12-01): most of the kernel is 16 x 16 tiles, where
# fewer warps mean fewer cross-warp steps.
@autotune(configs=launch_configs((1, 1), (2, 1), (4, 1), (8, 1)), key=["H", "K", "BT", "BK", "DOT_PREC"])
@triton.jit(do_not_specialize=["T"])
def _rdn_wy_kernel(
    k, g, beta, gamma, t_beta, t_gamma, m_k, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    DOT_PREC: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr, CHUNK_GROUP: tl.constexpr,
):
    # The merges are tiny 16 x 16 products; tf32x3 keeps them at fp32 accuracy for half inputs.
    MERGE_PREC: tl.constexpr = "tf32x3" if DOT_PREC == "tf32" else DOT_PREC
    i_c, _, i_nh = chunk_ids(1, H, 1, CHUNK_ORDER, CHUNK_GROUP)
    bos, T_seq, i_t, i_h, o_t, _, in_seq, row_off = chunk_prologue(
        cu_seqlens, chunk_indices, i_c, i_nh, T, H, BT, IS_VARLEN)
    b_g = tl.load(g + row_off, mask=in_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_Gp = b_G - b_g
    tok_k = (bos * H + i_h) * K
    b_k = load_tile_raw(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    out = (bos * H + i_h) * BT

    # Mk on the whole chunk: one dot.
    strict = o_t[:, None] > o_t[None, :]
    b_mk = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PREC) * exp_masked(strict, b_Gp[:, None] - b_G[None, :])
    store_tile(m_k + out, b_mk, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)

    # The inverses, in 16-row blocks read back from Mk (A_x = diag(x exp(g)) Mk): one k k^T dot serves all. The
    # diagonal blocks of both first, in one pass, then the merges below them, matrix by matrix.
    tl.debug_barrier()  # every thread's Mk stores before any thread reads them back
    _diagonal_inverses(t_beta, t_gamma, m_k, beta, gamma, g, out, bos, i_h, i_t, T_seq, H, BT)
    tl.debug_barrier()  # the diagonal blocks stored before the merges read them back
    _blocked_inverse(t_beta, m_k, beta, g, out, bos, i_h, i_t, T_seq, H, BT, MERGE_PREC)
    _blocked_inverse(t_gamma, m_k, gamma, g, out, bos, i_h, i_t, T_seq, H, BT, MERGE_PREC)


# The backward at 64-token chunks (chunk.py, backward_chunk) from a 32-token forward's saved matrices: a 64-token
# chunk's matrices hold the two 32-token chunks' as their diagonal blocks (the decays inside a block are differences
# of G, the same from either chunk start), so only the block below the diagonal is new. For A = [[A0, 0], [A10, A1]],
#     (I + A)^{-1} = [[T0, 0], [-T1 A10 T0, T1]],   A10 = diag(x exp(g)) Mk10,   Mk10 = k1 k0^T exp(Gp1 - G0)
# (T0, T1 the 32-token inverses): one [32, K] x [K, 32] dot and two pairs of 32 x 32 products a 64-token chunk,
# where _rdn_wy_kernel at 64 solves both inverses again by 16-row blocks (0.45 ms at B=1 T=32k H=16 K=128 bf16 on
# the H100, 2026-12-07, against 0.155 at 32). Measured 0.311 ms there (autotuned: 2 warps; 2026-12-08), about its
# bytes at DRAM speed (the 32-token matrices read, the 64-token ones written: ~0.74 GB). Checked against float64 on
# the CPU in fp32 and bf16, on the GPU in fp32 only: the 64-token backward it feeds fails for half inputs elsewhere
# (chunk.py, BWD_CHUNK_SIZE).
@autotune(configs=launch_configs((2, 1), (4, 1), (1, 1)), key=["H", "K", "BK", "DOT_PREC"])
@triton.jit(do_not_specialize=["T"])
def _rdn_wy_widen_kernel(
    k, g, beta, gamma, t_beta, t_gamma, m_k, t_beta_w, t_gamma_w, m_k_w, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr,
    DOT_PREC: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr, CHUNK_GROUP: tl.constexpr,
):
    MERGE_PREC: tl.constexpr = "tf32x3" if DOT_PREC == "tf32" else DOT_PREC
    i_c, _, i_nh = chunk_ids(1, H, 1, CHUNK_ORDER, CHUNK_GROUP)
    bos, T_seq, i_t, i_h, _, _, _, _ = chunk_prologue(cu_seqlens, chunk_indices, i_c, i_nh, T, H, 64, IS_VARLEN)
    r0 = i_t * 64  # the first 32-token chunk's first row; r1 the second's
    r1 = r0 + 32
    o_32 = tl.arange(0, 32)
    in0 = r0 + o_32 < T_seq
    in1 = r1 + o_32 < T_seq
    off0 = (bos + r0 + o_32) * H + i_h
    off1 = (bos + r1 + o_32) * H + i_h
    b_g0 = tl.load(g + off0, mask=in0, other=0.0).to(tl.float32)
    b_g1 = tl.load(g + off1, mask=in1, other=0.0).to(tl.float32)
    b_G0 = tl.cumsum(b_g0, axis=0)
    b_Gp1 = tl.sum(b_g0, axis=0) + tl.cumsum(b_g1, axis=0) - b_g1
    tok_k = (bos * H + i_h) * K
    b_k0 = load_tile_raw(k + tok_k, r0, T_seq, H * K, 0, K, 32, BK)
    b_k1 = load_tile_raw(k + tok_k, r1, T_seq, H * K, 0, K, 32, BK)
    # Every pair (t in the second half, i in the first) is causal: no mask. Rows past the sequence end have k = 0.
    b_mk10 = tl.dot(b_k1, tl.trans(b_k0), input_precision=DOT_PREC) * tl.exp(b_Gp1[:, None] - b_G0[None, :])
    src = (bos * H + i_h) * 32
    dst = (bos * H + i_h) * 64
    zero = tl.zeros([32, 32], dtype=tl.float32)
    eg1 = tl.exp(b_g1)
    for which in tl.static_range(3):
        if which == 0:
            narrow, wide = t_beta, t_beta_w
        elif which == 1:
            narrow, wide = t_gamma, t_gamma_w
        else:
            narrow, wide = m_k, m_k_w
        b_d0 = load_tile(narrow + src, r0, T_seq, H * 32, 0, 32, 32, 32)
        b_d1 = load_tile(narrow + src, r1, T_seq, H * 32, 0, 32, 32, 32)
        if which == 2:
            b_below = b_mk10
        else:
            b_x = tl.load((beta if which == 0 else gamma) + off1, mask=in1, other=0.0).to(tl.float32)
            b_a10 = (b_x * eg1)[:, None] * b_mk10
            b_below = -tl.dot(b_d1, tl.dot(b_a10, b_d0, input_precision=MERGE_PREC), input_precision=MERGE_PREC)
        store_tile(wide + dst, b_d0, r0, T_seq, H * 64, 0, 64, 32, 32)
        store_tile(wide + dst, zero, r0, T_seq, H * 64, 32, 64, 32, 32)
        store_tile(wide + dst, b_below, r1, T_seq, H * 64, 0, 64, 32, 32)
        store_tile(wide + dst, b_d1, r1, T_seq, H * 64, 32, 64, 32, 32)
