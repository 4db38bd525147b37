"""Residual Linear Attention, chunked in plain PyTorch: the backend for CPU and any device without Triton.

Semantics are exactly ``naive.py``. Within a chunk of C tokens, with G the inclusive cumulative sum of
the log decay g and S0, R0 the chunk-start states ([K, V] layout), every read of a state is a masked
matrix product (all exponents are differences G_t - G_i <= 0, so nothing overflows):

    S_{t-1}^T k_t     = exp(G_t - g_t) S0^T k_t + sum_{i<t}  exp(G_t - g_t - G_i) beta_i v_i (k_i . k_t)
    a_t S_{t-1}^T q_t = exp(G_t)       S0^T q_t + sum_{i<t}  exp(G_t - G_i)       beta_i v_i (k_i . q_t)
    R_t^T q_t         = exp(G_t)       R0^T q_t + sum_{i<=t} exp(G_t - G_i)       gamma_i r_i (k_i . q_t)

with r_t = rho(v_t - S_{t-1}^T k_t) and o_t = scale * (a_t S_{t-1}^T q_t + gamma_t R_t^T q_t). Everything
that does not touch S0/R0 is computed for all chunks at once; a python loop over chunks carries the
states. Arithmetic is float32 (float64 if given float64); o comes back in v's dtype, states in float32.

``run_chunked`` is the shared driver (layout, padding, varlen, states); ``rdn/torch_chunk.py`` reuses it.
"""
from __future__ import annotations

import torch

from ..backend import is_decode, needs_grad
from ..residual import apply_residual
from .naive import rla_step


def chunk_rla_torch(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", initial_state=None,
                    output_final_state=False, cu_seqlens=None, chunk_size=64):
    """RLA forward by chunks, differentiable by autograd: returns ``(o, (S, R) or None)``."""
    return run_chunked(_rla_chunks, rla_step, q, k, v, g, beta, gamma, scale, clip, residual, initial_state,
                       output_final_state, cu_seqlens, chunk_size)


def _rla_chunks(c, S, R, rho):
    """RLA over all chunks of ``c`` (a ChunkInputs), starting from states S, R; returns (o, S, R)."""
    bv = c.beta[..., None] * c.v
    # Intra-chunk parts of the two reads of S_{t-1}; independent of the chunk-start state.
    sk_intra = (c.kk * c.decay_k_strict) @ bv
    sq_intra = (c.qk * c.decay_q_strict) @ bv
    rq_mix = c.qk * c.decay_q_incl
    k_to_end = (c.k * c.decay_to_end[..., None]).transpose(-1, -2)
    s_increment = k_to_end @ bv  # S's update does not depend on the residuals: all chunks at once
    outs = []
    for k_n, q_n, v_n, gamma_n, exp_gprev, exp_g, exp_gend, sk_n, sq_n, rq_n, k_end_n, s_inc in c.per_chunk(
            c.k, c.q, c.v, c.gamma[..., None], c.exp_gprev[..., None], c.exp_g[..., None],
            c.exp_gend[..., None, None], sk_intra, sq_intra, rq_mix, k_to_end, s_increment):
        sk = exp_gprev * (k_n @ S) + sk_n
        sq = exp_g * (q_n @ S) + sq_n
        gr = gamma_n * rho(v_n - sk)
        rq = exp_g * (q_n @ R) + rq_n @ gr
        outs.append(sq + gamma_n * rq)
        S = exp_gend * S + s_inc
        R = exp_gend * R + k_end_n @ gr
    return torch.stack(outs, dim=2), S, R


class ChunkInputs:
    """Inputs in [B, H, num_chunks, C, D] layout plus the decay factors and masked products every chunk needs."""

    def __init__(self, q, k, v, g, beta, gamma, chunk):
        B, H, T, K = q.shape
        self.num_chunks = n = T // chunk
        split = lambda x: x.reshape(B, H, n, chunk, *x.shape[3:])  # noqa: E731
        self.q, self.k, self.v = split(q), split(k), split(v)
        self.beta, self.gamma = split(beta), split(gamma)
        g = split(g)
        G = g.cumsum(-1)
        Gprev = G - g  # G_{t-1}, computed within the chunk (0 at its first token)
        self.exp_g, self.exp_gprev = G.exp(), Gprev.exp()
        self.exp_gend = G[..., -1].exp()
        self.decay_to_end = (G[..., -1:] - G).exp()
        ones = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device)
        strict, incl = ones.tril(-1), ones.tril()
        # Mask before exp: above the diagonal the differences are positive and could overflow.
        diff = G[..., :, None] - G[..., None, :]
        self.decay_q_strict = diff.masked_fill(~strict, float("-inf")).exp()
        self.decay_q_incl = diff.masked_fill(~incl, float("-inf")).exp()
        self.decay_k_strict = (Gprev[..., :, None] - G[..., None, :]).masked_fill(~strict, float("-inf")).exp()
        self.kk = self.k @ self.k.transpose(-1, -2)  # [t, i] = k_t . k_i
        self.qk = self.q @ self.k.transpose(-1, -2)  # [t, i] = q_t . k_i

    @staticmethod
    def per_chunk(*tensors):
        """Iterate chunk by chunk over [B, H, num_chunks, ...] tensors. One unbind each, not an index per
        chunk: the backward of x[:, :, n] writes into a zero tensor of x's full size, n times over."""
        return zip(*(x.unbind(2) for x in tensors))


def run_chunked(chunk_fn, step, q, k, v, g, beta, gamma, scale, clip, residual, initial_state, output_final_state,
                cu_seqlens, chunk_size):
    """Shared driver of both chunked ops: dtypes, varlen packing, padding to whole chunks, layout, states.

    Decoding (a few tokens from a state, no autograd: ``backend.is_decode``) runs ``step``, the oracle's
    token step (naive.py), over the whole batch instead: for one token the chunked code's padding and
    triangular solves cost more than the step."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K ** -0.5
    out_dtype = v.dtype
    compute = torch.promote_types(v.dtype, torch.float32)
    unpack = None
    if cu_seqlens is not None:
        (q, k, v, g, beta, gamma), unpack = _pad_sequences(cu_seqlens, (q, k, v, g, beta, gamma))
        B, T = q.shape[:2]
    S, R = _initial_states(initial_state, B, H, K, V, compute, q.device)
    rho = lambda x: apply_residual(x, clip, residual)  # noqa: E731
    decoding = is_decode(B * T, B, initial_state is not None, needs_grad((q, k, v, g, beta, gamma, S, R)))
    if T and unpack is None and decoding:
        outs = []
        for t in range(T):
            S, R, o_t = step(S, R, *(x[:, t].to(compute) for x in (q, k, v)), g[:, t].to(compute).exp(),
                             beta[:, t].to(compute), gamma[:, t].to(compute), rho)
            outs.append(o_t)
        o = (scale * torch.stack(outs, 1)).to(out_dtype)
    elif T == 0:
        o = v.new_zeros(v.shape)
    else:
        # A chunk never longer than the sequence (decode runs with C = T); pad the tail to whole chunks
        # with k = q = v = 0 and beta = gamma = g = 0, which leaves the states untouched.
        chunk = min(chunk_size, T)
        pad = -T % chunk
        to_bh = lambda x: _pad_time(x.to(compute), pad).transpose(1, 2)  # noqa: E731  [B, H, T', ...]
        c = ChunkInputs(to_bh(q), to_bh(k), to_bh(v), to_bh(g), to_bh(beta), to_bh(gamma), chunk)
        o, S, R = chunk_fn(c, S, R, rho)
        o = (scale * o.reshape(B, H, T + pad, V)[:, :, :T]).transpose(1, 2).to(out_dtype)
    if unpack is not None:
        o = unpack(o)
    final = (S, R) if output_final_state else None
    return o, final


def _initial_states(initial_state, N, H, K, V, dtype, device):
    zeros = lambda: torch.zeros(N, H, K, V, dtype=dtype, device=device)  # noqa: E731
    if initial_state is None:
        return zeros(), zeros()
    S0, R0 = initial_state
    return (zeros() if S0 is None else S0.to(dtype)), (zeros() if R0 is None else R0.to(dtype))


def _pad_time(x, pad):
    if pad == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)


def _pad_sequences(cu_seqlens, tensors):
    """Packed [1, T, ...] -> padded [N, Tmax, ...] (zeros past each end), and the function undoing it for o.

    Zero padding at the end of a sequence leaves its states untouched (see run_chunked), and each
    sequence starts from its own initial state, so the padded batch is exactly the packed one.
    """
    cu = cu_seqlens.to(device="cpu", dtype=torch.long)  # host copy: the torch backend needs the lengths
    lengths = cu[1:] - cu[:-1]
    N, Tmax = len(lengths), int(lengths.max()) if len(lengths) else 0
    steps = torch.arange(Tmax)
    valid = steps[None, :] < lengths[:, None]  # [N, Tmax]
    index = (cu[:-1, None] + steps[None, :]).masked_fill(~valid, 0)
    device = tensors[0].device
    index, valid = index.to(device), valid.to(device)

    def pad(x):
        y = x[0][index]  # [N, Tmax, ...]
        mask = valid.reshape(N, Tmax, *([1] * (y.dim() - 2)))
        return torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=device))

    def unpack(o):
        return o[valid].unsqueeze(0)

    return tuple(pad(x) for x in tensors), unpack
