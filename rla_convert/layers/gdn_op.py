"""The gated delta rule (Gated DeltaNet), the baseline the ``gdn`` variant runs: RDN without its residual.

    S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T,    o_t = scale * S_t q_t

Not one of our kernels: it exists to compare conversions against the plain recurrence on equal terms
(same layer, same recipe), so it calls established implementations with the signature of
``rla_kernels.rdn``. On CUDA, fla's chunk / fused-recurrent kernels (fla 0.6.0's Hopper guard, issue
#640, is lifted for this baseline, as the project allows for baselines: the lead checked that backward
against float64 at head dims 64 and 128 on the GPU machine, and tests/test_layers.py's gpu test checks
every gradient of the layer in bf16 against the reference); elsewhere transformers' PyTorch reference from Qwen3-Next (``backend='torch'`` forces the reference; any
other backend name means "fla where it can run"). The guard is lifted process-wide, for every fla op of
the process: use the baseline in a process of its own when other fla ops matter. States are 1-tuples
``(S,)``, S [N, H, K, V] float32 as in rla_kernels. ``gamma``, ``clip`` and ``residual`` are accepted and
ignored: there is no residual branch; so is ``validate`` (the layers' debug mode): neither implementation
has value checks; and so is ``recompute_states`` (the layers' training-time choice for rla_kernels' walk):
fla's backward decides for itself what it recomputes.
"""
from __future__ import annotations

import importlib
import inspect
import warnings

import torch
from rla_kernels.backend import is_decode, needs_grad

# per sequence, with a state and no autograd: fla's fused recurrent kernel (rla_kernels' rule, fla's
# threshold; ours is 16)
DECODE_MAX_TOKENS = 8
_guard_lifted = False


def gated_delta_rule(q, k, v, g, beta, gamma=None, scale=None, clip=None, residual=None, initial_state=None,
                     output_final_state=False, cu_seqlens=None, backend=None, validate=False, recompute_states=True):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S0 = None if initial_state is None else initial_state[0]
    use_fla = backend != "torch" and q.is_cuda and _fla_importable()
    run = _fla if use_fla else _torch_reference
    o, S = run(q, k, v, g, beta, scale, S0, output_final_state, cu_seqlens)
    return o, ((S.float(),) if output_final_state else None)


def _fla_importable() -> bool:
    try:
        _fla_ops()
    except ImportError:
        return False
    return True


def _fla_ops():
    # importlib, not an import statement: exports ship this file, and transformers' remote-code loader
    # would list a plain `import fla...` as a requirement of every exported model, gdn or not
    return importlib.import_module("fla.ops.gated_delta_rule")


def _fla(q, k, v, g, beta, scale, S0, output_final_state, cu_seqlens):
    ops = _fla_ops()
    chunk_gated_delta_rule, fused_recurrent_gated_delta_rule = ops.chunk_gated_delta_rule, ops.fused_recurrent_gated_delta_rule
    _lift_hopper_guard()
    n = q.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
    decode = is_decode(q.shape[0] * q.shape[1], n, S0 is not None, needs_grad((q, k, v, g, beta)),
                       DECODE_MAX_TOKENS)
    fn = fused_recurrent_gated_delta_rule if decode else chunk_gated_delta_rule
    return fn(q, k, v, g=g.float(), beta=beta, scale=scale, initial_state=S0, output_final_state=output_final_state,
              cu_seqlens=cu_seqlens)


def _lift_hopper_guard():
    """fla 0.6.0 refuses its chunk backward on Hopper with Triton < 3.7.1; the guard is read at call time."""
    global _guard_lifted
    if _guard_lifted:
        return
    try:
        chunk_o = importlib.import_module("fla.ops.common.chunk_o")
    except ImportError:
        return
    if getattr(chunk_o, "TRITON_ABOVE_3_7_1", True) is False:
        chunk_o.TRITON_ABOVE_3_7_1 = True
        warnings.warn("gdn baseline: fla's Hopper guard (issue #640) lifted for this process", stacklevel=3)
    _guard_lifted = True


def _torch_reference(q, k, v, g, beta, scale, S0, output_final_state, cu_seqlens):
    from transformers.models.qwen3_next import modeling_qwen3_next

    # transformers wraps the reference in fla's kernel whenever fla imports, whatever the device: unwrap
    torch_chunk_gated_delta_rule = inspect.unwrap(modeling_qwen3_next.torch_chunk_gated_delta_rule)
    q = q * (scale * q.shape[-1] ** 0.5)  # the reference scales queries by K^-0.5 itself
    n = q.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
    if cu_seqlens is None and is_decode(q.shape[0] * q.shape[1], n, S0 is not None, needs_grad((q, k, v, g, beta)),
                                        DECODE_MAX_TOKENS):
        # a decode step token by token: the chunked reference pads each step to a 64-token chunk (seconds a
        # token for a 30-layer model on a CPU)
        step = inspect.unwrap(modeling_qwen3_next.torch_recurrent_gated_delta_rule)
        o, S = step(q, k, v, g.float(), beta, initial_state=S0, output_final_state=output_final_state)
        return o.to(v.dtype), S
    if cu_seqlens is None:
        o, S = torch_chunk_gated_delta_rule(q, k, v, g.float(), beta, initial_state=S0,
                                            output_final_state=output_final_state)
        return o.to(v.dtype), S
    outs, states = [], []
    for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        o, S = torch_chunk_gated_delta_rule(
            q[:, start:end], k[:, start:end], v[:, start:end], g[:, start:end].float(), beta[:, start:end],
            initial_state=None if S0 is None else S0[n : n + 1], output_final_state=output_final_state)
        outs.append(o.to(v.dtype))
        states.append(S)
    return torch.cat(outs, 1), (torch.cat(states) if output_final_state else None)
