"""The interpreter our CPU Triton tests run on, patched in tests/conftest.py to do what the GPU does: its bf16
conversion rounds to nearest, ties to even (triton_utils.interpreter_rounds_bf16_to_nearest; without it the interpreter
truncates, and the bf16 error bounds of the kernel tests would measure the interpreter, not the kernels), and a dot's
bits do not depend on how its operands lie in memory (triton_utils.interpreter_dots_ignore_layout; without it a tile
read transposed or through a TMA descriptor took another BLAS kernel on AVX-512 CPUs, and the walks' "bit for bit"
tests failed there alone)."""
import torch
import triton
import triton.language as tl

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _store_as_bf16(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))


def test_fp32_to_bf16_rounds_to_nearest_even():
    base = torch.randn(64).abs().add(1e-3).to(torch.bfloat16).to(torch.float32)  # positive bf16 values
    ulp = torch.ldexp(torch.ones(64), torch.frexp(base)[1] - 8)  # one bf16 step at each value
    # a quarter, a half (the tie) and three quarters of a step above bf16 values, and random values
    x = torch.cat([base + 0.25 * ulp, base + 0.5 * ulp, base + 0.75 * ulp, torch.randn(64) * 3.0]).to(DEVICE)
    y = torch.empty(x.shape, dtype=torch.bfloat16, device=DEVICE)
    _store_as_bf16[(1,)](x, y, N=x.numel())
    expected = x.to(torch.bfloat16)
    assert torch.equal(y.view(torch.int16), expected.view(torch.int16))
    # three quarters of a step round up to the next value, where truncation would keep the one below
    assert torch.equal(y[128:192].float().cpu(), base + ulp)


@triton.jit
def _dot_both_ways(a_ptr, b_ptr, bt_ptr, y_ptr, z_ptr, N: tl.constexpr):
    rows = tl.arange(0, N)
    tile = rows[:, None] * N + rows[None, :]
    a = tl.load(a_ptr + tile)
    tl.store(y_ptr + tile, tl.dot(a, tl.load(b_ptr + tile), input_precision="ieee"))
    tl.store(z_ptr + tile, tl.dot(a, tl.trans(tl.load(bt_ptr + tile)), input_precision="ieee"))  # a transposed view


def test_a_dot_has_the_same_bits_whatever_its_operands_layout():
    torch.manual_seed(0)
    n = 32
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    y, z = torch.empty_like(a), torch.empty_like(a)
    _dot_both_ways[(1,)](a, b, b.t().contiguous(), y, z, N=n)
    assert torch.equal(y, z)
    torch.testing.assert_close(y, a.double().matmul(b.double()).float(), rtol=1e-5, atol=1e-5)
