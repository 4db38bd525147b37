"""Residual Delta Net, decode path: the shared fused-recurrent Triton kernel in its delta-rule mode.

Semantics are exactly ``naive.py`` (state [K, V], a_t = exp(g_t)):

    r_t = rho(v_t - S_{t-1}^T k_t)
    R_t = a_t (I - gamma_t k_t k_t^T) R_{t-1} + gamma_t k_t r_t^T
    o_t = scale * (a_t S_{t-1}^T q_t + gamma_t R_t^T q_t)
    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T

The kernel lives in ``rla/fused_recurrent.py``: RLA and RDN differ by two lines of the token loop.
"""
from __future__ import annotations

from ..rla.fused_recurrent import fused_recurrent_fwd


def fused_recurrent_rdn_fwd(q, k, v, g, beta, gamma, scale=None, clip=1.0, residual="clip",
                            S0=None, R0=None, cu_seqlens=None, *, inplace: bool = False):
    """RDN decode forward: ``(o, S_T, R_T)``; states fp32 [N, H, K, V], ``S0``/``R0`` None mean zeros.

    ``inplace=True`` writes the final states into ``S0``/``R0`` (contiguous fp32, required) and returns
    them, as a decode cache wants.
    """
    return fused_recurrent_fwd(q, k, v, g, beta, gamma, scale, clip, residual, S0, R0, cu_seqlens,
                               delta_rule=True, inplace=inplace)
