"""Residual Delta Net, chunked in plain PyTorch: the backend for CPU and any device without Triton.

Semantics are exactly ``naive.py``. Both states follow the gated delta rule, written as
S_t = a_t S_{t-1} + k_t u_t^T with pseudo-values u_t = beta_t (v_t - a_t S_{t-1}^T k_t). Within a chunk
(G = inclusive cumsum of g, S0 the chunk-start state) the u_t solve a unit-lower-triangular system
(the WY / UT transform):

    (I + A) U = diag(beta) (V - diag(exp G) K S0),   A_ti = beta_t exp(G_t - G_i) k_t . k_i  (i < t)

and then S_t = exp(G_t) S0 + sum_{i<=t} exp(G_t - G_i) k_i u_i^T, so the residual query S_{t-1}^T k_t and
the exclusive output a_t S_{t-1}^T q_t are the RLA sums with u in place of beta * v. R is the same rule
with values r_t = rho(v_t - S_{t-1}^T k_t) and rate gamma_t, read inclusively by q_t. The triangular
inverses are computed for all chunks at once; the loop over chunks carries S and R.
"""
from __future__ import annotations

import torch

from ..rla.torch_chunk import run_chunked
from .naive import rdn_step


def chunk_rdn_torch(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip", initial_state=None,
                    output_final_state=False, cu_seqlens=None, chunk_size=64):
    """RDN forward by chunks, differentiable by autograd: returns ``(o, (S, R) or None)``."""
    return run_chunked(_rdn_chunks, rdn_step, q, k, v, g, beta, gamma, scale, clip, residual, initial_state,
                       output_final_state, cu_seqlens, chunk_size)


def _ut_inverse(c, rate):
    """(I + A)^{-1} for every chunk, A_ti = rate_t exp(G_t - G_i) k_t . k_i below the diagonal."""
    A = rate[..., :, None] * c.kk * c.decay_q_strict
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return torch.linalg.solve_triangular(A + eye, eye.expand_as(A), upper=False, unitriangular=True)


def _rdn_chunks(c, S, R, rho):
    """RDN over all chunks of ``c`` (a ChunkInputs), starting from states S, R; returns (o, S, R)."""
    exp_g = c.exp_g[..., None]
    # U = u_from_v - u_from_s0 @ S0 and W = inv_gamma @ (gamma r) - w_from_r0 @ R0, per chunk.
    inv_beta = _ut_inverse(c, c.beta)
    u_from_v = inv_beta @ (c.beta[..., None] * c.v)
    u_from_s0 = inv_beta @ (c.beta[..., None] * exp_g * c.k)
    inv_gamma = _ut_inverse(c, c.gamma)
    w_from_r0 = inv_gamma @ (c.gamma[..., None] * exp_g * c.k)
    sk_mix = c.kk * c.decay_k_strict
    sq_mix = c.qk * c.decay_q_strict
    rq_mix = c.qk * c.decay_q_incl
    k_to_end = (c.k * c.decay_to_end[..., None]).transpose(-1, -2)
    outs = []
    for (k_n, q_n, v_n, gamma_n, exp_gprev, exp_g_n, exp_gend, u_v, u_s0, inv_g, w_r0, sk_n, sq_n, rq_n,
         k_end_n) in c.per_chunk(c.k, c.q, c.v, c.gamma[..., None], c.exp_gprev[..., None], exp_g,
                                 c.exp_gend[..., None, None], u_from_v, u_from_s0, inv_gamma, w_from_r0,
                                 sk_mix, sq_mix, rq_mix, k_to_end):
        u = u_v - u_s0 @ S
        sk = exp_gprev * (k_n @ S) + sk_n @ u
        sq = exp_g_n * (q_n @ S) + sq_n @ u
        r = rho(v_n - sk)
        w = inv_g @ (gamma_n * r) - w_r0 @ R
        rq = exp_g_n * (q_n @ R) + rq_n @ w
        outs.append(sq + gamma_n * rq)
        S = exp_gend * S + k_end_n @ u
        R = exp_gend * R + k_end_n @ w
    return torch.stack(outs, dim=2), S, R
