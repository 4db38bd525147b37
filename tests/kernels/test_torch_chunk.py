"""The chunked PyTorch backend against the float64 token-by-token oracles: outputs, states, gradients."""
import pytest
import torch
import torch.nn.functional as F

from rla_kernels import chunk_rdn_torch, chunk_rla_torch, naive_recurrent_rdn, naive_recurrent_rla

OPS = {"rla": (chunk_rla_torch, naive_recurrent_rla), "rdn": (chunk_rdn_torch, naive_recurrent_rdn)}


def rel(x, ref):
    assert not torch.isnan(x).any(), "NaN in result"
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def make_inputs(B=2, T=37, H=2, K=16, V=8, v_scale=3.0, states=True, N=None):
    """float64 leaves; v scaled up so the residual clip saturates on a large share of elements."""
    q = F.normalize(torch.randn(B, T, H, K, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, V, dtype=torch.float64) * v_scale
    g = F.logsigmoid(torch.randn(B, T, H, dtype=torch.float64) + 1.0)
    beta = torch.rand(B, T, H, dtype=torch.float64)
    gamma = torch.rand(B, T, H, dtype=torch.float64)
    N = B if N is None else N
    init = (torch.randn(N, H, K, V, dtype=torch.float64), torch.randn(N, H, K, V, dtype=torch.float64)) if states else None
    return [q, k, v, g, beta, gamma], init


def run_with_grads(fn, xs, init, dtype, **kw):
    """Forward + backward of a random linear functional of (o, S, R); returns outputs and input grads."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in xs]
    state_leaves = None if init is None else [s.detach().float().requires_grad_() for s in init]
    if dtype == torch.float64 and state_leaves is not None:
        state_leaves = [s.detach().double().requires_grad_() for s in init]
    o, (S, R) = fn(*leaves, initial_state=state_leaves, output_final_state=True, **kw)
    gen = torch.Generator().manual_seed(1)
    # drawn on the CPU so that every device sees the same functional
    weights = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device) for x in (o, S, R)]
    loss = sum((x.double() * w).sum() for x, w in zip((o, S, R), weights))
    loss.backward()
    grads = [x.grad for x in leaves] + ([] if state_leaves is None else [s.grad for s in state_leaves])
    return (o, S, R), grads


CASES = {
    "clip": dict(clip=1.0),
    "no_clip": dict(clip=None),
    "tanh": dict(clip=1.0, residual="tanh"),
    "clip_half": dict(clip=0.5),
}


@pytest.mark.parametrize("variant", OPS)
@pytest.mark.parametrize("case", CASES)
def test_matches_oracle_with_gradients_fp32(variant, case):
    chunk_fn, naive_fn = OPS[variant]
    xs, init = make_inputs()
    kw = dict(scale=0.7, **CASES[case])
    ref_out, ref_grads = run_with_grads(naive_fn, xs, init, torch.float64, **kw)
    out, grads = run_with_grads(chunk_fn, xs, init, torch.float32, chunk_size=16, **kw)
    for name, x, r in zip("oSR", out, ref_out):
        assert rel(x, r) < 1e-5, name
    names = ["q", "k", "v", "g", "beta", "gamma", "S0", "R0"]
    for name, x, r in zip(names, grads, ref_grads):
        assert rel(x, r) < 1e-4, f"grad of {name}: {rel(x, r)}"


def test_clip_saturates_on_a_large_share_in_these_inputs():
    # Guard for the tests above: the residual pre-activations exceed the clip on many elements.
    xs, init = make_inputs()
    q, k, v, g, beta, gamma = xs
    o_clip, _ = naive_recurrent_rla(*xs, clip=1.0, initial_state=init)
    o_free, _ = naive_recurrent_rla(*xs, clip=None, initial_state=init)
    assert rel(o_clip, o_free) > 0.05
    # At t = 0 the residual is v - S0^T k: measure the share of clipped elements there.
    pre = v[:, 0] - torch.einsum("bhk,bhkv->bhv", k[:, 0], init[0])
    assert (pre.abs() > 1.0).double().mean() > 0.3


@pytest.mark.parametrize("variant", OPS)
def test_float64_is_exact(variant):
    chunk_fn, naive_fn = OPS[variant]
    xs, init = make_inputs(T=50)
    o, (S, R) = chunk_fn(*xs, initial_state=init, output_final_state=True, chunk_size=16)
    o_ref, (S_ref, R_ref) = naive_fn(*xs, initial_state=init, output_final_state=True)
    assert o.dtype == torch.float64
    for x, r in ((o, o_ref), (S, S_ref), (R, R_ref)):
        assert rel(x, r) < 1e-12


@pytest.mark.parametrize("variant", OPS)
@pytest.mark.parametrize("T,chunk", [(1, 64), (5, 64), (16, 16), (17, 16), (40, 16)])
def test_lengths_below_at_and_off_the_chunk(variant, T, chunk):
    chunk_fn, naive_fn = OPS[variant]
    xs, init = make_inputs(T=T)
    out, grads = run_with_grads(chunk_fn, xs, init, torch.float32, chunk_size=chunk)
    ref_out, ref_grads = run_with_grads(naive_fn, xs, init, torch.float64)
    for x, r in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        assert rel(x, r) < 1e-4


@pytest.mark.parametrize("variant", OPS)
def test_zero_initial_state_is_the_default(variant):
    chunk_fn, _ = OPS[variant]
    xs, _ = make_inputs(T=20)
    o_none, _ = chunk_fn(*xs, chunk_size=8)
    zeros = torch.zeros(2, 2, 16, 8, dtype=torch.float64)
    o_zero, _ = chunk_fn(*xs, initial_state=(zeros, zeros), chunk_size=8)
    assert rel(o_none, o_zero) == 0


@pytest.mark.parametrize("variant", OPS)
def test_varlen_matches_oracle_with_gradients(variant):
    chunk_fn, naive_fn = OPS[variant]
    cu = torch.tensor([0, 5, 6, 29, 40])  # lengths 5, 1, 23, 11: ragged against chunk 8
    xs, init = make_inputs(B=1, T=40, N=4)
    out, grads = run_with_grads(chunk_fn, xs, init, torch.float32, cu_seqlens=cu, chunk_size=8)
    ref_out, ref_grads = run_with_grads(naive_fn, xs, init, torch.float64, cu_seqlens=cu)
    for x, r in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        assert rel(x, r) < 1e-4


@pytest.mark.parametrize("variant", OPS)
def test_chained_calls_equal_one_call(variant):
    chunk_fn, _ = OPS[variant]
    xs, init = make_inputs(T=45)
    xs = [x.float() for x in xs]
    init = tuple(s.float() for s in init)
    o, (S, R) = chunk_fn(*xs, initial_state=init, output_final_state=True, chunk_size=16)
    o1, state = chunk_fn(*[x[:, :21] for x in xs], initial_state=init, output_final_state=True, chunk_size=16)
    o2, (S2, R2) = chunk_fn(*[x[:, 21:] for x in xs], initial_state=state, output_final_state=True, chunk_size=16)
    assert rel(torch.cat([o1, o2], 1), o) < 1e-5
    assert rel(S2, S) < 1e-5 and rel(R2, R) < 1e-5


@pytest.mark.parametrize("variant", OPS)
@pytest.mark.parametrize("K,V", [(64, 64), (128, 128), (4, 3)])
def test_head_sizes(variant, K, V):
    chunk_fn, naive_fn = OPS[variant]
    xs, init = make_inputs(B=1, T=24, H=1, K=K, V=V)
    out, grads = run_with_grads(chunk_fn, xs, init, torch.float32, chunk_size=16)
    ref_out, ref_grads = run_with_grads(naive_fn, xs, init, torch.float64)
    for x, r in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        assert rel(x, r) < 1e-4


@pytest.mark.parametrize("variant", OPS)
def test_bf16_inputs(variant):
    chunk_fn, naive_fn = OPS[variant]
    xs, init = make_inputs(T=40, K=64, V=32)
    xs = [x.bfloat16().double() for x in xs]  # the oracle sees exactly the rounded inputs
    init = tuple(s.float().double() for s in init)
    o_ref, (S_ref, R_ref) = naive_fn(*xs, initial_state=init, output_final_state=True)
    o, (S, R) = chunk_fn(*[x.bfloat16() for x in xs], initial_state=tuple(s.float() for s in init),
                         output_final_state=True, chunk_size=16)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32 and R.dtype == torch.float32
    assert rel(o, o_ref) < 1e-2 and rel(S, S_ref) < 1e-3 and rel(R, R_ref) < 1e-3


@pytest.mark.parametrize("variant", OPS)
def test_strong_decay_stays_finite(variant):
    # Gates near zero (g around -20) make exp(-G) overflow in fp32; every exponent here is a difference.
    chunk_fn, naive_fn = OPS[variant]
    xs, init = make_inputs(T=64)
    xs[3] = xs[3] * 20
    out, grads = run_with_grads(chunk_fn, xs, init, torch.float32, chunk_size=64)
    ref_out, ref_grads = run_with_grads(naive_fn, xs, init, torch.float64)
    for x, r in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        assert rel(x, r) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("variant", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_on_cuda_matches_oracle(variant, dtype):
    # The torch backend is the fallback on any device: same numbers on the GPU (TF32 must stay off).
    chunk_fn, naive_fn = OPS[variant]
    cu = torch.tensor([0, 100, 101, 300])
    xs, init = make_inputs(B=1, T=300, H=4, K=128, V=128, N=3)
    xs = [x.to(dtype).double() for x in xs]
    ref_out, ref_grads = run_with_grads(naive_fn, xs, init, torch.float64, cu_seqlens=cu)
    out, grads = run_with_grads(chunk_fn, [x.cuda() for x in xs], [s.cuda() for s in init], dtype,
                                cu_seqlens=cu.cuda())
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for x, r in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        assert rel(x.cpu(), r) < tol
