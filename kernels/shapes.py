"""What the Triton chunk kernels and the ops' fakes (library.py) must agree on, in a module without triton, so
library.py can size a kept walk from shapes alone on any machine."""
from __future__ import annotations

import os

import torch

# Triton's interpreter (the CPU machine): the chunk kernels' dots take fp32 operands there
# (triton_utils.HALF_DOTS_IN_FP32)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

RDN_CHUNK_SIZE = 32  # rdn/chunk.py's forward chunk (its CHUNK_SIZE)
RLA_CHUNK_SIZE = 64  # rla/chunk.py's (its CHUNK_SIZE)


def kept_rows(batch: int, T: int, chunk_size: int, n_seqs: int | None = None) -> int:
    """Rows of a kept walk's chunk-state buffers: the chunk count of a fixed-length batch; of ``n_seqs`` packed
    sequences (batch 1) an upper bound that needs no cu_seqlens values, sum_i ceil(l_i / BT) <= ceil(T / BT) + N - 1
    (the kernels index rows by chunk offsets and never touch the rows past the chunk count)."""
    chunks = -(-T // chunk_size)
    return batch * chunks if n_seqs is None else max(chunks + n_seqs - 1, 0)


def kept_walk_shapes(q, V: int, cu_seqlens, chunk_size: int, per_token: int = 1) -> tuple:
    """Shapes of a kept forward walk (``keep_walk``), both variants: two chunk-state buffers [rows, H, K, V] and
    ``per_token`` tensors [B, T, H, V] (RDN's U, W, X: 3; RLA's residuals r: 1; the dtypes are each variant's)."""
    B, T, H, K = q.shape
    rows = kept_rows(B, T, chunk_size, None if cu_seqlens is None else len(cu_seqlens) - 1)
    return ((rows, H, K, V), (rows, H, K, V)) + ((B, T, H, V),) * per_token


def rla_kept_shapes(q, V: int, cu_seqlens, chunk_size: int) -> tuple:
    """Shapes of RLA's kept forward (``keep_walk``): h_S, h_R, the residuals r [B, T, H, V] and the decayed q.k
    products of each token's chunk [B, T, H, chunk_size] (rla/chunk.py QK_KEPT); ``keep_tokens`` keeps the last two."""
    B, T, H, _ = q.shape
    return kept_walk_shapes(q, V, cu_seqlens, chunk_size) + ((B, T, H, chunk_size),)


def rla_qk_dtype(dtype: torch.dtype, dots_fp32: bool | None = None) -> torch.dtype:
    """The dtype of RLA's kept q.k products: the dots' operand dtype (fp32 for fp32 inputs and under the interpreter,
    ``dots_fp32`` None; else the input dtype), in which the kernels that read them would have rounded them."""
    if dots_fp32 is None:
        dots_fp32 = INTERPRET or dtype == torch.float32
    return torch.float32 if dots_fp32 else dtype


def rdn_kept_walk_dtypes(dtype: torch.dtype) -> tuple:
    """dtypes of RDN's kept walk (h_s, h_r, U, W, X), for inputs of ``dtype``: all in it. X's side of the clip is the
    gradient's mask: the walk stores it rounded so that the side stays (rdn/chunk_fwd.py, NUDGE_X)."""
    return (dtype, dtype, dtype, dtype, dtype)
