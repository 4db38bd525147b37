"""The bf16 conversion our Triton tests run on rounds as the GPU does (to nearest, ties to even): on the CPU through
the interpreter patched in tests/conftest.py (triton_utils.interpreter_rounds_bf16_to_nearest), on the GPU by the
hardware. Without it the interpreter truncates, and the bf16 error bounds of the kernel tests would measure the
interpreter, not the kernels."""
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
