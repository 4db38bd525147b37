"""Which kernel the layers call: the public ops of ``rla_kernels``.

The exported modeling code replaces this one file by its own copy that imports the PyTorch backend
shipped beside it (see rla_convert/models/export.py); nothing else in the layer knows where the
kernel comes from.
"""
from __future__ import annotations

import rla_kernels


def kernel_op(variant: str, backend: str | None = None):
    """The ``rla`` / ``rdn`` op (signature of rla_kernels.rla), bound to ``backend`` when one is named.

    ``gdn`` is the baseline's plain gated delta rule (``gdn_op``: fla on CUDA, transformers' reference
    elsewhere), with the same signature.
    """
    if variant == "gdn":
        from .gdn_op import gated_delta_rule

        return lambda *args, **kwargs: gated_delta_rule(*args, backend=backend, **kwargs)
    op = getattr(rla_kernels, variant)
    if backend is None:
        return op
    return lambda *args, **kwargs: op(*args, backend=backend, **kwargs)


def prep_ops():
    """rla_kernels' one-launch inference kernels for the layer's elementwise work, or None where Triton is not
    installed: ``feature_map`` (q/k: RoPE, mask, SiLU, L2 norm, head repeat) and ``gates`` (g, beta, gamma).
    Forward only; the layer calls them on CUDA tensors when no gradient is wanted."""
    from rla_kernels.backend import triton_importable

    if not triton_importable():
        return None
    from types import SimpleNamespace

    from rla_kernels.feature_map import feature_map
    from rla_kernels.gates import gates

    return SimpleNamespace(feature_map=feature_map, gates=gates)
