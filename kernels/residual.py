"""The residual function r = rho(v - S k) shared by every backend.

Appendix B of the paper: clipping to [-c, c] is the pseudo-residual of a Huber loss with threshold c;
c * tanh(x / c) is the log-cosh alternative (slope 1 at zero, saturating at +-c; c = 1 is the paper's
plain tanh). ``clip=None`` means no clipping: the residual is the raw prediction error.
"""
from __future__ import annotations

import torch

RESIDUAL_FUNCTIONS = ("clip", "tanh")


def apply_residual(x: torch.Tensor, clip: float | None, residual: str = "clip") -> torch.Tensor:
    if clip is None:
        return x
    if residual == "clip":
        return x.clamp(-clip, clip)
    if residual == "tanh":
        return clip * torch.tanh(x / clip)
    raise ValueError(f"residual must be one of {RESIDUAL_FUNCTIONS}, got {residual!r}")
