"""The Triton RLA chunk kernels (forward and backward) against the float64 naive oracle with autograd.

On the CPU machine they run under TRITON_INTERPRET=1 (set by tests/conftest.py before triton is
imported) on tiny shapes; a small chunk size gives several chunks, and a partial last one, at short T.
The ``gpu`` test repeats the check at real head sizes and lengths on CUDA.
"""
import os
import sys

import pytest
import torch
import triton
import triton.language as tl

# On a GPU every autotune config is its own compile; one fixed config keeps the gpu test short (the
# per-config sweep is scripts/gpu_check_rla.py --all-configs). Only effective if set before the kernels
# are first imported.
os.environ.setdefault("RLA_KERNELS_FIXED_CONFIG", "1")

from kerneltools import make_inputs as shared_make_inputs  # noqa: E402
from kerneltools import record_arg_dtypes, record_launches, stub_launches  # noqa: E402
from rla_kernels import naive_recurrent_rla  # noqa: E402
from rla_kernels.residual import apply_residual  # noqa: E402
from rla_kernels.rla.chunk import chunk_rla_bwd, chunk_rla_fwd  # noqa: E402
from rla_kernels.triton_utils import dot_split  # noqa: E402

# (clip, residual): clip=1 with values scaled up saturates many elements; None is the raw residual.
RESIDUALS = {"clip": (1.0, "clip"), "tanh": (0.7, "tanh"), "none": (None, "clip")}
GRAD_NAMES = ("dq", "dk", "dv", "dg", "dbeta", "dgamma", "dS0", "dR0")


def make_inputs(*args, **kw):
    """kerneltools.make_inputs with the gates fp32, as the RLA layer hands them."""
    return shared_make_inputs(*args, gates_in_dtype=False, **kw)


def oracle(inputs, S0, R0, scale, clip, residual, cu_seqlens, do, dS_T, dR_T):
    """Outputs, final states and every gradient from the naive loop in float64."""
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    states = [None if s is None else s.detach().double().requires_grad_() for s in (S0, R0)]
    init = None if S0 is None else tuple(states)
    o, (S, R) = naive_recurrent_rla(*leaves, scale, clip, residual, init, True, cu_seqlens)
    loss = (o * do.double()).sum()
    if dS_T is not None:
        loss = loss + (S * dS_T.double()).sum()
    if dR_T is not None:
        loss = loss + (R * dR_T.double()).sum()
    loss.backward()
    grads = [x.grad for x in leaves] + [None if s is None else s.grad for s in states]
    return (o.detach(), S.detach(), R.detach()), grads


def rel_err(x, ref):
    assert torch.isfinite(x).all(), "non-finite values in the result"
    err = ((x.double() - ref).norm() / ref.norm()).item()
    assert err == err, "NaN relative error"
    return err


def check(inputs, S0, R0, scale, clip, residual, cu_seqlens=None, tol=1e-4, final_grads=True, out=None, **kw):
    """Run fwd and bwd, compare everything with the oracle; return the worst error for information. ``out``, a
    dict: gets the outputs, the cotangents fed to the backward, the gradients and the oracle's (want_grads)."""
    o, S_T, R_T = chunk_rla_fwd(*inputs, scale, clip, residual, S0, R0, cu_seqlens, **kw)
    assert o.dtype == inputs[2].dtype and S_T.dtype == R_T.dtype == torch.float32
    do = torch.randn_like(o)
    dS_T = torch.randn_like(S_T) if final_grads else None
    dR_T = torch.randn_like(R_T) if final_grads else None
    grads = chunk_rla_bwd(*inputs, scale, clip, residual, S0, R0, cu_seqlens, do, dS_T, dR_T, **kw)
    if out is not None:
        out.update(outputs=(o, S_T, R_T), cotangents=(do, dS_T, dR_T), grads=grads)
    want, want_grads = oracle(inputs, S0, R0, scale, clip, residual, cu_seqlens, do, dS_T, dR_T)
    if out is not None:
        out["want_grads"] = want_grads
    errors = {}
    for name, x, ref in zip(("o", "S_T", "R_T"), (o, S_T, R_T), want):
        errors[name] = rel_err(x, ref)
    for name, x, ref, inp in zip(GRAD_NAMES, grads, want_grads, list(inputs) + [S0, R0]):
        if inp is None:
            assert x is None, f"{name} should be None when its input is None"
            continue
        assert x.dtype == inp.dtype and x.shape == inp.shape, name
        errors[name] = rel_err(x, ref)
    bad = {n: e for n, e in errors.items() if not e < tol}
    assert not bad, f"relative errors over {tol}: {bad}"
    return errors


@pytest.mark.parametrize("res", RESIDUALS)
def test_several_chunks_with_states(res):
    """T=37 in chunks of 16: two full chunks and a partial one, non-zero initial states."""
    clip, residual = RESIDUALS[res]
    inputs, S0, R0 = make_inputs(B=2, T=37, H=2, K=16, V=32)
    if clip is not None:
        # Meaningful only if the residual function bites on a good share of elements.
        k, v = inputs[1], inputs[2]
        raw = v[:, 0].double() - torch.einsum("bhk,bhkv->bhv", k[:, 0].double(), S0.double())
        assert (apply_residual(raw, clip, residual) - raw).abs().gt(1e-3).float().mean() > 0.3
    check(inputs, S0, R0, 0.7, clip, residual, chunk_size=16)


def test_single_token():
    inputs, S0, R0 = make_inputs(B=2, T=1, H=2, K=16, V=16)
    check(inputs, S0, R0, 0.5, 1.0, "clip")


def test_default_chunk_partial_tail_and_wide_heads():
    """The production chunk size (64) with T=70; K=96 and V=80 give two K-blocks in the dq/dk pass and
    several V-blocks, the last of each partial."""
    inputs, S0, R0 = make_inputs(B=1, T=70, H=1, K=96, V=80)
    check(inputs, S0, R0, 0.6, 1.0, "clip")


def test_largest_chunk_size():
    """128-token chunks, the largest chunk_size accepted: T=150 is a full chunk and a partial one, varlen packs a
    sequence shorter than a chunk beside one spanning two ([128, 128] intra tiles in every chunk-parallel kernel)."""
    inputs, S0, R0 = make_inputs(B=1, T=150, H=2, K=16, V=16)
    check(inputs, S0, R0, 0.7, 1.0, "clip", chunk_size=128)
    cu_seqlens = torch.tensor([0, 20, 150], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=150, H=1, K=16, V=16, N=2)
    check(inputs, S0, R0, 0.7, 0.8, "tanh", cu_seqlens=cu_seqlens, chunk_size=128)


def test_varlen_matches_per_sequence_oracle():
    """Packed sequences (one empty, one shorter than a chunk, one spanning three) in chunks of 16."""
    cu_seqlens = torch.tensor([0, 5, 5, 40, 52], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=52, H=2, K=16, V=16, N=4)
    check(inputs, S0, R0, 0.8, 0.7, "tanh", cu_seqlens=cu_seqlens, chunk_size=16)
    check(inputs, S0, R0, 0.8, 1.0, "clip", cu_seqlens=cu_seqlens.long(), chunk_size=16)


def test_varlen_with_several_partial_k_and_v_blocks():
    """Packed sequences with K = 80 and V = 48 (two K-blocks in the dq/dk pass and several V-blocks in every
    kernel, the last of each partial), in 32-token chunks: the chunk-parallel kernels index varlen chunks
    by their state row."""
    cu_seqlens = torch.tensor([0, 17, 17, 50, 90], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=90, H=2, K=80, V=48, N=4)
    check(inputs, S0, R0, 0.8, 1.0, "clip", cu_seqlens=cu_seqlens, chunk_size=32)


def test_zero_initial_state_default_scale_unused_final_state():
    inputs, _, _ = make_inputs(B=2, T=20, H=3, K=32, V=16)
    check(inputs, None, None, None, 1.0, "clip", final_grads=False, chunk_size=16)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_strong_decay_does_not_overflow():
    """Log decays down to -30 per token: every exp the kernels take must stay finite."""
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=16, V=16)
    inputs[3] = -30.0 * torch.rand(1, 40, 2)
    check(inputs, S0, R0, 0.7, 1.0, "clip", chunk_size=16)


def test_bf16_inputs():
    """bf16 q, k, v with fp32 gates; the oracle sees the same rounded inputs."""
    inputs, S0, R0 = make_inputs(B=1, T=33, H=2, K=16, V=16, dtype=torch.bfloat16)
    o, _, _ = chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, None, chunk_size=16)
    assert o.dtype == torch.bfloat16
    check(inputs, S0, R0, 0.7, 1.0, "clip", tol=1e-2, chunk_size=16)


@pytest.mark.parametrize("dtype, clip, e", [
    (torch.bfloat16, 0.7, 0.69921875 + 2.0**-11),  # bf16 cannot hold 0.7: a saturated r stores 0.69921875
    (torch.float16, 1.0, 1.0 - 2.0**-13),
    (torch.bfloat16, 1.0, 1.0 - 3 * 2.0**-11),  # rounds onto 1.0 (nearest even; truncation would not)
])
def test_half_residual_just_inside_the_clip_keeps_its_gradient(dtype, clip, e):
    """r is stored in the input dtype and the backward reads the clip's mask back from it: a residual just
    inside c that rounds onto the stored c must still pass its gradient (the residual kernel stores it one
    ulp inside). Token 0 gets e = v - S0^T k = +-e exactly (k a unit vector, S0's row exact in hi + lo); a
    flipped mask there moves dv by a whole gamma Y on 16 of its 528 rows (dv error ~0.4)."""
    inputs, S0, R0 = make_inputs(B=1, T=33, H=1, K=16, V=16, dtype=dtype)
    sign = torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)
    inputs[1][0, 0, 0] = 0.0
    inputs[1][0, 0, 0, 0] = 1.0
    inputs[2][0, 0, 0] = (1.5 * sign).to(dtype)
    S0[0, 0, 0] = (1.5 - e) * sign
    assert ((inputs[2][0, 0, 0].double() - S0[0, 0, 0].double()).abs() == e).all() and e < clip
    assert torch.tensor(e).to(dtype).item() >= torch.tensor(clip).to(dtype).item()  # rounds onto c (RNE)
    check(inputs, S0, R0, 0.7, clip, "clip", tol=1e-2, chunk_size=16)


@pytest.mark.parametrize("clip", [0.3, 2.9])
def test_half_residual_with_a_clip_the_dtype_rounds_up(clip):
    """bf16 rounds 0.3 and 2.9 up (0.30078125, 2.90625): a saturated r must still store c as the host rounded
    it, whatever the kernel's own fp32 -> bf16 conversion does (Triton's bare interpreter truncates)."""
    inputs, S0, R0 = make_inputs(B=1, T=33, H=2, K=16, V=16, dtype=torch.bfloat16)
    assert torch.tensor(clip).to(torch.bfloat16).item() > clip
    check(inputs, S0, R0, 0.7, clip, "clip", tol=1e-2, chunk_size=16)


def test_bad_arguments_raise_value_errors():
    inputs, S0, R0 = make_inputs(B=1, T=4, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="residual"):
        chunk_rla_fwd(*inputs, None, 1.0, "huber", None, None, None)
    with pytest.raises(ValueError, match="clip"):
        chunk_rla_fwd(*inputs, None, -1.0, "clip", None, None, None)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_rla_fwd(*inputs, None, 1.0, "clip", None, None, None, chunk_size=48)
    with pytest.raises(ValueError, match="dtype"):
        chunk_rla_fwd(inputs[0], inputs[1].double(), *inputs[2:], None, 1.0, "clip", None, None, None)
    with pytest.raises(ValueError, match="S0"):
        chunk_rla_fwd(*inputs, None, 1.0, "clip", S0[:, :, :8], None, None)
    with pytest.raises(ValueError, match="do"):
        chunk_rla_bwd(*inputs, None, 1.0, "clip", None, None, None, inputs[2][:, :2], None, None)


class _NoRerun:
    """Stands for a forward pass (a state walk, the residual kernel) where the backward must not rerun it."""

    def __getitem__(self, grid):
        raise AssertionError("the backward reran a forward pass it was handed")


# name: make_inputs arguments, cu_seqlens, initial states, (clip, residual), chunk size, tolerance against float64
KEEP_CASES = {
    "tail_tanh": (dict(B=2, T=70, H=2, K=16, V=24), None, True, (0.7, "tanh"), 64, 1e-3),
    "varlen": (dict(B=1, T=150, H=2, K=16, V=16, N=4), [0, 5, 5, 40, 150], True, (1.0, "clip"), 64, 1e-3),
    "no_states_bf16": (dict(B=1, T=37, H=2, K=16, V=16, dtype=torch.bfloat16), None, False, (1.0, "clip"), 64,
                       1e-2),
    "varlen_bf16_chunk16": (dict(B=1, T=90, H=2, K=16, V=16, N=4, dtype=torch.bfloat16), [0, 17, 17, 50, 90],
                            True, (1.0, "clip"), 16, 1e-2),
    "no_clip_fp16": (dict(B=1, T=45, H=1, K=32, V=16, dtype=torch.float16), None, True, (None, "clip"), 32, 1e-2),
}


def _keep_case(case: str):
    """KEEP_CASES[case] made: inputs, S0, R0 (None without initial states), cu_seqlens, clip, residual, chunk size,
    tolerance."""
    shape, cu, with_states, (clip, residual), chunk_size, tol = KEEP_CASES[case]
    inputs, S0, R0 = make_inputs(**shape)
    if not with_states:
        S0 = R0 = None
    return inputs, S0, R0, None if cu is None else torch.tensor(cu, dtype=torch.int32), clip, residual, chunk_size, tol


@pytest.mark.parametrize("case", KEEP_CASES)
def test_backward_takes_the_kept_walk(case, monkeypatch):
    """chunk_rla_fwd(keep_walk=True) hands h_S, h_R, r and the q.k products to chunk_rla_bwd(walk=), which then
    launches neither a state walk nor the residual kernel: the forward's outputs equal the default forward's where its
    walks step chunk by chunk (the same passes; WALK_PAIRS 0), within rounding where they step pairs, the gradients
    the rerun's over the kept residuals and products (keep_tokens'), and both the float64 oracle's. T not a multiple
    of the chunk; packed sequences (whose kept states take the shape-only row bound, more rows than chunks here); no
    initial states; half inputs (states and r stored in the input dtype), at 16-token
    chunks with the clip biting; no clip."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0, cu, clip, residual, chunk_size, tol = _keep_case(case)
    kw = dict(chunk_size=chunk_size)
    o, S_T, R_T, walk = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_walk=True, **kw)
    dtype, V = inputs[0].dtype, inputs[2].shape[-1]
    assert [tuple(t.shape) for t in walk] == list(chunk.kept_walk_shapes(inputs[0], V, cu, chunk_size))
    assert [t.dtype for t in walk] == [dtype] * 3 + [torch.float32]  # the products as the interpreter's dots take them
    close = 1e-5 if dtype == torch.float32 else 2e-2
    for x, ref in zip((o, S_T, R_T), chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, **kw)):
        assert rel_err(x, ref) < close  # the default's walks step chunk pairs (WALK_PAIRS): another fp32 order
    monkeypatch.setattr(chunk, "WALK_PAIRS", 0)
    for x, ref in zip((o, S_T, R_T), chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, **kw)):
        assert torch.equal(x, ref)

    do = torch.randn_like(o)
    dS_T, dR_T = torch.randn_like(S_T), torch.randn_like(R_T)
    rerun = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, walk=walk[2:], **kw)
    monkeypatch.setattr(chunk, "_state_walk_kernel", _NoRerun())
    monkeypatch.setattr(chunk, "_rla_residual_kernel", _NoRerun())
    kept = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, walk=walk, **kw)
    want, want_grads = oracle(inputs, S0, R0, 0.7, clip, residual, cu, do, dS_T, dR_T)
    errors = {name: rel_err(x, ref) for name, x, ref in zip(("o", "S_T", "R_T"), (o, S_T, R_T), want)}
    for name, x, ref, want_grad, inp in zip(GRAD_NAMES, kept, rerun, want_grads, list(inputs) + [S0, R0]):
        if inp is None:
            assert x is None and ref is None, name
            continue
        assert x.dtype == inp.dtype and x.shape == inp.shape, name
        assert torch.equal(x, ref), name
        errors[name] = rel_err(x, want_grad)
    bad = {n: e for n, e in errors.items() if not e < tol}
    assert not bad, f"relative errors over {tol}: {bad}"


@pytest.mark.parametrize("case", KEEP_CASES)
def test_backward_takes_the_kept_residuals(case, monkeypatch):
    """chunk_rla_fwd(keep_tokens=True) hands r and the q.k products alone (the API's default) to
    chunk_rla_bwd(walk=(r, qk)), which then reruns the two state walks as one (RERUN_WALK 1), without S's lo buffer,
    and not the residual kernel: the gradients are those of the full rerun over the same products, bit for bit (the
    same walk steps over the same r), and of the rerun without them within rounding. A residual tensor in another
    dtype is not misread: all three passes rerun."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0, cu, clip, residual, chunk_size, _ = _keep_case(case)
    kw = dict(chunk_size=chunk_size)
    *outputs, kept = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_tokens=True, **kw)
    *_, walk = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_walk=True, **kw)
    assert len(kept) == 2 and torch.equal(kept[0], walk[2]) and torch.equal(kept[1], walk[3])
    for x, ref in zip(outputs, chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, **kw)):
        assert torch.equal(x, ref)

    do = torch.randn_like(outputs[0])
    dS_T, dR_T = torch.randn_like(outputs[1]), torch.randn_like(outputs[2])
    rerun = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, walk=walk, **kw)
    made = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, **kw)
    log = record_launches(monkeypatch, chunk, ("_state_walk_kernel", "_rla_residual_kernel", "_rerun_walk_kernel"),
                          lambda name, kw: (name, kw.get("HAS_LO")))
    got = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, walk=kept, **kw)
    # the rerun's walks: as one (RERUN_WALK 1, which has no lo buffer to store) or two
    assert log == ([("_rerun_walk_kernel", None)] if chunk.RERUN_WALK else [("_state_walk_kernel", False)] * 2)
    close = 1e-5 if inputs[0].dtype == torch.float32 else 1e-2
    for x, ref, other in zip(got, rerun, made):
        assert (x is None and ref is None) or torch.equal(x, ref)
        assert (x is None and other is None) or rel_err(x, other.double()) < close
    log.clear()
    chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, walk=(kept[0].double(),), **kw)
    assert [name for name, _ in log] == ["_state_walk_kernel", "_rla_residual_kernel", "_state_walk_kernel"]


# the rerun's walks (one launch with RERUN_WALK 1), the reverse walk as one (DU_WALK)
RERUN_ORDER = ["walk"] * (1 if sys.modules[chunk_rla_fwd.__module__].RERUN_WALK else 2) + ["dwalk", "dqkg"]
_RERUN_KERNELS = {"_state_walk_kernel": "walk", "_rerun_walk_kernel": "walk", "_rla_bwd_du_walk_kernel": "dwalk",
                  "_rla_bwd_dqkg_kernel": "dqkg"}


def _overlap_grads(monkeypatch, device, shape, cu=None, du_walk=1):
    """The kept-residuals backward at each OVERLAP, with its launch order: {overlap: (grads, [kernel, ...])}, and
    its inputs. DU_WALK is pinned to ``du_walk``: at 2 (the default) OVERLAP also picks the reverse walks where programs
    are few (one walk with the rerun beside it, three launches without), whose bits differ within rounding."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(**shape, device=device)
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=device)
    *outputs, kept = chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, cu, keep_tokens=True)
    do, dS_T, dR_T = torch.randn_like(outputs[0]), torch.randn_like(outputs[1]), torch.randn_like(outputs[2])
    args = (*inputs, None, 1.0, "clip", S0, R0, cu, do, dS_T, dR_T)
    runs = {}
    for overlap in (0, 1, 2):
        monkeypatch.setattr(chunk, "OVERLAP", overlap)
        monkeypatch.setattr(chunk, "DU_WALK", du_walk)
        log = record_launches(monkeypatch, chunk, list(_RERUN_KERNELS), lambda name, kw: _RERUN_KERNELS[name])
        runs[overlap] = chunk_rla_bwd(*args, walk=kept), list(log)
        monkeypatch.undo()
    return runs, args, kept


def test_rerun_walks_are_queued_first(monkeypatch):
    """The backward's rerun walks (the residuals kept) are queued first (with OVERLAP 1 and 2, on a GPU, on a second
    stream) and the dq/dk/dg kernel after them, at OVERLAP 0, 1 and 2, the gradients bit for bit alike (packed
    sequences)."""
    runs, _, _ = _overlap_grads(monkeypatch, "cpu", dict(B=1, T=150, H=2, K=16, V=16, N=4), cu=[0, 5, 5, 40, 150])
    for overlap, (grads, log) in runs.items():
        assert log == RERUN_ORDER
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, runs[0][0]))


_BACKWARD_KERNELS = ("_rla_bwd_du_kernel", "_rla_bwd_intra_kernel", "_dstate_walk_kernel", "_rla_bwd_dv_kernel",
                     "_rla_bwd_dqkg_kernel", "_rla_bwd_du_walk_kernel")


@pytest.mark.parametrize("du_walk", [1, 0])
@pytest.mark.parametrize("keep", ["tokens", "walk", "none"])
def test_intra_kernel_is_queued_after_du_at_overlap_2(monkeypatch, keep, du_walk):
    """OVERLAP 2 queues the intra kernel (it needs du alone) right after what makes du (DU_WALK 1: the one reverse
    walk; 0: the du kernel, then beside dh_S's walk too), so that on a GPU it runs on the second stream beside the dv
    kernel; 0 and 1 after dv, as before. The same gradients bit for bit whatever the backward was handed (the
    residuals, the whole walk, nothing). Another value is named before any launch."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=2, T=50, H=2, K=16, V=16)
    *outputs, walk = chunk_rla_fwd(*inputs, None, 0.8, "clip", S0, R0, None, chunk_size=16,
                                   **{"keep_tokens": keep == "tokens", "keep_walk": keep != "tokens"})
    args = (*inputs, None, 0.8, "clip", S0, R0, None, torch.randn_like(outputs[0]), None, None)
    walk = None if keep == "none" else walk
    names = {"_rla_bwd_du_kernel": "du", "_rla_bwd_intra_kernel": "intra", "_dstate_walk_kernel": "dwalk",
             "_rla_bwd_dv_kernel": "dv", "_rla_bwd_dqkg_kernel": "dqkg", "_rla_bwd_du_walk_kernel": "du_walk"}
    got = {}
    for overlap in (0, 1, 2):
        monkeypatch.setattr(chunk, "OVERLAP", overlap)
        monkeypatch.setattr(chunk, "DU_WALK", du_walk)
        log = record_launches(monkeypatch, chunk, _BACKWARD_KERNELS, lambda name, kw: names[name])
        got[overlap] = chunk_rla_bwd(*args, chunk_size=16, walk=walk)
        if du_walk:
            want = ["du_walk"] + (["intra", "dv"] if overlap == 2 else ["dv", "intra"])
        else:
            want = ["dwalk", "du"] + (["intra", "dwalk", "dv"] if overlap == 2 else ["dwalk", "dv", "intra"])
        assert log == want + ["dqkg"], (overlap, log)
        monkeypatch.undo()
    for overlap in (1, 2):
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(got[overlap], got[0])), overlap
    monkeypatch.setattr(chunk, "OVERLAP", 3)
    log = record_launches(monkeypatch, chunk, _BACKWARD_KERNELS + ("_state_walk_kernel",))
    with pytest.raises(ValueError, match=r"launch knob OVERLAP must be 0 \(one stream\), 1"):
        chunk_rla_bwd(*args, chunk_size=16, walk=walk)
    assert log == []


@pytest.mark.gpu
@pytest.mark.parametrize("du_walk", [1, 0])
def test_gpu_rerun_beside_the_dh_walks_is_exact(monkeypatch, du_walk):
    """CUDA: the rerun walks on a second stream (OVERLAP 1), and with them the intra kernel (OVERLAP 2), give the
    one-stream gradients bit for bit, eagerly and replayed from a CUDA graph (captured on the one stream), at a shape
    whose walks leave SMs to them (B=1 T=4096 H=4 K=V=128 bf16), with either reverse walk (DU_WALK 1 and 0: the
    default 2 takes 0 at OVERLAP 0 there and 1 beside the rerun)."""
    from kerneltools import graph_replayed

    chunk = sys.modules[chunk_rla_fwd.__module__]
    shape = dict(B=1, T=4096, H=4, K=128, V=128, dtype=torch.bfloat16)
    runs, args, kept = _overlap_grads(monkeypatch, "cuda", shape, du_walk=du_walk)
    for overlap, (grads, _) in runs.items():
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, runs[0][0])), overlap
    for overlap in (1, 2):
        monkeypatch.setattr(chunk, "OVERLAP", overlap)
        monkeypatch.setattr(chunk, "DU_WALK", du_walk)
        replayed = graph_replayed(lambda: chunk_rla_bwd(*args, walk=kept))
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(replayed, runs[0][0])), overlap


def test_kept_walk_is_rerun_where_it_does_not_fit(monkeypatch):
    """A walk kept at other chunks, in another dtype or incomplete is rerun, not misread: same gradients as
    without it. One that fits is read, not rerun: the same bits without its q.k products, within rounding with them
    (QK_KEPT: the forward's output kernel made them, where the backward makes them in another dot)."""
    import sys

    chunk = sys.modules[chunk_rla_fwd.__module__]
    launches = []
    walk_kernel = chunk._state_walk_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return walk_kernel[grid]

    inputs, S0, R0 = make_inputs(B=1, T=40, H=1, K=16, V=16)
    *_, walk16 = chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=16, keep_walk=True)
    *_, walk32 = chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=32, keep_walk=True)
    do = torch.randn_like(inputs[2])
    ref = chunk_rla_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, None, None, chunk_size=32)
    monkeypatch.setattr(chunk, "_state_walk_kernel", Counting())
    for walk in (walk16, tuple(t.double() for t in walk32), walk32[:2], walk32[:3], walk32):
        launches.clear()
        got = chunk_rla_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, None, None, chunk_size=32, walk=walk)
        assert len(launches) == (0 if walk is walk32 or len(walk) == 3 else 2)
        for x, r in zip(got, ref):
            assert torch.equal(x, r) if walk is not walk32 else rel_err(x, r.double()) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("K", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_real_shapes(K, dtype):
    """B=2, T=1000, H=4 on CUDA against the float64 loop (which runs on the GPU too)."""
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    inputs, S0, R0 = make_inputs(B=2, T=1000, H=4, K=K, V=K, dtype=dtype, device="cuda")
    check(inputs, S0, R0, K ** -0.5, 1.0, "clip", tol=tol)
    cu_seqlens = torch.tensor([0, 300, 301, 1000], dtype=torch.int32, device="cuda")
    inputs, S0, R0 = make_inputs(B=1, T=1000, H=4, K=K, V=K, N=3, dtype=dtype, device="cuda")
    check(inputs, S0, R0, K ** -0.5, 0.5, "tanh", cu_seqlens=cu_seqlens, tol=tol)


@triton.jit
def _dot_split_kernel(a, b, out, plain, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
    rm, rk, rn = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
    ta = tl.load(a + rm[:, None] * K + rk[None, :])
    tb = tl.load(b + rk[:, None] * N + rn[None, :])
    tl.store(out + rm[:, None] * N + rn[None, :], dot_split(ta, tb, "tf32"))
    tl.store(plain + rm[:, None] * N + rn[None, :], tl.dot(ta, tb.to(ta.dtype)))


@pytest.mark.gpu
def test_gpu_dot_split_keeps_the_fp32_operand():
    """k^T dh' in the backward: bf16 k times an fp32 tile, split into bf16 hi + lo, is ~2^-16 accurate where
    one bf16 cast of the fp32 tile gives ~1e-3 (the interpreter cannot check this: it multiplies bf16 tiles
    as raw bits, which is why the chunk kernels run fp32 dots there)."""
    a = torch.randn(64, 128, device="cuda").to(torch.bfloat16)
    b = torch.randn(128, 32, device="cuda")
    out, plain = (torch.empty(64, 32, device="cuda") for _ in range(2))
    _dot_split_kernel[(1,)](a, b, out, plain, M=64, K=128, N=32)
    ref = a.double() @ b.double()
    assert rel_err(out, ref) < 3e-5
    assert rel_err(plain, ref) > 3e-4  # what the split is for


def test_walks_split_k_and_narrow_v_blocks_at_low_parallelism(monkeypatch):
    """The state walks cut K into 64-row blocks and V into 32-wide ones, or 16-wide when their programs
    would leave SMs idle (batch-1 prefill): K=96 gives two K-blocks, the second partial, and V=48 a partial
    V-block either way. Forward and backward must not depend on that split."""
    import sys

    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=96, V=48)
    layout = chunk._Layout(inputs[0], inputs[2], *inputs[3:], 1.0, "clip", S0, R0, None, 16)
    assert (layout.BK_walk, layout.BV_walk) == (layout.BK_dwalk, layout.BV_dwalk) == (64, 32)
    check(inputs, S0, R0, 0.6, 1.0, "clip", chunk_size=16)
    monkeypatch.setattr(chunk, "sm_count", lambda device: 1 << 20)
    layout = chunk._Layout(inputs[0], inputs[2], *inputs[3:], 1.0, "clip", S0, R0, None, 16)
    assert (layout.BK_walk, layout.BV_walk, layout.walk_grid) == (64, 16, (2, 3, 2))
    assert (layout.BK_dwalk, layout.BV_dwalk, layout.dwalk_grid) == (64, 16, (2, 3, 2))
    check(inputs, S0, R0, 0.6, 0.7, "tanh", chunk_size=16)


def test_more_sequences_times_heads_than_a_grid_axis_is_refused_before_any_launch():
    """32769 one-token sequences x 2 heads: the walks' grid axis would pass CUDA's 65535."""
    N = 32769
    inputs, _, _ = make_inputs(B=1, T=N, H=2, K=16, V=16)
    cu = torch.arange(N + 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="sequences x heads must be at most 65535"):
        chunk_rla_fwd(*inputs, None, 1.0, "clip", None, None, cu)


def test_gate_gradients_come_back_in_the_gates_dtype():
    """dg, dbeta, dgamma are reduced from fp32 partial sums and cast by one kernel at the end of the backward
    (_rla_bwd_sums_kernel, plan P7): half gates get half gradients, close to the float64 oracle's."""
    inputs, S0, R0 = make_inputs(B=2, T=37, H=2, K=16, V=16)
    inputs = inputs[:3] + [x.to(torch.bfloat16) for x in inputs[3:]]
    o, S_T, R_T = chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, None, chunk_size=16)
    do = torch.randn_like(o)
    grads = chunk_rla_bwd(*inputs, 0.7, 1.0, "clip", S0, R0, None, do, None, None, chunk_size=16)
    _, want = oracle(inputs, S0, R0, 0.7, 1.0, "clip", None, do, None, None)
    for name, x, ref in list(zip(GRAD_NAMES, grads, want))[3:6]:
        assert x.dtype == torch.bfloat16 and x.shape == ref.shape, name
        assert rel_err(x, ref) < 1e-2, name


@pytest.mark.parametrize("dtype, n_states", [(torch.bfloat16, 5), (torch.float32, 4)])
def test_backward_allocates_no_lo_for_the_state_gradients(monkeypatch, dtype, n_states):
    """Plan P6: the reverse walks store dh_R', dh_S' in the input dtype without their rounding error, so the
    backward's chunk-state buffers are h_S, h_R, dh_R', dh_S' and, with half inputs, h_S's lo (the residual
    kernel's, in the rerun of the forward) -- no dh' lo (two more buffers before). Launches are stubbed out."""
    from torch.utils._python_dispatch import TorchDispatchMode

    stub_launches(monkeypatch, sys.modules[chunk_rla_fwd.__module__], (
        "_state_walk_kernel", "_rla_residual_kernel", "_dstate_walk_kernel", "_rla_bwd_du_kernel",
        "_rla_bwd_dv_kernel", "_rla_bwd_intra_kernel", "_rla_bwd_dqkg_kernel", "_rla_bwd_sums_kernel",
        "_rla_bwd_du_walk_kernel"))

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if "empty" in func.__name__ and isinstance(out, torch.Tensor):
                self.made.append((tuple(out.shape), out.dtype))
            return out

    inputs, _, _ = make_inputs(B=2, T=40, H=2, K=32, V=32, dtype=dtype)  # K, V > BT: M, Mk differ in shape
    do = torch.randn_like(inputs[2])
    with Allocations() as allocs:
        chunk_rla_bwd(*inputs, None, 1.0, "clip", None, None, None, do, None, None, chunk_size=16)
    assert allocs.made.count(((2 * 3, 2, 32, 32), dtype)) == n_states


KNOBS = sys.modules[chunk_rla_fwd.__module__].LAUNCH_KNOBS
WIDTHS = ("BK_walk", "BV_walk", "BK_dwalk", "BV_dwalk", "BV_res", "BV_out", "BV_grad", "BV_intra", "BK_par", "BV_dqkg",
          "BV_du", "BV_duwalk", "BK_rerun", "BV_rerun", "BV_reswalk")

# (dtype, B, H, K, V, SMs): _Layout's widths at every knob 0 in WIDTHS' order and the walks' chunks a loop turn at
# WALK_STEPS 0 (forward, reverse), worked out by hand from the rules in rla/chunk.py's comments (the H200's winners of
# 2026-12-01 19:29-19:40, 22:58 (du) and 23:11 (walks) for bf16/fp16 at K <= 128, the widths of before for fp32 and
# K > 128; walks 16 wide where their programs would leave SMs idle; two steps a turn in the forward walks where their
# programs are fewer than two an SM, in the reverse walks where they are 16 wide; the reverse walks 64 wide for
# bf16/fp16 at K <= 128 where 64-wide programs still outnumber the SMs, 2026-12-02 19:36; the residual kernel 64 wide
# where it takes chunk pairs, FWD_HALVES 2: bf16/fp16 at K <= 128, H100 2026-12-05 16:40; the one reverse walk of
# DU_WALK 32 wide, 16 for fp32 or where 32-wide programs would leave half the SMs idle, two steps a turn where its
# programs would leave any idle; the rerun walk at the forward walks' K-block, its V-block 64 or 32 wide for bf16/fp16
# at K <= 128, the widest whose programs are at least half the SMs, H100 2026-12-06 10:33; RES_WALK's one walk 16
# wide, 32 where 16-wide programs would be more than two an SM, and taken (the last of the third tuple) for bf16/fp16
# at K <= 128 where 32-wide programs are at least half the SMs, H100 2026-12-06 21:49 and 2026-12-07 07:56)
AUTOMATIC_WIDTHS = [
    # 2k
    ((torch.bfloat16, 16, 16, 128, 128, 132),
     (128, 32, 128, 64, 64, 64, 128, 64, 64, 32, 64, 32, 128, 64, 32), (1, 1, 1, True)),
    # its 8k
    ((torch.bfloat16, 4, 16, 128, 128, 132),
     (128, 32, 128, 32, 64, 64, 128, 64, 64, 32, 64, 32, 128, 64, 32), (2, 1, 1, True)),
    # its 16k
    ((torch.bfloat16, 2, 16, 128, 128, 132),
     (64, 32, 64, 32, 64, 64, 128, 64, 64, 32, 64, 32, 64, 64, 16), (2, 1, 2, True)),
    # batch-1
    ((torch.bfloat16, 1, 16, 128, 128, 132),
     (64, 16, 64, 16, 64, 64, 128, 64, 64, 32, 64, 16, 64, 32, 16), (2, 2, 2, False)),
    ((torch.float32, 16, 16, 128, 128, 132),
     (64, 32, 64, 32, 64, 64, 32, 32, 64, 32, 32, 16, 64, 32, 32), (1, 1, 1, False)),
    # SmolLM2, no GPU
    ((torch.bfloat16, 1, 2, 64, 64, 0), (64, 32, 64, 32, 64, 64, 64, 64, 64, 32, 64, 32, 64, 64, 32), (1, 1, 1, False)),
    ((torch.float16, 1, 2, 96, 80, 0),
     (128, 32, 128, 32, 64, 64, 128, 64, 64, 32, 64, 32, 128, 64, 32), (1, 1, 1, False)),
    ((torch.bfloat16, 1, 2, 256, 256, 0),
     (64, 32, 64, 32, 64, 64, 64, 64, 64, 64, 64, 32, 64, 32, 32), (1, 1, 1, False)),
    ((torch.float32, 1, 2, 16, 16, 132),
     (16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16), (2, 2, 2, False)),
    ((torch.bfloat16, 16, 16, 64, 80, 132),
     (64, 32, 64, 64, 64, 64, 128, 64, 64, 32, 64, 32, 64, 64, 32), (1, 1, 1, True)),
]


@pytest.mark.parametrize("shape, want, steps", AUTOMATIC_WIDTHS)
def test_launch_knobs_at_zero_give_the_automatic_widths(monkeypatch, shape, want, steps):
    """Every launch knob defaults to 0, the automatic width, and that is the width the table above says."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    assert all(getattr(chunk, name) == 0 for name in KNOBS + ("WALK_STEPS",))
    dtype, B, H, K, V, sms = shape
    monkeypatch.setattr(chunk, "sm_count", lambda device: sms)
    inputs, S0, R0 = make_inputs(B=B, T=4, H=H, K=K, V=V, dtype=dtype)
    L = chunk._Layout(inputs[0], inputs[2], *inputs[3:], 1.0, "clip", S0, R0, None, 64)
    assert tuple(getattr(L, name) for name in WIDTHS) == want
    assert L.walk_grid == (triton.cdiv(K, want[0]), triton.cdiv(V, want[1]), B * H)
    assert L.dwalk_grid == (triton.cdiv(K, want[2]), triton.cdiv(V, want[3]), B * H)
    assert L.duwalk_grid == (triton.cdiv(V, want[11]), B * H)
    assert L.rerun_grid == (triton.cdiv(K, want[12]), triton.cdiv(V, want[13]), B * H)
    assert L.reswalk_grid == (triton.cdiv(V, want[14]), B * H)
    assert (L.walk_steps, L.dwalk_steps, L.duwalk_steps, L.res_walk) == steps


def test_launch_knobs_are_validated_and_clamped(monkeypatch):
    """A knob is 0 or a power of two >= 16 (else a ValueError naming it and what it accepts); one wider than its
    head dim's power of two means the whole dim (as RDN's knobs)."""
    import sys

    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=4, H=1, K=48, V=80)

    def layout():
        return chunk._Layout(inputs[0], inputs[2], *inputs[3:], 1.0, "clip", S0, R0, None, 64)

    for name in KNOBS:
        for bad in (8, 48, -16, 1, 2.0):
            monkeypatch.setattr(chunk, name, bad)
            with pytest.raises(ValueError, match=f"{name} must be 0 .automatic. or a power of two >= 16"):
                layout()
        monkeypatch.setattr(chunk, name, 0)
    for name, value, attr, want in (("DQKG_BK", 256, "BK_par", 64), ("DQKG_BK", 16, "BK_par", 16),
                                    ("DQKG_BV", 512, "BV_dqkg", 128), ("WALK_BK", 128, "BK_walk", 64),
                                    ("REVERSE_WALK_BV", 16, "BV_dwalk", 16), ("OUT_BV", 32, "BV_out", 32)):
        monkeypatch.setattr(chunk, name, value)
        assert getattr(layout(), attr) == want, name
        monkeypatch.setattr(chunk, name, 0)


# name: knob settings, make_inputs arguments, cu_seqlens, (clip, residual), tolerance against float64
KNOB_CASES = {
    # every width at its narrowest (16; 32 where two blocks are partial): several K-blocks in the dq/dk/dg kernel
    # and the walks, several V-blocks everywhere, partial last ones (K = 48, V = 40); dh_R's and dh_S's walks and
    # the du kernel (DU_WALK 0), whose widths these are
    "narrow_fp32": (dict(WALK_BK=16, WALK_BV=16, REVERSE_WALK_BK=32, REVERSE_WALK_BV=16, RES_BV=16, OUT_BV=32,
                         GRAD_BV=16, INTRA_BV=16, DQKG_BK=16, DQKG_BV=16, DU_BV=32, DU_WALK=0, RERUN_WALK_BK=32,
                         RERUN_WALK_BV=16),
                    dict(B=1, T=70, H=2, K=48, V=40), None, (1.0, "clip"), 1e-4),
    # every width as wide as the head dims (one K-block and one V-block everywhere, both partial: K = 96, V = 80),
    # packed sequences
    "wide_bf16_varlen": (dict(WALK_BK=128, WALK_BV=128, REVERSE_WALK_BK=128, REVERSE_WALK_BV=64, RES_BV=128,
                              OUT_BV=128, GRAD_BV=128, INTRA_BV=128, DQKG_BK=128, DQKG_BV=128, DU_BV=128,
                              DU_WALK_BV=128, RERUN_WALK_BK=128, RERUN_WALK_BV=128),
                         dict(B=1, T=70, H=1, K=96, V=80, N=3, dtype=torch.bfloat16), [0, 30, 31, 70],
                         (0.7, "tanh"), 1e-2),
    # the benchmark's head dims at other widths than the defaults: dq/dk/dg with one 128-wide K-block and two
    # 64-wide V turns (its width until 2026-12-01), narrower dv, output, residual and reverse-walk blocks
    "dqkg_candidates_bf16": (dict(DQKG_BK=128, DQKG_BV=64, GRAD_BV=32, OUT_BV=32, RES_BV=32, DU_WALK_BV=16),
                             dict(B=1, T=70, H=1, K=128, V=128, dtype=torch.bfloat16), None, (1.0, "clip"), 1e-2),
}


@pytest.mark.parametrize("case", KNOB_CASES)
def test_launch_knobs_give_the_oracle(monkeypatch, case):
    """The launch knobs profile_kernels.py --knob compares, at values other than the defaults: forward and every
    gradient against the float64 oracle (default 64-token chunks, a partial tail chunk)."""
    import sys

    chunk = sys.modules[chunk_rla_fwd.__module__]
    knobs, shape, cu, (clip, residual), tol = KNOB_CASES[case]
    for name, value in knobs.items():
        monkeypatch.setattr(chunk, name, value)
    inputs, S0, R0 = make_inputs(**shape)
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    L = chunk._Layout(inputs[0], inputs[2], *inputs[3:], clip, residual, S0, R0, cu, 64)
    dims = dict(WALK_BK=shape["K"], REVERSE_WALK_BK=shape["K"], DQKG_BK=shape["K"], RERUN_WALK_BK=shape["K"])
    got = dict(zip(KNOBS, (getattr(L, name) for name in WIDTHS)))
    for name, value in knobs.items():
        if name in KNOBS:  # a width (DU_WALK is not)
            assert got[name] == min(value, max(16, triton.next_power_of_2(dims.get(name, shape["V"])))), name
    kernels = ("_state_walk_kernel", "_dstate_walk_kernel", "_rla_residual_kernel", "_rla_fwd_output_kernel",
               "_rla_bwd_du_kernel", "_rla_bwd_dv_kernel", "_rla_bwd_intra_kernel", "_rla_bwd_dqkg_kernel",
               "_rla_bwd_du_walk_kernel", "_rerun_walk_kernel")
    log = record_launches(monkeypatch, chunk, kernels, lambda name, kw: (name, kw["BK"], kw["BV"]))
    out = {}
    check(inputs, S0, R0, 0.7, clip, residual, cu_seqlens=cu, tol=tol, out=out)
    reverse = ({("_rla_bwd_du_walk_kernel", L.BK, L.BV_duwalk)} if chunk.DU_WALK else
               {("_dstate_walk_kernel", L.BK_dwalk, L.BV_dwalk), ("_rla_bwd_du_kernel", L.BK, L.BV_du)})
    assert set(log) == reverse | {  # each kernel launched at its knobs' widths (the forward walks and residuals twice)
        ("_state_walk_kernel", L.BK_walk, L.BV_walk),
        ("_rla_residual_kernel", L.BK, L.BV_res), ("_rla_fwd_output_kernel", L.BK, L.BV_out),
        ("_rla_bwd_dv_kernel", L.BK, L.BV_grad),
        ("_rla_bwd_intra_kernel", L.BK, L.BV_intra), ("_rla_bwd_dqkg_kernel", L.BK_par, L.BV_dqkg)}
    # the residuals kept (training's default): the backward reruns the walks as one, at the rerun's widths
    log.clear()
    *_, kept = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_tokens=True)
    grads = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, *out["cotangents"], walk=kept)
    assert ("_rerun_walk_kernel", L.BK_rerun, L.BV_rerun) in log
    for name, x, ref in zip(GRAD_NAMES, grads, out["want_grads"]):  # the same inputs and cotangents as check's
        assert (x is None and ref is None) or rel_err(x, ref) < tol, name


# name: make_inputs arguments, cu_seqlens, chunk size, (clip, residual), tolerance against float64
WALK_STEP_CASES = {
    # 3 chunks (odd), the last partial; fixed length: the row past a sequence's last chunk is the next sequence's
    "odd_chunks": (dict(B=2, T=37, H=2, K=16, V=16), None, 16, (1.0, "clip"), 1e-4),
    "even_chunks": (dict(B=2, T=60, H=1, K=16, V=16), None, 16, (0.7, "tanh"), 1e-4),  # 4, the last partial
    "one_chunk": (dict(B=1, T=10, H=2, K=16, V=16), None, 16, (1.0, "clip"), 1e-4),  # one turn, half of it past
    # packed: 1 chunk, none (empty), 2 (the last partial), 2 (full), 3 (the last partial; last sequence)
    "varlen": (dict(B=1, T=92, H=2, K=16, V=16, N=5), [0, 5, 5, 25, 57, 92], 16, (0.8, "tanh"), 1e-4),
    # two K-blocks and two V-blocks in the walks (64 x 32, the second of each partial), 3 chunks
    "blocks": (dict(B=1, T=70, H=1, K=80, V=48), None, 32, (1.0, "clip"), 1e-4),
    # half inputs: the forward walk of S also stores its lo tile, under the same mask
    "odd_chunks_bf16": (dict(B=2, T=37, H=1, K=16, V=16, dtype=torch.bfloat16), None, 16, (1.0, "clip"), 1e-2),
}


def _chunk_count(L, every: int = 1) -> int:
    """The states a walk stores, one every ``every`` chunks (the forward's walks at chunk.FWD_HALVES 2: a pair's first
    chunk's): a packed batch's tables (and so L.n_chunks) are sized by a bound (triton_utils.chunk_tables), its
    state rows past the chunks are never written."""
    if L.cu_seqlens is None:
        return L.B * -(-L.n_chunks // L.B // every)
    cu = L.cu_seqlens.tolist()
    return sum(-(-(b - a) // (every * L.BT)) for a, b in zip(cu[:-1], cu[1:]))


def _nan_padded_state_buffers(monkeypatch, chunk) -> list:
    """Every walk's chunk-state buffers (_chunk_states) made NaN with two more rows past their end: a walk must
    write every row below the chunk count and none from there on (the row past a sequence's last chunk; a packed
    batch's rows past its chunks, up to the tables' bound, and the two). Returns
    the list of (chunk count, whole buffers) made."""
    made = []

    def chunk_states(L, like, lo, rows=None):
        n = L.n_chunks if rows is None else rows
        whole = [like.new_full((n + 2, L.H, L.K, L.V), float("nan"), dtype=L.state_dtype)
                 for _ in range(2 if lo and L.split_states else 1)]
        made.append((_chunk_count(L, 1 if rows is None else L.halves), whole))
        return whole[0][:n], (whole[1][:n] if len(whole) == 2 else None)

    monkeypatch.setattr(chunk, "_chunk_states", chunk_states)
    return made


@pytest.mark.parametrize("walk_pairs", [2, 0])
@pytest.mark.parametrize("case", WALK_STEP_CASES)
def test_two_walk_steps_a_turn(monkeypatch, case, walk_pairs):
    """WALK_STEPS=2 (both walks step chunks 2i and 2i+1 in one loop turn; with WALK_PAIRS 2 the forward's walks step
    chunk pairs, two pairs a turn, whatever the dtype): the float64 oracle's numbers and exactly WALK_STEPS=1's (each
    step's arithmetic is the same), the default backward (rerun walks) and the kept walk's (whose forward steps chunk
    by chunk: within rounding of pairs). An odd step count ends on a step past the last chunk, which must change no
    state and store no row; every state row below the chunk (or pair) count is written."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    shape, cu, chunk_size, (clip, residual), tol = WALK_STEP_CASES[case]
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    inputs, S0, R0 = make_inputs(**shape)
    monkeypatch.setattr(chunk, "WALK_PAIRS", walk_pairs)
    close = 1e-5 if inputs[0].dtype == torch.float32 else 2e-2
    buffers = _nan_padded_state_buffers(monkeypatch, chunk)
    log = record_launches(monkeypatch, chunk, ("_state_walk_kernel", "_rla_bwd_du_walk_kernel"),
                          lambda name, kw: kw["WALK_STEPS"])
    kw = dict(chunk_size=chunk_size)
    results = []
    for steps in (1, 2):
        monkeypatch.setattr(chunk, "WALK_STEPS", steps)
        torch.manual_seed(0)  # the same cotangents for both
        got = {}
        check(inputs, S0, R0, 0.7, clip, residual, cu, tol=tol, out=got, **kw)
        *outputs, walk = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_walk=True, **kw)
        # without the q.k products, which check's backward makes too (test_kept_qk_products_are_read)
        kept = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, *got["cotangents"], walk=walk[:3], **kw)
        for x, ref in zip(outputs + list(kept), list(got["outputs"]) + list(got["grads"])):
            if x is None or ref is None:
                assert x is None and ref is None
            else:  # the kept walk's passes are the same, but for the forward walks' pair steps
                assert torch.equal(x, ref) if not walk_pairs else rel_err(x, ref) < close
        results.append(list(got["outputs"]) + list(walk) + list(got["grads"]))
    # each call's walks launched with the knob: check (fwd 2, bwd 2 + the reverse walk), keep fwd 2, kept bwd the
    # reverse walk (DU_WALK 0's two reverse walks at two steps: test_one_reverse_walk_makes_du)
    assert log == [1] * 8 + [2] * 8
    for i, (x, ref) in enumerate(zip(*results)):  # a packed batch's kept walk has NaN rows past its chunks
        assert (x is None and ref is None) or torch.equal(x.nan_to_num(7.0), ref.nan_to_num(7.0)), i
    for n_chunks, whole in buffers:
        for b in whole:
            assert not b[:n_chunks].isnan().any() and b[n_chunks:].isnan().all()


def test_walk_steps_knob_is_validated_and_set_by_name(monkeypatch):
    """WALK_STEPS is 0 (automatic, the default), 1 or 2, else a ValueError naming it. Not a width, so not in
    LAUNCH_KNOBS (whose users take widths), but profile_kernels.py --knob and gpu_check_rla.py --set set it by name
    all the same."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    assert chunk.WALK_STEPS == 0 and "WALK_STEPS" not in KNOBS
    inputs, S0, R0 = make_inputs(B=1, T=4, H=1, K=16, V=16)
    for bad in (3, -1, 2.0, True, "2"):
        monkeypatch.setattr(chunk, "WALK_STEPS", bad)
        with pytest.raises(ValueError, match=r"launch knob WALK_STEPS must be 0 \(automatic\), 1 or 2"):
            chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None)
    monkeypatch.setattr(chunk, "WALK_STEPS", 1)
    # the scripts' parser and setter (gpu_check_rdn sets this variable at import: restored afterwards)
    monkeypatch.setenv("RLA_KERNELS_FIXED_CONFIG", os.environ.get("RLA_KERNELS_FIXED_CONFIG", "1"))
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
    from gpu_check_rdn import knob_values, set_knobs

    assert knob_values(chunk, "WALK_STEPS=1,2", "--knob") == ("WALK_STEPS", [1, 2])
    set_knobs([chunk], ["WALK_STEPS=2"])
    assert chunk.WALK_STEPS == 2


_CHUNK_PARALLEL = ("_rla_residual_kernel", "_rla_fwd_output_kernel", "_rla_bwd_du_kernel", "_rla_bwd_dv_kernel",
                   "_rla_bwd_intra_kernel", "_rla_bwd_dqkg_kernel")


def test_chunk_orders_are_renumberings(monkeypatch):
    """CHUNK_ORDER 1 renumbers the chunk-parallel kernels' programs (chunk_fwd._chunk_program): each (block, chunk,
    head) is still done once, by the same code, so outputs, final states and gradients are bit for bit the grid
    order's, equal-length (three heads, a partial last chunk, two V-blocks of the residual, output, du and dv
    kernels, two K-blocks of the dq/dk/dg kernel) and packed (five sequences); each of the six kernels took the knob;
    another value is named before any launch."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    for knob in ("RES_BV", "OUT_BV", "DU_BV", "GRAD_BV", "DQKG_BK"):
        monkeypatch.setattr(chunk, knob, 16)
    monkeypatch.setattr(chunk, "DU_WALK", 0)  # the du kernel is chunk-parallel (DU_WALK 1 makes du in a walk)
    cu = torch.tensor([0, 5, 75, 112, 141, 230], dtype=torch.int32)
    cases = [(make_inputs(B=2, T=100, H=3, K=32, V=24), None), (make_inputs(B=1, T=230, H=3, K=32, V=24, N=5), cu)]
    for (inputs, S0, R0), cu_seqlens in cases:
        do = torch.randn_like(inputs[2])
        got = {}
        for order in (0, 1):
            monkeypatch.setattr(chunk, "CHUNK_ORDER", order)
            log = record_launches(monkeypatch, chunk, _CHUNK_PARALLEL, lambda name, kw: (name, kw["CHUNK_ORDER"]))
            o, S_T, R_T = chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu_seqlens, chunk_size=16)
            grads = chunk_rla_bwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu_seqlens, do, None, None, chunk_size=16)
            assert sorted(set(log)) == sorted((name, order) for name in _CHUNK_PARALLEL)
            got[order] = (o, S_T, R_T, *grads)
        assert all(torch.equal(a, b) for a, b in zip(got[0], got[1]))
        assert got[1][0].abs().amax() > 0 and got[1][3].abs().amax() > 0
    monkeypatch.setattr(chunk, "CHUNK_ORDER", 2)
    with pytest.raises(ValueError, match="launch knob CHUNK_ORDER must be 0"):
        chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu_seqlens)


# The walks and the positions of (g, rate) among their launch arguments (chunk.WALK_GATES).
WALK_GATE_ARGS = {"_state_walk_kernel": (2, 3), "_dstate_walk_kernel": (4, 5), "_rla_bwd_du_walk_kernel": (2, 3),
                  "_rerun_walk_kernel": (3, 4, 5)}


def test_walks_take_the_gates_in_fp32(monkeypatch):
    """bf16 gates reach every walk (S's and R's, their rerun with the residuals kept, the reverse walk) as fp32
    (chunk.WALK_GATES 1, triton_utils.walk_gates: there the pipeliner prefetches their loads) and as given at 0, and
    every result is the one fp32 gates of the same values give, bit for bit (dg, dbeta, dgamma rounded to bf16), packed
    sequences with states. Any other knob value is a ValueError."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    cu = torch.tensor([0, 37, 141], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=141, H=2, K=16, V=16, N=2, dtype=torch.bfloat16)
    inputs[3:] = [x.to(torch.bfloat16) for x in inputs[3:]]
    do = torch.randn_like(inputs[2])
    final = [torch.randn_like(S0), torch.randn_like(R0)]
    runs = {}
    for name, knob, gates in (("bf16", 1, inputs[3:]), ("as given", 0, inputs[3:]),
                              ("fp32", 1, [x.float() for x in inputs[3:]])):
        monkeypatch.setattr(chunk, "WALK_GATES", knob)
        log = record_arg_dtypes(monkeypatch, chunk, WALK_GATE_ARGS)
        x = [*inputs[:3], *gates]
        o, S_T, R_T, kept = chunk_rla_fwd(*x, None, 1.0, "clip", S0, R0, cu, keep_tokens=True)
        rerun = chunk_rla_bwd(*x, None, 1.0, "clip", S0, R0, cu, do, *final)
        grads = chunk_rla_bwd(*x, None, 1.0, "clip", S0, R0, cu, do, *final, walk=kept)
        runs[name] = [o, S_T, R_T, *rerun, *grads]
        rerun = ["_rerun_walk_kernel"] if chunk.RERUN_WALK else ["_state_walk_kernel"] * 2
        assert [kernel for kernel, _ in log] == ["_state_walk_kernel"] * 4 + ["_rla_bwd_du_walk_kernel"] + rerun + [
            "_rla_bwd_du_walk_kernel"]
        want = {torch.bfloat16} if name == "as given" else {torch.float32}
        assert all(dtypes == want for _, dtypes in log), (name, log)
        monkeypatch.undo()
    for other in ("as given", "fp32"):
        for i, (a, b) in enumerate(zip(runs["bf16"], runs[other])):
            assert (a is None and b is None) or torch.equal(a, b.to(a.dtype)), (other, i)
    monkeypatch.setattr(chunk, "WALK_GATES", 2)
    with pytest.raises(ValueError, match="launch knob WALK_GATES must be 0"):
        chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, cu)


# name: make_inputs arguments, cu_seqlens, chunk size, (clip, residual), tolerance against float64
HALVES_CASES = {
    # 3 chunks: one pair and a lone last chunk (a pair whose second half is past the end), the last one partial
    "odd_chunks": (dict(B=2, T=37, H=2, K=16, V=16), None, 16, (0.5, "clip"), 1e-4),
    # packed: pairs ending mid-sequence and a lone chunk; the tables' padding slots (every token masked) read row 0
    "varlen": (dict(B=1, T=92, H=2, K=16, V=16, N=5), [0, 5, 5, 25, 57, 92], 16, (0.8, "tanh"), 1e-4),
    # two V-blocks of the residual and output kernels, the clip biting on half inputs (h_S's lo part read at pairs)
    "bf16_blocks": (dict(B=1, T=70, H=1, K=32, V=48, dtype=torch.bfloat16), None, 16, (0.3, "clip"), 1e-2),
}


@pytest.mark.parametrize("walk_pairs", [1, 0, 2])
@pytest.mark.parametrize("case", HALVES_CASES)
def test_chunk_pairs_read_every_other_state(monkeypatch, case, walk_pairs):
    """FWD_HALVES 2 (the default): the residual and output kernels take two walk chunks a program, reading the states
    at the first alone, so the forward's walks store every other state (STATE_EVERY 2, in half the rows; with
    WALK_PAIRS 1, the default, for half inputs, and 2 whatever the dtype, by stepping a chunk pair at a time and storing
    every step's start state), while a kept
    walk and the backward's reruns store them all and the same kernels read every other row of those. The float64
    oracle's numbers both ways; at 2 the same bits whichever layout the pairs read (the kept walk's forward is the
    default's) where the walks step chunk by chunk, within rounding where they step pairs; outputs and gradients
    within rounding of FWD_HALVES 1 (one chunk a program, every state read)."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    shape, cu, chunk_size, (clip, residual), tol = HALVES_CASES[case]
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    inputs, S0, R0 = make_inputs(**shape)
    kw = dict(chunk_size=chunk_size)
    monkeypatch.setattr(chunk, "WALK_PAIRS", walk_pairs)
    got = {}
    for halves in (1, 2):
        monkeypatch.setattr(chunk, "FWD_HALVES", halves)
        log = record_launches(monkeypatch, chunk, ("_state_walk_kernel", "_rla_residual_kernel",
                                                   "_rla_fwd_output_kernel"),
                              lambda name, kw: (name, kw["STATE_EVERY"], kw.get("HALVES"), kw["BT"]))
        torch.manual_seed(0)  # the same cotangents both ways
        out = {}
        check(inputs, S0, R0, 0.7, clip, residual, cu, tol=tol, out=out, **kw)
        pairs = walk_pairs == 2 or (walk_pairs == 1 and inputs[0].dtype != torch.float32)
        stepped = (1, None, 2 * chunk_size) if halves == 2 and pairs else (halves, None, chunk_size)
        walks = [("_state_walk_kernel", *stepped), ("_rla_residual_kernel", halves, halves, chunk_size),
                 ("_state_walk_kernel", *stepped), ("_rla_fwd_output_kernel", halves, halves, chunk_size)]
        # the backward's rerun (no residuals handed to it): every state, the residuals at pairs all the same
        rerun = [("_state_walk_kernel", 1, None, chunk_size), ("_rla_residual_kernel", 1, halves, chunk_size),
                 ("_state_walk_kernel", 1, None, chunk_size)]
        assert log == walks + rerun, log
        log.clear()
        o, S_T, R_T, _ = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_walk=True, **kw)
        assert log == [("_state_walk_kernel", 1, None, chunk_size), ("_rla_residual_kernel", 1, halves, chunk_size),
                       ("_state_walk_kernel", 1, None, chunk_size), ("_rla_fwd_output_kernel", 1, halves,
                                                                      chunk_size)]
        close = 1e-5 if inputs[0].dtype == torch.float32 else 2e-2
        for x, ref in zip((o, S_T, R_T), out["outputs"]):
            # a pair's step sums its two chunks in another fp32 order than the kept walk's two steps
            assert torch.equal(x, ref) if stepped[0] == halves else rel_err(x, ref) < close
        got[halves] = list(out["outputs"]) + list(out["grads"])
    for i, (x, ref) in enumerate(zip(got[1], got[2])):
        assert (x is None and ref is None) or rel_err(x, ref) < close, i


def test_fwd_halves_knob_is_validated_and_kept_where_pairs_fit(monkeypatch):
    """FWD_HALVES other than 1 or 2 is a ValueError naming it, before any launch. Pairs run where their tiles fit a
    GPU's shared memory (half inputs at K <= 128, fp32 ones at K <= 64, chunks of at most 64 tokens); elsewhere a
    chunk a program, whatever the knob."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    for dtype, K, chunk_size, halves in ((torch.bfloat16, 128, 64, 2), (torch.float32, 64, 64, 2),
                                         (torch.float32, 128, 64, 1), (torch.bfloat16, 256, 64, 1),
                                         (torch.bfloat16, 64, 128, 1), (torch.float16, 96, 32, 2)):
        inputs, S0, R0 = make_inputs(B=1, T=4, H=1, K=K, V=16, dtype=dtype)
        L = chunk._Layout(inputs[0], inputs[2], *inputs[3:], 1.0, "clip", S0, R0, None, chunk_size)
        assert L.halves == halves, (dtype, K, chunk_size)
    inputs, S0, R0 = make_inputs(B=1, T=4, H=1, K=16, V=16)
    log = record_launches(monkeypatch, chunk, ("_state_walk_kernel",))
    for bad in (0, 3, 4):
        monkeypatch.setattr(chunk, "FWD_HALVES", bad)
        with pytest.raises(ValueError, match=r"launch knob FWD_HALVES must be 1 \(a chunk a program\) or 2"):
            chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None)
    monkeypatch.setattr(chunk, "FWD_HALVES", 2)
    for bad in (3, -1):
        monkeypatch.setattr(chunk, "WALK_PAIRS", bad)
        with pytest.raises(ValueError, match=r"launch knob WALK_PAIRS must be 0 \(chunk by chunk\), 1 \(automatic"):
            chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None)
    assert log == []


# name: make_inputs arguments, cu_seqlens, chunk size, (clip, residual), walk steps, DU_WALK_BV, tolerance
DU_WALK_CASES = {
    # 3 chunks, the last partial; the clip saturating on many elements (check's inputs), initial states
    "clip": (dict(B=2, T=37, H=2, K=16, V=32), None, 16, (1.0, "clip"), 1, 0, 1e-4),
    "tanh_two_steps": (dict(B=2, T=37, H=2, K=16, V=32), None, 16, (0.7, "tanh"), 2, 0, 1e-4),
    "no_clip": (dict(B=1, T=40, H=2, K=16, V=16), None, 16, (None, "clip"), 1, 0, 1e-4),
    # packed: 1 chunk, none (empty), 2 (the last partial), 2 (full), 3 (the last partial); both step counts
    "varlen": (dict(B=1, T=92, H=2, K=16, V=16, N=5), [0, 5, 5, 25, 57, 92], 16, (0.8, "clip"), 1, 0, 1e-4),
    "varlen_two_steps": (dict(B=1, T=92, H=2, K=16, V=16, N=5), [0, 5, 5, 25, 57, 92], 16, (0.8, "tanh"), 2, 0,
                         1e-4),
    # K = 80 (one 128-row block, masked) and V = 48 in 16-wide V-blocks (three programs a head, dgamma's three rows)
    "blocks": (dict(B=1, T=70, H=1, K=80, V=48), None, 32, (1.0, "clip"), 1, 16, 1e-4),
    "one_token": (dict(B=2, T=1, H=2, K=16, V=16), None, 16, (1.0, "clip"), 2, 0, 1e-4),
    "bf16": (dict(B=1, T=70, H=2, K=32, V=32, dtype=torch.bfloat16), None, 16, (1.0, "clip"), 1, 0, 1e-2),
}


def _du_walk_case(monkeypatch, chunk, case: str):
    """DU_WALK_CASES[case] made, its WALK_STEPS and DU_WALK_BV set: inputs, S0, R0, cu_seqlens, chunk size, clip,
    residual, steps, tolerance."""
    shape, cu, chunk_size, (clip, residual), steps, bv, tol = DU_WALK_CASES[case]
    inputs, S0, R0 = make_inputs(**shape)
    monkeypatch.setattr(chunk, "WALK_STEPS", steps)
    monkeypatch.setattr(chunk, "DU_WALK_BV", bv)
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    return inputs, S0, R0, cu, chunk_size, clip, residual, steps, tol


@pytest.mark.parametrize("case", DU_WALK_CASES)
def test_one_reverse_walk_makes_du(monkeypatch, case):
    """DU_WALK 1: one reverse walk carries dh_R and dh_S and makes du from the carried dh_R' (no du kernel, no second
    walk): the float64 oracle's numbers, and within rounding of DU_WALK 0 (the three launches) given the same
    cotangents, for the default backward and the kept walk's. Every state row a walk must write is written, none
    past the chunks (the NaN-padded buffers)."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0, cu, chunk_size, clip, residual, steps, tol = _du_walk_case(monkeypatch, chunk, case)
    names = {"_dstate_walk_kernel": "dwalk", "_rla_bwd_du_kernel": "du", "_rla_bwd_du_walk_kernel": "du_walk"}
    log = record_launches(monkeypatch, chunk, list(names), lambda name, kw: (names[name], kw["WALK_STEPS"]
                                                                             if "WALK_STEPS" in kw else None))
    kw = dict(chunk_size=chunk_size)
    got = {}
    for du_walk in (0, 1):
        monkeypatch.setattr(chunk, "DU_WALK", du_walk)
        buffers = _nan_padded_state_buffers(monkeypatch, chunk)
        torch.manual_seed(0)  # the same cotangents both ways
        out = {}
        check(inputs, S0, R0, 0.7, clip, residual, cu, tol=tol, out=out, **kw)
        *_, walk = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_walk=True, **kw)
        # without the q.k products, which check's backward makes too (test_kept_qk_products_are_read)
        kept = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, *out["cotangents"], walk=walk[:3], **kw)
        for x, ref in zip(kept, out["grads"]):
            assert (x is None and ref is None) or torch.equal(x, ref)  # the kept walk's backward: the same passes
        for n_chunks, whole in buffers:
            for b in whole:
                assert not b[:n_chunks].isnan().any() and b[n_chunks:].isnan().all()
        got[du_walk] = out["grads"]
    per_call = {0: [("dwalk", steps), ("du", None), ("dwalk", steps)], 1: [("du_walk", steps)]}
    assert log == per_call[0] * 2 + per_call[1] * 2, log
    close = 1e-5 if inputs[0].dtype == torch.float32 else 1e-2
    for name, x, ref in zip(GRAD_NAMES, got[1], got[0]):
        assert (x is None and ref is None) or rel_err(x, ref.double()) < close, name


def _decayed_qk_oracle(q, k, g, cu, chunk_size):
    """float64 [B, T, H, BT]: each token t's row over its chunk's keys i (chunks counted from each sequence's start),
    [i <= t] exp(G_t - G_i) (q_t.k_i), G the gates' sum from the chunk's start; 0 past the chunk's tokens."""
    q, k, g = q.double(), k.double(), g.double()
    B, T, H, _ = q.shape
    out = torch.zeros(B, T, H, chunk_size, dtype=torch.float64)
    bounds = [(b, 0, T) for b in range(B)] if cu is None else [(0, int(a), int(e)) for a, e in zip(cu[:-1], cu[1:])]
    for b, start, end in bounds:
        for c0 in range(start, end, chunk_size):
            c1 = min(c0 + chunk_size, end)
            G = g[b, c0:c1].cumsum(0)  # [n, H]
            dots = torch.einsum("thk,ihk->hti", q[b, c0:c1], k[b, c0:c1])
            decay = (G.T[:, :, None] - G.T[:, None, :]).tril().exp().tril()  # [H, t, i], i <= t
            out[b, c0:c1, :, :c1 - c0] = (dots * decay).permute(1, 0, 2)
    return out


@pytest.mark.parametrize("du_walk", [1, 0])
@pytest.mark.parametrize("case", ["clip", "tanh_two_steps", "varlen_two_steps", "blocks", "one_token", "bf16"])
def test_kept_qk_products_are_read(monkeypatch, case, du_walk):
    """QK_KEPT 1: the forward that keeps its residuals also keeps each chunk's decayed q.k products (the float64 ones
    within the dots' rounding: fp32 under the interpreter), and the backward's reverse walk (DU_WALK 1) or du kernel
    (0) and dv kernel read them (HAS_QK) instead of making them: the float64 oracle's gradients, and within rounding
    of the backward that makes them (walk=(r,)). QK_KEPT 0: the forward keeps r alone and the backward makes the
    products even where they are handed to it, bit for bit as without them."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0, cu, chunk_size, clip, residual, _, tol = _du_walk_case(monkeypatch, chunk, case)
    monkeypatch.setattr(chunk, "DU_WALK", du_walk)
    kw = dict(chunk_size=chunk_size)
    *outputs, kept = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_tokens=True, **kw)
    res, qk = kept
    assert qk.dtype == torch.float32 and qk.shape == (*inputs[0].shape[:3], chunk_size)
    want_qk = _decayed_qk_oracle(inputs[0], inputs[1], inputs[3], cu, chunk_size)
    assert rel_err(qk, want_qk) < 1e-6  # the inputs as given, products in fp32
    monkeypatch.setattr(chunk, "QK_STORE_IF", 1 - chunk.QK_STORE_IF)  # the store behind a branch or masked: same bits
    *other_outputs, (other_res, other_qk) = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_tokens=True,
                                                          **kw)
    assert torch.equal(other_qk, qk) and torch.equal(other_res, res)
    assert all(torch.equal(x, y) for x, y in zip(other_outputs, outputs))
    monkeypatch.setattr(chunk, "QK_STORE_IF", 1 - chunk.QK_STORE_IF)

    names = ("_rla_bwd_du_walk_kernel", "_rla_bwd_du_kernel", "_rla_bwd_dv_kernel")
    log = record_launches(monkeypatch, chunk, names, lambda name, kw: (name, kw["HAS_QK"]))
    do = torch.randn_like(outputs[0])
    dS_T, dR_T = torch.randn_like(outputs[1]), torch.randn_like(outputs[2])
    got = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, walk=kept, **kw)
    read = [name for name, has_qk in log if has_qk]
    assert read == ([names[0]] if du_walk else [names[1]]) + [names[2]] and len(log) == 2, log
    made = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, walk=(res,), **kw)
    _, want_grads = oracle(inputs, S0, R0, 0.7, clip, residual, cu, do, dS_T, dR_T)
    close = 1e-5 if inputs[0].dtype == torch.float32 else 1e-2
    for name, x, other, want, inp in zip(GRAD_NAMES, got, made, want_grads, list(inputs) + [S0, R0]):
        if inp is None:
            assert x is None and other is None, name
            continue
        assert rel_err(x, want) < tol, name
        assert rel_err(x, other.double()) < close, name

    monkeypatch.setattr(chunk, "QK_KEPT", 0)
    *_, alone = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_tokens=True, **kw)
    assert len(alone) == 1 and torch.equal(alone[0], res)
    log.clear()
    ignored = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, do, dS_T, dR_T, walk=kept, **kw)
    assert not any(has_qk for _, has_qk in log) and len(log) == 2, log
    for x, other in zip(ignored, made):
        assert (x is None and other is None) or torch.equal(x, other)


def test_one_reverse_walk_knobs(monkeypatch):
    """DU_WALK's launch: intra queued right after the walk at OVERLAP 2 (it needs du alone), then dv and dq/dk/dg; the
    walk's V-block 32 wide by default (16 for these fp32 inputs), DU_WALK_BV's width when set, its warps
    DU_WALK_WARPS'. DU_WALK other than 0, 1 or 2 and DU_WALK_WARPS other than 4 or 8 are ValueErrors naming them,
    before any launch."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=16, V=64)
    *outputs, walk = chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=16, keep_tokens=True)
    args = (*inputs, None, 1.0, "clip", S0, R0, None, torch.randn_like(outputs[0]), None, None)
    monkeypatch.setattr(chunk, "DU_WALK", 1)
    kernels = ("_rla_bwd_du_walk_kernel", "_rla_bwd_intra_kernel", "_rla_bwd_dv_kernel", "_rla_bwd_dqkg_kernel",
               "_rla_bwd_du_kernel", "_dstate_walk_kernel")
    for bv, warps, want in ((0, 4, 16), (32, 8, 32), (64, 4, 64)):
        monkeypatch.setattr(chunk, "DU_WALK_BV", bv)
        monkeypatch.setattr(chunk, "DU_WALK_WARPS", warps)
        log = record_launches(monkeypatch, chunk, kernels, lambda name, kw: (name, kw["BV"], kw.get("num_warps")))
        chunk_rla_bwd(*args, chunk_size=16, walk=walk)
        assert [name for name, *_ in log] == list(kernels[:4])
        assert log[0][1:] == (want, warps)
        for name in kernels:
            monkeypatch.setattr(chunk, name, getattr(chunk, name).kernel)  # unwrap for the next round
    for knob, bad, message in (("DU_WALK", 3, r"launch knob DU_WALK must be 0 \(dh_R's walk, du, dh_S's walk\), 1"),
                               ("DU_WALK_WARPS", 2, r"launch knob DU_WALK_WARPS must be 4 or 8; got 2")):
        monkeypatch.setattr(chunk, "DU_WALK_WARPS", 4)
        monkeypatch.setattr(chunk, knob, bad)
        log = record_launches(monkeypatch, chunk, kernels + ("_state_walk_kernel",))
        with pytest.raises(ValueError, match=message):
            chunk_rla_bwd(*args, chunk_size=16)
        assert log == []
        monkeypatch.setattr(chunk, "DU_WALK", 1)


def test_one_reverse_walk_where_it_gains(monkeypatch):
    """DU_WALK 2 (the default) takes the one reverse walk unless its programs at 32 wide would be fewer than the SMs
    with nothing beside it: with few programs it runs where the rerun walks run beside it (the residuals kept,
    OVERLAP >= 1) and not where the walk was kept, nothing was kept or OVERLAP is 0; with programs enough (and off a
    GPU: no SMs) always. 1 always, 0 never."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=20, H=2, K=16, V=16)
    *outputs, tokens = chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=16, keep_tokens=True)
    *_, walk = chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=16, keep_walk=True)
    args = (*inputs, None, 1.0, "clip", S0, R0, None, torch.randn_like(outputs[0]), None, None)
    stub_launches(monkeypatch, chunk, ("_state_walk_kernel", "_rla_residual_kernel", "_rla_bwd_dv_kernel",
                                       "_rla_bwd_intra_kernel", "_rla_bwd_dqkg_kernel", "_rla_bwd_sums_kernel"))
    reverse = ("_rla_bwd_du_walk_kernel", "_dstate_walk_kernel", "_rla_bwd_du_kernel")

    def one_walk(knob, sms, kept, overlap=2):
        monkeypatch.setattr(chunk, "DU_WALK", knob)
        monkeypatch.setattr(chunk, "OVERLAP", overlap)
        monkeypatch.setattr(chunk, "sm_count", lambda device: sms)
        stub_launches(monkeypatch, chunk, reverse)  # launch nothing, but note the launches
        log = record_launches(monkeypatch, chunk, reverse)
        chunk_rla_bwd(*args, chunk_size=16, walk=kept)
        assert log in (["_rla_bwd_du_walk_kernel"], ["_dstate_walk_kernel", "_rla_bwd_du_kernel",
                                                     "_dstate_walk_kernel"]), log
        return log == ["_rla_bwd_du_walk_kernel"]

    for sms in (132, 2):  # 2 programs at 32 wide: fewer than 132 SMs, not than 2
        few = sms == 132
        assert one_walk(2, sms, tokens) and one_walk(2, sms, tokens, overlap=1)
        assert one_walk(2, sms, tokens, overlap=0) != few
        assert one_walk(2, sms, walk) != few and one_walk(2, sms, None) != few
        assert one_walk(1, sms, walk) and one_walk(1, sms, None)
        assert not one_walk(0, sms, tokens)
    assert one_walk(2, 0, walk)


def test_walks_beside_each_other_take_one_chunk_a_turn(monkeypatch):
    """At WALK_STEPS 0 (automatic) the backward's rerun walk and the one reverse walk, beside each other, take one
    chunk a turn where their programs alone are few (each would take two), and two where nothing runs beside the
    reverse walk (the walk kept, DU_WALK 1) or the rerun (OVERLAP 0: three reverse launches); a set knob is taken
    as it is."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=40, H=2, K=16, V=16)
    *outputs, tokens = chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=16, keep_tokens=True)
    *_, walk = chunk_rla_fwd(*inputs, None, 1.0, "clip", S0, R0, None, chunk_size=16, keep_walk=True)
    args = (*inputs, None, 1.0, "clip", S0, R0, None, torch.randn_like(outputs[0]), None, None)
    walks = ("_rerun_walk_kernel", "_rla_bwd_du_walk_kernel", "_dstate_walk_kernel")
    stub_launches(monkeypatch, chunk, walks + ("_state_walk_kernel", "_rla_residual_kernel", "_rla_bwd_du_kernel",
                                               "_rla_bwd_dv_kernel", "_rla_bwd_intra_kernel", "_rla_bwd_dqkg_kernel",
                                               "_rla_bwd_sums_kernel"))
    monkeypatch.setattr(chunk, "sm_count", lambda device: 132)  # 2 programs a walk: few

    def steps(kept, knob=0, du_walk=2, overlap=2):
        for name, value in (("WALK_STEPS", knob), ("DU_WALK", du_walk), ("OVERLAP", overlap)):
            monkeypatch.setattr(chunk, name, value)
        log = record_launches(monkeypatch, chunk, walks, lambda name, kw: (name[1:-7], kw["WALK_STEPS"]))
        chunk_rla_bwd(*args, chunk_size=16, walk=kept)
        return log

    assert steps(tokens) == [("rerun_walk", 1), ("rla_bwd_du_walk", 1)]
    assert steps(tokens, overlap=0) == [("rerun_walk", 2)] + [("dstate_walk", 2)] * 2
    assert steps(walk, du_walk=1) == [("rla_bwd_du_walk", 2)]
    assert steps(tokens, knob=2) == [("rerun_walk", 2), ("rla_bwd_du_walk", 2)]


@pytest.mark.parametrize("case", ["odd_chunks", "varlen", "blocks", "odd_chunks_bf16"])
def test_rerun_as_one_walk(monkeypatch, case):
    """RERUN_WALK 1: the backward's rerun of S's and R's walks (the residuals kept) as one walk, at one and two chunks
    a loop turn: the same chunk states as the two launches, so the same gradients bit for bit (packed sequences, two
    K- and V-blocks, half inputs), every state row written and none past the chunks. Another value is a ValueError
    naming the knob, before any launch."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    shape, cu, chunk_size, (clip, residual), _ = WALK_STEP_CASES[case]
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    inputs, S0, R0 = make_inputs(**shape)
    kw = dict(chunk_size=chunk_size)
    *outputs, kept = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_tokens=True, **kw)
    cotangents = [torch.randn_like(x) for x in outputs]
    walks = ("_state_walk_kernel", "_rerun_walk_kernel")
    for steps in (1, 2):
        monkeypatch.setattr(chunk, "WALK_STEPS", steps)
        got = {}
        for one in (0, 1):
            monkeypatch.setattr(chunk, "RERUN_WALK", one)
            buffers = _nan_padded_state_buffers(monkeypatch, chunk)
            log = record_launches(monkeypatch, chunk, walks, lambda name, kw: (name, kw["WALK_STEPS"]))
            got[one] = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, *cotangents, walk=kept, **kw)
            assert log == ([("_rerun_walk_kernel", steps)] if one else [("_state_walk_kernel", steps)] * 2), log
            for n_chunks, whole in buffers[:2]:  # the rerun's h_s, h_r
                for b in whole:
                    assert not b[:n_chunks].isnan().any() and b[n_chunks:].isnan().all()
        for name, a, b in zip(GRAD_NAMES, got[0], got[1]):
            assert (a is None and b is None) or torch.equal(a, b), (steps, name)
    monkeypatch.setattr(chunk, "RERUN_WALK", 2)
    log = record_launches(monkeypatch, chunk, walks)
    with pytest.raises(ValueError, match=r"launch knob RERUN_WALK must be 0 \(two walks\) or 1 \(one walk\); got 2"):
        chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, *cotangents, walk=kept, **kw)
    assert log == []


# name: make_inputs arguments, cu_seqlens, chunk size, whether the forward walks can take TMA descriptors
WALK_TMA_CASES = {
    # a partial last chunk in each of two sequences: TMA reads the next sequence's rows (zeros past the tensor)
    "fixed_bf16": (dict(B=2, T=37, H=2, K=32, V=32, dtype=torch.bfloat16), None, 16, True),
    "fixed_fp32_two_v_blocks": (dict(B=2, T=70, H=1, K=64, V=128), None, 64, True),
    "varlen_bf16": (dict(B=1, T=92, H=2, K=32, V=32, N=5, dtype=torch.bfloat16), [0, 5, 5, 25, 57, 92], 16, True),
    "k48_pointers": (dict(B=1, T=40, H=1, K=48, V=32), None, 16, False),  # a K-block past K: pointers
}


@pytest.mark.parametrize("case", WALK_TMA_CASES)
def test_forward_walks_through_tma_are_bit_for_bit(monkeypatch, case):
    """WALK_TMA 1 (the default): the forward's walks take their k and value tiles through TMA descriptors where the
    layout allows; the rows they read past a sequence's end (the next sequence's tokens) meet a rate of 0, so o, the
    final states, the residuals, the kept q.k products and every gradient are the pointer path's bits, and within
    tolerance of the float64 oracle. Where the layout does not allow (K not a power of two) they take pointers."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    shape, cu, chunk_size, tma = WALK_TMA_CASES[case]
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    inputs, S0, R0 = make_inputs(**shape)
    got = {}
    for knob in (0, 1):
        monkeypatch.setattr(chunk, "WALK_TMA", knob)
        log = record_launches(monkeypatch, chunk, ["_state_walk_kernel"], lambda name, kw: kw["TMA"])
        *outputs, kept = chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu, chunk_size=chunk_size,
                                       keep_tokens=True)
        assert log == [bool(knob) and tma] * 2  # S's walk, R's walk
        got[knob] = outputs + list(kept)
    for name, a, b in zip(("o", "S_T", "R_T", "r", "qk"), got[0], got[1]):
        assert torch.equal(a, b), name
    tol = 1e-4 if shape.get("dtype", torch.float32) == torch.float32 else 1e-2
    check(inputs, S0, R0, 0.7, 1.0, "clip", cu_seqlens=cu, tol=tol, chunk_size=chunk_size)


@pytest.mark.parametrize("qk_kept", [1, 0])
@pytest.mark.parametrize("case", WALK_TMA_CASES)
def test_du_walk_through_tma_is_bit_for_bit(monkeypatch, case, qk_kept):
    """DU_TMA 1: the one reverse walk takes its q, k, do, r and kept q.k tiles through TMA descriptors where the layout
    allows. The rows it reads past a sequence's end are the next sequence's tokens (or zeros past the tensor): gamma
    of 0 there, and dh_S's masked weight, keep them out, so every gradient is the pointer path's bits, with the q.k
    products kept or made. K not a power of two takes pointers."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    shape, cu, chunk_size, tma = WALK_TMA_CASES[case]
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    inputs, S0, R0 = make_inputs(**shape)
    monkeypatch.setattr(chunk, "DU_WALK", 1)
    monkeypatch.setattr(chunk, "QK_KEPT", qk_kept)
    *outputs, kept = chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu, chunk_size=chunk_size, keep_tokens=True)
    cotangents = (torch.randn_like(outputs[0]), torch.randn_like(outputs[1]), torch.randn_like(outputs[2]))
    grads = {}
    for knob in (0, 1):
        monkeypatch.setattr(chunk, "DU_TMA", knob)
        log = record_launches(monkeypatch, chunk, ["_rla_bwd_du_walk_kernel"],
                              lambda name, kw: (kw["TMA"], kw["HAS_QK"]))
        grads[knob] = chunk_rla_bwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu, *cotangents, chunk_size=chunk_size,
                                    walk=kept)
        assert log == [(bool(knob) and tma, bool(qk_kept))]
    for a, b in zip(grads[0], grads[1]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert all(g.abs().amax() > 0 for g in grads[1][:6])


def test_du_tma_knob_is_validated(monkeypatch):
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=20, H=1, K=16, V=16)
    *outputs, kept = chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, None, chunk_size=16, keep_tokens=True)
    monkeypatch.setattr(chunk, "DU_WALK", 1)
    monkeypatch.setattr(chunk, "DU_TMA", 3)
    with pytest.raises(ValueError, match="DU_TMA must be 0"):
        chunk_rla_bwd(*inputs, 0.7, 1.0, "clip", S0, R0, None, torch.randn_like(outputs[0]), None, None,
                      chunk_size=16, walk=kept)


def test_empty_input_takes_pointers_where_tma_cannot_describe_it():
    """T = 0: a TMA descriptor cannot describe an empty tensor (triton_utils.rows_descriptor gives None), so the walks
    that would take one (WALK_TMA, DU_TMA, both 1 by default) take pointers: the final states are the initial ones and
    the initial states' gradients the final ones', where descriptors of the empty inputs raised before."""
    inputs, S0, R0 = make_inputs(B=2, T=0, H=2, K=16, V=16)
    o, S_T, R_T, kept = chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, None, keep_tokens=True)
    assert o.shape == inputs[2].shape and torch.equal(S_T, S0) and torch.equal(R_T, R0)
    dS_T, dR_T = torch.randn_like(S0), torch.randn_like(R0)
    grads = chunk_rla_bwd(*inputs, 0.7, 1.0, "clip", S0, R0, None, torch.randn_like(o), dS_T, dR_T, walk=kept)
    assert torch.equal(grads[6], dS_T) and torch.equal(grads[7], dR_T)
    assert all(g.numel() == 0 for g in grads[:3])


# name: make_inputs arguments, cu_seqlens, chunk size, (clip, residual), tolerance against float64
RES_WALK_CASES = {
    # 3 chunks, the last partial, initial states; the clip biting on about half the elements
    "odd_chunks": (dict(B=2, T=37, H=2, K=16, V=16), None, 16, (0.5, "clip"), 1e-4),
    # packed, an empty sequence among them; tanh
    "varlen": (dict(B=1, T=92, H=2, K=16, V=16, N=5), [0, 5, 5, 25, 57, 92], 16, (0.8, "tanh"), 1e-4),
    # three V-blocks (V = 48 at 16 wide), K past its power of two's half (48 in a 64-wide block), half inputs
    "bf16_blocks": (dict(B=1, T=70, H=1, K=48, V=48, dtype=torch.bfloat16), None, 16, (0.3, "clip"), 1e-2),
    # no residual function: r = v - u
    "fp16_identity": (dict(B=2, T=40, H=1, K=32, V=32, dtype=torch.float16), None, 16, (None, "clip"), 1e-2),
}


@pytest.mark.parametrize("pairs", [0, 1, 2])
@pytest.mark.parametrize("case", RES_WALK_CASES)
def test_one_walk_makes_the_residuals(monkeypatch, case, pairs):
    """RES_WALK 2: u's in-chunk sums chunk-parallel (the residual kernel's IN_CHUNK pass), then one walk carrying S and
    R that makes each chunk's residuals between its steps, in place of S's walk, the residual kernel and R's walk. The
    forward and the backward that reruns it (nothing kept), the kept residuals' and the kept walk's, against the
    float64 oracle; the residuals within rounding of the three passes'; every state row written (every other one
    where the output kernel reads pairs: with RES_WALK_PAIRS 2, or 0 at a 16-wide walk of half inputs, by a walk
    stepping pairs, u's in-chunk sums made at a pair) and none past the chunks; a kept walk's states the ones the
    rerun makes."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    shape, cu, chunk_size, (clip, residual), tol = RES_WALK_CASES[case]
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    inputs, S0, R0 = make_inputs(**shape)
    kw = dict(chunk_size=chunk_size)
    *_, (r_three, _) = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_tokens=True, **kw)
    monkeypatch.setattr(chunk, "RES_WALK", 2)
    monkeypatch.setattr(chunk, "RES_WALK_PAIRS", pairs)
    buffers = _nan_padded_state_buffers(monkeypatch, chunk)
    log = record_launches(monkeypatch, chunk, ("_state_walk_kernel", "_rla_residual_kernel", "_residual_walk_kernel",
                                               "_rla_fwd_output_kernel"),
                          lambda name, kw: (name, kw.get("IN_CHUNK", kw.get("STATE_EVERY")), kw["BT"]))
    out = {}
    check(inputs, S0, R0, 0.7, clip, residual, cu, tol=tol, out=out, **kw)
    halves = 2 if shape["K"] <= 64 or shape.get("dtype", torch.float32) != torch.float32 else 1
    L = chunk._Layout(inputs[0], inputs[2], *inputs[3:], clip, residual, S0, R0, cu, chunk_size)
    stepped = pairs == 2 or (pairs == 0 and L.BV_reswalk <= 16 and inputs[0].dtype != torch.float32)
    step, every = (2 * chunk_size, 1) if stepped and halves == 2 else (chunk_size, halves)
    one_walk = [("_rla_residual_kernel", True, step), ("_residual_walk_kernel", every, step)]
    rerun = [("_rla_residual_kernel", True, chunk_size), ("_residual_walk_kernel", 1, chunk_size)]
    assert log == one_walk + [("_rla_fwd_output_kernel", halves, chunk_size)] + rerun
    for n_chunks, whole in buffers:
        for b in whole:
            assert not b[:n_chunks].isnan().any() and b[n_chunks:].isnan().all()
    *outputs, (r_one, _) = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_tokens=True, **kw)
    assert rel_err(r_one, r_three.double()) < (1e-5 if tol < 1e-3 else 1e-2)
    for x, ref in zip(outputs, out["outputs"]):
        assert torch.equal(x, ref)
    grads = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, *out["cotangents"], walk=(r_one,), **kw)
    *outputs, walk = chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, keep_walk=True, **kw)
    kept = chunk_rla_bwd(*inputs, 0.7, clip, residual, S0, R0, cu, *out["cotangents"], walk=walk[:3], **kw)
    for name, x, y, ref in zip(GRAD_NAMES, grads, kept, out["want_grads"]):
        assert (x is None and ref is None) or (rel_err(x, ref) < tol and rel_err(y, ref) < tol), name
    for x, y in zip(kept, out["grads"]):  # the kept walk's states are the rerun's: the same bits
        assert (x is None and y is None) or torch.equal(x, y)
    monkeypatch.setattr(chunk, "RES_WALK", 3)
    log.clear()
    with pytest.raises(ValueError, match=r"launch knob RES_WALK must be 0 \(automatic\), 1 .* or 2 "):
        chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, **kw)
    monkeypatch.setattr(chunk, "RES_WALK", 2)
    monkeypatch.setattr(chunk, "RES_WALK_PAIRS", 3)
    with pytest.raises(ValueError, match=r"launch knob RES_WALK_PAIRS must be 0 \(automatic\), 1 .* or 2 "):
        chunk_rla_fwd(*inputs, 0.7, clip, residual, S0, R0, cu, **kw)
    assert log == []


def test_one_walks_w_pass_at_its_own_width(monkeypatch):
    """W_BV: RES_WALK's w pass at a V-block of its own (three 16-wide blocks against the whole 64-wide V here), at
    chunks and at chunk pairs: the float64 oracle's outputs and gradients and, a column of w being the same sums either
    way, within rounding of the residual kernel's width; a bad width is a ValueError naming the knob."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    inputs, S0, R0 = make_inputs(B=1, T=70, H=1, K=32, V=48, dtype=torch.bfloat16)
    monkeypatch.setattr(chunk, "RES_WALK", 2)
    log = record_launches(monkeypatch, chunk, ("_rla_residual_kernel",), lambda name, kw: kw["BV"])
    for pairs in (1, 2):
        monkeypatch.setattr(chunk, "RES_WALK_PAIRS", pairs)
        got = {}
        for width in (16, 64):
            monkeypatch.setattr(chunk, "W_BV", width)
            log.clear()
            torch.manual_seed(0)
            out = {}
            check(inputs, S0, R0, 0.7, 0.3, "clip", None, tol=1e-2, out=out, chunk_size=16)
            assert log == [width, width], log  # the forward's pass and the backward's rerun of it
            got[width] = list(out["outputs"]) + list(out["grads"])
        for x, ref in zip(got[16], got[64]):
            assert (x is None and ref is None) or rel_err(x, ref) < 2e-2
    monkeypatch.setattr(chunk, "W_BV", 24)
    with pytest.raises(ValueError, match="W_BV"):
        chunk_rla_fwd(*inputs, 0.7, 0.3, "clip", S0, R0, None, chunk_size=16)
    # automatic: all of V (up to 128) for half inputs, the residual kernel's 64 for fp32 ones
    monkeypatch.setattr(chunk, "W_BV", 0)
    for dtype, width in ((torch.bfloat16, 128), (torch.float32, 64)):
        wide_inputs, _, _ = make_inputs(B=1, T=20, H=1, K=32, V=96, dtype=dtype)
        log.clear()
        chunk_rla_fwd(*wide_inputs, 0.7, 0.3, "clip", None, None, None, chunk_size=16)
        assert log == [width], (dtype, log)


@pytest.mark.parametrize("case", WALK_TMA_CASES)
def test_one_walk_through_tma_is_bit_for_bit(monkeypatch, case):
    """RES_WALK_TMA 1 (the default): the one forward walk (RES_WALK 2) takes k, v and u's in-chunk sums w through TMA
    descriptors where the layout allows. The rows it reads past a sequence's end are the next sequence's tokens: beta
    and gamma of 0 keep them out of both states, and their residuals are not stored, so o, the final states, the
    residuals and every gradient (through the backward's rerun) are the pointer path's bits. K not a power of two takes
    pointers."""
    chunk = sys.modules[chunk_rla_fwd.__module__]
    shape, cu, chunk_size, tma = WALK_TMA_CASES[case]
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    inputs, S0, R0 = make_inputs(**shape)
    monkeypatch.setattr(chunk, "RES_WALK", 2)
    do, dS_T, dR_T = torch.randn_like(inputs[2]), torch.randn_like(S0), torch.randn_like(R0)
    got = {}
    for knob in (0, 1):
        monkeypatch.setattr(chunk, "RES_WALK_TMA", knob)
        log = record_launches(monkeypatch, chunk, ["_residual_walk_kernel"], lambda name, kw: kw["TMA"])
        *outputs, kept = chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu, chunk_size=chunk_size,
                                       keep_tokens=True)
        grads = chunk_rla_bwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu, do, dS_T, dR_T, chunk_size=chunk_size)
        assert log == [bool(knob) and tma] * 2  # the forward's walk, the backward's rerun of it
        got[knob] = outputs + list(kept) + list(grads)
    for a, b in zip(got[0], got[1]):
        assert (a is None and b is None) or torch.equal(a, b)
    monkeypatch.setattr(chunk, "RES_WALK_TMA", 2)
    with pytest.raises(ValueError, match=r"launch knob RES_WALK_TMA must be 0 \(pointers\) or 1"):
        chunk_rla_fwd(*inputs, 0.7, 1.0, "clip", S0, R0, cu, chunk_size=chunk_size)
