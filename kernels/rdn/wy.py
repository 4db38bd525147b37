"""The WY / UT transform of RDN's two gated delta rules: per chunk, the inverses of I + A.

Inside a chunk of BT tokens (G = inclusive cumsum of g from the chunk start), the pseudo-values of a
gated delta rule with rate x (beta for S, gamma for R) solve the unit-lower-triangular system

    (I + A_x) U = diag(x) (values - diag(exp G) K M0),   A_x[t, i] = x_t exp(G_t - G_i) k_t . k_i  (i < t)

S and R share k and g, so both matrices come from one k k^T and differ only in the row scale. This
kernel stores T_beta = (I + A_beta)^{-1} and T_gamma = (I + A_gamma)^{-1} for every chunk, all chunks
in parallel, as [B*T, H, BT] fp32 (row t of the chunk's matrix at token t); the sequential kernels load
them. Inversion is forward substitution, row by row (stable, no growth of powers of A).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_helpers import autotune, chunk_coords, exp_masked, launch_configs, load_tile, store_tile


@triton.jit
def _unit_lower_inverse(A, BT: tl.constexpr):
    """(I + A)^{-1} for a strictly lower-triangular [BT, BT] block A, by forward substitution:
    row i of the inverse is e_i - sum_{j<i} A[i, j] (row j of the inverse)."""
    o_t = tl.arange(0, BT)
    inv = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0)
    for i in range(1, BT):
        a_i = tl.sum(tl.where(o_t[:, None] == i, A, 0.0), axis=0)  # row i of A, indexed by j
        row = -tl.sum(a_i[:, None] * inv, axis=0)  # only rows j < i of inv are weighted (a_i[j>=i] = 0)
        inv += tl.where(o_t[:, None] == i, row[None, :], 0.0)
    return inv


@autotune(configs=launch_configs(), key=["H", "K", "BT", "BK", "DOT_PREC"])
@triton.jit(do_not_specialize=["T"])
def _rdn_wy_kernel(
    k, g, beta, gamma, t_beta, t_gamma, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    DOT_PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_c = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    bos, T_seq, i_t, i_h = chunk_coords(cu_seqlens, chunk_indices, i_c, i_nh, T, H, IS_VARLEN)
    o_t = tl.arange(0, BT)
    rows = i_t * BT + o_t
    in_seq = rows < T_seq
    gate_off = (bos + rows) * H + i_h
    b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_beta = tl.load(beta + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_gamma = tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_k = load_tile(k + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, 0, K, BT, BK)

    strict = o_t[:, None] > o_t[None, :]
    b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PREC) * exp_masked(strict, b_G[:, None] - b_G[None, :])
    b_tb = _unit_lower_inverse(b_kk * b_beta[:, None], BT)
    b_tc = _unit_lower_inverse(b_kk * b_gamma[:, None], BT)
    out = (bos * H + i_h) * BT
    store_tile(t_beta + out, b_tb, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    store_tile(t_gamma + out, b_tc, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
