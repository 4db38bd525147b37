"""The Triton decode kernels (fused_recurrent) against the float64 naive oracles.

On the CPU machine these run under TRITON_INTERPRET=1 (set by tests/conftest.py) on tiny shapes; the
``gpu`` test repeats the check at the real head size on CUDA.
"""
import pytest
import torch

from kerneltools import make_inputs
from rla_kernels import naive_recurrent_rdn, naive_recurrent_rla
from rla_kernels.rdn.fused_recurrent import fused_recurrent_rdn_fwd
from rla_kernels.residual import apply_residual
from rla_kernels.rla.fused_recurrent import fused_recurrent_rla_fwd

OPS = {
    "rla": (fused_recurrent_rla_fwd, naive_recurrent_rla),
    "rdn": (fused_recurrent_rdn_fwd, naive_recurrent_rdn),
}
# (clip, residual): clip=1 with values scaled up saturates many elements; None is the raw residual.
RESIDUALS = {"clip": (1.0, "clip"), "tanh": (0.7, "tanh"), "none": (None, "clip")}


def oracle(op, inputs, S0, R0, scale, clip, residual, cu_seqlens=None):
    d = [x.double() for x in inputs]
    state = None if S0 is None else (S0.double(), R0.double())
    o, (S, R) = OPS[op][1](*d, scale, clip, residual, state, True, cu_seqlens)
    return o, S, R


def rel_err(x, ref):
    err = ((x.double() - ref).norm() / ref.norm()).item()
    assert err == err, "NaN in the result"
    return err


def assert_close(got, want, tol):
    for name, x, ref in zip(("o", "S_T", "R_T"), got, want):
        assert torch.isfinite(x).all(), name
        assert rel_err(x, ref) < tol, (name, rel_err(x, ref))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("res", RESIDUALS)
def test_matches_oracle_with_nonzero_states(op, T, res):
    clip, residual = RESIDUALS[res]
    inputs, S0, R0 = make_inputs(B=2, T=T, H=2, K=16, V=32)
    if clip is not None:
        # The test means something only if the residual function bites on a good share of elements.
        q, k, v = inputs[:3]
        raw = v[:, 0].double() - torch.einsum("bhk,bhkv->bhv", k[:, 0].double(), S0.double())
        assert (apply_residual(raw, clip, residual) - raw).abs().gt(1e-3).float().mean() > 0.3
    got = OPS[op][0](*inputs, 0.7, clip, residual, S0, R0, None)
    assert got[0].dtype == inputs[2].dtype and got[1].dtype == got[2].dtype == torch.float32
    assert_close(got, oracle(op, inputs, S0, R0, 0.7, clip, residual), 1e-5)


@pytest.mark.parametrize("op", OPS)
def test_zero_initial_state_and_default_scale(op):
    inputs, _, _ = make_inputs(B=1, T=4, H=3, K=32, V=16)
    got = OPS[op][0](*inputs, None, 1.0, "clip", None, None, None)
    assert_close(got, oracle(op, inputs, None, None, None, 1.0, "clip"), 1e-5)


@pytest.mark.parametrize("op", OPS)
def test_head_sizes_not_powers_of_two(op):
    """Masked lanes (K = 20 in a block of 32, V = 12 over blocks of 8) must not leak into the sums."""
    inputs, S0, R0 = make_inputs(B=2, T=3, H=1, K=20, V=12)
    got = OPS[op][0](*inputs, None, 1.0, "tanh", S0, R0, None)
    assert_close(got, oracle(op, inputs, S0, R0, None, 1.0, "tanh"), 1e-5)


@pytest.mark.parametrize("op", OPS)
def test_varlen_matches_oracle(op):
    cu_seqlens = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    inputs, S0, R0 = make_inputs(B=1, T=9, H=2, K=16, V=16, N=3)
    got = OPS[op][0](*inputs, None, 1.0, "clip", S0, R0, cu_seqlens)
    assert got[1].shape == (3, 2, 16, 16)
    assert_close(got, oracle(op, inputs, S0, R0, None, 1.0, "clip", cu_seqlens.long()), 1e-5)


@pytest.mark.parametrize("op", OPS)
def test_bf16_inputs(op):
    inputs, S0, R0 = make_inputs(B=2, T=3, H=2, K=16, V=16, dtype=torch.bfloat16)
    got = OPS[op][0](*inputs, None, 1.0, "clip", S0, R0, None)
    assert got[0].dtype == torch.bfloat16
    # The oracle sees the same bf16-rounded inputs; what is left is the bf16 rounding of o.
    assert_close(got, oracle(op, inputs, S0, R0, None, 1.0, "clip"), 1e-2)


@pytest.mark.parametrize("op", OPS)
def test_prefill_then_token_by_token_decode_equals_one_call(op):
    """What generation does: oracle prefill of P tokens, then one fused_recurrent step per new token,
    writing the state in place in the cache's buffers."""
    P, T = 6, 10
    inputs, _, _ = make_inputs(B=2, T=T, H=2, K=16, V=16)
    full_o, full_S, full_R = oracle(op, inputs, None, None, None, 1.0, "clip")

    o_pre, S, R = oracle(op, [x[:, :P] for x in inputs], None, None, None, 1.0, "clip")
    S, R = S.float().contiguous(), R.float().contiguous()
    steps = []
    for t in range(P, T):
        o_t, S_ret, R_ret = OPS[op][0](*[x[:, t : t + 1] for x in inputs], None, 1.0, "clip", S, R, None,
                                       inplace=True)
        assert S_ret.data_ptr() == S.data_ptr() and R_ret.data_ptr() == R.data_ptr()
        steps.append(o_t)
    o = torch.cat([o_pre.float(), *steps], dim=1)
    assert_close((o, S, R), (full_o, full_S, full_R), 1e-5)


def test_bad_inputs_raise_value_errors():
    inputs, S0, R0 = make_inputs(B=2, T=2, H=2, K=16, V=16)
    with pytest.raises(ValueError, match="residual"):
        fused_recurrent_rla_fwd(*inputs, None, 1.0, "huber", S0, R0, None)
    with pytest.raises(ValueError, match="clip"):
        fused_recurrent_rla_fwd(*inputs, None, 0.0, "clip", S0, R0, None)
    with pytest.raises(ValueError, match="S0"):
        fused_recurrent_rdn_fwd(*inputs, None, 1.0, "clip", S0[:1], R0, None)
    with pytest.raises(ValueError, match="cu_seqlens"):
        fused_recurrent_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="inplace"):
        fused_recurrent_rla_fwd(*inputs, None, 1.0, "clip", None, None, None, inplace=True)
    with pytest.raises(ValueError, match="beta"):
        fused_recurrent_rla_fwd(*inputs[:4], inputs[4][:, :1], inputs[5], None, 1.0, "clip", S0, R0, None)


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_real_head_size(op, dtype):
    """H100: head dim 128, a decode batch, several tokens, varlen too, against float64 on the GPU."""
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    for res in RESIDUALS:
        clip, residual = RESIDUALS[res]
        inputs, S0, R0 = make_inputs(B=3, T=7, H=4, K=128, V=128, dtype=dtype, device="cuda")
        got = OPS[op][0](*inputs, None, clip, residual, S0, R0, None)
        assert_close(got, oracle(op, inputs, S0, R0, None, clip, residual), tol)
    cu = torch.tensor([0, 5, 6, 21], dtype=torch.int32, device="cuda")
    inputs, S0, R0 = make_inputs(B=1, T=21, H=4, K=128, V=128, N=3, dtype=dtype, device="cuda")
    got = OPS[op][0](*inputs, None, 1.0, "clip", S0, R0, cu)
    assert_close(got, oracle(op, inputs, S0, R0, None, 1.0, "clip", cu.long()), tol)
