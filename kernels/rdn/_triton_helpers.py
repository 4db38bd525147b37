"""Small Triton helpers private to the RDN chunk kernels (the shared ones live in kernels/triton_utils.py,
owned by the RLA kernels; these are kept here so the RDN kernels do not depend on its evolution).

- ``autotune``: under TRITON_INTERPRET=1 there is no GPU to benchmark on, so the
  autotuner gets its first config only (Triton launches a single config without benchmarking); the
  environment variable RLA_KERNELS_FIXED_CONFIG=1 (one switch for both ops, read in triton_utils) does
  the same on a GPU (quick checks: one compile each).
- ``load_tile`` / ``store_tile``: masked tiles of a row-major matrix (outside reads 0, is not written);
  ``load_tile_raw`` keeps the input dtype for dot operands.
- ``dot_cast``: a dot of a half tile and an fp32 one as one half dot, the fp32 one rounded (fla's walks' precision).
- ``exp_masked``: exp of an exponent only where a mask holds, 0 elsewhere, so an exponent that would
  overflow outside the causal triangle never meets a multiply by 0 (inf * 0 = NaN).
- ``seq_bounds`` / ``chunk_coords``: where a sequence or a chunk lives in the flattened [B*T, H] layout;
  ``chunk_prologue``: ``chunk_coords`` and the chunk's rows, the opening of the chunk-parallel kernels.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ..triton_utils import FIXED_CONFIG as _ONE_CONFIG, HALF_DOTS_IN_FP32, _split_half, chunk_of_pair

_CAST_RAW = tl.constexpr(HALF_DOTS_IN_FP32)  # load_tile_raw's tiles are dot operands


def autotune(configs: list, key: list):
    """``triton.autotune`` over launch parameters only; one fixed config under the interpreter."""
    return triton.autotune(configs=configs[:1] if _ONE_CONFIG else configs, key=key)


def launch_configs(*pairs: tuple) -> list:
    """Launch configs from (num_warps, num_stages) pairs, or (num_warps, num_stages, maxnreg) triples (a register
    cap a thread: ptxas spills above it); the first is the fixed config."""
    return [triton.Config({}, num_warps=p[0], num_stages=p[1], maxnreg=p[2] if len(p) > 2 else None)
            for p in pairs or ((4, 1), (8, 1))]


@triton.jit
def _tile(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    rows = row0 + tl.arange(0, BR)
    cols = col0 + tl.arange(0, BC)
    ptrs = base + rows[:, None] * row_stride + cols[None, :]
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return ptrs, mask


@triton.jit
def load_tile(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """fp32 tile rows row0..row0+BR, columns col0..col0+BC of an [n_rows, n_cols] matrix."""
    ptrs, mask = _tile(base, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_tile_raw(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """``load_tile`` in the tensor's own dtype: for dot operands stored in the input dtype (inputs, and the
    chunk states, which chunk.py stores in it). A bf16/fp16 value is exact in tf32, so a dot of raw half tiles
    equals the tf32 dot of their fp32 casts, at twice the tensor core rate and half the registers. Under the
    interpreter it is cast to fp32 (triton_utils.HALF_DOTS_IN_FP32)."""
    ptrs, mask = _tile(base, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    x = tl.load(ptrs, mask=mask, other=0.0)
    if _CAST_RAW:
        x = x.to(tl.float32)
    return x


@triton.jit
def store_tile(base, value, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    ptrs, mask = _tile(base, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _tile_t(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """_tile's addresses transposed: the [BC, BR] tile whose (c, r) is the matrix's (row0 + r, col0 + c)."""
    rows = row0 + tl.arange(0, BR)
    cols = col0 + tl.arange(0, BC)
    ptrs = base + rows[None, :] * row_stride + cols[:, None]
    mask = (rows < n_rows)[None, :] & (cols < n_cols)[:, None]
    return ptrs, mask


@triton.jit
def load_rows(desc, row, col, RAW: tl.constexpr = False):
    """The tile of TMA descriptor ``desc`` (triton_utils.rows_descriptor) at token ``row``, column ``col`` (int32s):
    fp32, or with RAW in the tensor's dtype as ``load_tile_raw`` (fp32 when interpreted). Rows past a sequence's end
    are the next sequence's tokens (zeros past the tensor), not zeros as ``load_tile``'s: the caller weighs them."""
    x = desc.load([row, col])
    if not RAW or _CAST_RAW:
        x = x.to(tl.float32)
    return x


@triton.jit
def load_tile_t(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """``load_tile``'s tile transposed by its addresses ([BC, BR], fp32)."""
    ptrs, mask = _tile_t(base, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_tile_t_raw(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """``load_tile_raw``'s tile transposed by its addresses ([BC, BR], the tensor's dtype; fp32 when interpreted)."""
    ptrs, mask = _tile_t(base, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    x = tl.load(ptrs, mask=mask, other=0.0)
    if _CAST_RAW:
        x = x.to(tl.float32)
    return x


@triton.jit
def store_tile_t(base, value, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """Store a [BC, BR] tile where ``store_tile`` stores its transpose."""
    ptrs, mask = _tile_t(base, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=mask)


@triton.jit
def dot_cast(a, b, DOT_PREC: tl.constexpr):
    """``a @ b`` as one dot in the dtype of the operand that is not fp32 (an input tile, or a chunk operator stored
    in the input dtype): the fp32 one (a state, a state adjoint, a pseudo-value tile) rounds to it, 2^-9 for bf16,
    as fla's gated delta rule walks round their states and v_new. Against ``triton_utils.dot_split`` (~2^-16, two
    dots): half the dots and no lo tile. Two operands of one dtype: the plain dot at DOT_PREC (so fp32 inputs keep
    their exact dots)."""
    if a.dtype == b.dtype:
        out = tl.dot(a, b, input_precision=DOT_PREC)
    elif a.dtype == tl.float32:
        out = tl.dot(a.to(b.dtype), b, input_precision=DOT_PREC)
    else:
        out = tl.dot(a, b.to(a.dtype), input_precision=DOT_PREC)
    return out


@triton.jit
def exp_masked(mask, x):
    return tl.where(mask, tl.exp(tl.where(mask, x, 0.0)), 0.0)


@triton.jit
def seq_bounds(cu_seqlens, chunk_offsets, i_n, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Sequence i_n: first token, length, first row in the per-chunk state buffers (int64 when i_n is:
    callers cast their program ids to int64 first)."""
    if IS_VARLEN:
        bos = tl.cast(tl.load(cu_seqlens + i_n), tl.int64)
        eos = tl.cast(tl.load(cu_seqlens + i_n + 1), tl.int64)
        boh = tl.cast(tl.load(chunk_offsets + i_n), tl.int64)
    else:
        bos = i_n * T
        eos = bos + T
        boh = i_n * tl.cdiv(T, BT)
    return bos, eos - bos, boh


@triton.jit
def walk_bounds(cu_seqlens, chunk_offsets, i_nh, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """A walk program's sequence x head ``i_nh``: seq_bounds (first token, length, first state row), its chunk count,
    head, and where its head's rows start in the per-token tensors of width K, V and BT."""
    i_n = i_nh // H
    i_h = i_nh % H
    bos, T_seq, boh = seq_bounds(cu_seqlens, chunk_offsets, i_n, T, BT, IS_VARLEN)
    NT = tl.cdiv(T_seq, BT)
    return bos, T_seq, boh, NT, i_h, (bos * H + i_h) * K, (bos * H + i_h) * V, (bos * H + i_h) * BT


@triton.jit
def chunk_ids(NH_AXIS: tl.constexpr, H: tl.constexpr, NX: tl.constexpr, ORDER: tl.constexpr,
              GROUP: tl.constexpr):
    """A chunk-parallel program's chunk ``i_c`` (grid axis 0), K- or V-block ``i_x`` (axis 1, NX of them, when NH_AXIS
    is 2, else 0) and (sequence, head) or head ``i_nh`` (axis NH_AXIS), int64, renumbered by ORDER (chunk.CHUNK_ORDER)
    so that the programs the GPU runs together (it starts them in launch order, axis 0 fastest) share reads. A
    chunk's heads are adjacent rows of the [.., T, H, K] token tensors, and its blocks read the same token tiles.
    0, the grid's own order: one head's chunks after another's (a packed batch, every sequence's chunks of one head on
    axis 0, or a long sequence runs 1/H of each token row at a time, and a chunk's second block a whole axis later,
    out of the L2); 1: one chunk's heads after another's, each block a chunk axis apart; 2: one (chunk, head)'s
    blocks together, then the chunk's other heads, then the next chunk; 3: as 2 by groups of GROUP (chunk, head)
    pairs, each group's pairs once a block, so that a pair's blocks run GROUP programs apart (what 1 does where the
    chunk axis is GROUP long). In int32 (a grid holds fewer than 2^31 programs): int64 divisions cost a short
    kernel (2026-12-03: the operator kernel 0.16 -> 0.19 ms with two more)."""
    i_c = tl.program_id(0)
    i_nh = tl.program_id(NH_AXIS)
    if NH_AXIS == 2:
        i_x = tl.program_id(1)
    else:
        i_x = i_c * 0
    if ORDER != 0:
        nt = tl.num_programs(0)
        if ORDER == 1 or NX == 1:  # one block: 2 and 3 are 1, and their divisions cost (operator kernel +0.03 ms)
            pair = i_nh * nt + i_c
        else:
            launched = (i_nh * NX + i_x) * nt + i_c
            if ORDER == 2:
                i_x = launched % NX
                pair = launched // NX
            else:
                first = launched // (GROUP * NX) * GROUP
                size = tl.minimum(nt * tl.num_programs(NH_AXIS) - first, GROUP)
                within = launched - first * NX
                i_x = within // size
                pair = first + within % size
        i_c, i_nh = chunk_of_pair(pair, nt, H)
    return tl.cast(i_c, tl.int64), tl.cast(i_x, tl.int64), tl.cast(i_nh, tl.int64)


@triton.jit
def chunk_coords(cu_seqlens, chunk_indices, i_c, i_nh, T, H: tl.constexpr, IS_VARLEN: tl.constexpr):
    """For a chunk-parallel program (axis: chunk i_c, and (sequence, head) i_nh or just the head when
    packed): sequence start, sequence length, chunk within the sequence, head (int64 when the ids are)."""
    if IS_VARLEN:
        i_n = tl.cast(tl.load(chunk_indices + i_c * 2), tl.int64)
        i_t = tl.cast(tl.load(chunk_indices + i_c * 2 + 1), tl.int64)
        bos = tl.cast(tl.load(cu_seqlens + i_n), tl.int64)
        T_seq = tl.cast(tl.load(cu_seqlens + i_n + 1), tl.int64) - bos
        i_h = i_nh
    else:
        i_n = i_nh // H
        i_h = i_nh % H
        i_t = i_c
        bos = i_n * T
        T_seq = T + 0 * i_n
    return bos, T_seq, i_t, i_h


@triton.jit
def chunk_prologue(cu_seqlens, chunk_indices, i_c, i_nh, T, H: tl.constexpr, BT: tl.constexpr,
                   IS_VARLEN: tl.constexpr):
    """``chunk_coords``, then the chunk's BT rows: o_t (0..BT-1), rows (within the sequence), in_seq (rows <
    T_seq) and row_off, each row's offset in a per-token [B*T, H] tensor (g, beta, gamma, their gradients).
    Values a kernel leaves unused are not computed (inlined, then dead code)."""
    bos, T_seq, i_t, i_h = chunk_coords(cu_seqlens, chunk_indices, i_c, i_nh, T, H, IS_VARLEN)
    o_t = tl.arange(0, BT)
    rows = i_t * BT + o_t
    in_seq = rows < T_seq
    row_off = (bos + rows) * H + i_h
    return bos, T_seq, i_t, i_h, o_t, rows, in_seq, row_off


@triton.jit
def dot_at(a, b, PREC: tl.constexpr, HALF: tl.constexpr):
    """``a @ b`` of two fp32 tiles at PREC: a tl.dot input precision, or "half3": each operand split into two HALF
    tiles (hi + lo, ~2^-16 of it for bf16) and three half dots, the small products first (lo.hi, hi.lo, then hi.hi
    onto them; lo.lo, ~2^-32, left out). About 2^-16 relative, as the walks' split state dots (dot_split), for three
    half dots where tf32x3 issues three tf32 ones (on sm_90's mma.sync a tf32 dot takes twice a half dot's
    instructions). Each product of two half values is exact in fp32, so under the interpreter (whose half dots are
    wrong) the split tiles are dotted as fp32 with the same result. "half": both operands rounded to HALF (2^-9 each
    for bf16) and one half dot, as fla's walks take their chunk matrices."""
    if PREC == "half":
        a_h, b_h = a.to(HALF), b.to(HALF)
        if _CAST_RAW:
            a_h, b_h = a_h.to(tl.float32), b_h.to(tl.float32)
        out = tl.dot(a_h, b_h, input_precision="tf32")
    elif PREC == "half3":
        a_hi, a_lo = _split_half(a, HALF)
        b_hi, b_lo = _split_half(b, HALF)
        if _CAST_RAW:
            a_hi, a_lo = a_hi.to(tl.float32), a_lo.to(tl.float32)
            b_hi, b_lo = b_hi.to(tl.float32), b_lo.to(tl.float32)
        out = tl.dot(a_lo, b_hi, input_precision="tf32")
        out = tl.dot(a_hi, b_lo, out, input_precision="tf32")
        out = tl.dot(a_hi, b_hi, out, input_precision="tf32")
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out
