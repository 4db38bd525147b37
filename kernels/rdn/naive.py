"""Residual Delta Net, token by token: the oracle every other backend is checked against.

Per head, state stored [K, V] (transpose of the paper's S), a_t = exp(g_t):

    r_t = rho(v_t - S_{t-1}^T k_t)
    R_t = a_t (I - gamma_t k_t k_t^T) R_{t-1} + gamma_t k_t r_t^T
    o_t = scale * (a_t S_{t-1}^T q_t + gamma_t R_t^T q_t)
    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T

Both states follow the gated delta rule (S with values v and rate beta, R with values r_t and rate
gamma); the residual reads the undecayed S_{t-1}, the output its decayed copy.
"""
from __future__ import annotations

import torch

from ..rla.naive import _run


def naive_recurrent_rdn(
    q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip",
    initial_state=None, output_final_state=False, cu_seqlens=None, use_qk_l2norm_in_kernel=False,
):
    return _run(rdn_step, q, k, v, g, beta, gamma, scale, clip, residual,
                initial_state, output_final_state, cu_seqlens, use_qk_l2norm_in_kernel)


def _delta_update(M, k_t, x_t, a_t, rate_t):
    """M <- a (I - rate k k^T) M + rate k x^T, in the [K, V] layout."""
    M = a_t[..., None, None] * M
    err = x_t - torch.einsum("bhk,bhkv->bhv", k_t, M)
    return M + rate_t[..., None, None] * torch.einsum("bhk,bhv->bhkv", k_t, err)


def rdn_step(S, R, q_t, k_t, v_t, a_t, b_t, c_t, rho):
    r_t = rho(v_t - torch.einsum("bhk,bhkv->bhv", k_t, S))
    R = _delta_update(R, k_t, r_t, a_t, c_t)
    o_t = a_t[..., None] * torch.einsum("bhk,bhkv->bhv", q_t, S) + c_t[..., None] * torch.einsum("bhk,bhkv->bhv", q_t, R)
    S = _delta_update(S, k_t, v_t, a_t, b_t)
    return S, R, o_t
