"""Residual Linear Attention, token by token: the oracle every other backend is checked against.

Per head, with the state stored [K, V] (the transpose of the paper's S, as in fla and in the
paper's Appendix D loop), a_t = exp(g_t):

    r_t = rho(v_t - S_{t-1}^T k_t)                 rho = clip to [-c, c] (or c*tanh(./c), or identity)
    R_t = a_t R_{t-1} + gamma_t k_t r_t^T
    o_t = scale * (a_t S_{t-1}^T q_t + gamma_t R_t^T q_t)
    S_t = a_t S_{t-1} + beta_t k_t v_t^T

This is Appendix D's ``residual_linear_attention`` line for line, batched over B and H, with the
decay given in log space and an output scale. Runs in the dtype it is given (use float64 as oracle).
"""
from __future__ import annotations

import torch

from ..residual import apply_residual


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def naive_recurrent_rla(
    q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip",
    initial_state=None, output_final_state=False, cu_seqlens=None, use_qk_l2norm_in_kernel=False,
):
    return _run(rla_step, q, k, v, g, beta, gamma, scale, clip, residual,
                initial_state, output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)


def rla_step(S, R, q_t, k_t, v_t, a_t, b_t, c_t, rho):
    r_t = rho(v_t - torch.einsum("bhk,bhkv->bhv", k_t, S))
    R = a_t[..., None, None] * R + c_t[..., None, None] * torch.einsum("bhk,bhv->bhkv", k_t, r_t)
    o_t = (a_t[..., None] * torch.einsum("bhk,bhkv->bhv", q_t, S)
           + c_t[..., None] * torch.einsum("bhk,bhkv->bhv", q_t, R))
    S = a_t[..., None, None] * S + b_t[..., None, None] * torch.einsum("bhk,bhv->bhkv", k_t, v_t)
    return S, R, o_t


def _run(step, q, k, v, g, beta, gamma, scale, clip, residual, initial_state, output_final_state,
         cu_seqlens, use_qk_l2norm_in_kernel):
    """Shared driver for both naive recurrences: sequences, states and bookkeeping, no math."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K ** -0.5
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    rho = lambda x: apply_residual(x, clip, residual)  # noqa: E731
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
        N = B
    else:
        cu = [int(x) for x in cu_seqlens]
        bounds = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
        N = len(bounds)
    o = torch.empty_like(v)
    finals_S, finals_R = [], []
    for n, (b, start, end) in enumerate(bounds):
        if initial_state is not None:
            S, R = initial_state[0][n : n + 1].to(q.dtype), initial_state[1][n : n + 1].to(q.dtype)
        else:
            S = q.new_zeros(1, H, K, V)
            R = q.new_zeros(1, H, K, V)
        for t in range(start, end):
            sl = (slice(b, b + 1), t)
            S, R, o_t = step(S, R, q[sl], k[sl], v[sl], g[sl].exp(), beta[sl], gamma[sl], rho)
            o[b, t] = scale * o_t[0]
        finals_S.append(S)
        finals_R.append(R)
    final = (torch.cat(finals_S), torch.cat(finals_R)) if output_final_state else None
    return o, final
