"""Gate initialisation: named strategies, applied right after a layer's weights are mapped.

A strategy only sets the gate parameters the source model did not provide (``reused`` names those it
did): a Gated DeltaNet source brings A_log, dt_bias, a_proj and b_proj, so only the new residual gate
(gamma_proj) is initialised; a softmax source brings none of them.

    mamba2          decay as Mamba-2 / GDN initialise it: A ~ U(1, 16), dt log-uniform in [1e-3, 1e-1]
                    (so a = exp(-A dt) sits around 0.9-0.999); beta and gamma projections ~ N(0, 0.02^2)
                    with zero bias, i.e. both gates start near 0.5.
    long-memory     like mamba2 but dt log-uniform in [1e-4, 1e-2]: a close to 1, a long memory, closer
                    to what a softmax layer sees; beta near 0.5; gamma as in small-residual.
    small-residual  the R branch (the residual-fitting state) starts small: gamma_proj weight 0, bias
                    -4 (gamma = sigmoid(-4) ~ 0.018), so right after conversion the layer is almost its
                    base linear attention (for a GDN source: almost the original layer, small drift);
                    missing decay/beta gates as in mamba2.
    auto            small-residual for Gated DeltaNet sources, mamba2 for softmax sources.

Every strategy also sets the output gain o_scale that softmax sources get (layers without an output
norm): the kernels scale the query side by head_dim^-0.5, as GDN does, but q and k are L2-normalised,
so for RDN (and the gdn baseline), whose delta rule makes S map a key to its value, S q is already in the values' units, as
the softmax output it replaces is. RDN's gain starts at head_dim^0.5 (overall scale 1). RLA's state is
a decayed sum of v k^T, larger by about 1 / (1 - a), so its gain starts at 1 and training sets it.
"""
from __future__ import annotations

import math

import torch

SMALL_RESIDUAL_BIAS = -4.0


def _decay(layer, reused, dt_min, dt_max, generator):
    H = layer.A_log.numel()
    if "A_log" not in reused:
        layer.A_log.copy_(torch.log(torch.empty(H).uniform_(1, 16, generator=generator)))
    if "dt_bias" not in reused:
        dt = torch.exp(torch.empty(H).uniform_(math.log(dt_min), math.log(dt_max), generator=generator))
        layer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus: softplus(dt_bias) = dt
    if "a_proj" not in reused:
        layer.a_proj.weight.copy_(torch.randn(layer.a_proj.weight.shape, generator=generator) * 0.02)


def _gate(proj, reused, name, generator, bias: float | None):
    if name in reused:
        return
    if bias is None:
        proj.weight.copy_(torch.randn(proj.weight.shape, generator=generator) * 0.02)
        if proj.bias is not None:
            proj.bias.zero_()
    else:
        proj.weight.zero_()
        proj.bias.fill_(bias)


def _residual_gate(layer, reused, generator, bias):
    if hasattr(layer, "gamma_proj"):  # the gdn baseline has no residual branch
        _gate(layer.gamma_proj, reused, "gamma_proj", generator, bias)


def mamba2(layer, reused, generator):
    _decay(layer, reused, 1e-3, 1e-1, generator)
    _gate(layer.b_proj, reused, "b_proj", generator, None)
    _residual_gate(layer, reused, generator, None)


def long_memory(layer, reused, generator):
    _decay(layer, reused, 1e-4, 1e-2, generator)
    _gate(layer.b_proj, reused, "b_proj", generator, None)
    _residual_gate(layer, reused, generator, SMALL_RESIDUAL_BIAS)


def small_residual(layer, reused, generator):
    _decay(layer, reused, 1e-3, 1e-1, generator)
    _gate(layer.b_proj, reused, "b_proj", generator, None)
    _residual_gate(layer, reused, generator, SMALL_RESIDUAL_BIAS)


STRATEGIES = {"mamba2": mamba2, "long-memory": long_memory, "small-residual": small_residual}


def resolve_strategy(name: str, source_kind: str) -> str:
    if name == "auto":
        return "small-residual" if source_kind == "gated-deltanet" else "mamba2"
    return name


@torch.no_grad()
def initialise_gates(layer, strategy: str, reused: set[str], seed: int) -> None:
    """Apply ``strategy`` (a key of STRATEGIES) to ``layer``; deterministic for a given seed and layer."""
    generator = torch.Generator().manual_seed(seed * 100003 + layer.layer_idx)
    dtype = layer.A_log.dtype
    STRATEGIES[strategy](layer, reused, generator)
    if hasattr(layer, "o_scale") and "o_scale" not in reused:
        layer.o_scale.fill_(1.0 if layer.variant == "rla" else layer.head_dim ** 0.5)
    assert layer.A_log.dtype == dtype
