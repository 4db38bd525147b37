"""The RDN Triton chunk kernels (kernels/rdn/chunk.py) against the float64 naive oracle, forward and backward.

On the CPU machine they run under TRITON_INTERPRET=1 (tests/conftest.py sets it) on tiny shapes: small
chunk sizes give several chunks at a few dozen tokens. The ``gpu`` test repeats the checks at real sizes.
"""
import sys

import pytest
import torch
import torch.nn.functional as F
import triton

from kerneltools import RDN_FORWARD_WALKS, make_inputs, record_arg_dtypes, record_launches
from rla_kernels.rdn.chunk import chunk_rdn_bwd, chunk_rdn_fwd
from rla_kernels.rdn.naive import naive_recurrent_rdn
from rla_kernels.rla.chunk_fwd import _state_walk_kernel
from rla_kernels.residual import apply_residual
from rla_kernels.triton_utils import HALF_DOTS_IN_FP32

RESIDUALS = {"clip": (1.0, "clip"), "tanh": (0.7, "tanh"), "none": (None, "clip")}


def oracle_forward(inputs, S0, R0, scale, clip, residual, cu_seqlens=None):
    d = [x.double() for x in inputs]
    state = None if S0 is None else (S0.double(), R0.double())
    o, (S, R) = naive_recurrent_rdn(*d, scale, clip, residual, state, True,
                                    None if cu_seqlens is None else cu_seqlens.long())
    return o, S, R


def rel_err(x, ref):
    assert torch.isfinite(x).all(), "non-finite values in the result"
    err = ((x.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err == err, "NaN error"
    return err


def check_forward(inputs, S0, R0, scale, clip, residual, cu_seqlens=None, tol=1e-4, **kw):
    o, S, R = chunk_rdn_fwd(*inputs, scale, clip, residual, S0, R0, cu_seqlens, **kw)
    assert o.dtype == inputs[2].dtype and S.dtype == R.dtype == torch.float32
    ref = oracle_forward(inputs, S0, R0, scale, clip, residual, cu_seqlens)
    errs = {name: rel_err(x, r) for name, x, r in zip(("o", "S_T", "R_T"), (o, S, R), ref)}
    assert max(errs.values()) < tol, errs
    return errs


def check_backward(inputs, S0, R0, scale, clip, residual, cu_seqlens=None, tol=1e-4, final_grads=True, **kw):
    """All eight gradients against float64 autograd through the oracle, for random output and (when
    ``final_grads``) final-state cotangents."""
    do = torch.randn_like(inputs[2])
    N, H, K, V = (S0.shape if S0 is not None else (inputs[0].shape[0] if cu_seqlens is None else len(cu_seqlens) - 1,
                                                  *inputs[0].shape[2:], inputs[2].shape[-1]))
    dS_T = torch.randn(N, H, K, V, device=do.device) if final_grads else None
    dR_T = torch.randn(N, H, K, V, device=do.device) if final_grads else None
    grads = chunk_rdn_bwd(*inputs, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T, **kw)

    leaves = [x.double().requires_grad_() for x in inputs]
    states = None if S0 is None else [S0.double().requires_grad_(), R0.double().requires_grad_()]
    o, (S, R) = naive_recurrent_rdn(*leaves, scale, clip, residual, states, True,
                                    None if cu_seqlens is None else cu_seqlens.long())
    outs, cots = [o], [do.double()]
    if final_grads:
        outs += [S, R]
        cots += [dS_T.double(), dR_T.double()]
    refs = torch.autograd.grad(outs, leaves + (states or []), cots)
    names = ["dq", "dk", "dv", "dg", "dbeta", "dgamma"] + (["dS0", "dR0"] if states else [])
    if states is None:
        assert grads[6] is None and grads[7] is None
    for name, got, x in zip(names, grads, inputs + ([S0, R0] if states else [])):
        assert got.dtype == x.dtype and got.shape == x.shape, name
    errs = {name: rel_err(got, ref) for name, got, ref in zip(names, grads, refs)}
    assert max(errs.values()) < tol, errs
    return errs


def clipped_share(inputs, S0, clip, residual):
    """Share of first-token residual elements that the residual function changes."""
    q, k, v = inputs[:3]
    raw = v[:, 0].double() - torch.einsum("bhk,bhkv->bhv", k[:, 0].double(), S0.double())
    return (apply_residual(raw, clip, residual) - raw).abs().gt(1e-3).double().mean().item()


@pytest.mark.parametrize("res", RESIDUALS)
def test_forward_several_chunks_with_states(res):
    clip, residual = RESIDUALS[res]
    inputs, S0, R0 = make_inputs(B=2, T=40, H=1, K=16, V=16)
    if clip is not None:
        assert clipped_share(inputs, S0, clip, residual) > 0.3
    check_forward(inputs, S0, R0, 0.7, clip, residual, chunk_size=16)


def test_forward_single_token_default_chunk():
    inputs, S0, R0 = make_inputs(B=2, T=1, H=1, K=16, V=16)
    check_forward(inputs, S0, R0, None, 1.0, "clip")


def test_forward_partial_tail_odd_head_dims_zero_states():
    """T = 70 with chunks of 64 (a 6-token tail); K = 20, V = 40 use masked lanes; no initial state."""
    inputs, _, _ = make_inputs(B=1, T=70, H=1, K=20, V=40)
    check_forward(inputs, None, None, None, 1.0, "tanh")


@pytest.mark.parametrize("chunk_size", [32, 64])
def test_real_chunk_sizes_several_chunks_and_a_tail(chunk_size):
    """The chunk sizes the GPU runs (64 forward, 32 backward): 16-row blocks of the UT inverses merged
    across 2 or 4 blocks (the forward at 64; the backward always chunks at 32), three chunks, the last one
    cut inside its second block."""
    inputs, S0, R0 = make_inputs(B=1, T=2 * chunk_size + 22, H=2, K=16, V=16)
    check_forward(inputs, S0, R0, None, 1.0, "clip", chunk_size=chunk_size)
    check_backward(inputs, S0, R0, None, 1.0, "clip", chunk_size=chunk_size)


def test_forward_varlen():
    cu = torch.tensor([0, 5, 6, 29, 40], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=16, V=16, N=4)
    check_forward(inputs, S0, R0, None, 1.0, "clip", cu, chunk_size=16)


def test_forward_gamma_zero_final_state_is_fla_gated_delta_rule():
    """With gamma = 0, S is a plain gated delta rule: fla's naive recurrence must give the same state."""
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    inputs, S0, R0 = make_inputs(B=1, T=37, H=2, K=16, V=16)
    q, k, v, g, beta, gamma = inputs
    gamma = torch.zeros_like(gamma)
    _, S, R = chunk_rdn_fwd(q, k, v, g, beta, gamma, None, 1.0, "clip", S0, R0, None, chunk_size=16)
    _, S_fla = naive_recurrent_gated_delta_rule(q.double(), k.double(), v.double(), beta.double(), g.double(),
                                                initial_state=S0.double(), output_final_state=True)
    assert rel_err(S, S_fla) < 1e-4
    decay = g.double().sum(1).exp()[0, :, None, None]  # R only decays when gamma = 0
    assert rel_err(R, decay * R0.double()) < 1e-4


def test_forward_strong_decay_stays_finite():
    inputs, S0, R0 = make_inputs(B=1, T=33, H=1, K=16, V=16)
    inputs[3] = -30.0 * torch.rand_like(inputs[3])  # exp(G) underflows inside a chunk
    check_forward(inputs, S0, R0, None, 1.0, "clip", chunk_size=16)


def test_forward_bf16_inputs():
    inputs, S0, R0 = make_inputs(B=1, T=20, H=2, K=16, V=16, dtype=torch.bfloat16)
    check_forward(inputs, S0, R0, None, 1.0, "clip", tol=1e-2, chunk_size=16)


def test_bad_arguments_raise_value_errors():
    inputs, S0, R0 = make_inputs(B=1, T=4, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="residual"):
        chunk_rdn_fwd(*inputs, None, 1.0, "huber", S0, R0, None)
    with pytest.raises(ValueError, match="clip"):
        chunk_rdn_fwd(*inputs, None, -1.0, "clip", S0, R0, None)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=48)
    with pytest.raises(ValueError, match="dtype"):
        chunk_rdn_fwd(inputs[0].double(), *inputs[1:], None, 1.0, "clip", S0, R0, None)
    with pytest.raises(ValueError, match="head dims"):
        big, _, _ = make_inputs(B=1, T=2, H=1, K=512, V=16)
        chunk_rdn_fwd(*big, None, 1.0, "clip", None, None, None)


@pytest.mark.parametrize("res", RESIDUALS)
def test_backward_several_chunks_with_states(res):
    clip, residual = RESIDUALS[res]
    inputs, S0, R0 = make_inputs(B=2, T=40, H=1, K=16, V=16)
    if clip is not None:
        assert clipped_share(inputs, S0, clip, residual) > 0.3  # the zero-gradient region is exercised
    check_backward(inputs, S0, R0, 0.7, clip, residual, chunk_size=16)


def test_backward_single_token():
    inputs, S0, R0 = make_inputs(B=2, T=1, H=1, K=16, V=16)
    check_backward(inputs, S0, R0, None, 1.0, "clip")


def test_backward_partial_tail_no_states_output_only():
    """T = 70 in chunks of 32, odd head dims, no initial state and unused final states."""
    inputs, _, _ = make_inputs(B=1, T=70, H=1, K=20, V=40)
    check_backward(inputs, None, None, None, 1.0, "tanh", final_grads=False)


def test_backward_varlen():
    cu = torch.tensor([0, 5, 6, 29, 40], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=16, V=16, N=4)
    check_backward(inputs, S0, R0, None, 1.0, "clip", cu, chunk_size=16)


def test_backward_varlen_with_several_partial_v_blocks():
    """Packed sequences with V = 72 (three V-blocks of 32 in the gradient kernels, the last partial) and
    K = 40 (a partial K-block): per-V-block work and row sums must land on each sequence's own chunks."""
    cu = torch.tensor([0, 31, 32, 70], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=70, H=2, K=40, V=72, N=3)
    check_backward(inputs, S0, R0, None, 1.0, "clip", cu)


def test_backward_strong_decay_stays_finite():
    inputs, S0, R0 = make_inputs(B=1, T=33, H=1, K=16, V=16)
    inputs[3] = -30.0 * torch.rand_like(inputs[3])
    check_backward(inputs, S0, R0, None, 1.0, "clip", chunk_size=16)


def test_backward_bf16_inputs():
    inputs, S0, R0 = make_inputs(B=1, T=20, H=2, K=16, V=16, dtype=torch.bfloat16)
    check_backward(inputs, S0, R0, None, 1.0, "clip", tol=1e-2, chunk_size=16)


def test_backward_splits_k_into_blocks_for_dq_dk():
    """K=96: the gradient kernel takes two 64-row K-blocks, the second partial, whose shares of dg the dg pass
    sums (the chunk-end number on the last row of a partial tail chunk); V=40: two V-blocks, the second partial."""
    inputs, S0, R0 = make_inputs(B=1, T=37, H=2, K=96, V=40)
    check_backward(inputs, S0, R0, None, 1.0, "clip", chunk_size=16)


def test_backward_varlen_two_k_blocks_partial_chunks():
    """Packed sequences ending mid-chunk with two K-blocks: each K-block's dg rows, and block 0's K-free rows,
    must land on their own sequence's rows before the per-chunk reverse cumsum."""
    cu = torch.tensor([0, 7, 8, 30, 45], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=45, H=2, K=96, V=24, N=4)
    check_backward(inputs, S0, R0, 0.6, 0.8, "tanh", cu, chunk_size=16)


@pytest.mark.parametrize("bk", [32, 128])
def test_backward_gradient_kernel_k_block_width(monkeypatch, bk):
    """chunk.GRAD_BK: one K-block (128 >= K = 80) or three (32), the last partial at 32 wide, with a tail chunk."""
    chunk = sys.modules[chunk_rdn_bwd.__module__]
    monkeypatch.setattr(chunk, "GRAD_BK", bk)
    inputs, S0, R0 = make_inputs(B=1, T=37, H=2, K=80, V=40)
    check_backward(inputs, S0, R0, None, 1.0, "clip", chunk_size=16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backward_half_inputs_two_k_blocks_partial_v_blocks(dtype):
    """Half inputs through the gradient kernel's two K-blocks (K = 96) and a partial V-block (V = 40): the state dots
    take the token tiles raw, as the walks store them (chunk.py _Layout.tokens), with the row gates after the dots
    (the interpreter casts half tiles to fp32, so this checks the code paths and the bookkeeping, not the GPU's
    rounding).

    bf16's bound here is 1.5e-2, not the 1e-2 the GPU check holds (scripts/gpu_check_rdn.py: bf16 <= 4.3e-3 at T = 300
    and 517, K = 64 and 128, H200, 2026-12-01): at this shape (40 tokens, 16-token chunks, V = 40) the interpreter
    measured dg 0.79-1.21e-2 over 4 seeds (0.84-1.12e-2 at H = 4; dq 0.61e-2, dk 0.91e-2, dv 0.85e-2) once the walks
    hand U, W, dyr, dX, dyv on in bf16, against dg 0.70-0.92e-2 (2 seeds) with them in fp32. fp16 keeps 1e-2."""
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=96, V=40, dtype=dtype)
    check_backward(inputs, S0, R0, None, 1.0, "clip", tol=1.5e-2 if dtype == torch.bfloat16 else 1e-2, chunk_size=16)


@pytest.mark.parametrize("knobs", [dict(WALK_BV=16, REVERSE_WALK_BV=16, OUT_BV=16, PREP_BK=32, MATS_BV=16,
                                        GRAD_BV=32, X_TF32X3=0),
                                   dict(WALK_BV=64, REVERSE_WALK_BV=64, OUT_BV=32, X_TF32X3=2)],
                         ids=["narrow", "wide"])
def test_block_width_knobs(monkeypatch, knobs):
    """The launch knobs profile_kernels.py --knob compares (chunk.WALK_BV, REVERSE_WALK_BV, MATS_BV, GRAD_BV, OUT_BV,
    PREP_BK, X_TF32X3) give the oracle's outputs and gradients at values other than the defaults, with V = 40 and
    K = 48 leaving partial blocks (the operator kernel's second 32-wide K-block half empty)."""
    chunk = sys.modules[chunk_rdn_bwd.__module__]
    for name, value in knobs.items():
        monkeypatch.setattr(chunk, name, value)
    inputs, S0, R0 = make_inputs(B=1, T=45, H=2, K=48, V=40)
    check_forward(inputs, S0, R0, None, 1.0, "clip")
    check_backward(inputs, S0, R0, None, 1.0, "clip")


@pytest.mark.parametrize("name, value", [("WALK_BV", 24), ("GRAD_BK", 8), ("OUT_BV", 0), ("PREP_BK", 48),
                                         ("PREP_BK", 0), ("MATS_BV", 24)])
def test_block_width_knobs_are_validated(monkeypatch, name, value):
    """A width knob is a power of two >= 16, or 0 where the launcher has an automatic width (OUT_BV and PREP_BK have
    none): else a ValueError naming it (triton_utils.knob_width, shared with RLA's knobs)."""
    chunk = sys.modules[chunk_rdn_bwd.__module__]
    monkeypatch.setattr(chunk, name, value)
    inputs, S0, R0 = make_inputs(B=1, T=16, H=1, K=16, V=16)
    do = torch.randn_like(inputs[2])
    with pytest.raises(ValueError, match=f"launch knob {name} "):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=16)
        chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, None, None, chunk_size=16)


def test_narrow_walk_v_blocks_at_low_parallelism(monkeypatch):
    """On a GPU with more SMs than walk programs the walks take 16-wide V-blocks while the chunk-parallel
    kernels keep 32: forward and backward must not depend on that split (V = 40: the last block of each partial)."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    monkeypatch.setattr(chunk, "sm_count", lambda device: 1 << 20)
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=16, V=40)
    layout = chunk._Layout(*inputs, 1.0, "clip", S0, R0, None, 16)
    assert (layout.walk_BV, layout.BV) == (16, 32)
    check_forward(inputs, S0, R0, None, 1.0, "clip", chunk_size=16)
    check_backward(inputs, S0, R0, None, 1.0, "clip", chunk_size=16)


def test_wide_reverse_walks_where_their_programs_outnumber_the_sms(monkeypatch):
    """The reverse walks take 64-wide V-blocks where (sequence, head, 64-wide block) programs still outnumber the SMs,
    the forward walk and the chunk-parallel kernels keep theirs: the backward must not depend on the split (V = 80:
    the second 64-wide block partial)."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=16, V=80)
    for sms, widths in ((3, (64, 32)), (4, (32, 32)), (1 << 20, (16, 16))):
        monkeypatch.setattr(chunk, "sm_count", lambda device, sms=sms: sms)
        layout = chunk._Layout(*inputs, 1.0, "clip", S0, R0, None, 16)
        assert (layout.reverse_walk_BV, layout.walk_BV) == widths, sms
    monkeypatch.setattr(chunk, "sm_count", lambda device: 1)
    check_backward(inputs, S0, R0, None, 1.0, "clip", chunk_size=16)


def test_more_sequences_times_heads_than_a_grid_axis_is_refused_before_any_launch():
    """32769 one-token sequences x 2 heads: the walks' grid axis would pass CUDA's 65535."""
    N = 32769
    inputs, _, _ = make_inputs(B=1, T=N, H=2, K=16, V=16)
    cu = torch.arange(N + 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="sequences x heads must be at most 65535"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", None, None, cu)
    with pytest.raises(ValueError, match="chunk_size must be 16, 32 or 64"):
        chunk_rdn_bwd(*inputs, None, 1.0, "clip", None, None, None, torch.randn_like(inputs[2]), None, None,
                      chunk_size=48)


@pytest.mark.parametrize("res", RESIDUALS)
@pytest.mark.parametrize("segments", [2, 3])
def test_segmented_forward_matches_the_oracle(res, segments):
    """Each sequence cut into segments walked from zero states with their transitions, then chained
    (segmented.py): the same outputs and final states, initial states included."""
    clip, residual = RESIDUALS[res]
    inputs, S0, R0 = make_inputs(B=2, T=150, H=2, K=16, V=32)
    check_forward(inputs, S0, R0, None, clip, residual, chunk_size=16, segments=segments)


def test_segmented_forward_odd_head_dims_no_states_bf16():
    inputs, _, _ = make_inputs(B=1, T=70, H=1, K=20, V=40)
    check_forward(inputs, None, None, None, 1.0, "tanh", segments=2)
    inputs, S0, R0 = make_inputs(B=1, T=100, H=2, K=16, V=16, dtype=torch.bfloat16)
    check_forward(inputs, S0, R0, None, 1.0, "clip", tol=1e-2, chunk_size=16, segments=4)


def test_segments_are_chosen_only_when_the_fused_walk_starves_the_gpu():
    from rla_kernels.rdn.segmented import auto_segments, usable_segments

    assert auto_segments(B=16, T=2048, H=16, K=128, V=128, sm_count=132) == 1
    assert auto_segments(B=1, T=32768, H=16, K=128, V=128, sm_count=132) == 1  # 128 programs
    prefill = auto_segments(B=1, T=32768, H=9, K=64, V=64, sm_count=132)
    assert prefill == 8  # the fastest count measured there (segmented.auto_segments)
    assert auto_segments(B=1, T=256, H=9, K=64, V=64, sm_count=132) == 1  # too short to cut
    # a cut costs host time: only sequences of 32k tokens or more are cut, into segments of 4k tokens or more
    assert auto_segments(B=1, T=16384, H=9, K=64, V=64, sm_count=132) == 1
    assert auto_segments(B=1, T=65536, H=9, K=64, V=64, sm_count=132) == 8
    assert auto_segments(B=1, T=32768, H=2, K=64, V=64, sm_count=132) == 8  # 4k-token segments
    assert auto_segments(B=1, T=32768, H=9, K=64, V=64, sm_count=0) == 1  # no GPU
    inputs, S0, R0 = make_inputs(B=1, T=20, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="segments must be a positive int"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", None, None, torch.tensor([0, 20], dtype=torch.int32), segments=2)
    cu = torch.tensor([0, 20], dtype=torch.int32)
    assert torch.equal(chunk_rdn_fwd(*inputs, None, 1.0, "clip", None, None, cu, segments=1)[0],
                       chunk_rdn_fwd(*inputs, None, 1.0, "clip", None, None, cu)[0])  # 1 is "do not cut"
    with pytest.raises(ValueError, match="segments must be a positive int"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, segments=0)
    assert usable_segments(8, B=1, T=100, H=2, chunk_size=64) == 2  # one segment per chunk at most
    assert usable_segments(8, B=4096, T=8192, H=16, chunk_size=64) == 1  # B * P * H within a grid axis
    empty, _, _ = make_inputs(B=1, T=0, H=1, K=16, V=16)
    o, S, R = chunk_rdn_fwd(*empty, None, 1.0, "clip", S0, R0, segments=2)
    assert o.shape == empty[2].shape and torch.equal(S, S0) and torch.equal(R, R0)


def test_forward_segments_knob_forces_a_cut_where_none_is_asked(monkeypatch):
    """chunk.FORWARD_SEGMENTS N: a forward called with segments=None is cut into N segments (the segmented forward's
    results, exactly), except where a walk is kept (the uncut walk: the backward reads its X); 0 is the automatic rule
    (here: no cut); a negative value is a ValueError."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=100, H=2, K=16, V=16)
    cut = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, chunk_size=16, segments=3)
    uncut = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, chunk_size=16, segments=1)
    kept_uncut = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, chunk_size=16, keep_tokens=True)
    monkeypatch.setattr(chunk, "FORWARD_SEGMENTS", 3)
    for a, b in zip(chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, chunk_size=16), cut):
        assert torch.equal(a, b)
    kept = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, chunk_size=16, keep_tokens=True)
    for a, b in zip(kept[:3] + tuple(kept[3]), kept_uncut[:3] + tuple(kept_uncut[3])):
        assert torch.equal(a, b)
    monkeypatch.setattr(chunk, "FORWARD_SEGMENTS", 0)
    for a, b in zip(chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, chunk_size=16), uncut):
        assert torch.equal(a, b)
    monkeypatch.setattr(chunk, "FORWARD_SEGMENTS", -1)
    with pytest.raises(ValueError, match="launch knob FORWARD_SEGMENTS must be an int >= 0"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, chunk_size=16)


def test_through_public_api_with_autograd():
    """rdn(..., backend='triton') goes through the torch.library op whose backward calls chunk_rdn_bwd."""
    from rla_kernels.api import rdn

    inputs, S0, R0 = make_inputs(B=1, T=20, H=1, K=16, V=16)
    leaves = [x.clone().requires_grad_() for x in inputs + [S0, R0]]
    o, (S, R) = rdn(*leaves[:6], initial_state=(leaves[6], leaves[7]), output_final_state=True, backend="triton")
    (o.square().sum() + S.sum() + R.sum()).backward()
    ref_leaves = [x.double().requires_grad_() for x in inputs + [S0, R0]]
    o_ref, (S_ref, R_ref) = naive_recurrent_rdn(*ref_leaves[:6], None, 1.0, "clip", (ref_leaves[6], ref_leaves[7]),
                                                True)
    (o_ref.square().sum() + S_ref.sum() + R_ref.sum()).backward()
    assert rel_err(o, o_ref) < 1e-4
    for x, ref in zip(leaves, ref_leaves):
        assert rel_err(x.grad, ref.grad) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("K", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_real_shapes(K, dtype):
    """CUDA: real head dims, several chunks of 64 with a tail, varlen; fwd and bwd against float64."""
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    for res in RESIDUALS:
        clip, residual = RESIDUALS[res]
        inputs, S0, R0 = make_inputs(B=2, T=300, H=4, K=K, V=K, dtype=dtype, device="cuda")
        check_forward(inputs, S0, R0, None, clip, residual, tol=tol)
        check_backward(inputs, S0, R0, None, clip, residual, tol=tol)
    cu = torch.tensor([0, 1, 130, 200, 517], dtype=torch.int32, device="cuda")
    inputs, S0, R0 = make_inputs(B=1, T=517, H=4, K=K, V=K, N=4, dtype=dtype, device="cuda")
    check_forward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol)
    check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol)


class _NoLaunch:
    """Stands for a kernel that must not run: launching it fails the test."""

    def __getitem__(self, grid):
        raise AssertionError("the backward recomputed the chunk matrices the forward saved")


@pytest.mark.parametrize("case", ["tail", "varlen", "segmented", "no_states_bf16"])
def test_backward_takes_the_forward_chunk_matrices(case, monkeypatch):
    """chunk_rdn_fwd(save_wy=True) hands T_beta, T_gamma, Mk to chunk_rdn_bwd(wy=), which then computes only Mqi
    (no _rdn_wy_kernel): same gradients as recomputing, and the oracle's; on packed sequences, on a forward cut
    into segments, on T not a multiple of the chunk, without initial states."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    cu, kw, tol = None, {}, 1e-4
    if case == "tail":
        inputs, S0, R0 = make_inputs(B=2, T=45, H=2, K=16, V=24)
    elif case == "varlen":
        cu = torch.tensor([0, 5, 6, 29, 40], dtype=torch.int32)
        inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=16, V=16, N=4)
    elif case == "segmented":
        inputs, S0, R0 = make_inputs(B=1, T=70, H=2, K=16, V=16)
        kw = dict(segments=2)
    else:
        inputs, _, _ = make_inputs(B=1, T=37, H=2, K=16, V=16, dtype=torch.bfloat16)
        S0 = R0 = None
        tol = 1e-2
    o, S, R, wy = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, chunk_size=16, save_wy=True, **kw)
    assert wy.shape == (3, *inputs[0].shape[:3], 16) and wy.dtype == torch.float32
    o_ref, S_ref, R_ref = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, chunk_size=16, **kw)
    assert torch.equal(o, o_ref) and torch.equal(S, S_ref) and torch.equal(R, R_ref)
    torch.manual_seed(0)
    recomputed = check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol, chunk_size=16)
    monkeypatch.setattr(chunk, "_rdn_wy_kernel", _NoLaunch())
    torch.manual_seed(0)
    reused = check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol, chunk_size=16, wy=wy)
    assert reused == pytest.approx(recomputed, rel=1e-3, abs=1e-7)


def test_backward_recomputes_chunk_matrices_of_another_chunk_size(monkeypatch):
    """Matrices saved at 64-token chunks do not fit a 32-token backward: it recomputes them, by one launch of the
    WY kernel (T_beta, T_gamma, Mk), then one of each walk-operator kernel, as the default path makes those."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=40, H=1, K=16, V=16)
    *_, wy = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=64, save_wy=True)
    assert wy.shape[-1] == 64
    kernels = ("_rdn_wy_kernel", "_rdn_bwd_prep_k_kernel", "_rdn_bwd_prep_p_kernel")
    launches = record_launches(monkeypatch, chunk, kernels)
    check_backward(inputs, S0, R0, None, 1.0, "clip", wy=wy)
    assert launches == list(kernels)


def test_both_passes_at_64_token_chunks(monkeypatch):
    """With chunk.BWD_CHUNK_SIZE lifted to 64 (what docs/bench/rdn-bt64-probe-2026-12-02.py timed), a forward at
    64-token chunks that keeps its tokens and chunk matrices hands them to a backward at 64, which takes them as they
    are (no WY or operator recompute: the operators are made per chunk from them): outputs and every gradient against
    the float64 oracle, packed sequences with a part-filled last chunk, non-zero initial states."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    monkeypatch.setattr(chunk, "BWD_CHUNK_SIZE", 64)
    cu = torch.tensor([0, 37, 150, 171], dtype=torch.int32)  # 1, 2 and 1 chunks of 64 tokens
    inputs, S0, R0 = make_inputs(B=1, T=171, H=2, K=32, V=32, N=3)
    check_forward(inputs, S0, R0, None, 1.0, "clip", cu, tol=1e-5, chunk_size=64)
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_tokens=True,
                                   chunk_size=64)
    assert wy.shape[-1] == 64
    launches = record_launches(monkeypatch, chunk, ("_rdn_wy_kernel", *RDN_FORWARD_WALKS, "_rdn_bwd_rebuild_kernel"))
    check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=1e-5, chunk_size=64, wy=wy, walk=tokens)
    assert launches == ["_rdn_bwd_rebuild_kernel"]  # the chunk matrices and U, W, X reused: no WY, no walk rerun


@pytest.mark.parametrize("trailed", [1, 2])
def test_backward_at_64_takes_the_tokens_of_a_32_token_forward(monkeypatch, trailed):
    """U, W and X are per-token: a backward at 64-token chunks (chunk.BWD_CHUNK_SIZE 64) takes a 32-token forward's
    kept tokens with its chunk matrices widened to 64 (one widening launch, the states rebuilt from the tokens, no
    walk rerun), and every gradient matches the float64 oracle; packed sequences
    with part-filled chunks, non-zero initial states; the reverse walks as two launches and as one (TRAILED_WALKS)."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    monkeypatch.setattr(chunk, "BWD_CHUNK_SIZE", 64)
    monkeypatch.setattr(chunk, "TRAILED_WALKS", trailed)
    cu = torch.tensor([0, 37, 150, 171], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=171, H=2, K=32, V=32, N=3)
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_tokens=True)
    assert wy.shape[-1] == 32
    kernels = ("_rdn_wy_kernel", "_rdn_wy_widen_kernel", *RDN_FORWARD_WALKS, "_rdn_bwd_rebuild_kernel")
    launches = record_launches(monkeypatch, chunk, kernels)
    check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=1e-5, chunk_size=64, wy=wy, walk=tokens)
    assert launches == ["_rdn_wy_widen_kernel", "_rdn_bwd_rebuild_kernel"]  # 64-token matrices widened, not remade


def test_backward_chunk_is_64_only_for_kept_tokens_whose_walks_fit(monkeypatch):
    """BWD_CHUNK_SIZE 0 (automatic; not the default): 64 only where the backward rebuilds its states from the
    forward's kept tokens and its 32-token reverse walks would all fit on the GPU at once; the forward's chunking for a
    rerun or a kept walk, off a GPU, below 32, or where the knob names a size; a knob value outside 0/16/32/64 is
    named before any launch."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    monkeypatch.setattr(chunk, "BWD_CHUNK_SIZE", 0)
    inputs, S0, R0 = make_inputs(B=1, T=100, H=2, K=32, V=32)
    L = chunk._Layout(*inputs, 1.0, "clip", S0, R0, None, 32)
    _, (blocks, programs) = chunk._reverse_walk_grid(L)
    fit = blocks * programs
    assert chunk.backward_chunk(L, 32, True, fit) == 64
    assert chunk.backward_chunk(L, 32, True, fit - 1) == 32  # more walk programs than SMs: two launches, 32 wins
    assert chunk.backward_chunk(L, 32, False, fit) == 32  # a rerun or a kept walk: the forward's chunking
    assert chunk.backward_chunk(L, 32, True, 0) == 32  # off a GPU
    L16 = chunk._Layout(*inputs, 1.0, "clip", S0, R0, None, 16)
    assert chunk.backward_chunk(L16, 16, True, fit) == 16
    monkeypatch.setattr(chunk, "BWD_CHUNK_SIZE", 32)
    assert chunk.backward_chunk(L, 32, True, fit) == 32
    monkeypatch.setattr(chunk, "BWD_CHUNK_SIZE", 48)
    do = torch.randn_like(inputs[2])
    with pytest.raises(ValueError, match="BWD_CHUNK_SIZE must be 16, 32, 64 or 0"):
        chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, None, None)


def test_automatic_backward_at_64_matches_the_oracle(monkeypatch):
    """Where the automatic choice (BWD_CHUNK_SIZE 0) takes 64 (a GPU of many SMs, stood in for here: the walks then
    run as one launch) the backward of a 32-token forward's kept tokens widens its chunk matrices (no WY launch, no
    walk rerun) and every gradient matches the float64 oracle; a part-filled last chunk, non-zero initial states."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=107, H=2, K=32, V=32)
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, save_wy=True, keep_tokens=True)
    monkeypatch.setattr(chunk, "BWD_CHUNK_SIZE", 0)
    monkeypatch.setattr(chunk, "sm_count", lambda device: 1000)
    kernels = ("_rdn_wy_kernel", "_rdn_wy_widen_kernel", *RDN_FORWARD_WALKS, "_rdn_bwd_rebuild_kernel",
               "_rdn_bwd_walks_kernel")
    launches = record_launches(monkeypatch, chunk, kernels)
    check_backward(inputs, S0, R0, None, 1.0, "clip", tol=1e-5, wy=wy, walk=tokens)
    assert launches == ["_rdn_wy_widen_kernel", "_rdn_bwd_walks_kernel", "_rdn_bwd_rebuild_kernel"]


def test_api_backward_reuses_the_forward_chunk_matrices(monkeypatch):
    """Through the public op (kernels/library.py saves chunk_fwd's fourth output): the WY kernel runs once, in
    the forward, and the gradients match the oracle."""
    from rla_kernels import rdn

    chunk = sys.modules[chunk_rdn_fwd.__module__]
    launches = []

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return wy_kernel[grid]

    wy_kernel = chunk._rdn_wy_kernel
    monkeypatch.setattr(chunk, "_rdn_wy_kernel", Counting())
    inputs, S0, R0 = make_inputs(B=1, T=45, H=2, K=16, V=16)
    leaves = [x.clone().requires_grad_() for x in inputs]
    o, _ = rdn(*leaves, initial_state=(S0, R0), backend="triton")
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, leaves, do)
    assert len(launches) == 1
    ref_leaves = [x.double().requires_grad_() for x in inputs]
    o_ref, _ = naive_recurrent_rdn(*ref_leaves, None, 1.0, "clip", (S0.double(), R0.double()), False)
    refs = torch.autograd.grad(o_ref, ref_leaves, do.double())
    assert rel_err(o, o_ref) < 1e-4
    for got, ref in zip(grads, refs):
        assert rel_err(got, ref) < 1e-4


class _NoWalk:
    """Stands for the forward walk kernel where the backward must not rerun it."""

    def __getitem__(self, grid):
        raise AssertionError("the backward reran the forward walk it was handed")


KEPT_CASES = ["tail", "varlen", "no_states_bf16", "fp16", "clip_saturating"]


def kept_case(case: str):
    """(inputs, S0, R0, cu_seqlens, tolerance) of a kept-walk test case at the real 32-token chunks: T not a multiple
    of 32; packed sequences (6 chunks, the kept buffers' shape-only row bound ceil(77 / 32) + 3 = 6); no initial states
    in bf16; fp16 (its U, W kept in fp16); values large enough that the clip saturates most elements."""
    cu, tol = None, 1e-4
    if case == "tail":
        inputs, S0, R0 = make_inputs(B=2, T=45, H=2, K=16, V=24)
    elif case == "varlen":
        cu = torch.tensor([0, 5, 6, 40, 77], dtype=torch.int32)
        inputs, S0, R0 = make_inputs(B=1, T=77, H=2, K=16, V=16, N=4)
    elif case == "no_states_bf16":
        inputs, _, _ = make_inputs(B=1, T=37, H=2, K=16, V=16, dtype=torch.bfloat16)
        S0 = R0 = None
        tol = 1e-2
    elif case == "fp16":
        inputs, S0, R0 = make_inputs(B=1, T=37, H=2, K=16, V=16, dtype=torch.float16)
        tol = 1e-2
    else:
        inputs, S0, R0 = make_inputs(B=1, T=70, H=2, K=16, V=16, value_scale=30.0)
        assert clipped_share(inputs, S0, 1.0, "clip") > 0.8
    return inputs, S0, R0, cu, tol


@pytest.mark.parametrize("dtype, clip, spread", [(torch.bfloat16, 0.7, 3e-3), (torch.float16, 1.0, 1.5e-3)])
def test_stored_x_keeps_its_side_of_the_clip(dtype, clip, spread):
    """The walk stores X in the input dtype for the backward, whose clip mask is |X| <= c: an X within a rounding of c
    must land on its own side (chunk_fwd.py, NUDGE_X). One-token sequences whose X = v - k.S0 is set by S0 (fp32) to
    values around +-c (within ``spread``, a few of the dtype's steps there; 5e-5 or more away from it), of which a
    plain rounding would move a tenth or more across."""
    gen = torch.Generator().manual_seed(5)
    N, H, K, V = 4, 2, 16, 32
    q, k = (F.normalize(torch.randn(N, 1, H, K, generator=gen), dim=-1).to(dtype) for _ in range(2))
    v = torch.randn(N, 1, H, V, generator=gen).to(dtype)
    offsets = (2 * torch.rand(N, H, V, generator=gen) - 1) * spread
    offsets = torch.where(offsets.abs() < 5e-5, 5e-5, offsets)
    sign = torch.where(torch.rand(N, H, V, generator=gen) < 0.5, -1.0, 1.0)
    target = sign * (clip + offsets)  # float64-exact enough: the walk's k.S0 is a split dot, ~2^-16
    kf = k[:, 0].float()  # [N, H, K]
    S0 = kf[..., :, None] * (v[:, 0].float() - target)[..., None, :] / (kf * kf).sum(-1)[..., None, None]
    g = torch.zeros(N, 1, H, dtype=dtype)
    beta, gamma = (torch.rand(N, 1, H, generator=gen).to(dtype) for _ in range(2))
    *_, (u, w, x) = chunk_rdn_fwd(q, k, v, g, beta, gamma, None, clip, "clip", S0, torch.zeros_like(S0), None,
                                  save_wy=True, keep_tokens=True, chunk_size=16)
    c = torch.tensor(clip, dtype=torch.float32)
    inside = target.abs() <= c
    assert x.dtype == dtype
    assert torch.equal(x[:, 0].float().abs() <= c, inside)
    assert (target.to(dtype).float().abs() <= c).ne(inside).float().mean() > 0.1  # the rounding alone would cross


def assert_rounded_apart_at_most(x, ref):
    """Two half-precision results of sums that differ in fp32 (dot precision, order): elements may round apart by
    one step of the dtype at the result's scale, no more. A norm-wise bound would not do: one element rounded apart
    of a test case's ~1000 is already ~1e-4 of the norm."""
    step = 2 ** -8 if x.dtype == torch.bfloat16 else 2 ** -10
    torch.testing.assert_close(x, ref, rtol=step, atol=step * ref.abs().max().item())


@pytest.mark.parametrize("case", KEPT_CASES)
def test_backward_takes_the_kept_forward_walk(case, monkeypatch):
    """chunk_rdn_fwd(keep_walk=True) hands h_s, h_r, U, W, X to chunk_rdn_bwd(walk=), which then launches no walk of
    the forward: the forward's outputs equal those of training's default forward (keep_tokens: the same walk, X
    stored), the gradients the default path's, and the oracle's (kept_case's cases)."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0, cu, tol = kept_case(case)
    o, S, R, wy, walk = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_walk=True)
    assert [tuple(t.shape) for t in walk] == list(chunk.kept_walk_shapes(inputs[0], inputs[2].shape[-1], cu))
    # all in the input dtype (X keeping its side of the clip: test_stored_x_keeps_its_side_of_the_clip)
    assert [t.dtype for t in walk] == [inputs[0].dtype] * 5
    o_ref, S_ref, R_ref, wy_ref, _ = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True,
                                                   keep_tokens=True)
    for x, ref in ((o, o_ref), (S, S_ref), (R, R_ref), (wy, wy_ref)):
        if x.dtype in (torch.bfloat16, torch.float16):
            assert_rounded_apart_at_most(x, ref)
        elif inputs[0].dtype == torch.bfloat16:  # the kept walk's ~fp32 dots are three half dots (X_HALF3, ~2^-16)
            assert rel_err(x, ref) < 1e-4
        else:
            assert rel_err(x, ref) < 1e-5
    check_forward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol, keep_walk=False)

    do = torch.randn_like(inputs[2])
    final = [None if S0 is None else torch.randn_like(S0), None if R0 is None else torch.randn_like(R0)]
    rerun = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy)
    torch.manual_seed(1)
    recomputed = check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol, final_grads=S0 is not None, wy=wy)
    for name in RDN_FORWARD_WALKS:
        monkeypatch.setattr(chunk, name, _NoWalk())
    kept = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy, walk=walk)
    for x, ref in zip(kept, rerun):
        if ref is None:
            assert x is None
        else:
            torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-6)
    torch.manual_seed(1)
    reused = check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol, final_grads=S0 is not None, wy=wy,
                            walk=walk)
    assert reused == pytest.approx(recomputed, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("case", ["no_states_bf16", "fp16", "varlen"])
def test_inference_forward_rounds_its_chunk_matrices(case, monkeypatch):
    """A forward that stores no X (inference: no backward will read the clip's mask) takes the walk's T_beta, Mk and
    T_gamma dots with both operands in the input dtype (chunk.INFER_HALF, half inputs; fla's walks round their w and
    u alike); training's forward (X stored) keeps them at ~fp32. Both meet the oracle's bound; they differ by the
    operands' roundings (a few steps of the dtype, ~1e-3 of the states for bf16), and without the knob by at most
    one rounding of o and the states to training's ~fp32; fp32 inputs are never rounded."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0, cu, tol = kept_case(case)
    training = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, keep_tokens=True)[:3]
    inference = check_forward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol)
    o, S, R = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu)
    step = 2 ** -8 if inputs[0].dtype == torch.bfloat16 else 2 ** -10
    near = 1e-4 if inputs[0].dtype == torch.bfloat16 else 1e-5  # tf32 against training's ~fp32 (bf16: X_HALF3's)
    if inputs[0].dtype == torch.float32:
        assert torch.equal(S, training[1]) and torch.equal(R, training[2])
    else:  # farther apart than tf32 dots would be, within a step
        assert near < rel_err(S, training[1]) < step and near < rel_err(R, training[2]) < step
        assert rel_err(o, training[0]) < 4 * step
    assert inference["o"] < tol
    monkeypatch.setattr(chunk, "INFER_HALF", 0)
    o, S, R = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu)
    assert_rounded_apart_at_most(o, training[0])
    assert rel_err(S, training[1]) < near and rel_err(R, training[2]) < near


@pytest.mark.parametrize("case", KEPT_CASES)
def test_backward_rebuilds_the_states_from_the_kept_tokens(case, monkeypatch):
    """chunk_rdn_fwd(keep_tokens=True) hands U, W, X alone (the API's default with autograd: keep_walk's, without
    the chunk states) to chunk_rdn_bwd(walk=), which then reruns no forward walk but rebuilds h_s, h_r with two
    linear walks (RLA's kernel): gradients as the rerun's (fp32: to rounding; half inputs: U, W are kept rounded,
    so the rebuilt states round differently) and the float64 oracle's."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0, cu, tol = kept_case(case)
    *outputs, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_tokens=True)
    *kept_outputs, _, walk = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_walk=True)
    assert len(tokens) == 3 and all(torch.equal(x, ref) for x, ref in zip(tokens, walk[2:]))
    assert all(torch.equal(x, ref) for x, ref in zip(outputs[1:], kept_outputs[1:]))  # the final states
    # o: the same walk, but the kept walk's output kernel reads every chunk's state at 32-token chunks, the default's
    # every other one at 64 (chunk.STATE_EVERY, packed batches aside): the same sums in another order.
    if outputs[0].dtype == torch.float32:
        assert rel_err(outputs[0], kept_outputs[0]) < 1e-5
    else:
        assert_rounded_apart_at_most(outputs[0], kept_outputs[0])

    do = torch.randn_like(inputs[2])
    final = [None if S0 is None else torch.randn_like(S0), None if R0 is None else torch.randn_like(R0)]
    rerun = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy)
    for name in RDN_FORWARD_WALKS:
        monkeypatch.setattr(chunk, name, _NoWalk())
    log = record_launches(monkeypatch, chunk, ("_rdn_bwd_rebuild_kernel",))
    rebuilt = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy, walk=tokens)
    assert log == ["_rdn_bwd_rebuild_kernel"]  # both walks, one launch
    half = inputs[0].dtype != torch.float32
    for x, ref in zip(rebuilt, rerun):
        if ref is None:
            assert x is None
        else:
            assert rel_err(x, ref) < (1e-2 if half else 1e-5)
    check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol, final_grads=S0 is not None, wy=wy, walk=tokens)


def test_rebuild_walks_two_chunks_a_turn_as_one(monkeypatch):
    """REBUILD_STEPS=2 (the rebuild's walks two chunks a loop turn) gives one chunk a turn's gradients bit for bit,
    with odd chunk counts (the last turn's second step past a sequence's end) and packed sequences. REBUILD_WARPS
    reaches the launch."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    cu = torch.tensor([0, 5, 75, 112, 141], dtype=torch.int32)  # 1, 3, 2 and 1 chunks of 32 tokens
    inputs, S0, R0 = make_inputs(B=1, T=141, H=2, K=16, V=16, N=4)
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_tokens=True)
    do = torch.randn_like(inputs[2])
    final = [torch.randn_like(S0), torch.randn_like(R0)]
    grads = {}
    for steps, warps in ((1, 4), (2, 8)):
        monkeypatch.setattr(chunk, "REBUILD_STEPS", steps)
        monkeypatch.setattr(chunk, "REBUILD_WARPS", warps)
        log = record_launches(monkeypatch, chunk, ("_rdn_bwd_rebuild_kernel",),
                              lambda name, kw: (kw["WALK_STEPS"], kw["num_warps"]))
        grads[steps] = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy, walk=tokens)
        assert log == [(steps, warps)]
    assert all(torch.equal(a, b) for a, b in zip(grads[1], grads[2]))


REBUILD_ORDER = ["prep_k", "walk_r", "walk_s", "rebuild", "grad"]


def _overlap_grads(monkeypatch, device, B, T, H, K, dtype, cu=None):
    """The kept-tokens backward at each OVERLAP, with its launch order: {overlap: (grads, [kernel, ...])}."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=B, T=T, H=H, K=K, V=K, N=None if cu is None else len(cu) - 1, dtype=dtype,
                                 device=device)
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=device)
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_tokens=True)
    do = torch.randn_like(inputs[2])
    final = [torch.randn_like(S0), torch.randn_like(R0)]
    kernels = [f"_rdn_bwd_{name}_kernel" for name in REBUILD_ORDER]
    runs = {}
    for overlap in (0, 1):
        monkeypatch.setattr(chunk, "OVERLAP", overlap)
        monkeypatch.setattr(chunk, "TRAILED_WALKS", 1)  # two launches: the rebuild beside them
        log = record_launches(monkeypatch, chunk, kernels, lambda name, kw: name[len("_rdn_bwd_"):-len("_kernel")])
        grads = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy, walk=tokens)
        runs[overlap] = grads, list(log)
        monkeypatch.undo()
    return runs, (inputs, S0, R0, cu, do, final, wy, tokens)


def test_rebuild_is_queued_after_the_reverse_walks(monkeypatch):
    """The rebuild (keep_tokens) is queued after the reverse walks (with OVERLAP 1, on a GPU, on a second stream) and
    before the gradient kernel, at OVERLAP 0 and 1, the gradients bit for bit alike (packed sequences)."""
    runs, _ = _overlap_grads(monkeypatch, "cpu", 1, 141, 2, 16, torch.float32, cu=[0, 5, 75, 112, 141])
    for overlap, (grads, log) in runs.items():
        assert log == REBUILD_ORDER
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0][0]))


@pytest.mark.gpu
def test_gpu_rebuild_beside_the_walks_is_exact(monkeypatch):
    """CUDA: the rebuild on a second stream (OVERLAP 1) gives the one-stream gradients bit for bit, eagerly and
    replayed from a CUDA graph (captured on the one stream), at a shape whose walks leave SMs to it (B=1 T=4096 H=4
    K=V=128 bf16: 32 walk programs)."""
    from kerneltools import graph_replayed

    chunk = sys.modules[chunk_rdn_fwd.__module__]
    runs, (inputs, S0, R0, cu, do, final, wy, tokens) = _overlap_grads(monkeypatch, "cuda", 1, 4096, 4, 128,
                                                                       torch.bfloat16)
    for overlap, (grads, _) in runs.items():
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0][0])), overlap
    monkeypatch.setattr(chunk, "OVERLAP", 1)
    monkeypatch.setattr(chunk, "TRAILED_WALKS", 1)
    replayed = graph_replayed(lambda: chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy,
                                                    walk=tokens))
    assert all(torch.equal(a, b) for a, b in zip(replayed, runs[0][0]))


def test_trailed_reverse_walks_are_the_two_launches(monkeypatch):
    """TRAILED_WALKS=2: the reverse walks as one launch (_rdn_bwd_walks_kernel, dS's walk trailing dR's through
    per-pair chunk counters and drawn tickets) give the two launches' gradients bit for bit: packed sequences, final
    state gradients, both residual modes with a clip, dR's walk untransposed and transposed."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    cu = torch.tensor([0, 5, 75, 112, 141], dtype=torch.int32)  # 1, 3, 2 and 1 chunks of 32 tokens
    inputs, S0, R0 = make_inputs(B=1, T=141, H=2, K=16, V=16, N=4)
    do = torch.randn_like(inputs[2])
    final = [torch.randn_like(S0), torch.randn_like(R0)]
    for residual, dr_t in (("clip", 0), ("tanh", 0), ("clip", 2)):  # one orientation for both launch forms
        monkeypatch.setattr(chunk, "DR_WALK_T", dr_t)
        *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, residual, S0, R0, cu, save_wy=True, keep_tokens=True)
        grads = {}
        for trailed, kernels in ((1, ["walk_r", "walk_s"]), (2, ["walks"])):
            monkeypatch.setattr(chunk, "TRAILED_WALKS", trailed)
            names = [f"_rdn_bwd_{name}_kernel" for name in ("walk_r", "walk_s", "walks")]
            log = record_launches(monkeypatch, chunk, names, lambda name, kw: name[len("_rdn_bwd_"):-len("_kernel")])
            grads[trailed] = chunk_rdn_bwd(*inputs, None, 1.0, residual, S0, R0, cu, do, *final, wy=wy, walk=tokens)
            assert log == kernels
        assert all(torch.equal(a, b) for a, b in zip(grads[1], grads[2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_reverse_walks_are_the_walks(dtype, monkeypatch):
    """DR_WALK_T, DS_WALK_T: the reverse walks carrying dR^T, dS^T (chunk_bwd._walk_r_t, _walk_s_t), each or both,
    as two launches and as one (TRAILED_WALKS), give the untransposed walks' gradients, the same products in another
    orientation (fp32: to float rounding; bf16: the stored adjoints round alike but for an element now and then), on
    packed sequences with final-state gradients, both residual modes, and two V-blocks (V = 48 at 32 wide: one whole,
    one partial); and the float64 oracle's."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    monkeypatch.setattr(chunk, "REVERSE_WALK_BV", 32)
    cu = torch.tensor([0, 5, 75, 112], dtype=torch.int32)  # 1, 3 and 2 chunks of 32 tokens
    inputs, S0, R0 = make_inputs(B=1, T=112, H=2, K=16, V=48, N=3, dtype=dtype)
    do = torch.randn_like(inputs[2])
    final = [torch.randn_like(S0), torch.randn_like(R0)]
    names = [f"_rdn_bwd_{name}_kernel" for name in ("walk_r", "walk_s", "walks")]

    def transposed(name, kw):
        return (kw["TRANSPOSED_R"], kw["TRANSPOSED_S"]) if name.endswith("walks_kernel") else kw["TRANSPOSED"]

    for residual, trailed in (("clip", 1), ("tanh", 1), ("clip", 2)):
        monkeypatch.setattr(chunk, "TRAILED_WALKS", trailed)
        *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, residual, S0, R0, cu, save_wy=True, keep_tokens=True)
        grads = {}
        for dr, ds in ((0, 0), (2, 2), (2, 0), (0, 2)):
            monkeypatch.setattr(chunk, "DR_WALK_T", dr)
            monkeypatch.setattr(chunk, "DS_WALK_T", ds)
            log = record_launches(monkeypatch, chunk, names, transposed)
            grads[dr, ds] = chunk_rdn_bwd(*inputs, None, 1.0, residual, S0, R0, cu, do, *final, wy=wy, walk=tokens)
            assert log == ([bool(dr), bool(ds)] if trailed == 1 else [(bool(dr), bool(ds))])
        for key in ((2, 2), (2, 0), (0, 2)):
            for a, b in zip(grads[key], grads[0, 0]):
                if dtype == torch.float32 or a.dtype == torch.float32:
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
                else:
                    assert rel_err(a, b) < 4e-3
    monkeypatch.setattr(chunk, "DS_WALK_T", 2)  # the defaults' check is everyone else's: both transposed here
    torch.manual_seed(3)
    check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=1e-4 if dtype == torch.float32 else 1e-2,
                   final_grads=True)


def test_transposed_reverse_walks_where_they_gained(monkeypatch):
    """Automatic (DR_WALK_T=1, DS_WALK_T=0): dR's walk transposed at 32 and 64 wide and in one launch at 16, not as
    a 16-wide launch of its own; dS's never; 2 forces, 0 stops; another value is a ValueError naming the knob."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    assert [chunk.transposed_reverse_walks(bv, trailed) for bv, trailed in ((64, False), (32, False), (16, True),
                                                                            (16, False))] == \
        [(True, False), (True, False), (True, False), (False, False)]
    monkeypatch.setattr(chunk, "DR_WALK_T", 2)
    monkeypatch.setattr(chunk, "DS_WALK_T", 2)
    assert chunk.transposed_reverse_walks(16, False) == (True, True)
    monkeypatch.setattr(chunk, "DR_WALK_T", 0)
    monkeypatch.setattr(chunk, "DS_WALK_T", 0)
    assert chunk.transposed_reverse_walks(64, True) == (False, False)
    monkeypatch.setattr(chunk, "DS_WALK_T", 3)
    with pytest.raises(ValueError, match="DS_WALK_T must be 0"):
        chunk.transposed_reverse_walks(64, True)


def test_trailed_walks_where_both_walks_fit_at_once(monkeypatch):
    """Automatic: one launch where both walks' programs fit two an SM (B=1 T=32k H=16 at 16-wide V-blocks: 128 pairs
    on 132 SMs), two launches elsewhere and off CUDA (0 SMs); the knob overrides, a bad one is a ValueError."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    assert chunk.trailed_walks(8 * 16, 132) and not chunk.trailed_walks(2 * 8 * 16, 132)
    assert not chunk.trailed_walks(4, 0)
    monkeypatch.setattr(chunk, "TRAILED_WALKS", 2)
    assert chunk.trailed_walks(4 * 8 * 16, 132)
    monkeypatch.setattr(chunk, "TRAILED_WALKS", 1)
    assert not chunk.trailed_walks(8 * 16, 132)
    monkeypatch.setattr(chunk, "TRAILED_WALKS", 3)
    with pytest.raises(ValueError, match="TRAILED_WALKS must be 0"):
        chunk.trailed_walks(8, 132)


def test_rebuild_is_beside_only_walks_in_two_launches(monkeypatch):
    """The rebuild's second stream is asked for (OVERLAP 1) where the reverse walks are two launches, not where they
    are one (it would take the room their trailing programs need), nor at OVERLAP 0."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    asked = []
    real = chunk.triton_utils.Beside

    def recording(like, enabled=True):
        asked.append(enabled)
        return real(like, enabled)

    monkeypatch.setattr(chunk.triton_utils, "Beside", recording)
    inputs, S0, R0 = make_inputs(B=1, T=70, H=2, K=16, V=16)
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, save_wy=True, keep_tokens=True)
    do = torch.randn_like(inputs[2])
    for overlap, trailed, expected in ((1, 1, True), (1, 2, False), (0, 1, False)):
        monkeypatch.setattr(chunk, "OVERLAP", overlap)
        monkeypatch.setattr(chunk, "TRAILED_WALKS", trailed)
        asked.clear()
        chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, None, None, wy=wy, walk=tokens)
        assert asked == [expected]
    monkeypatch.setattr(chunk, "OVERLAP", 2)
    with pytest.raises(ValueError, match="OVERLAP must be 0"):
        chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, None, None, wy=wy, walk=tokens)


@pytest.mark.gpu
@pytest.mark.parametrize("B, T", [(1, 8192), (16, 1024)])
def test_gpu_trailed_walks_are_the_two_launches(B, T, monkeypatch):
    """CUDA: the one-launch reverse walks give the two launches' gradients bit for bit where their programs all fit
    (B=1 T=8k H=4: 32 pairs) and where they are eight times the SMs' room (B=16 T=1k H=16 K=V=128 bf16: the drawn
    tickets keep every walk 2 behind a running walk 1)."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    H = 4 if B == 1 else 16
    inputs, S0, R0 = make_inputs(B=B, T=T, H=H, K=128, V=128, dtype=torch.bfloat16, device="cuda")
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, save_wy=True, keep_tokens=True)
    do = torch.randn_like(inputs[2])
    final = [torch.randn_like(S0), torch.randn_like(R0)]
    grads = {}
    monkeypatch.setattr(chunk, "DR_WALK_T", 2)  # one orientation for both (automatic: not as a 16-wide launch)
    for trailed in (1, 2):
        monkeypatch.setattr(chunk, "TRAILED_WALKS", trailed)
        grads[trailed] = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, *final, wy=wy, walk=tokens)
    assert all(torch.equal(a, b) for a, b in zip(grads[1], grads[2]))


@pytest.mark.parametrize("steps", [1, 2])
def test_rebuild_kernel_walks_as_rla_walk_kernel_twice(steps, monkeypatch):
    """The rebuild's one launch (_rdn_bwd_rebuild_kernel: S's and R's walks side by side) makes the chunk states that
    RLA's walk kernel makes as two launches (rate 1, S's update split, R's rounded), bit for bit: packed sequences,
    odd chunk counts, two K-blocks a walk, bf16, one and two chunks a loop turn."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    cu = torch.tensor([0, 5, 75, 112, 141], dtype=torch.int32)  # 1, 3, 2 and 1 chunks of 32 tokens
    inputs, S0, R0 = make_inputs(B=1, T=141, H=2, K=32, V=32, N=4, dtype=torch.bfloat16)
    q, k, v, g, beta, gamma = inputs
    *_, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, keep_tokens=True)
    u, w, _ = tokens
    monkeypatch.setattr(chunk, "REBUILD_STEPS", steps)
    monkeypatch.setattr(chunk, "REBUILD_BK", 16)
    L = chunk._Layout(q, k, v, g, beta, gamma, 1.0, "clip", S0, R0, cu, 32)
    rebuilt = chunk._rebuild_states(L, k, g, u, w, S0, R0)
    BV = L.width("WALK_BV", L.walk_BV)
    for x, h0, split, got in ((u, S0, True, rebuilt[0]), (w, R0, False, rebuilt[1])):
        h = L.chunk_states(k)
        _state_walk_kernel[(2, triton.cdiv(L.V, BV), L.N * L.H)](
            k, x, g, torch.ones_like(g), h0, h, h, L.state(k), L.cu_seqlens, L.chunk_offsets, L.T,
            H=L.H, K=L.K, V=L.V, BT=L.BT, BK=16, BV=BV, SPLIT=split, DOT_PREC=L.dot_prec,
            DOTS_FP32=HALF_DOTS_IN_FP32, HAS_H0=True, HAS_LO=False, IS_VARLEN=True, WALK_STEPS=steps,
            STATE_EVERY=1, TMA=False)
        n = int(L.chunk_offsets[-1])  # the chunks; the tables' rows past them (a bound) are never written
        assert torch.equal(got[:n], h[:n])
        assert got[:n].abs().amax() > 0


def test_rebuild_at_its_own_v_block_width(monkeypatch):
    """REBUILD_BV sets the rebuild's V-block apart from the forward walk's (0: the forward's): at 16 and 64 wide (V =
    80: the last 64-wide block partial) the rebuilt chunk states are the forward walk's width's, column for column
    (the same sums over K and tokens in each), packed sequences, fp32; a width that is not a power of two is named."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    cu = torch.tensor([0, 5, 75, 112, 141], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=141, H=2, K=32, V=80, N=4)
    q, k, v, g, beta, gamma = inputs
    *_, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, keep_tokens=True)
    u, w, _ = tokens
    L = chunk._Layout(q, k, v, g, beta, gamma, 1.0, "clip", S0, R0, cu, 32)
    n = int(L.chunk_offsets[-1])
    widths = record_launches(monkeypatch, chunk, ("_rdn_bwd_rebuild_kernel",), lambda name, kw: kw["BV"])
    states = {}
    for bv in (0, 16, 64):
        monkeypatch.setattr(chunk, "REBUILD_BV", bv)
        states[bv] = chunk._rebuild_states(L, k, g, u, w, S0, R0)
    assert widths == [L.width("WALK_BV", L.walk_BV), 16, 64]
    for bv in (16, 64):
        for got, ref in zip(states[bv], states[0]):
            assert rel_err(got[:n], ref[:n]) < 1e-6 and ref[:n].abs().amax() > 0
    monkeypatch.setattr(chunk, "REBUILD_BV", 24)
    with pytest.raises(ValueError, match="launch knob REBUILD_BV "):
        chunk._rebuild_states(L, k, g, u, w, S0, R0)


def test_rebuild_width_follows_the_reverse_walks(monkeypatch):
    """The rebuild's automatic V-block: beside the reverse walks (two launches) with half inputs and K <= 128, the
    widest of 64 and 32 whose programs (both walks) are at least half the SMs; alone after them (trailed walks), for
    fp32 or for wider heads, the forward walk's. The knob overrides."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    # (K, V, the forward walk's V-block, sequences x heads, SMs, beside, half) at H=16 K=V=128 on the H100's 132 SMs
    assert chunk.rebuild_width(128, 128, 32, 16 * 16, 132, True, True) == 64  # B=16 T=2k
    assert chunk.rebuild_width(128, 128, 32, 4 * 16, 132, True, True) == 64  # B=4 T=8k
    assert chunk.rebuild_width(128, 128, 16, 2 * 16, 132, True, True) == 64  # B=2 T=16k: 128 programs
    assert chunk.rebuild_width(128, 128, 16, 1 * 16, 132, False, True) == 16  # B=1 T=32k: the walks trailed
    assert chunk.rebuild_width(128, 128, 16, 1 * 16, 132, True, True) == 32  # 64 programs at 64 wide: too few
    assert chunk.rebuild_width(128, 128, 16, 1 * 4, 132, True, True) == 16  # 32 at 32 wide: too few too
    assert chunk.rebuild_width(128, 128, 32, 16 * 16, 132, True, False) == 32  # fp32
    assert chunk.rebuild_width(256, 256, 32, 16 * 16, 132, True, True) == 32  # K = 256
    assert chunk.rebuild_width(128, 40, 32, 16 * 16, 132, True, True) == 64  # as wide as V's power of two
    assert chunk.rebuild_width(128, 24, 16, 16 * 16, 132, True, True) == 32
    monkeypatch.setattr(chunk, "REBUILD_BK", 64)  # two K-blocks a walk: twice the programs
    assert chunk.rebuild_width(128, 128, 16, 1 * 16, 132, True, True) == 64
    monkeypatch.setattr(chunk, "REBUILD_BV", 16)
    assert chunk.rebuild_width(128, 128, 32, 16 * 16, 132, True, True) == 16
    # The backward asks for it beside the walks in two launches (TRAILED_WALKS 1), not after one launch (2).
    monkeypatch.setattr(chunk, "REBUILD_BV", 0)
    monkeypatch.setattr(chunk, "REBUILD_BK", 0)
    monkeypatch.setattr(chunk, "sm_count", lambda device: 16)
    inputs, S0, R0 = make_inputs(B=2, T=70, H=2, K=32, V=80, dtype=torch.bfloat16)
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, save_wy=True, keep_tokens=True)
    do = torch.randn_like(inputs[2])
    widths = record_launches(monkeypatch, chunk, ("_rdn_bwd_rebuild_kernel",), lambda name, kw: kw["BV"])
    grads = []
    for trailed in (1, 2):
        monkeypatch.setattr(chunk, "TRAILED_WALKS", trailed)
        grads.append(chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, None, None, wy=wy, walk=tokens))
    assert widths == [64, 16]  # 2 x 2 x 4 programs at 64 wide, over half of 16 SMs; the forward walk's 16 (its 4 x 3
    # programs at 32 wide below the SMs)
    for a, b in zip(*grads):
        assert (a is None and b is None) or rel_err(a, b) < 1e-2


def test_output_at_two_walk_chunks_from_every_other_state(monkeypatch):
    """STATE_EVERY=2 (32-token chunks): the forward walk (both orientations) stores the even chunks' start states
    alone and the output kernel runs at 64-token chunks on them: o as with every chunk's state and 32-token output
    chunks to fp32 rounding, and the float64 oracle's, with even and odd chunk counts (a last 64-token chunk of one
    walk chunk), equal-length and packed; the final states are the same. A kept walk (keep_walk, whose states the
    backward reads) stores every chunk's; a bad knob is named."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    for B, T in ((2, 100), (3, 70)):
        inputs, S0, R0 = make_inputs(B=B, T=T, H=2, K=16, V=24)
        for walk_t in (0, 1):
            monkeypatch.setattr(chunk, "WALK_T", walk_t)
            out = {}
            for every in (1, 2):
                monkeypatch.setattr(chunk, "STATE_EVERY", every)
                log = record_launches(monkeypatch, chunk, (*RDN_FORWARD_WALKS, "_rdn_out_kernel"),
                                      lambda name, kw: kw.get("STATE_EVERY", kw["BT"]))
                out[every] = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None)
                assert log == [every, 32 * every]
            assert rel_err(out[2][0], out[1][0]) < 1e-6
            assert torch.equal(out[2][1], out[1][1]) and torch.equal(out[2][2], out[1][2])
        check_forward(inputs, S0, R0, None, 1.0, "clip")
        log = record_launches(monkeypatch, chunk, RDN_FORWARD_WALKS, lambda name, kw: kw["STATE_EVERY"])
        *_, walk = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, save_wy=True, keep_walk=True)
        assert log == [1] and walk[0].shape[0] == B * triton.cdiv(T, 32)
    cu = torch.tensor([0, 5, 75, 112, 141, 230], dtype=torch.int32)  # 1, 3, 2, 1 and 3 chunks of 32 tokens
    inputs, S0, R0 = make_inputs(B=1, T=230, H=2, K=16, V=16, N=5)
    for every in (1, 2):
        monkeypatch.setattr(chunk, "STATE_EVERY", every)
        log = record_launches(monkeypatch, chunk, (*RDN_FORWARD_WALKS, "_rdn_out_kernel"),
                              lambda name, kw: kw.get("STATE_EVERY", kw["BT"]))
        check_forward(inputs, S0, R0, None, 1.0, "clip", cu)
        assert log == [every, 32 * every]
    monkeypatch.setattr(chunk, "STATE_EVERY", 3)
    with pytest.raises(ValueError, match="STATE_EVERY must be 1"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu)


def test_packed_chunk_tables_need_no_device_sync():
    """triton_utils.chunk_tables (both ops' packed bookkeeping) sizes its tables from the shapes alone: it runs on
    the meta device, where any size read from the values (a device sync on a GPU) fails. On real values: one row a
    chunk in sequence order, (sequence, chunk within it), then up to the bound shapes.kept_rows rows whose chunk starts
    past the last sequence's end (their programs' rows are all masked); offsets are each sequence's first row."""
    from rla_kernels import shapes
    from rla_kernels.triton_utils import chunk_tables
    cu = torch.tensor([0, 5, 70, 71, 200, 200, 264], dtype=torch.int32)  # an empty sequence too
    for size in (16, 32, 64):
        indices, offsets = chunk_tables(cu.to("meta"), size, 264)
        assert indices.shape == (shapes.kept_rows(1, 264, size, 6), 2) and offsets.shape == (7,)
        indices, offsets = chunk_tables(cu, size, 264)
        counts = [-(-(int(b) - int(a)) // size) for a, b in zip(cu[:-1], cu[1:])]
        real = [[n, c] for n, count in enumerate(counts) for c in range(count)]
        assert offsets.tolist() == [sum(counts[:n]) for n in range(len(counts) + 1)]
        assert indices.shape[0] == shapes.kept_rows(1, 264, size, 6) >= len(real)
        assert indices[:len(real)].tolist() == real
        for n, c in indices[len(real):].tolist():
            assert n == 5 and int(cu[5]) + c * size >= int(cu[6])


def test_rebuild_blocks_follow_the_sm_count(monkeypatch):
    """128-wide K-blocks (k^T read once) unless the head is narrower; two chunks a turn where the launch's programs
    (both walks) are fewer than two an SM of the H200's 132. The knobs override; a bad one is a ValueError naming it."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    # (K, V, the walks' V-block, sequences x heads) at H=16 K=V=128: B=16 T=2k, 8 T=4k, 4 T=8k, 2 T=16k, 1 T=32k
    assert chunk.rebuild_blocks(128, 128, 32, 16 * 16, 132) == (128, 1)
    assert chunk.rebuild_blocks(128, 128, 32, 8 * 16, 132) == (128, 1)
    assert chunk.rebuild_blocks(128, 128, 32, 4 * 16, 132) == (128, 1)
    assert chunk.rebuild_blocks(128, 128, 16, 2 * 16, 132) == (128, 1)
    assert chunk.rebuild_blocks(128, 128, 16, 1 * 16, 132) == (128, 2)
    assert chunk.rebuild_blocks(64, 64, 16, 1 * 16, 132) == (64, 2)  # a 64-wide head: one K-block
    assert chunk.rebuild_blocks(128, 128, 16, 1 * 16, 132, 64) == (128, 1)  # 64-token chunks: one a turn always
    monkeypatch.setattr(chunk, "REBUILD_BK", 64)
    assert chunk.rebuild_blocks(128, 128, 32, 16 * 16, 132) == (64, 1)
    assert chunk.rebuild_blocks(128, 128, 16, 1 * 16, 132) == (64, 1)
    monkeypatch.setattr(chunk, "REBUILD_BK", 128)
    assert chunk.rebuild_blocks(128, 128, 16, 1 * 16, 132) == (128, 2)
    monkeypatch.setattr(chunk, "REBUILD_STEPS", 1)
    assert chunk.rebuild_blocks(128, 128, 16, 1 * 16, 132) == (128, 1)
    monkeypatch.setattr(chunk, "REBUILD_STEPS", 3)
    with pytest.raises(ValueError, match="REBUILD_STEPS must be 0"):
        chunk.rebuild_blocks(128, 128, 16, 16, 132)
    monkeypatch.setattr(chunk, "REBUILD_STEPS", 0)
    monkeypatch.setattr(chunk, "REBUILD_BK", 48)
    with pytest.raises(ValueError, match="REBUILD_BK must be 0"):
        chunk.rebuild_blocks(128, 128, 16, 16, 132)


@pytest.mark.parametrize("case", ["bf16", "bf16_varlen_saturating", "fp32"])
def test_precise_walk_in_three_half_dots(case, monkeypatch):
    """X_HALF3=1: the precise walk's T_beta and Mk dots (the forward with autograd's, the backward's rerun's) as three
    half dots of split operands (dot_at "half3") instead of tf32x3, for bf16 inputs: X (stored in bf16) within a
    rounding of the tf32x3 walk's, gradients (from the kept tokens, and from the rerun) within 2e-3 of the tf32x3
    walk's and, without initial states, 1e-2 of the float64 oracle's (gpu_check_rdn.py --set X_HALF3=1 checks the
    rest at real sizes). fp32 inputs keep their exact dots."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    cu = None
    if case == "bf16":  # no initial states: at these shapes bf16 inputs with them sit at the oracle's 1e-2 either way
        inputs, _, _ = make_inputs(B=1, T=37, H=2, K=16, V=16, dtype=torch.bfloat16)
        S0 = R0 = None
    elif case == "bf16_varlen_saturating":
        cu = torch.tensor([0, 9, 50, 101], dtype=torch.int32)
        inputs, S0, R0 = make_inputs(B=1, T=101, H=2, K=32, V=32, N=3, dtype=torch.bfloat16, value_scale=30.0)
        assert clipped_share(inputs, S0[:1], 1.0, "clip") > 0.5
    else:
        inputs, S0, R0 = make_inputs(B=2, T=70, H=2, K=32, V=32)
    half = case != "fp32"
    do = torch.randn_like(inputs[2])
    final = [None, None] if S0 is None else [torch.randn_like(S0), torch.randn_like(R0)]
    runs = {}
    for half3 in (0, 1):
        monkeypatch.setattr(chunk, "X_HALF3", half3)
        log = record_launches(monkeypatch, chunk, RDN_FORWARD_WALKS, lambda name, kw: (kw["U_PREC"], kw["X_PREC"]))
        *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_tokens=True)
        assert log == [("half3", "half3") if half and half3 else ("tf32x3", "tf32x3") if half else ("ieee", "ieee")]
        kept = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy, walk=tokens)
        rerun = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy)
        runs[half3] = tokens, kept, rerun
    (tokens0, kept0, rerun0), (tokens1, kept1, rerun1) = runs[0], runs[1]
    if not half:
        assert all(torch.equal(a, b) for a, b in zip((*tokens0, *kept0), (*tokens1, *kept1)))
        return
    assert not torch.equal(tokens0[2], tokens1[2]) and rel_err(tokens1[2], tokens0[2]) < 1e-3
    for got, ref in zip((*kept1, *rerun1), (*kept0, *rerun0)):
        if ref is None:
            assert got is None
        else:
            assert rel_err(got, ref) < 2e-3
    if S0 is None:
        monkeypatch.setattr(chunk, "X_HALF3", 1)
        check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=1e-2, final_grads=False, wy=wy, walk=tokens1)


def test_kept_walk_is_ignored_where_it_does_not_fit_and_refuses_segments():
    """A walk kept at 16-token chunks (or without the chunk matrices it was walked with) is rerun, not misread;
    the segmented forward stores no X, so keep_walk refuses segments > 1."""
    inputs, S0, R0 = make_inputs(B=1, T=40, H=1, K=16, V=16)
    *_, wy16, walk16 = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=16, save_wy=True,
                                     keep_walk=True)
    check_backward(inputs, S0, R0, None, 1.0, "clip", walk=walk16)  # backward at 32: refits neither
    *_, walk = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, keep_walk=True)
    check_backward(inputs, S0, R0, None, 1.0, "clip", walk=walk)  # no wy: recomputes both
    with pytest.raises(ValueError, match="keep_walk needs the uncut walk"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, segments=2, keep_walk=True)
    with pytest.raises(ValueError, match="keep_tokens needs the uncut walk"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, segments=2, keep_tokens=True)
    *_, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, keep_tokens=True)
    check_backward(inputs, S0, R0, None, 1.0, "clip", walk=tokens)  # no wy: recomputes both, reruns the walk


def chunk_spans(B, T, BT, cu_seqlens=None):
    """(batch row, first token, one past the last) of every chunk of BT tokens, sequence by sequence: the rows of a
    [B, T] batch, or the packed sequences cu_seqlens bounds in row 0."""
    bounds = cu_seqlens.tolist() if cu_seqlens is not None else None
    spans = [(b, 0, T) for b in range(B)] if bounds is None else [(0, s, e) for s, e in zip(bounds[:-1], bounds[1:])]
    for b, s, e in spans:
        for c0 in range(s, e, BT):
            yield b, c0, min(c0 + BT, e)


def wy_reference(k, g, beta, gamma, BT, cu_seqlens=None):
    """T_beta, T_gamma, Mk of every chunk in float64 by torch.linalg (the kernel's layout: [B, T, H, BT], row t of the
    chunk's matrix at token t), from the definitions in wy.py's docstring."""
    k, g, beta, gamma = (x.double() for x in (k, g, beta, gamma))
    B, T, H, _ = k.shape
    out = torch.zeros(3, B, T, H, BT, dtype=torch.float64)
    for b, c0, c1 in chunk_spans(B, T, BT, cu_seqlens):
        n = c1 - c0
        G = torch.cumsum(g[b, c0:c1], 0)  # [n, H]
        Gp = G - g[b, c0:c1]
        kk = torch.einsum("thk,ihk->hti", k[b, c0:c1], k[b, c0:c1])
        strict = torch.tril(torch.ones(n, n, dtype=torch.bool), -1)
        mk = torch.where(strict, kk * torch.exp(Gp.T[:, :, None] - G.T[:, None, :]), 0.0)
        for idx, x in ((0, beta), (1, gamma)):
            a = (x[b, c0:c1] * torch.exp(g[b, c0:c1])).T[:, :, None] * mk
            out[idx, b, c0:c1, :, :n] = torch.linalg.inv(torch.eye(n, dtype=torch.float64) + a).permute(1, 0, 2)
        out[2, b, c0:c1, :, :n] = mk.permute(1, 0, 2)
    return out


def aligned_wy_inputs(gen, B, T, H, K, dtype):
    """k, g, beta, gamma for the chunk-matrix tests: keys near one shared direction (large k.k, so the inverses are far
    from I), decays near 1, beta near 1."""
    base = F.normalize(torch.randn(1, 1, H, K, generator=gen), dim=-1)
    k = F.normalize(base + 0.3 * torch.randn(B, T, H, K, generator=gen), dim=-1).to(dtype)
    g = (-0.05 * torch.rand(B, T, H, generator=gen)).to(dtype)
    beta = (0.5 + 0.5 * torch.rand(B, T, H, generator=gen)).to(dtype)
    gamma = torch.rand(B, T, H, generator=gen).to(dtype)
    return k, g, beta, gamma


@pytest.mark.parametrize("BT", [16, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wy_matrices_match_float64_inverses(BT, dtype):
    """_rdn_wy_kernel's T_beta, T_gamma (the doubling inverses) and Mk against torch.linalg in float64, at every chunk
    size and a partial tail, with near-aligned keys and gates up to 1 (inverses far from I), and on packed
    sequences; the rows past each sequence's end and the columns past a chunk's tokens are left at zero. (Unit-norm keys
    keep the inverses' entries O(1): a large one needs k.k near -1 between many pairs.)"""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    B, T, H, K = 2, 2 * BT + 7, 2, 32
    k, g, beta, gamma = aligned_wy_inputs(torch.Generator().manual_seed(BT), B, T, H, K, dtype)
    tol = 1e-5  # both dtypes: half inputs are exact in fp32, the merges run at ~fp32 (tf32x3)
    for cu in (None, torch.tensor([0, BT - 5, 2 * T - 3], dtype=torch.int32)):
        kk, gg, bb, cc = ((x.reshape(1, B * T, *x.shape[2:])[:, :2 * T - 3] if cu is not None else x)
                          for x in (k, g, beta, gamma))
        L = chunk._Layout(kk, kk, kk, gg, bb, cc, 1.0, "clip", None, None, cu, BT)
        got = torch.stack(chunk._wy(L, kk.contiguous(), gg.contiguous(), bb.contiguous(), cc.contiguous()))
        ref = wy_reference(kk, gg, bb, cc, BT, cu)
        inv = ref[:2]
        assert inv[inv != 1].abs().max() > 0.3  # off the unit diagonal: far from I
        for name, x, r in zip(("T_beta", "T_gamma", "Mk"), got, ref):
            assert rel_err(x, r) < tol, (name, rel_err(x, r))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_widened_matrices_are_the_64_token_ones(dtype):
    """_widen_wy (wy.py's _rdn_wy_widen_kernel) makes a backward's 64-token T_beta, T_gamma and Mk from a 32-token
    forward's: against torch.linalg in float64, with near-aligned keys (inverses far from I), a partial last chunk
    whose second half is empty or part-filled, and packed sequences; zeros above the diagonal and past each sequence's
    end."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    B, T, H, K = 2, 2 * 64 + 7, 2, 32
    k, g, beta, gamma = aligned_wy_inputs(torch.Generator().manual_seed(7), B, T, H, K, dtype)
    for cu in (None, torch.tensor([0, 59, 100, 2 * T - 3], dtype=torch.int32)):
        kk, gg, bb, cc = ((x.reshape(1, B * T, *x.shape[2:])[:, :2 * T - 3] if cu is not None else x).contiguous()
                          for x in (k, g, beta, gamma))
        L32, L64 = (chunk._Layout(kk, kk, kk, gg, bb, cc, 1.0, "clip", None, None, cu, bt) for bt in (32, 64))
        narrow = torch.stack(chunk._wy(L32, kk, gg, bb, cc))
        got = torch.stack(chunk._widen_wy(L64, kk, gg, bb, cc, narrow))
        ref = wy_reference(kk, gg, bb, cc, 64, cu)
        if cu is None:  # the new blocks (rows 32-63 of a chunk, columns 0-31) are far from 0, the inverses from I
            assert ref[:, :, 32:64, :, :32].abs().max() > 0.1 and ref[:2].abs().max() > 0.3
        for name, x, r in zip(("T_beta", "T_gamma", "Mk"), got, ref):
            assert rel_err(x, r) < 1e-5, (name, rel_err(x, r))
            assert (x[r == 0] == 0).all(), name  # zeros above the diagonal and past each sequence's end


def operators_reference(q, k, g, t_beta, t_gamma, m_k, BT, cu_seqlens=None):
    """The reverse walks' chunk operators in float64 from their definitions (chunk_bwd.py, above the prep kernels),
    in the kernels' layout: Kb, Kc [B, T, H, K] and Pb, Qb, Pc [B, T, H, BT], row i of a chunk's matrix at token i."""
    q, k, g, tb, tc, mk = (x.double() for x in (q, k, g, t_beta, t_gamma, m_k))
    B, T, H, K = k.shape
    kb, kc = torch.zeros(2, B, T, H, K, dtype=torch.float64)
    pb, qb, pc = torch.zeros(3, B, T, H, BT, dtype=torch.float64)
    for b, c0, c1 in chunk_spans(B, T, BT, cu_seqlens):
        n = c1 - c0
        G = torch.cumsum(g[b, c0:c1], 0)  # [n, H]
        dL = torch.exp(G[-1] - G)
        Tb, Tc = tb[b, c0:c1, :, :n], tc[b, c0:c1, :, :n]  # [t, H, i]: only rows and columns of the chunk's tokens
        kb[b, c0:c1] = torch.einsum("thi,th,thk->ihk", Tb, dL, k[b, c0:c1])
        kc[b, c0:c1] = torch.einsum("thi,th,thk->ihk", Tc, dL, k[b, c0:c1])
        qk = torch.einsum("thk,ihk->hti", q[b, c0:c1], k[b, c0:c1])
        decay = torch.exp(G.T[:, :, None] - G.T[:, None, :])  # [H, t, i]: exp(G_t - G_i)
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
        mqi = torch.where(causal, qk * decay, 0.0)
        mq = torch.where(torch.tril(causal, -1), mqi, 0.0)
        mkc = mk[b, c0:c1, :, :n].permute(1, 0, 2)  # [H, j, t]
        pb[b, c0:c1, :, :n] = torch.einsum("thi,hjt->ihj", Tb, mq)
        qb[b, c0:c1, :, :n] = torch.einsum("thi,hjt->ihj", Tb, mkc)
        pc[b, c0:c1, :, :n] = torch.einsum("thi,hjt->ihj", Tc, mqi)
    return kb, kc, pb, qb, pc


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_walk_operators_match_float64_definitions(monkeypatch, dtype):
    """The two prep kernels' Kb, Kc (K-block programs) and Pb, Qb, Pc (a program a chunk) against their definitions in
    float64, from random T_beta, T_gamma and Mk: K = 48 in 32-wide K-blocks (the second one half empty), a partial
    tail, and packed sequences (one shorter than a chunk, one crossing the batch rows' boundary). All five are made at
    ~fp32 and stored in k's dtype (bf16: one rounding to it, a few 1e-3 here; fp32: ~1e-7); swapped
    T_beta and T_gamma would be off by ~1.4."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    monkeypatch.setattr(chunk, "PREP_BK", 32)
    gen = torch.Generator().manual_seed(2)
    BT, B, T, H, K = 16, 2, 45, 2, 48
    q, k = (F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1).to(dtype) for _ in range(2))
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 3.0).to(dtype)
    mats = torch.randn(3, B, T, H, BT, generator=gen)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    for cu in (None, torch.tensor([0, 5, 6, 29, 2 * T - 3], dtype=torch.int32)):
        qq, kk, gg, *tt = ((x.reshape(1, B * T, *x.shape[2:])[:, :2 * T - 3].contiguous() if cu is not None else x)
                           for x in (q, k, g, *mats))
        L = chunk._Layout(qq, kk, kk, gg, gg, gg, 1.0, "clip", None, None, cu, BT)
        got = chunk._walk_operators(L, qq, kk, gg, *tt)
        assert all(x.dtype == dtype for x in got)
        for name, x, r in zip(("Kb", "Kc", "Pb", "Qb", "Pc"), got, operators_reference(qq, kk, gg, *tt, BT, cu)):
            assert rel_err(x, r) < tol, (name, cu is not None, rel_err(x, r))


def assert_same_rounded_output(o, ref):
    """o of two forwards whose fp32 values differ below the output dtype's rounding: fp32 o to float rounding; half o
    may round apart by one step of the dtype at o's scale (2^-8 of its largest element for bf16, 2^-11 for fp16)."""
    if o.dtype == torch.float32:
        torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-6)
    else:
        step = torch.finfo(o.dtype).eps / 2
        torch.testing.assert_close(o, ref, rtol=step, atol=step * ref.abs().max().item())


@pytest.mark.parametrize("case", [*KEPT_CASES, "two_blocks"])
def test_transposed_forward_walk_is_the_walk(case, monkeypatch):
    """chunk.WALK_T: the forward walk carrying S^T, R^T (chunk_fwd._rdn_walk_t_kernel), which runs where the walk
    takes its full width, makes what the untransposed walk makes, in each of its uses (the default forward,
    keep_tokens' precise walk with X, keep_walk's, the backward's rerun): to fp32 rounding, the dots being the same
    products in another orientation; half inputs round their stored tensors alike but for an element now and then
    (o: assert_same_rounded_output's bound). V = 16 is one block, V = 24 one partial block of 32, V = 64 two."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    if case == "two_blocks":
        (inputs, S0, R0), cu, tol = make_inputs(B=1, T=40, H=1, K=16, V=64), None, 1e-4
    else:
        inputs, S0, R0, cu, tol = kept_case(case)
    half = inputs[0].dtype != torch.float32
    monkeypatch.setattr(chunk, "WALK_BV", 32)
    if inputs[2].shape[-1] > 16:  # narrower than its full width (the launcher's few-programs case): untransposed
        monkeypatch.setattr(chunk, "WALK_BV", 16)
        log = record_launches(monkeypatch, chunk, RDN_FORWARD_WALKS)
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu)
        assert log == ["_rdn_walk_kernel"]
        monkeypatch.setattr(chunk, "WALK_BV", 32)

    def both(**kw):
        monkeypatch.setattr(chunk, "WALK_T", 0)
        ref = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, **kw)
        monkeypatch.setattr(chunk, "WALK_T", 1)
        log = record_launches(monkeypatch, chunk, RDN_FORWARD_WALKS)
        got = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, save_wy=True, **kw)
        assert log == ["_rdn_walk_t_kernel"]
        return got, ref

    for kw in ({}, {"keep_tokens": True}, {"keep_walk": True}):
        got, ref = both(**kw)
        assert_same_rounded_output(got[0], ref[0])
        flat = [*got[1:4], *(got[4] if len(got) > 4 else ())], [*ref[1:4], *(ref[4] if len(ref) > 4 else ())]
        for x, r in zip(*flat):  # S_T, R_T, wy, then U, W, X (and h_s, h_r)
            if half and x.dtype != torch.float32:
                torch.testing.assert_close(x, r, rtol=2 * torch.finfo(x.dtype).eps, atol=torch.finfo(x.dtype).eps)
            else:  # fp32 rounding of sums whose terms are the tensor's scale (30x in clip_saturating): bound with it
                torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-6 * max(1.0, r.abs().max().item()))
    check_forward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol)
    torch.manual_seed(2)
    check_backward(inputs, S0, R0, None, 1.0, "clip", cu, tol=tol, final_grads=S0 is not None)  # the rerun, transposed


_CHUNK_PARALLEL = ("_rdn_wy_kernel", "_rdn_out_kernel", "_rdn_bwd_prep_k_kernel", "_rdn_bwd_prep_p_kernel",
                   "_rdn_bwd_mats_kernel", "_rdn_bwd_grad_kernel", "_rdn_bwd_dg_kernel")


def test_chunk_orders_are_renumberings(monkeypatch):
    """CHUNK_ORDER 1-3 renumber the chunk-parallel kernels' programs (_triton_helpers.chunk_ids): each (chunk, block,
    head) is still done once, by the same code, so outputs, final states and gradients are bit for bit the grid
    order's, equal-length (three heads, a partial last chunk, the output at 64 tokens, two V-blocks of the output and
    two K-blocks of the gradient kernel) and packed (five sequences), with groups of 5 (chunk, head) pairs that leave
    a partial last group; each of the seven kernels took the knobs; other values are named before any launch."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    monkeypatch.setattr(chunk, "OUT_BV", 16)
    monkeypatch.setattr(chunk, "GRAD_BK", 16)
    monkeypatch.setattr(chunk, "CHUNK_GROUP", 5)
    cu = torch.tensor([0, 5, 75, 112, 141, 230], dtype=torch.int32)
    cases = [(make_inputs(B=2, T=100, H=3, K=32, V=24), None), (make_inputs(B=1, T=230, H=3, K=32, V=24, N=5), cu)]
    for (inputs, S0, R0), cu_seqlens in cases:
        do = torch.randn_like(inputs[2])
        got = {}
        for order in (0, 1, 2, 3):
            monkeypatch.setattr(chunk, "CHUNK_ORDER", order)
            log = record_launches(monkeypatch, chunk, _CHUNK_PARALLEL,
                                  lambda name, kw: (name, kw["CHUNK_ORDER"], kw["CHUNK_GROUP"]))
            o, S_T, R_T, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu_seqlens, save_wy=True,
                                                    keep_tokens=True)
            grads = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu_seqlens, do, None, None, wy=wy, walk=tokens)
            assert sorted(set(log)) == sorted((name, order, 5) for name in _CHUNK_PARALLEL)
            got[order] = (o, S_T, R_T, *grads)
        for order in (1, 2, 3):
            assert all(torch.equal(a, b) for a, b in zip(got[0], got[order])), order
        assert got[3][0].abs().amax() > 0 and got[3][3].abs().amax() > 0
    for order, group in ((4, 64), (3, 0)):
        monkeypatch.setattr(chunk, "CHUNK_ORDER", order)
        monkeypatch.setattr(chunk, "CHUNK_GROUP", group)
        with pytest.raises(ValueError, match="launch knobs CHUNK_ORDER must be 0"):
            chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu_seqlens)


# The walks and the positions of (g, beta, gamma) among their launch arguments (triton_utils.walk_gates).
WALK_GATE_ARGS = {"_rdn_walk_kernel": (2, 3, 4), "_rdn_walk_t_kernel": (2, 3, 4), "_rdn_bwd_rebuild_kernel": (3,),
                  "_rdn_bwd_walk_r_kernel": (2, 3), "_rdn_bwd_walk_s_kernel": (2, 3),
                  "_rdn_bwd_walks_kernel": (2, 3, 4)}


@pytest.mark.parametrize("trailed", [1, 2])
def test_walks_take_the_gates_in_fp32(trailed, monkeypatch):
    """bf16 gates reach every walk (the forward's, the rebuild, the reverse walks as two launches and as one) as fp32
    (triton_utils.walk_gates: there the pipeliner prefetches their loads), and every result is the one fp32 gates of
    the same values give, bit for bit (dg, dbeta, dgamma rounded to bf16), packed sequences with states."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    monkeypatch.setattr(chunk, "TRAILED_WALKS", trailed)
    cu = torch.tensor([0, 37, 141], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=141, H=2, K=16, V=16, N=2, dtype=torch.bfloat16)
    do = torch.randn_like(inputs[2])
    final = [torch.randn_like(S0), torch.randn_like(R0)]
    runs = {}
    for name, gates in (("bf16", inputs[3:]), ("fp32", [x.float() for x in inputs[3:]])):
        log = record_arg_dtypes(monkeypatch, chunk, WALK_GATE_ARGS)
        x = [*inputs[:3], *gates]
        o, S_T, R_T, wy, tokens = chunk_rdn_fwd(*x, None, 1.0, "clip", S0, R0, cu, save_wy=True, keep_tokens=True)
        grads = chunk_rdn_bwd(*x, None, 1.0, "clip", S0, R0, cu, do, *final, wy=wy, walk=tokens)
        runs[name] = [o, S_T, R_T, *grads]
        walks = [kernel for kernel, _ in log]
        assert walks[0] in RDN_FORWARD_WALKS and "_rdn_bwd_rebuild_kernel" in walks
        assert ("_rdn_bwd_walks_kernel" in walks) == (trailed == 2)
        assert all(dtypes == {torch.float32} for _, dtypes in log), log
        monkeypatch.undo()  # the kernels back, and the knob again
        monkeypatch.setattr(chunk, "TRAILED_WALKS", trailed)
    for i, (a, b) in enumerate(zip(runs["bf16"], runs["fp32"])):
        assert torch.equal(a, b.to(a.dtype)), i


WALK_TMA_CASES = {
    # a partial last chunk in the first of two sequences: TMA reads the second's rows there (zeros past the tensor)
    "fixed_bf16": (dict(B=2, T=45, H=2, K=32, V=32, dtype=torch.bfloat16), None, True),
    "varlen_bf16": (dict(B=1, T=77, H=2, K=32, V=32, N=4, dtype=torch.bfloat16), [0, 5, 6, 40, 77], True),
    "fp32_two_v_blocks": (dict(B=1, T=40, H=1, K=16, V=64), None, True),
    "k24_pointers": (dict(B=1, T=40, H=1, K=24, V=32), None, False),  # K not its K-block: pointers
}


@pytest.mark.parametrize("knob", [1, 2])
@pytest.mark.parametrize("walk_t", [1, 0])
@pytest.mark.parametrize("case", WALK_TMA_CASES)
def test_forward_walk_through_tma_is_bit_for_bit(monkeypatch, case, walk_t, knob):
    """WALK_TMA 1 and 2 (the default): the transposed forward walk takes k and v (and at 2 the chunk matrices) through
    TMA descriptors where the layout allows; the untransposed walk always takes pointers. The rows it reads past a
    sequence's end are the next sequence's tokens: beta and gamma of 0 there, Mk's zeros above its diagonal and the
    masked decay of the state updates keep them out, so o, the states, the kept walk and every gradient (through the
    backward's rerun of the walk) are the pointer path's bits. K not a power of two takes pointers."""
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    shape, cu, tma = WALK_TMA_CASES[case]
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    inputs, S0, R0 = make_inputs(**shape)
    monkeypatch.setattr(chunk, "WALK_T", walk_t)
    monkeypatch.setattr(chunk, "WALK_BV", 32)
    do = torch.randn_like(inputs[2])
    dS_T, dR_T = torch.randn_like(S0), torch.randn_like(R0)
    got = {}
    for setting in (0, knob):
        monkeypatch.setattr(chunk, "WALK_TMA", setting)
        log = record_launches(monkeypatch, chunk, RDN_FORWARD_WALKS, lambda name, kw: (name, kw.get("TMA", 0)))
        plain = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu)
        kept = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, keep_walk=True)
        grads = chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, cu, do, dS_T, dR_T)
        assert {t for _, t in log} == {setting if tma and walk_t else 0}, log
        assert {name for name, _ in log} == {"_rdn_walk_t_kernel" if walk_t else "_rdn_walk_kernel"}, log
        got[setting] = [*plain, *kept[:3], *kept[3], *grads]
    for a, b in zip(got[0], got[knob]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert all(g.abs().amax() > 0 for g in got[knob][-8:-2])


def test_walk_tma_knob_is_validated(monkeypatch):
    chunk = sys.modules[chunk_rdn_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=20, H=1, K=16, V=16)
    monkeypatch.setattr(chunk, "WALK_TMA", 3)
    with pytest.raises(ValueError, match="WALK_TMA must be 0"):
        chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None)
