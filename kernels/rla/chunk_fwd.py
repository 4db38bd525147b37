"""RLA chunk forward in Triton: two lean state walks around chunk-parallel residuals, then chunk-parallel outputs.

Per (sequence, head), chunks of BT tokens, G = inclusive cumsum of the log decay g inside a chunk,
Gm = G - g (the exclusive sum), h_S / h_R the states at the chunk start ([K, V]; the walks carry them in
fp32 and store them in the input dtype, h_S with its rounding error beside it for half inputs: see chunk.py):

    u_t  = S_{t-1}^T k_t = exp(Gm_t) h_S^T k_t + sum_{i<t}  exp(Gm_t - G_i) beta_i  (k_i.k_t) v_i
    r_t  = rho(v_t - u_t)
    o1_t = a_t S_{t-1}^T q_t = exp(G_t) h_S^T q_t + sum_{i<t}  exp(G_t - G_i) beta_i  (k_i.q_t) v_i
    o2_t = R_t^T q_t         = exp(G_t) h_R^T q_t + sum_{i<=t} exp(G_t - G_i) gamma_i (k_i.q_t) r_i
    o_t  = scale * (o1_t + gamma_t o2_t)

Split the way fla splits its chunked linear attention: only the state recurrences are
sequential, and each of them is one or two small dots a chunk. S does not depend on the residuals, so
``_state_walk_kernel`` walks S alone and stores every chunk-start state h_S; ``_rla_residual_kernel``
answers the key queries u_t from those states and turns them into residuals r_t, every chunk in parallel;
the same walk kernel then runs R over the residuals. ``_rla_fwd_output_kernel`` answers the q queries from
the stored h_S and h_R, every chunk in parallel. The backward (chunk_bwd.py) reruns the three passes.
Where the walks' programs fill the GPU (chunk.RES_WALK) those three passes are one: ``_residual_walk_kernel`` carries
S and R and makes each chunk's residuals from its own S between the two steps, u's in-chunk sum coming from the
residual kernel's IN_CHUNK pass before it.

The residual and output kernels take two walk chunks a program (chunk.FWD_HALVES): they read the states at the
first chunk's start alone and answer the second chunk's queries with the first chunk's tokens as keys (a [BT, BT]
block with no mask), so the forward's walks store every other state. The chunk states are about half of the
forward's bytes; this halves them for one more block of dots a program.

Every decay factor is exp of a non-positive number where it is used (masked entries go through
tl.where, never a multiply by 0, so an overflowed exp cannot become NaN).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..triton_utils import (_split_half, autotune, chunk_of_pair, dot_split, exp_where, load_tile, load_tile_t,
                           load_gate, store_tile, walk_state_slot, warps_stages_configs)
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


@triton.jit
def _walk_seq(cu_seqlens, chunk_offsets, i_nh, T, H: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr,
              EVERY: tl.constexpr = 1):
    """A walk program's (sequence x head) i_nh as (head, first token, length, first state row, chunks), int64: the
    opening of every walk. EVERY 2: its states are stored every other chunk (rows of twice the chunk)."""
    bos, T_seq, boh = _seq_bounds(cu_seqlens, chunk_offsets, i_nh // H, T, tl.cdiv(tl.cdiv(T, BT), EVERY), IS_VARLEN)
    return i_nh % H, bos, T_seq, boh, tl.cdiv(T_seq, BT)


@triton.jit
def _store_state(h, h_lo, off, b_h, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr,
                 HAS_LO: tl.constexpr):
    """A walk's fp32 state tile stored in h's dtype (the input dtype: rounded to nearest) and, with HAS_LO,
    the part that rounding lost in h_lo (same dtype): hi + lo carries ~16 bits for bf16, what dot_split
    gave from an fp32 tile, and hi alone is the one half cast the other readers made before."""
    if HAS_LO:
        b_hi, b_lo = _split_half(b_h, h.dtype.element_ty)  # dot_split's halves (and its asm, SPLIT_ASM)
        store_tile(h + off, b_hi, row0, n_rows, row_stride, col0, n_cols, BR, BC)
        store_tile(h_lo + off, b_lo, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    else:
        store_tile(h + off, b_h, row0, n_rows, row_stride, col0, n_cols, BR, BC)


@triton.jit
def _dot_state(a, b_hi, b_lo, DT: tl.constexpr, DOT_PREC: tl.constexpr, HAS_LO: tl.constexpr):
    """a @ state, the state read as its stored hi tile plus, with HAS_LO, its lo tile: two half dots, the
    products and their order those of dot_split on the fp32 tile (hi first, lo accumulated onto it)."""
    out = tl.dot(a, b_hi.to(DT), input_precision=DOT_PREC)
    if HAS_LO:
        out = tl.dot(a, b_lo.to(DT), out, input_precision=DOT_PREC)
    return out


@triton.jit
def _chunk_gates(g, bos, T_seq, i_t, i_h, H: tl.constexpr, BT: tl.constexpr):
    """A walk's chunk step's log decays, fp32: g, G (its inclusive cumsum), G_L (the chunk's), with the gate offsets
    and row mask that the step's other gates load with. Rows past the end load g = 0: G stays flat."""
    rows = i_t * BT + tl.arange(0, BT)
    in_seq = rows < T_seq
    gate_off = (bos + rows) * H + i_h
    b_g = tl.load(g + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_GL = tl.sum(b_g, axis=0)
    return b_g, b_G, b_GL, gate_off, in_seq


@triton.jit
def _walk_step(k, x, g, rate, bos, T_seq, i_t, i_h, i_k, i_v,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, SPLIT: tl.constexpr, DOT_PREC: tl.constexpr, DT: tl.constexpr,
               HAS_RATE: tl.constexpr = True, TMA: tl.constexpr = False):
    """Chunk i_t's step of _state_walk_kernel, h <- exp(G_L) h + update: returns (exp(G_L), update),
    neither of which depends on the state. A chunk past the sequence's end gives (1, 0): h unchanged.
    Without HAS_RATE the rate is 1 and not read (RDN's rebuild walks). TMA (with HAS_RATE): k and x are
    descriptors (chunk._walk_descriptors); their rows past the sequence's end (the next one's tokens) meet a rate
    of 0 there, so they add nothing either."""
    # fla's fwd_h form: k^T raw from memory, the gates on the [BT, BV] side (not on a [BT, BK] fp32 k
    # tile turned in registers). Rows past the end load k = x = 0 (they add nothing).
    if TMA:
        b_kt = tl.trans(k.load([tl.cast(bos + i_t * BT, tl.int32), tl.cast(i_h * K + i_k * BK, tl.int32)])).to(DT)
        b_x = x.load([tl.cast(bos + i_t * BT, tl.int32), tl.cast(i_h * V + i_v * BV, tl.int32)]).to(tl.float32)
    else:
        b_kt = load_tile_t(k + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, i_k * BK, K, BT, BK).to(DT)
        b_x = load_tile(x + (bos * H + i_h) * V, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
    _, b_G, b_GL, gate_off, in_seq = _chunk_gates(g, bos, T_seq, i_t, i_h, H, BT)
    b_w = tl.exp(b_GL - b_G)
    if HAS_RATE:
        b_w *= tl.load(rate + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_xw = b_x * b_w[:, None]
    if SPLIT:  # S: the clip's mask reads it, keep ~16 bits of the gated values (see the residual kernel)
        b_upd = dot_split(b_kt, b_xw, DOT_PREC)
    else:
        b_upd = tl.dot(b_kt, b_xw.to(DT), input_precision=DOT_PREC)
    return tl.exp(b_GL), b_upd


# Pinned to one launch config, as RDN's walks are: autotuning RDN's walk at B=1, T=32k (16-wide V-blocks)
# hit a CUDA illegal memory access (cause not found), and a walk has little to tune.
@autotune(configs=warps_stages_configs(warps=(4,), stages=(2,)),
          key=["H", "K", "V", "BT", "BK", "BV", "SPLIT", "DOT_PREC", "DOTS_FP32", "WALK_STEPS", "STATE_EVERY", "TMA"])
@triton.jit(do_not_specialize=["T"])
def _state_walk_kernel(
    k, x, g, rate, h0, h, h_lo, h_final,
    cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    SPLIT: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_LO: tl.constexpr, IS_VARLEN: tl.constexpr, WALK_STEPS: tl.constexpr,
    STATE_EVERY: tl.constexpr, TMA: tl.constexpr,
):
    """One gated additive state over a sequence's chunks, h <- exp(G_L) h + (k exp(G_L - G) rate)^T x:
    S with (rate, x) = (beta, v), R with (gamma, r). Stores the chunk-start states (in h's dtype; with
    HAS_LO also what that rounding lost, in h_lo: _store_state), every one or, with STATE_EVERY 2, the even
    chunks' alone (the forward's chunk-parallel kernels at chunk pairs read no other: chunk.FWD_HALVES), and the
    final one (fp32). One program per (K-block, V-block, sequence x head): rows of h in different K-blocks never
    mix. WALK_STEPS (1 or 2) chunks a loop turn: with 2, chunks 2i and 2i+1 (chunk.py's WALK_STEPS says why)."""
    _walk_states(k, x, g, rate, h0, h, h_lo, h_final, cu_seqlens, chunk_offsets, T,
                 tl.cast(tl.program_id(0), tl.int64), tl.cast(tl.program_id(1), tl.int64),
                 tl.cast(tl.program_id(2), tl.int64), H, K, V, BT, BK, BV, SPLIT, DOT_PREC, DOTS_FP32, HAS_H0, HAS_LO,
                 IS_VARLEN, WALK_STEPS, STATE_EVERY=STATE_EVERY, TMA=TMA)


@triton.jit
def _walk_states(k, x, g, rate, h0, h, h_lo, h_final, cu_seqlens, chunk_offsets, T, i_k, i_v, i_nh,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, SPLIT: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr,
                 HAS_H0: tl.constexpr, HAS_LO: tl.constexpr, IS_VARLEN: tl.constexpr, WALK_STEPS: tl.constexpr,
                 HAS_RATE: tl.constexpr = True, STATE_EVERY: tl.constexpr = 1, TMA: tl.constexpr = False):
    """_state_walk_kernel's walk for its (K-block, V-block, sequence x head) program (i_k, i_v, i_nh, int64): also
    RDN's rebuild kernel's, which runs two such walks in one launch without a rate (HAS_RATE False: rate 1).
    STATE_EVERY 2: the even chunks' start states alone, in rows of twice the chunk (packed batches: chunk_offsets
    at twice the chunk)."""
    i_h, bos, T_seq, boh, NT = _walk_seq(cu_seqlens, chunk_offsets, i_nh, T, H, BT, IS_VARLEN, STATE_EVERY)
    if TMA:
        DT = k.dtype
    else:
        DT = k.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += load_tile(h0 + i_nh * K * V, i_k * BK, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    for i_loop in range(0, tl.cdiv(NT, WALK_STEPS)):
        i_t = tl.cast(i_loop, tl.int64) * WALK_STEPS
        h_off, h_rows = walk_state_slot(i_t, boh, i_h, H, K, V, STATE_EVERY)
        _store_state(h, h_lo, h_off, b_h, i_k * BK, h_rows, V, i_v * BV, V, BK, BV, HAS_LO)
        b_a, b_upd = _walk_step(k, x, g, rate, bos, T_seq, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV, SPLIT,
                                DOT_PREC, DT, HAS_RATE, TMA)
        if WALK_STEPS == 2:
            # Chunk i_t + 1's step reads no state, so its loads and dots issue beside chunk i_t's. Past the last
            # chunk (odd NT) it changes nothing, and its state row (the next sequence's) is not stored.
            b_a1, b_upd1 = _walk_step(k, x, g, rate, bos, T_seq, i_t + 1, i_h, i_k, i_v, H, K, V, BT, BK, BV, SPLIT,
                                      DOT_PREC, DT, HAS_RATE, TMA)
            b_h = b_h * b_a + b_upd
            if STATE_EVERY == 1:  # (with 2, chunk i_t + 1 is odd: no state of its own)
                _store_state(h, h_lo, ((boh + i_t + 1) * H + i_h) * K * V, b_h, i_k * BK,
                             tl.where(i_t + 1 < NT, K, 0), V, i_v * BV, V, BK, BV, HAS_LO)
            b_a, b_upd = b_a1, b_upd1
        b_h = b_h * b_a + b_upd
    store_tile(h_final + i_nh * K * V, b_h, i_k * BK, K, V, i_v * BV, V, BK, BV)


@triton.jit
def _rerun_step(k, v, r, g, beta, gamma, bos, T_seq, i_t, i_h, i_k, i_v,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, DOT_PREC: tl.constexpr, DT: tl.constexpr):
    """Chunk i_t's step of _rerun_walk_kernel: _walk_step's for S (split, rate beta, values v) and for R (rate gamma,
    values r) from one load of k^T and of the decays: (exp(G_L), S's update, R's update)."""
    b_kt = load_tile_t(k + (bos * H + i_h) * K, i_t * BT, T_seq, H * K, i_k * BK, K, BT, BK).to(DT)
    _, b_G, b_GL, gate_off, in_seq = _chunk_gates(g, bos, T_seq, i_t, i_h, H, BT)
    b_w = tl.exp(b_GL - b_G)
    tok_v = (bos * H + i_h) * V
    b_v = load_tile(v + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
    b_ws = b_w * tl.load(beta + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_upd_s = dot_split(b_kt, b_v * b_ws[:, None], DOT_PREC)
    b_r = load_tile(r + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
    b_wr = b_w * tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
    b_upd_r = tl.dot(b_kt, (b_r * b_wr[:, None]).to(DT), input_precision=DOT_PREC)
    return tl.exp(b_GL), b_upd_s, b_upd_r


# Pinned to one launch config, as the other walks are.
@autotune(configs=warps_stages_configs(warps=(4,), stages=(2,)),
          key=["H", "K", "V", "BT", "BK", "BV", "DOT_PREC", "DOTS_FP32", "WALK_STEPS"])
@triton.jit(do_not_specialize=["T"])
def _rerun_walk_kernel(
    k, v, r, g, beta, gamma, s0, r0, h_s, h_r,
    cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, HAS_S0: tl.constexpr, HAS_R0: tl.constexpr,
    IS_VARLEN: tl.constexpr, WALK_STEPS: tl.constexpr,
):
    """The backward's rerun of the forward's two walks (the residuals r kept) as one (chunk.RERUN_WALK): S and R
    carried by one program, each chunk's k^T and decays loaded once for both, every chunk-start state stored (no lo, no
    final state: the backward reads neither). The same updates as _state_walk_kernel's two launches, so the same
    states. One program per (K-block, V-block, sequence x head); WALK_STEPS chunks a loop turn, as there."""
    i_k = tl.cast(tl.program_id(0), tl.int64)
    i_v = tl.cast(tl.program_id(1), tl.int64)
    i_nh = tl.cast(tl.program_id(2), tl.int64)
    i_h, bos, T_seq, boh, NT = _walk_seq(cu_seqlens, chunk_offsets, i_nh, T, H, BT, IS_VARLEN)
    DT = k.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    b_r = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        b_s += load_tile(s0 + i_nh * K * V, i_k * BK, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    if HAS_R0:
        b_r += load_tile(r0 + i_nh * K * V, i_k * BK, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    for i_loop in range(0, tl.cdiv(NT, WALK_STEPS)):
        i_t = tl.cast(i_loop, tl.int64) * WALK_STEPS
        h_off = ((boh + i_t) * H + i_h) * K * V
        store_tile(h_s + h_off, b_s, i_k * BK, K, V, i_v * BV, V, BK, BV)
        store_tile(h_r + h_off, b_r, i_k * BK, K, V, i_v * BV, V, BK, BV)
        b_a, b_us, b_ur = _rerun_step(k, v, r, g, beta, gamma, bos, T_seq, i_t, i_h, i_k, i_v, H, K, V, BT, BK, BV,
                                      DOT_PREC, DT)
        if WALK_STEPS == 2:
            # chunk i_t + 1's step reads no state; past the last chunk (odd NT) it changes nothing and its row (the
            # next sequence's) is not stored
            b_a1, b_us1, b_ur1 = _rerun_step(k, v, r, g, beta, gamma, bos, T_seq, i_t + 1, i_h, i_k, i_v, H, K, V, BT,
                                             BK, BV, DOT_PREC, DT)
            b_s = b_s * b_a + b_us
            b_r = b_r * b_a + b_ur
            h_off = ((boh + i_t + 1) * H + i_h) * K * V
            n_rows = tl.where(i_t + 1 < NT, K, 0)
            store_tile(h_s + h_off, b_s, i_k * BK, n_rows, V, i_v * BV, V, BK, BV)
            store_tile(h_r + h_off, b_r, i_k * BK, n_rows, V, i_v * BV, V, BK, BV)
            b_a, b_us, b_ur = b_a1, b_us1, b_ur1
        b_s = b_s * b_a + b_us
        b_r = b_r * b_a + b_ur


# Pinned to one launch config, as the other walks are.
@autotune(configs=warps_stages_configs(warps=(4,), stages=(2,)),
          key=["H", "K", "V", "BT", "BK", "BV", "RESIDUAL", "DOT_PREC", "DOTS_FP32", "STATE_EVERY", "TMA"])
@triton.jit(do_not_specialize=["T"])
def _residual_walk_kernel(
    k, v, w, g, beta, gamma, s0, r0, h_s, h_r, res, s_final, r_final,
    cu_seqlens, chunk_offsets, clip, clip_mask, clip_below, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, HAS_S0: tl.constexpr,
    HAS_R0: tl.constexpr, IS_VARLEN: tl.constexpr, STATE_EVERY: tl.constexpr, TMA: tl.constexpr = False,
):
    """The forward's three passes up to the output as one walk (chunk.RES_WALK): S and R carried by one program,
    each chunk's residuals made between them from the carried S,
        u = exp(Gm) h_S^T k + w,   r = rho(v - u),
    w being u's in-chunk sum (the residual kernel's IN_CHUNK pass, fp32), then both states stepped as the two walks
    step them, R over r as stored (rounded to res's dtype, the clip's mask kept). A column of r reads S's column
    alone, so a program holds all of K (BK) and one V-block. Stores r, the chunk-start states as the two walks do
    (every one or, with STATE_EVERY 2, the even chunks'; no lo: the residual kernel, its only reader, does not run)
    and the final states (fp32). Why: where (sequence x head, V-block) programs fill the GPU it does the three
    passes' work with fewer bytes (no h_S lo, no round trip of r, k loaded once for both states); where they are few
    its longer step is the chain, and the two lean walks win (chunk.RES_WALK has the times). TMA (chunk.RES_WALK_TMA):
    k, v and w are descriptors (chunk._residual_walk_descriptors); their rows past the sequence's end (the next one's
    tokens) meet beta and gamma of 0 in both updates, and their residuals are not stored."""
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_nh = tl.cast(tl.program_id(1), tl.int64)
    i_h, bos, T_seq, boh, NT = _walk_seq(cu_seqlens, chunk_offsets, i_nh, T, H, BT, IS_VARLEN, STATE_EVERY)
    if TMA:
        DT = k.dtype
    else:
        DT = k.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32
    RES_DT = res.dtype.element_ty

    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    b_r = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        b_s += load_tile(s0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    if HAS_R0:
        b_r += load_tile(r0 + i_nh * K * V, 0, K, V, i_v * BV, V, BK, BV).to(tl.float32)
    tok_k = (bos * H + i_h) * K
    tok_v = (bos * H + i_h) * V
    for i_loop in range(0, NT):
        i_t = tl.cast(i_loop, tl.int64)
        h_off, h_rows = walk_state_slot(i_t, boh, i_h, H, K, V, STATE_EVERY)
        store_tile(h_s + h_off, b_s, 0, h_rows, V, i_v * BV, V, BK, BV)
        store_tile(h_r + h_off, b_r, 0, h_rows, V, i_v * BV, V, BK, BV)
        b_g, b_G, b_GL, gate_off, in_seq = _chunk_gates(g, bos, T_seq, i_t, i_h, H, BT)
        if TMA:
            row = tl.cast(bos + i_t * BT, tl.int32)
            col_v = tl.cast(i_h * V + i_v * BV, tl.int32)
            b_k = k.load([row, tl.cast(i_h * K, tl.int32)]).to(DT)
            b_v = v.load([row, col_v]).to(tl.float32)
            b_w = w.load([row, col_v]).to(tl.float32)
        else:
            b_k = load_tile(k + tok_k, i_t * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
            b_v = load_tile(v + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
            b_w = load_tile(w + tok_v, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(tl.float32)
        # S's products at ~16 bits (dot_split), as the residual kernel reads its stored hi + lo: they decide the mask
        b_u = dot_split(b_k, b_s, DOT_PREC) * tl.exp(b_G - b_g)[:, None] + b_w
        b_res = _residuals(b_v, b_u, clip, clip_mask, clip_below, RES_DT, RESIDUAL)
        store_tile(res + tok_v, b_res, i_t * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        # The two walks' steps (_walk_step: S split, R over r as the R walk loads it back)
        b_decay = tl.exp(b_GL - b_G)
        b_ws = b_decay * tl.load(beta + gate_off, mask=in_seq, other=0.0).to(tl.float32)
        b_wr = b_decay * tl.load(gamma + gate_off, mask=in_seq, other=0.0).to(tl.float32)
        b_kt = tl.trans(b_k)
        b_a = tl.exp(b_GL)
        b_upd_r = tl.dot(b_kt, (b_res.to(RES_DT).to(tl.float32) * b_wr[:, None]).to(DT), input_precision=DOT_PREC)
        b_s = b_s * b_a + dot_split(b_kt, b_v * b_ws[:, None], DOT_PREC)
        b_r = b_r * b_a + b_upd_r
    store_tile(s_final + i_nh * K * V, b_s, 0, K, V, i_v * BV, V, BK, BV)
    store_tile(r_final + i_nh * K * V, b_r, 0, K, V, i_v * BV, V, BK, BV)


@triton.jit
def _chunk_program(CHUNK_AXIS: tl.constexpr, H: tl.constexpr, ORDER: tl.constexpr):
    """A chunk-parallel program's chunk (grid axis CHUNK_AXIS) and (sequence, head) or head (the next axis), int64,
    renumbered by ORDER (chunk.CHUNK_ORDER) so that the programs the GPU runs together (it starts them in launch order,
    axis 0 fastest; a V- or K-block axis 0 stays fastest, a chunk's blocks together) read neighbouring rows. 0, the
    grid's own order: one head's chunks after another's (a packed batch's axis holds every sequence's chunks, ~500 at
    32k tokens, so the programs in flight read 1/H of each token row); 1: one chunk's heads after another's, the
    [.., T, H, K] rows of a chunk read whole (RDN's CHUNK_ORDER 1: packed backward 7.01 -> 6.77 ms, H200, 2026-12-03).
    Done in int32 (a grid holds fewer than 2^31 programs)."""
    i_t = tl.program_id(CHUNK_AXIS)
    i_nh = tl.program_id(CHUNK_AXIS + 1)
    if ORDER == 1:
        nt = tl.num_programs(CHUNK_AXIS)
        i_t, i_nh = chunk_of_pair(i_nh * nt + i_t, nt, H)
    return tl.cast(i_t, tl.int64), tl.cast(i_nh, tl.int64)


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


@triton.jit
def _pair_state_row(chunk_indices, state_offsets, i_t, i_nh, i_p, T, T_seq, H: tl.constexpr, BT: tl.constexpr,
                    HALVES: tl.constexpr, STATE_EVERY: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Row of the state buffers holding the start state of a chunk-parallel program's first walk chunk, i_p * HALVES
    (the program takes HALVES walk chunks of BT tokens: chunk.FWD_HALVES), in a walk's layout storing every
    STATE_EVERY-th chunk's state (a sequence's rows from state_offsets for packed batches: chunk_tables at
    STATE_EVERY * BT; fixed-length ones have ceil(ceil(T / BT) / STATE_EVERY) rows a sequence). A packed batch's
    padding programs (tables' slots past the chunks: every token masked) read row 0, not a row past the buffer."""
    if IS_VARLEN:
        boh = tl.cast(tl.load(state_offsets + tl.load(chunk_indices + i_t * 2)), tl.int64)
        row = tl.where(i_p * HALVES * BT < T_seq, boh + i_p * (HALVES // STATE_EVERY), 0)
    else:
        row = (i_nh // H) * tl.cdiv(tl.cdiv(T, BT), STATE_EVERY) + i_p * (HALVES // STATE_EVERY)
    return row


@triton.jit
def _store_residuals(res, b_v, b_u, clip, clip_mask, clip_below, bos, T_seq, i_c, i_h, i_v,
                     H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, RESIDUAL: tl.constexpr):
    """r = rho(v - u) of walk chunk i_c, stored in res's dtype (the input dtype) with the clip's mask kept."""
    b_res = _residuals(b_v, b_u, clip, clip_mask, clip_below, res.dtype.element_ty, RESIDUAL)
    store_tile(res + (bos * H + i_h) * V, b_res, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV)


@triton.jit
def _residuals(b_v, b_u, clip, clip_mask, clip_below, RES_DT: tl.constexpr, RESIDUAL: tl.constexpr):
    """r = rho(v - u), fp32, as _store_residuals stores it in RES_DT: the clip's mask kept through that rounding."""
    b_res = _rho(b_v.to(tl.float32) - b_u, clip, RESIDUAL)
    if RESIDUAL == 1:
        # The backward reads the clip's mask back from the stored r as |r| < clip_mask (c rounded to res's dtype
        # on the host). A saturated r is stored as +-clip_mask itself (exact: not left to this conversion's
        # rounding mode, which need not be the host's -- Triton's interpreter truncates); a non-saturated r
        # that would round onto it or past it (dv off by a whole gamma Y) is stored one ulp inside, at clip_below.
        b_rounded = b_res.to(RES_DT).to(tl.float32)
        sat = tl.abs(b_res) >= clip
        onto = (tl.abs(b_rounded) >= clip_mask) & (~sat)
        b_res = tl.where(sat, tl.where(b_res < 0, -clip_mask, clip_mask),
                         tl.where(onto, tl.where(b_res < 0, -clip_below, clip_below), b_res))
    return b_res


# STATE_EVERY is not in the key (nor the output kernel's): which rows a program reads changes no arithmetic, so
# a kept walk's forward (every state) runs the config the default one (every other) tuned, and makes the same bits.
@autotune(configs=warps_stages_configs(),
          key=["H", "K", "V", "BT", "BK", "BV", "RESIDUAL", "DOT_PREC", "DOTS_FP32", "HALVES", "IN_CHUNK"])
@triton.jit(do_not_specialize=["T"])
def _rla_residual_kernel(
    k, v, g, beta, h_s, h_s_lo, res,
    cu_seqlens, chunk_indices, state_offsets, clip, clip_mask, clip_below, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    RESIDUAL: tl.constexpr, DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, HAS_LO: tl.constexpr,
    IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr, HALVES: tl.constexpr, STATE_EVERY: tl.constexpr,
    IN_CHUNK: tl.constexpr = False,
):
    """The residuals r_t = rho(v_t - u_t), u_t = S_{t-1}^T k_t, from the stored chunk-start states of S:
    every chunk in parallel, one program per (V-block, HALVES walk chunks, head). With HALVES 2 the program reads the
    state at its first chunk alone, and its second chunk's u takes the first's tokens as keys:
        u_t = exp(G_L0 + Gm_t) h_S^T k_t + sum_{i in chunk 0} exp(G_L0 - G0_i + Gm_t) beta_i (k_i.k_t) v_i + (in-chunk)
    which is k_t against the walk's next state, exp(G_L0) h_S + (k exp(G_L0 - G0) beta)^T v, without its bytes.
    Stored in res's dtype (the input dtype), the clip's mask kept (_store_residuals).
    IN_CHUNK (HALVES 1, no state read): u's in-chunk sum alone, stored in fp32 to res as it is (no rho), for the walk
    that makes the residuals from its own state (_residual_walk_kernel)."""
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_t, i_nh = _chunk_program(1, H, CHUNK_ORDER)
    bos, T_seq, i_p, _, i_h = _chunk_coords(cu_seqlens, chunk_indices, i_t, i_nh, T, H, BT * HALVES, IS_VARLEN)
    DT = k.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    if not IN_CHUNK:
        h_off = (_pair_state_row(chunk_indices, state_offsets, i_t, i_nh, i_p, T, T_seq, H, BT, HALVES, STATE_EVERY,
                                 IS_VARLEN) * H + i_h) * K * V
        b_hs = load_tile(h_s + h_off, 0, K, V, i_v * BV, V, BK, BV)
        b_hs_lo = b_hs
        if HAS_LO:
            b_hs_lo = load_tile(h_s_lo + h_off, 0, K, V, i_v * BV, V, BK, BV)

    o_t = tl.arange(0, BT)
    strict = o_t[:, None] > o_t[None, :]  # [query t, key i]: i < t
    i_c = i_p * HALVES
    b_g = load_gate(g, bos, T_seq, i_c, i_h, H, BT)
    b_beta = load_gate(beta, bos, T_seq, i_c, i_h, H, BT)
    b_G = tl.cumsum(b_g, axis=0)
    b_Gm = b_G - b_g
    b_k = load_tile(k + (bos * H + i_h) * K, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_v = load_tile(v + (bos * H + i_h) * V, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
    # u decides the clip's mask (r = rho(v - u)), and the backward's mask comes from this kernel's rerun: an
    # element within u's rounding of +-c lands on the other side than exact math and moves its dv by a
    # whole gamma Y (bf16 K=128: dv 1e-2 against float64). So the S path keeps ~16 bits: the state h_S
    # enters as its stored hi + lo halves (the walk's fp32 state, split as dot_split would), the decayed
    # matrices through dot_split, k and v exact.
    b_A = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PREC)
    b_A = b_A * exp_where(strict, b_Gm[:, None] - b_G[None, :]) * b_beta[None, :]
    if IN_CHUNK:
        b_w = dot_split(b_A, b_v, DOT_PREC)
        store_tile(res + (bos * H + i_h) * V, b_w, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    else:
        b_u = _dot_state(b_k, b_hs, b_hs_lo, DT, DOT_PREC, HAS_LO) * tl.exp(b_Gm)[:, None]
        b_u = dot_split(b_A, b_v, DOT_PREC, b_u)
        _store_residuals(res, b_v, b_u, clip, clip_mask, clip_below, bos, T_seq, i_c, i_h, i_v, H, V, BT, BV,
                         RESIDUAL)
    if HALVES == 2 and not IN_CHUNK:
        b_GL0 = tl.sum(b_g, axis=0)
        b_g1 = load_gate(g, bos, T_seq, i_c + 1, i_h, H, BT)
        b_beta1 = load_gate(beta, bos, T_seq, i_c + 1, i_h, H, BT)
        b_G1 = tl.cumsum(b_g1, axis=0)
        b_Gm1 = b_G1 - b_g1
        b_k1 = load_tile(k + (bos * H + i_h) * K, (i_c + 1) * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
        b_v1 = load_tile(v + (bos * H + i_h) * V, (i_c + 1) * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
        # Every key of chunk 0 precedes every query of chunk 1: no mask, each exponent <= 0.
        b_C = tl.dot(b_k1, tl.trans(b_k), input_precision=DOT_PREC)
        b_C = b_C * tl.exp(b_Gm1[:, None] + (b_GL0 - b_G)[None, :]) * b_beta[None, :]
        b_A1 = tl.dot(b_k1, tl.trans(b_k1), input_precision=DOT_PREC)
        b_A1 = b_A1 * exp_where(strict, b_Gm1[:, None] - b_G1[None, :]) * b_beta1[None, :]
        b_u1 = _dot_state(b_k1, b_hs, b_hs_lo, DT, DOT_PREC, HAS_LO) * tl.exp(b_GL0 + b_Gm1)[:, None]
        b_u1 = dot_split(b_C, b_v, DOT_PREC, b_u1)
        b_u1 = dot_split(b_A1, b_v1, DOT_PREC, b_u1)
        _store_residuals(res, b_v1, b_u1, clip, clip_mask, clip_below, bos, T_seq, i_c + 1, i_h, i_v, H, V, BT, BV,
                         RESIDUAL)


@triton.jit
def _output_chunk(b_q, b_k, b_v, b_r, b_G, b_beta, b_gamma, b_hs, b_hr, b_GL0, qk, tok_a, i_c, qk_rows,
                  H: tl.constexpr, DT: tl.constexpr, DOT_PREC: tl.constexpr, BT: tl.constexpr,
                  STORE_QK: tl.constexpr, QK_IF: tl.constexpr):
    """o1 + gamma o2 of one walk chunk i_c (unscaled) from the state at a chunk start b_GL0 (the log decay between
    them, 0 for its own) and its own tokens. With STORE_QK also its decayed q.k products, stored to qk's rows below
    qk_rows (see the output kernel); QK_IF: behind a branch taken where qk_rows > 0 (chunk.QK_STORE_IF)."""
    o_t = tl.arange(0, BT)
    # Inter-chunk: both states read by the same queries, decayed from the state's chunk start.
    b_o = tl.dot(b_q, b_hs.to(DT), input_precision=DOT_PREC)
    b_o += b_gamma[:, None] * tl.dot(b_q, b_hr.to(DT), input_precision=DOT_PREC)
    b_o *= tl.exp(b_GL0 + b_G)[:, None]
    # Intra-chunk: one q.k matrix, two masks (strict for S, inclusive for R).
    b_A = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
    decay_ok = o_t[:, None] >= o_t[None, :]
    b_A = b_A * exp_where(decay_ok, b_G[:, None] - b_G[None, :])
    if STORE_QK:
        if QK_IF:
            if qk_rows > 0:
                store_tile(qk + tok_a, b_A.to(DT), i_c * BT, qk_rows, H * BT, 0, BT, BT, BT)
        else:
            store_tile(qk + tok_a, b_A.to(DT), i_c * BT, qk_rows, H * BT, 0, BT, BT, BT)
    b_As = tl.where(o_t[:, None] > o_t[None, :], b_A * b_beta[None, :], 0.0)
    b_Ar = b_A * (b_gamma[:, None] * b_gamma[None, :])
    b_o += tl.dot(b_As.to(DT), b_v, input_precision=DOT_PREC)
    b_o += tl.dot(b_Ar.to(DT), b_r.to(DT), input_precision=DOT_PREC)
    return b_o


@autotune(configs=warps_stages_configs(),
          key=["H", "K", "V", "BT", "BV", "DOT_PREC", "DOTS_FP32", "HALVES", "QK_IF"])
@triton.jit(do_not_specialize=["T"])
def _rla_fwd_output_kernel(
    q, k, v, g, beta, gamma, h_s, h_r, res, o, qk,
    cu_seqlens, chunk_indices, state_offsets, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr, DOTS_FP32: tl.constexpr, IS_VARLEN: tl.constexpr, CHUNK_ORDER: tl.constexpr,
    HALVES: tl.constexpr, STATE_EVERY: tl.constexpr, STORE_QK: tl.constexpr, QK_IF: tl.constexpr,
):
    """o = scale (o1 + gamma o2), one program per (V-block, HALVES walk chunks, head), from the states at its first
    chunk's start. With HALVES 2 the second chunk's queries take the first's tokens as keys (every one before them):
        exp(G_L0 + G_t) (h_S + gamma_t h_R)^T q_t + sum_{i in chunk 0} exp(G_L0 - G0_i + G_t) (k_i.q_t)
        (beta_i v_i + gamma_t gamma_i r_i) + (in-chunk),
    the residual kernel's form. STORE_QK: the first V-block's programs also store each chunk's decayed q.k products
    A_ti = [i <= t] exp(G_t - G_i) (q_t.k_i) (the chunk's keys i, BT a token: qk [B, T, H, BT]) in the dots' dtype,
    as made here for the in-chunk term, so that the backward's du walk and dv kernel load them instead of making
    them again (chunk.QK_KEPT)."""
    i_v = tl.cast(tl.program_id(0), tl.int64)
    i_t, i_nh = _chunk_program(1, H, CHUNK_ORDER)
    bos, T_seq, i_p, _, i_h = _chunk_coords(cu_seqlens, chunk_indices, i_t, i_nh, T, H, BT * HALVES, IS_VARLEN)
    DT = q.dtype.element_ty
    if DOTS_FP32:
        DT = tl.float32

    h_off = (_pair_state_row(chunk_indices, state_offsets, i_t, i_nh, i_p, T, T_seq, H, BT, HALVES, STATE_EVERY,
                             IS_VARLEN) * H + i_h) * K * V
    b_hs = load_tile(h_s + h_off, 0, K, V, i_v * BV, V, BK, BV)
    b_hr = load_tile(h_r + h_off, 0, K, V, i_v * BV, V, BK, BV)
    tok_k = (bos * H + i_h) * K
    tok_v = (bos * H + i_h) * V
    i_c = i_p * HALVES
    b_g = load_gate(g, bos, T_seq, i_c, i_h, H, BT)
    b_beta = load_gate(beta, bos, T_seq, i_c, i_h, H, BT)
    b_gamma = load_gate(gamma, bos, T_seq, i_c, i_h, H, BT)
    b_G = tl.cumsum(b_g, axis=0)
    b_q = load_tile(q + tok_k, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_k = load_tile(k + tok_k, i_c * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
    b_v = load_tile(v + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
    b_r = load_tile(res + tok_v, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    tok_a = (bos * H + i_h) * BT
    qk_rows = tl.where(i_v == 0, T_seq, 0)  # one V-block's programs store (the others' stores masked off)
    b_o = _output_chunk(b_q, b_k, b_v, b_r, b_G, b_beta, b_gamma, b_hs, b_hr, 0.0, qk, tok_a, i_c, qk_rows, H, DT,
                        DOT_PREC, BT, STORE_QK, QK_IF)
    store_tile(o + tok_v, b_o * scale, i_c * BT, T_seq, H * V, i_v * BV, V, BT, BV)
    if HALVES == 2:
        b_GL0 = tl.sum(b_g, axis=0)
        b_g1 = load_gate(g, bos, T_seq, i_c + 1, i_h, H, BT)
        b_beta1 = load_gate(beta, bos, T_seq, i_c + 1, i_h, H, BT)
        b_gamma1 = load_gate(gamma, bos, T_seq, i_c + 1, i_h, H, BT)
        b_G1 = tl.cumsum(b_g1, axis=0)
        b_q1 = load_tile(q + tok_k, (i_c + 1) * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
        b_k1 = load_tile(k + tok_k, (i_c + 1) * BT, T_seq, H * K, 0, K, BT, BK).to(DT)
        b_v1 = load_tile(v + tok_v, (i_c + 1) * BT, T_seq, H * V, i_v * BV, V, BT, BV).to(DT)
        b_r1 = load_tile(res + tok_v, (i_c + 1) * BT, T_seq, H * V, i_v * BV, V, BT, BV)
        b_o1 = _output_chunk(b_q1, b_k1, b_v1, b_r1, b_G1, b_beta1, b_gamma1, b_hs, b_hr, b_GL0, qk, tok_a, i_c + 1,
                             qk_rows, H, DT, DOT_PREC, BT, STORE_QK, QK_IF)
        # Every key of chunk 0 precedes every query of chunk 1: no mask, each exponent <= 0.
        b_C = tl.dot(b_q1, tl.trans(b_k), input_precision=DOT_PREC)
        b_C = b_C * tl.exp(b_G1[:, None] + (b_GL0 - b_G)[None, :])
        b_o1 += tl.dot((b_C * b_beta[None, :]).to(DT), b_v, input_precision=DOT_PREC)
        b_o1 += tl.dot((b_C * (b_gamma1[:, None] * b_gamma[None, :])).to(DT), b_r.to(DT), input_precision=DOT_PREC)
        store_tile(o + tok_v, b_o1 * scale, (i_c + 1) * BT, T_seq, H * V, i_v * BV, V, BT, BV)
