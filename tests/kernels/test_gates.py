"""The layers' gates in one launch (rla_kernels.gates) against their float64 reference."""
import pytest
import torch

from rla_kernels.gates import gates, gates_reference


def _inputs(B, T, H, dtype, with_c=True, device="cpu"):
    a = (8 * torch.randn(B, T, H, device=device)).to(dtype)  # softplus far out on both sides, with dt_bias
    a[0, 0, 0] = 25.0
    b = torch.randn(B, T, H, device=device).to(dtype)
    c = torch.randn(B, T, H, device=device).to(dtype) if with_c else None
    return a, b, c, torch.randn(H, device=device), 3 * torch.randn(H, device=device)


def _check(out, ref, tol):
    for got, want in zip(out, ref):
        if want is None:
            assert got is None
            continue
        assert got.shape == want.shape
        assert ((got.double() - want).norm() / want.norm()).item() < tol


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("with_c", [True, False], ids=["rla-rdn", "gdn"])
@pytest.mark.parametrize("masked", [False, True])
def test_gates_match_the_float64_reference(dtype, tol, with_c, masked):
    B, T, H = 2, 37, 9  # 74 rows: a partial block of 16
    a, b, c, A_log, dt_bias = _inputs(B, T, H, dtype, with_c)
    keep = (torch.rand(B, T) > 0.3).float() if masked else None
    ref = gates_reference(*(None if t is None else t.double() for t in (a, b, c, A_log, dt_bias)), keep)
    out = gates(a, b, c, A_log, dt_bias, keep)
    assert out[0].dtype == torch.float32 and out[1].dtype == dtype
    _check(out, ref, tol)
    assert (out[0] <= 0).all()  # a log decay
    if masked:  # a padded token: a = 1, nothing written
        assert not out[0][keep == 0].any() and not out[1][keep == 0].any()


def test_gates_refuse_what_they_cannot_do():
    a, b, c, A_log, dt_bias = _inputs(1, 3, 4, torch.float32)
    with pytest.raises(RuntimeError, match="forward-only"):
        gates(a, b, c, A_log.requires_grad_(), dt_bias)
    with pytest.raises(ValueError, match="float64"):
        gates(a.double(), b.double(), c.double(), A_log.detach(), dt_bias)
    with pytest.raises(ValueError, match="A_log and dt_bias must be"):
        gates(a, b, c, torch.zeros(5), dt_bias)
    with pytest.raises(ValueError, match="b must match a"):
        gates(a, b[:, :2], c, A_log.detach(), dt_bias)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_gpu_gates_at_smollm2_shapes(dtype, tol):
    a, b, c, A_log, dt_bias = _inputs(4, 300, 9, dtype, device="cuda")
    keep = (torch.rand(4, 300, device="cuda") > 0.1).float()
    ref = gates_reference(*(t.double() for t in (a, b, c, A_log, dt_bias)), keep)
    _check(gates(a, b, c, A_log, dt_bias, keep), ref, tol)
