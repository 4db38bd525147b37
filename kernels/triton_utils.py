"""Small Triton helpers shared by the RLA and RDN chunk kernels.

Kept small and stable on purpose (other kernel modules import from it):

- ``INTERPRET`` / ``autotune``: under TRITON_INTERPRET=1 (the CPU machine) there is no GPU to benchmark
  on, so the autotuner gets only its first config and never benchmarks; on a GPU it tunes over all
  (unless RLA_KERNELS_FIXED_CONFIG=1). ``HALF_DOTS_IN_FP32``: the interpreter's bf16 dots are wrong;
  ``interpreter_rounds_bf16_to_nearest``: its fp32 -> bf16 conversion truncates, unless patched;
  ``interpreter_dots_ignore_layout``: its dots' bits follow their operands' memory layout, unless patched.
- ``load_tile`` / ``load_tile_t`` / ``store_tile`` / ``exp_where``: masked tile access (``load_tile_t``
  transposed) and safe causal decays in kernels.
- ``chunk_of_pair``: the heads-first renumbering of chunk-parallel programs (both ops' ``CHUNK_ORDER``).
- ``load_gate``: a chunk's per-token gate, masked past its sequence's end.
- ``walk_state_slot``: where a forward walk stores a chunk's start state, every chunk's or every other one's.
- ``chunk_tables``: the bookkeeping that maps chunk-parallel programs to (sequence, chunk) pairs and
  sequences to their rows in a per-chunk state buffer, for packed variable-length batches (``cu_seqlens``),
  without a device sync.
- ``dot_precision``: how ``tl.dot`` should treat fp32 operands.
- ``dot_split``: a dot of an exact half tile with an fp32 tile that keeps ~16 mantissa bits of the fp32 one.
- ``knob_width``: a block width from a launch knob (RLA's and RDN's chunk modules' ints), validated.
- ``Beside``: launches queued on a second CUDA stream, beside the current stream's next ones.

Written against the Triton 3.6 API (the GPU machine) and checked on 3.9 (this machine).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from . import shapes
from .backend import split_asm_requested

INTERPRET = shapes.INTERPRET
# RLA_KERNELS_FIXED_CONFIG=1 skips autotuning on a GPU too (each config is a separate compile, which
# dominates short correctness runs). Read once, at import.
FIXED_CONFIG = INTERPRET or os.environ.get("RLA_KERNELS_FIXED_CONFIG") == "1"
# Triton's interpreter (3.9) multiplies bf16 tl.dot operands as their raw uint16 bit patterns (its fp16 dots
# are right): under it, the kernels cast half dot operands to fp32 first (the same products: a half value is
# exact in fp32).
HALF_DOTS_IN_FP32 = INTERPRET
# RLA_KERNELS_SPLIT_ASM (1 or unset) at import: _split_half splits bf16 by one PTX block a pair of elements
# (split_bf16_pairs) instead of Triton's lowering of the casts; 0: the casts. Never under the interpreter (it runs no
# PTX). On by default since every float64 row passed with it (H100, 2026-12-05; RDN's training walk -7% at B=1 T=32k,
# H200, 2026-12-05 03:20; BENCHMARKS.md).
SPLIT_ASM = split_asm_requested() and not INTERPRET
_SPLIT_ASM = tl.constexpr(SPLIT_ASM)


def interpreter_rounds_bf16_to_nearest():
    """Make Triton's interpreter convert fp32 to bf16 (``.to()``, stores) by rounding to nearest even, as the GPU
    does: it truncates (its ``_convert_float`` without a rounding mode), an error one-sided and twice the GPU's, so
    bf16 errors on the CPU ran 2-3x the GPU's (2026-12-04). For the CPU test suite (tests/conftest.py) and
    ``gpu_check_rla.py --smoke --gpu-dots``; tests/kernels/test_interpreter_rounding.py checks that it took. Patches
    the interpreter module whether or not it is in use (a no-op the second time)."""
    import numpy as np
    from triton.runtime import interpreter

    convert = interpreter._convert_float
    if getattr(convert, "rounds_bf16_to_nearest", False):
        return

    def convert_rounding_bf16(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            values = torch.from_numpy(np.array(input, dtype=np.float32))  # a copy, in its shape (0-d too)
            return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return convert(input, input_dtype, output_dtype, rounding_mode)

    convert_rounding_bf16.rounds_bf16_to_nearest = True
    interpreter._convert_float = convert_rounding_bf16


def interpreter_dots_ignore_layout():
    """Make Triton's interpreter give a dot the same bits whatever its operands' memory layout, as the kernels' "bit
    for bit" tests assume: it hands ``tl.dot``'s operands to numpy's matmul as they lie, a transposed view
    (``tl.trans``, a TMA descriptor's tile) included, and OpenBLAS takes another kernel for those on some CPUs
    (AVX-512: an AMD EPYC, 2026-12-07, where [32, 32] x [32, 32] with the right operand column-major differs from the
    row-major product in the last bit), so the pointer and TMA paths of a walk, the same values, differed there and
    not elsewhere. Row-major copies first (a no-op for tiles already so): one layout, one summation order. For the CPU
    test suite (tests/conftest.py); tests/kernels/test_interpreter_rounding.py checks that it took. A no-op the second
    time."""
    import numpy as np
    from triton.runtime import interpreter

    dot = interpreter.InterpreterBuilder.create_dot
    if getattr(dot, "ignores_layout", False):
        return

    def create_dot_row_major(self, a, b, d, input_precision, max_num_imprecise_acc):
        a = interpreter.TensorHandle(np.ascontiguousarray(a.data), a.dtype)
        b = interpreter.TensorHandle(np.ascontiguousarray(b.data), b.dtype)
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot_row_major.ignores_layout = True
    interpreter.InterpreterBuilder.create_dot = create_dot_row_major


def autotune(configs: list, key: list, **kwargs):
    """``triton.autotune`` that degrades to a fixed config (the first) under the interpreter or with
    RLA_KERNELS_FIXED_CONFIG=1.

    With a single config Triton's autotuner launches it directly, without benchmarking, which is what
    the interpreter needs. Only tune launch parameters (warps, stages) or block sizes of kernels whose
    outputs are written, never accumulated: tuning re-runs the kernel.
    """
    return triton.autotune(configs=configs[:1] if FIXED_CONFIG else configs, key=key, **kwargs)


# No 2-warp configs: RLA's chunk-parallel kernels (residual, output, du, dv, intra, dq/dk/dg) all compile at 2 warps to
# 255 registers and a spill stack (88 B to 21 KB a thread, the dots on mma.sync) where 4 and 8 warps have none and use
# wgmma, at SmolLM2's heads (H=9, K=V=64) as at the benchmark's (H=16, K=V=128) (scripts/kernel_resources.py --ops rla,
# sm_90, 2026-12-03), and the H200's autotuner never picked 2 warps for them: they were a third of every first call's
# tuning for nothing.
def warps_stages_configs(warps=(4, 8), stages=(2, 3), first=(4, 2)) -> list:
    """A small grid of launch configs (no block sizes), ``first`` leading: it is the fixed config."""
    pairs = [first] + [(w, s) for w in warps for s in stages if (w, s) != first]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in pairs]


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for tl.dot: exact fp32 when the inputs are fp32 (tf32 would cost ~1e-3
    relative error, which the fp32 path exists to avoid); bf16/fp16 operands ignore it."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def knob_width(name: str, value: int, auto: int, dim: int) -> int:
    """The block width a launch knob asks for: a module int of an op's chunk module (``name`` = ``value``) that
    profile_kernels.py --knob and the gpu checks' --set change. 0 means ``auto``, the launcher's own choice. The
    width is clamped to ``dim``'s power of two (at least 16: tl.arange and tl.dot's least): a wider block would
    only be masked, so a knob set wider than a head dim means the whole dim. Anything but 0 or a power of two >= 16
    is a ValueError naming the knob."""
    if not isinstance(value, int) or isinstance(value, bool) or (
            value != 0 and (value < 16 or value & (value - 1))):
        raise ValueError(f"launch knob {name} must be 0 (automatic) or a power of two >= 16 (16, 32, 64, 128, ...); "
                         f"got {value!r}")
    width = value or auto
    if width < 16:
        raise ValueError(f"launch knob {name} has no automatic width: set it to a power of two >= 16; got {value!r}")
    return min(width, max(16, next_power_of_2(dim)))


# CUDA caps grid axes 1 and 2 at 65535 programs (axis 0 at 2^31 - 1): launchers check what they put there.
GRID_AXIS_LIMIT = 65535



def knob_steps(name: str, value: int) -> int:
    """A walk's chunks a loop turn as a launch knob asks for them (``name`` = ``value``, a module int of an op's chunk
    module): 0 (the launcher's automatic choice), 1 or 2, returned as given; anything else a ValueError naming the
    knob."""
    if type(value) is not int or value not in (0, 1, 2):
        raise ValueError(f"launch knob {name} must be 0 (automatic), 1 or 2 (chunks a walk's loop turn steps); "
                         f"got {value!r}")
    return value


class Beside:
    """Launches that need nothing the current stream queues after this point, run beside it on a second stream.

    Why: a walk with about one program an SM (long sequences, few heads) is latency-bound and leaves most of each
    SM's registers and shared memory idle; another kernel's programs fit there. ``with beside:`` queues launches on
    the device's second stream, which first waits for everything the current stream has queued so far;
    ``beside.join()`` makes the current stream wait for them (and ends the fork).

    Memory: every tensor such a launch reads or writes goes to ``use`` (``record_stream``), so the caching allocator
    keeps its memory from the current stream until the launch is done, however early the tensor is freed. And what
    the launches write is allocated before the fork, or after it with nothing queued on the current stream in
    between: memory the current stream frees after the fork (a buffer of a kernel still running there) goes to its
    next allocations, which the second stream does not wait for (2026-12-02: an illegal memory access, the RDN
    rebuild's buffers over the one-launch reverse walks' ticket counters).

    Off CUDA, with ``enabled`` false, or while the current stream is being captured into a CUDA graph (whose
    allocator pools and cudagraph trees' checkpoints assume one stream's frees), every launch stays on the current
    stream and ``use``/``join`` do nothing."""

    def __init__(self, like: torch.Tensor, enabled: bool = True):
        self.stream = self.current = None
        if enabled and like.is_cuda and not torch.cuda.is_current_stream_capturing():
            self.current = torch.cuda.current_stream(like.device)
            self.stream = _second_stream(like.device.index if like.device.index is not None
                                         else torch.cuda.current_device())
            self.stream.wait_stream(self.current)

    def __enter__(self):
        self._context = torch.cuda.stream(self.stream) if self.stream is not None else None
        if self._context is not None:
            self._context.__enter__()
        return self

    def __exit__(self, *exc):
        if self._context is not None:
            self._context.__exit__(*exc)
        return False

    def use(self, *tensors) -> None:
        if self.stream is not None:
            for t in tensors:
                if t is not None:
                    t.record_stream(self.stream)

    def join(self) -> None:
        """The current stream waits for the launches queued so far; later ``with beside:`` launches run on it."""
        if self.stream is not None:
            self.current.wait_stream(self.stream)
            self.stream = None


@functools.lru_cache(maxsize=None)
def _second_stream(index: int):
    return torch.cuda.Stream(device=index)


def walk_gates(*gates):
    """The gates (g, beta, gamma or any of them) as a walk takes them: fp32, each cast on its own (an fp32 one passes
    as it is). Why: a walk loads a chunk's gates every step, and Triton's pipeliner prefetches a load through cp.async
    only for 4-byte elements and wider, so half gates are loaded in the step that uses them, their latency bare (RDN's
    walks measured in rdn/chunk.py's use of this). The values are the inputs' exactly: no result changes by a bit."""
    return tuple(x.float() for x in gates)


def cdiv(a, b):
    """ceil(a / b) for host ints or integer tensors: triton.cdiv's value without its wrapper, a ConstexprFunction
    since Triton 3.4 that costs ~5 us a host call (an import and argument unwrapping each time), where a launcher
    calls it tens of times a pass: ~0.1-0.2 ms of host time an RLA forward, which a host-bound prefill pays every
    layer (2026-12-06, this machine: 5.5 us against 0.05 for the floor division)."""
    return (a + (b - 1)) // b


def next_power_of_2(n: int) -> int:
    """triton.next_power_of_2's value (the least power of two >= n; 0 for n <= 0) without its wrapper (see cdiv)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device, 0 elsewhere: launchers size their grids by it."""
    if device.type != "cuda":
        return 0
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def copy_engine_loads(device: torch.device) -> bool:
    """Whether kernels may load tiles through TMA descriptors on ``device``: Hopper or newer (the copy engine), or
    Triton's interpreter (which reads descriptors as masked loads, so the CPU tests run that path)."""
    if INTERPRET:
        return True
    return device.type == "cuda" and _cuda_capability(device.index if device.index is not None
                                                        else torch.cuda.current_device()) >= 9


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def rows_descriptor(x: torch.Tensor, width: int, block: tuple[int, int]):
    """A TMA descriptor of contiguous ``x`` viewed as [x.numel() / width, width] in ``block`` tiles (past the end:
    zeros), or None where TMA cannot read it (empty, its base not 16-byte aligned, or a row not a multiple of 16
    bytes)."""
    if not x.numel() or x.data_ptr() % 16 or (width * x.element_size()) % 16 or not x.is_contiguous():
        return None
    return TensorDescriptor(x, shape=[x.numel() // width, width], strides=[width, 1], block_shape=list(block))


def rows_descriptors(*tiles: tuple) -> tuple | None:
    """``rows_descriptor`` of each (tensor, width, block), or None where any has none or their device loads no tiles
    through TMA (copy_engine_loads): a launch takes all its tiles through TMA or all by pointers (its kernel's TMA
    constexpr)."""
    if not copy_engine_loads(tiles[0][0].device):
        return None
    descriptors = tuple(rows_descriptor(*tile) for tile in tiles)
    return None if None in descriptors else descriptors


def wide_reverse_walk(V: int, programs_a_block: int, sms: int) -> bool:
    """Whether a reverse walk takes 64-wide V-blocks: V wider than 32, and its programs at 64 wide (``programs_a_block``
    a V-block) still outnumber the ``sms`` SMs (0 off a GPU: never). Half the programs, each carrying twice the columns
    through the same chain; where they would not outnumber the SMs it tied or lost (H200, 2026-12-02: rdn/chunk.py's
    REVERSE_WALK_BV, rla/chunk.py's _Layout). RDN's and RLA's launchers both ask here."""
    return V > 32 and programs_a_block * cdiv(V, 64) > sms > 0


def beside_walk_width(V: int, programs_a_block: int, sms: int, fallback: int) -> int:
    """The V-block of a walk that runs beside a reverse walk whose programs already fill the SMs (RLA's rerun walk,
    RDN's rebuild): the widest of 64 and 32 whose programs (``programs_a_block`` a V-block) are at least half the
    ``sms`` SMs, else ``fallback``. Its own programs crowd the reverse walk's, so it wants few (H100, 2026-12-06:
    rla/chunk.py's _Layout._rerun_blocks, rdn/chunk.py's REBUILD_BV). RDN's and RLA's launchers both ask here."""
    return next((bv for bv in (64, 32) if programs_a_block * cdiv(V, bv) >= sms / 2), fallback)


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def chunk_tables(cu_seqlens: torch.Tensor, chunk_size: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed sequences (cu_seqlens [N + 1] over T tokens): ``indices`` [rows, 2] int32, a chunk-parallel program's
    (sequence, chunk within it), in the order of the per-chunk state buffers, and ``offsets`` [N + 1] int32, sequence
    n owning state rows offsets[n]:offsets[n + 1].

    Without a device sync: ``rows`` is shapes.kept_rows' bound (ceil(T / BT) + N - 1 >= sum_n ceil(len_n / BT)), known
    from the shapes alone, and the slots past the chunk count name a chunk past the last sequence's end, whose
    every row is past T_seq, so its program's loads and stores are all masked (as a partial last chunk's rows past
    its sequence are). Sizing the tables by the count took a sync that left the GPU idle while the host launched
    the rest of the call (RDN's packed forward: wall 3.10 ms for 2.24 of GPU time at B=16 T=2k, H200, 2026-12-03)."""
    n_seqs = cu_seqlens.numel() - 1
    rows = shapes.kept_rows(1, T, chunk_size, n_seqs)
    counts = cdiv(cu_seqlens[1:] - cu_seqlens[:-1], chunk_size).long()
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    slot = torch.arange(rows, device=cu_seqlens.device)
    seq = torch.searchsorted(offsets[1:], slot, right=True).clamp_max(n_seqs - 1)
    within = slot - offsets[seq]
    return torch.stack([seq, within], 1).to(torch.int32).contiguous(), offsets.to(torch.int32).contiguous()


@triton.jit
def load_gate(x, bos, T_seq, i_t, i_h, H: tl.constexpr, BT: tl.constexpr):
    """A per-token gate [.., T, H] of chunk i_t (BT tokens) of the sequence starting at token bos, fp32; rows past
    the sequence's end read 0 (for g: the cumulative decay stays flat there)."""
    rows = i_t * BT + tl.arange(0, BT)
    return tl.load(x + (bos + rows) * H + i_h, mask=rows < T_seq, other=0.0).to(tl.float32)


@triton.jit
def walk_state_slot(i_t, boh, i_h, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, STATE_EVERY: tl.constexpr):
    """Where a forward walk stores chunk i_t's start state: its offset in the state buffers, whose sequence starts
    at row ``boh``, and the rows it stores (K; with STATE_EVERY 2 none for an odd chunk, whose state the
    chunk-parallel readers at twice the chunk never read: RDN's chunk.STATE_EVERY, RLA's chunk.FWD_HALVES)."""
    h_rows = K
    if STATE_EVERY == 2:
        h_rows = tl.where(i_t % 2 == 0, K, 0)
    return ((boh + i_t // STATE_EVERY) * H + i_h) * K * V, h_rows


@triton.jit
def chunk_of_pair(pair, nt, H: tl.constexpr):
    """The (chunk, (sequence, head) or head) of the pair-th program in launch order when one chunk's H heads run
    adjacently, for a grid of nt chunks by (sequences x) H heads. A chunk's heads are neighbouring rows of the
    [.., T, H, K] token tensors, so the programs the GPU runs together read whole rows (both ops' CHUNK_ORDER)."""
    rest = pair // H
    return rest % nt, (rest // nt) * H + pair % H


# Tile access by plain pointers and masks (block pointers are gone from newer Triton). A tile is
# rows row0..row0+BR of a row-major matrix with n_rows rows of stride row_stride, columns col0..col0+BC
# out of n_cols; whatever lies outside reads as 0 and is not written.
@triton.jit
def _tile(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    rows = row0 + tl.arange(0, BR)
    cols = col0 + tl.arange(0, BC)
    ptrs = base + rows[:, None] * row_stride + cols[None, :]
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return ptrs, mask


@triton.jit
def load_tile(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    ptrs, mask = _tile(base, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def load_tile_t(base, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    """The tile load_tile reads, transposed ([BC, BR]) by its addresses: a dot's left operand k^T or q^T comes
    from memory as the dot wants it, as fla's walks load it, not through an in-register tl.trans."""
    rows = row0 + tl.arange(0, BR)
    cols = col0 + tl.arange(0, BC)
    ptrs = base + rows[None, :] * row_stride + cols[:, None]
    mask = (rows < n_rows)[None, :] & (cols < n_cols)[:, None]
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def store_tile(base, value, row0, n_rows, row_stride, col0, n_cols, BR: tl.constexpr, BC: tl.constexpr):
    ptrs, mask = _tile(base, row0, n_rows, row_stride, col0, n_cols, BR, BC)
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=mask)


@triton.jit
def split_bf16_pairs(x):
    """fp32 x as bf16 hi + lo, the values _split_half's casts give (hi = x rounded to nearest even, lo = x - hi
    rounded), two elements an asm block: hi's pair by one cvt.rn.bf16x2, its fp32 values back by a shift and a mask
    (a bf16 is the top half of its fp32), the two exact subtractions, lo's pair by one cvt.rn.bf16x2. 3 instructions
    an element where Triton's lowering of the casts emits 4 (ptxas sm_90: F2F, an IMAD.U32 shift and an FADD an
    element, a PRMT or F2FP a pair to pack). The pair is packed as the dot operands take it (element 0 low)."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 h0, h1;
        .reg .f32 l0, l1;
        cvt.rn.bf16x2.f32 $0, $3, $2;
        shl.b32 h0, $0, 16;
        and.b32 h1, $0, 0xffff0000;
        sub.f32 l0, $2, h0;
        sub.f32 l1, $3, h1;
        cvt.rn.bf16x2.f32 $1, l1, l0;
        }""",
        constraints="=r,=r,r,r", args=[x], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=2)


@triton.jit
def _split_half(x, half_dtype: tl.constexpr):
    """fp32 x as hi + lo, both in half_dtype: x - hi - lo ~ 2^-16 |x| for bf16 (one cast: 2^-9)."""
    if _SPLIT_ASM and half_dtype == tl.bfloat16:
        hi, lo = split_bf16_pairs(x)
    else:
        hi = x.to(half_dtype)
        lo = (x - hi.to(tl.float32)).to(half_dtype)
    return hi, lo


@triton.jit
def dot_split(a, b, DOT_PREC: tl.constexpr, acc=None):
    """``a @ b`` where one operand is a half tile (bf16/fp16, exact: an input) and the other fp32 (a state, a
    state gradient, a decayed matrix): the fp32 one is split into two half tiles, two half dots. About 2^-16
    relative error instead of the 2^-9 of one bf16 cast, at twice one half dot's cost and one more half tile,
    never an fp32 operand tile. Two operands of one dtype (two fp32 tiles, or two half tiles such as an input and a
    state stored in the input dtype): the plain dot at DOT_PREC. ``acc``: an fp32 tile the products are added to, as
    the first dot's accumulator, where ``acc + dot_split(a, b)`` took an FADD an element after the two dots (Triton
    folds such an add into a plain dot's accumulator, not into this chain's). An accumulation over a loop gains (RLA's
    dq/dk/dg V loop: 581 -> 545 SASS instructions, ptxas sm_90, Triton 3.6); a state update h * a + dot_split does not
    (the FMUL of h * a replaces an FFMA)."""
    if a.dtype == b.dtype:
        out = tl.dot(a, b, acc, input_precision=DOT_PREC)
    elif a.dtype == tl.float32:
        hi, lo = _split_half(a, b.dtype)
        out = tl.dot(lo, b, tl.dot(hi, b, acc, input_precision=DOT_PREC), input_precision=DOT_PREC)
    else:
        hi, lo = _split_half(b.to(tl.float32), a.dtype)
        out = tl.dot(a, lo, tl.dot(a, hi, acc, input_precision=DOT_PREC), input_precision=DOT_PREC)
    return out


@triton.jit
def exp_where(mask, x):
    """exp(x) where mask holds, else 0, never taking exp of a masked entry: across a causal mask the
    decay differences G_i - G_t turn positive and can overflow, and inf * 0 would be NaN."""
    return tl.exp(tl.where(mask, x, float("-inf")))
