"""RDN forward split along the sequence, for long sequences at small batch (prefill).

The chunk walk of chunk_fwd.py is sequential over a sequence's chunks and parallel only over (sequence,
head, V-block): at batch 1 that is a few dozen programs for a GPU of 132 SMs, each walking hundreds of
chunks. Both of RDN's recurrences are linear in their state once their values are known,

    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    R_t = a_t (I - gamma_t k_t k_t^T) R_{t-1} + gamma_t k_t r_t^T,   r_t = rho(v_t - S_{t-1}^T k_t)

so a sequence cut into P segments can be walked segment by segment in parallel, each from a zero state,
carrying beside the state its transition from the segment start (the same walk on the extra columns
[0 | I]: the state is [S^0 | Phi], K x (V + K)); the true state at any chunk start is then
S = S^0 + Phi S_start, with S_start chained over the P segment ends in PyTorch. In order:

    1. walk S over the segments (values v, rate beta)       -> S^0, Phi per chunk; chain -> S chunk states
    2. U and r = rho(X) from the S chunk states, all chunks in parallel
    3. walk R over the segments (values r, rate gamma)      -> R^0, Psi per chunk; chain -> R chunk states
    4. W from the R chunk states, all chunks in parallel; the output as in chunk_fwd.py

Each walk does three small dots a chunk (K S, T_x y, the state update) on V + K columns, over T / P tokens:
about twice the work of the fused walk, in P times as many programs. chunk_rdn_fwd chooses it only when the
fused walk would leave over half the SMs idle (batch-1 prefill, or a training forward at batch 1); the
backward always reruns the fused walk. Fixed-length batches only (no cu_seqlens).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ..rla.fused_recurrent import _rho
from ..triton_utils import GRID_AXIS_LIMIT, cdiv, load_gate
from ._triton_helpers import autotune, chunk_prologue, launch_configs, load_tile, seq_bounds, store_tile
from .chunk_fwd import chunk_decays, state_row


@autotune(configs=launch_configs((4, 1)), key=["H", "K", "V", "SW", "BT", "BK", "BV", "DOT_PREC"])
@triton.jit(do_not_specialize=["T"])
def _delta_walk_kernel(
    k, y, g, rate, t_x, h, final, cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, SW: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """One gated delta rule over each segment of cu_seqlens, from the state [0 | I] (K x SW, SW = V + K):
    columns < V carry the values y, columns >= V read values 0 and so carry the transition. Stores every
    chunk-start state (rows of the per-chunk buffers, in chunk_tables order) and each segment's end."""
    i_w = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, T_seq, boh = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, BT, True)
    rows_k = tl.arange(0, BK)
    cols = i_w * BV + tl.arange(0, BV)
    b_s = tl.where(rows_k[:, None] == cols[None, :] - V, 1.0, 0.0)
    for i_loop in range(0, tl.cdiv(T_seq, BT)):
        i_t = tl.cast(i_loop, tl.int64)
        store_tile(h + ((boh + i_t) * H + i_h) * K * SW, b_s, 0, K, SW, i_w * BV, SW, BK, BV)
        b_G, _, b_GL = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
        b_x = load_gate(rate, bos, T_seq, i_t, i_h, H, BT)
        b_k = load_tile(k + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, 0, K, BT, BK)
        b_y = load_tile(y + (bos * H + i_h) * V, i_t * BT, T_seq, H * V, i_w * BV, V, BT, BV)
        b_tx = load_tile(t_x + (bos * H + i_h) * BT, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_ks = tl.dot(b_k, b_s, input_precision=DOT_PREC)
        b_u = tl.dot(b_tx, b_x[:, None] * (b_y - tl.exp(b_G)[:, None] * b_ks), input_precision=DOT_PREC)
        b_kd = b_k * tl.exp(b_GL - b_G)[:, None]
        b_s = b_s * tl.exp(b_GL) + tl.dot(tl.trans(b_kd), b_u, input_precision=DOT_PREC)
    store_tile(final + i_nh * K * SW, b_s, 0, K, SW, i_w * BV, SW, BK, BV)


@autotune(configs=launch_configs(), key=["H", "K", "V", "BT", "BK", "BV", "RESIDUAL", "DOT_PREC", "WITH_RESIDUAL"])
@triton.jit(do_not_specialize=["T"])
def _pseudo_values_kernel(
    k, y, g, rate, t_x, m_k, h, u, r, cu_seqlens, chunk_indices, clip, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, WITH_RESIDUAL: tl.constexpr,
):
    """From a chunk's start state M0: U = T_x diag(x) (y - diag(exp G) K M0) and, WITH_RESIDUAL, the
    residual r = rho(y - (exp(Gp) * K M0 + Mk U)) (chunk_fwd.py's X). One program per (chunk, V-block,
    (sequence, head)), fixed-length layout."""
    i_c = tl.cast(tl.program_id(0), tl.int64)
    i_v = tl.cast(tl.program_id(1), tl.int64)
    i_nh = tl.cast(tl.program_id(2), tl.int64)
    bos, T_seq, i_t, i_h, _, _, _, _ = chunk_prologue(cu_seqlens, chunk_indices, i_c, i_nh, T, H, BT, False)
    h_off = (state_row(i_c, i_nh, T, H, BT, False) * H + i_h) * K * V
    tok_v = (bos * H + i_h) * V
    b_G, b_Gp, _ = chunk_decays(g, bos, T_seq, i_t, i_h, H, BT)
    b_x = load_gate(rate, bos, T_seq, i_t, i_h, H, BT)
    b_k = load_tile(k + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, 0, K, BT, BK)
    b_y = load_tile(y + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    b_tx = load_tile(t_x + (bos * H + i_h) * BT, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
    b_m = load_tile(h + h_off, 0, K, V, i_v * BV, V, BK, BV)
    b_km = tl.dot(b_k, b_m, input_precision=DOT_PREC)
    b_u = tl.dot(b_tx, b_x[:, None] * (b_y - tl.exp(b_G)[:, None] * b_km), input_precision=DOT_PREC)
    store_tile(u + tok_v, b_u, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    if WITH_RESIDUAL:
        b_mk = load_tile(m_k + (bos * H + i_h) * BT, i_t * BT, T_seq, H * BT, 0, BT, BT, BT)
        b_X = b_y - (tl.exp(b_Gp)[:, None] * b_km + tl.dot(b_mk, b_u, input_precision=DOT_PREC))
        store_tile(r + tok_v, _rho(b_X, clip, RESIDUAL), i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)


# A cut costs host time whatever it saves on the GPU, and a small model's prefill is host-bound: on the H200,
# a converted SmolLM2-135M (random weights, scripts/profile_model.py, 2026-11-30 15:34) prefilled in
# 56 / 60 / 65 / 90 / 184 ms at 1k / 4k / 8k / 16k / 32k tokens uncut, and cut into 8 segments in 135 / 128 /
# 144 / 119 / 153-173 ms (about 2.6 ms more host time a layer), against 10 / 25 / 45 / 86 / 168 ms of GPU
# work uncut. Only at 32k did the GPU saving (168 -> 139 ms) outweigh it. So: sequences of at least
# MIN_CUT_TOKENS, segments of at least MIN_SEGMENT_TOKENS.
MIN_CUT_TOKENS = 32768
MIN_SEGMENT_TOKENS = 4096


def auto_segments(B: int, T: int, H: int, K: int, V: int, sm_count: int) -> int:
    """How many segments to cut each sequence into: enough for the walks' programs to fill the GPU four
    times, each at least MIN_SEGMENT_TOKENS long; 1 (do not split) for sequences under MIN_CUT_TOKENS, or
    when the fused walk leaves under half the SMs idle (the segmented walks do about twice its work). Four,
    not two: on the H200 at SmolLM2's 32k prefill (B=1, H=9, D=64) the forward took 4.15 ms fused, 3.52 at
    P=4 (2x), 3.21 at P=8 (4x), 3.76 at P=16."""
    fused_programs = B * H * cdiv(V, 16)
    if 2 * fused_programs > sm_count or T < MIN_CUT_TOKENS:
        return 1
    per_segment = B * H * cdiv(V + K, 16)
    return max(1, min(cdiv(4 * sm_count, per_segment), T // MIN_SEGMENT_TOKENS))


def usable_segments(segments: int, B: int, T: int, H: int, chunk_size: int) -> int:
    """At most one segment per chunk, and B * P * H within a CUDA grid axis."""
    return max(1, min(segments, cdiv(T, chunk_size), GRID_AXIS_LIMIT // (B * H)))


def _walk_segments(L, k, y, g, rate, t_x, cu, chunk_offsets, n_segments):
    SW = L.V + L.K
    h = k.new_empty(L.n_chunks, L.H, L.K, SW, dtype=torch.float32)
    final = k.new_empty(n_segments, L.H, L.K, SW, dtype=torch.float32)
    BV = 16
    _delta_walk_kernel[(cdiv(SW, BV), n_segments * L.H)](
        k, y, g, rate, t_x, h, final, cu, chunk_offsets, L.T,
        H=L.H, K=L.K, V=L.V, SW=SW, BT=L.BT, BK=L.BK, BV=BV, DOT_PREC=L.dot_prec)
    return h, final


@contextlib.contextmanager
def _fp32_matmuls(exact: bool):
    """fp32 inputs are checked to fp32 accuracy: keep the chaining matmuls off TF32 whatever the global
    setting (torch.set_float32_matmul_precision) says. That setting is process-wide: another thread's fp32
    matmuls run at full precision too while a chain runs (slower, never less accurate)."""
    previous = torch.get_float32_matmul_precision()
    if exact:
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _chain(L, h, final, M0, P, chunk_segment):
    """True chunk-start states and final states from the segment walks: M = M^0 + Phi M_start, with
    M_start chained over each sequence's segment ends from M0 (None: zeros)."""
    V = L.V
    final = final.view(L.B, P, L.H, L.K, V + L.K)
    start = final.new_zeros(L.B, P, L.H, L.K, V)
    with _fp32_matmuls(L.dot_prec == "ieee"):
        if M0 is not None:
            start[:, 0] = M0
        for p in range(P - 1):
            start[:, p + 1] = torch.baddbmm(final[:, p, ..., :V].flatten(0, 1), final[:, p, ..., V:].flatten(0, 1),
                                            start[:, p].flatten(0, 1)).view(L.B, L.H, L.K, V)
        M_T = final[:, P - 1, ..., V:] @ start[:, P - 1] + final[:, P - 1, ..., :V]
        states = torch.baddbmm(h[..., :V].flatten(0, 1), h[..., V:].flatten(0, 1),
                               start.view(L.B * P, L.H, L.K, V)[chunk_segment].flatten(0, 1))
    return states.view(L.n_chunks, L.H, L.K, V), M_T


def chunk_rdn_fwd_segmented(L, q, k, v, g, beta, gamma, t_beta, t_gamma, m_k, S0, R0, segments):
    """Chunk-start states h_s, h_r, pseudo-values U, W and final states S_T, R_T of a fixed-length batch,
    as chunk_fwd's walk gives them, each sequence cut into ``segments`` pieces of whole chunks."""
    nt = cdiv(L.T, L.BT)
    seg_chunks = cdiv(nt, segments)
    P = cdiv(nt, seg_chunks)
    # Segment (b, p) starts at token b T + p seg_chunks BT and at chunk row b nt + p seg_chunks; built on the
    # device in closed form (no host round trip).
    device = q.device
    seq, seg = torch.arange(L.B, device=device)[:, None], torch.arange(P, device=device)
    end = torch.full((1,), L.B, device=device)
    cu = torch.cat([(seq * L.T + seg * seg_chunks * L.BT).flatten(), end * L.T]).to(torch.int32)
    chunk_offsets = torch.cat([(seq * nt + seg * seg_chunks).flatten(), end * nt]).to(torch.int32)
    chunk_segment = (seq * P + torch.arange(nt, device=device) // seg_chunks).flatten()

    h, final = _walk_segments(L, k, v, g, beta, t_beta, cu, chunk_offsets, L.B * P)
    h_s, S_T = _chain(L, h, final, S0, P, chunk_segment)
    del h, final
    u, r = L.tokens(k), L.per_token(k, L.V)
    _pseudo_values_kernel[L.chunk_grid_v](
        k, v, g, beta, t_beta, m_k, h_s, u, r, None, None, L.clip, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, WITH_RESIDUAL=True)

    h, final = _walk_segments(L, k, r, g, gamma, t_gamma, cu, chunk_offsets, L.B * P)
    h_r, R_T = _chain(L, h, final, R0, P, chunk_segment)
    del h, final
    w = L.tokens(k)
    _pseudo_values_kernel[L.chunk_grid_v](
        k, r, g, gamma, t_gamma, None, h_r, w, None, None, None, L.clip, L.T,
        H=L.H, K=L.K, V=L.V, BT=L.BT, BK=L.BK, BV=L.BV,
        RESIDUAL=L.residual_code, DOT_PREC=L.dot_prec, WITH_RESIDUAL=False)
    return h_s, h_r, u, w, S_T, R_T
