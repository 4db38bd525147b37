"""triton_utils.split_bf16_pairs (RLA_KERNELS_SPLIT_ASM, on unless 0): the bf16 hi + lo split as one PTX block a pair
of elements. On its own it gives the very bits the casts give (cvt.rn on both sides, an exact subtraction between):
checked bit for bit on the GPU, over magnitudes, signs, ties, subnormals and infinities. Inside the ops it does not
(H100, 2026-12-05: both ops' outputs and gradients differ by a bf16 ulp or two at the most, while each setting repeats
its own bits exactly): likely LLVM contracting the casts' x - hi with the product that made x into an FMA, which the
asm block's operand hides. So the ops' test bounds the difference; the float64 checks (gpu_check_rdn.py,
gpu_check_rla.py) are what say both are right. The interpreter runs no PTX: there the switch stays off."""
import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl

from rla_kernels.triton_utils import split_bf16_pairs

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RLA_KERNELS_SPLIT_ASM")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", "import rla_kernels.triton_utils as t; print(t.SPLIT_ASM)"],
                          capture_output=True, text=True, timeout=300, env=env)


def _switch(env_extra: dict) -> str:
    out = _import(env_extra)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_split_asm_is_read_at_import_and_never_under_the_interpreter():
    assert _switch({}) == "True"  # on by default since 2026-12-05
    assert _switch({"RLA_KERNELS_SPLIT_ASM": "1"}) == "True"
    assert _switch({"RLA_KERNELS_SPLIT_ASM": "1", "TRITON_INTERPRET": "1"}) == "False"
    assert _switch({"RLA_KERNELS_SPLIT_ASM": "0"}) == "False"


def test_split_asm_refuses_a_value_it_would_read_as_off():
    out = _import({"RLA_KERNELS_SPLIT_ASM": "true"})
    assert out.returncode != 0
    assert "RLA_KERNELS_SPLIT_ASM must be 1 or unset (on), or 0 (off); got 'true'" in out.stderr


@triton.jit
def _split_kernel(x, hi, lo, hi_ref, lo_ref, N: tl.constexpr):
    o = tl.arange(0, N)
    b_x = tl.load(x + o)
    b_hi, b_lo = split_bf16_pairs(b_x)
    tl.store(hi + o, b_hi)
    tl.store(lo + o, b_lo)
    b_href = b_x.to(tl.bfloat16)
    tl.store(hi_ref + o, b_href)
    tl.store(lo_ref + o, (b_x - b_href.to(tl.float32)).to(tl.bfloat16))


@pytest.mark.gpu
def test_gpu_split_bf16_pairs_is_the_casts():
    """Every element's hi and lo bits equal the casts' (hi = x rounded to nearest even, lo = x - hi rounded), and
    hi + lo is x to ~2^-16: random draws over 2^-130 .. 2^120 of both signs, exact ties of bf16 rounding, +-0, the
    largest finite floats (whose hi rounds to inf) and +-inf."""
    n = 1 << 16
    x = torch.randn(n, device="cuda") * torch.exp2(torch.randint(-130, 120, (n,), device="cuda").float())
    bits = torch.randint(0, 1 << 16, (1024,), device="cuda", dtype=torch.int32) << 16
    x[:1024] = (bits | 0x8000).view(torch.float32)  # halfway between two bf16: ties to even
    x[1024:1032] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4e38, -3.4e38, 1e-40, -1e-40])
    x = x[torch.isfinite(x) | torch.isinf(x)]
    x = x[: 1 << 15]
    hi, lo, hi_ref, lo_ref = (torch.empty(x.shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    _split_kernel[(1,)](x, hi, lo, hi_ref, lo_ref, N=x.numel())
    assert torch.equal(hi.view(torch.int16), hi_ref.view(torch.int16))
    assert torch.equal(lo.view(torch.int16), lo_ref.view(torch.int16))
    normal = torch.isfinite(hi.float()) & (x.abs() > 2.0 ** -100)
    err = (hi.double() + lo.double() - x.double())[normal].abs() / x.double()[normal].abs()
    assert err.max().item() < 2.0 ** -15


_RUN = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from kerneltools import make_inputs
from rla_kernels.rdn.chunk import chunk_rdn_bwd, chunk_rdn_fwd
from rla_kernels.rla.chunk import chunk_rla_bwd, chunk_rla_fwd
torch.manual_seed(0)
out = []
for fwd, bwd, kw in ((chunk_rdn_fwd, chunk_rdn_bwd, dict(save_wy=True, keep_tokens=True)),
                     (chunk_rla_fwd, chunk_rla_bwd, dict(keep_tokens=True))):
    x, S0, R0 = make_inputs(B=2, T=1000, H=4, K=128, V=128, dtype=torch.bfloat16, device="cuda")
    o, S_T, R_T, *rest = fwd(*x, None, 1.0, "clip", S0, R0, None, **kw)
    do, dS, dR = torch.randn_like(o), torch.randn_like(S_T), torch.randn_like(R_T)
    more = dict(wy=rest[0], walk=rest[1]) if fwd is chunk_rdn_fwd else dict(walk=rest[0])
    out += [o, S_T, R_T, *bwd(*x, None, 1.0, "clip", S0, R0, None, do, dS, dR, **more)]
torch.save([t.cpu() for t in out], {path!r})
"""


@pytest.mark.gpu
def test_gpu_ops_with_the_asm_split_are_the_casts_within_two_ulps(tmp_path):
    """RDN's and RLA's outputs, final states and every gradient (bf16, K = V = 128, the API's kept-token backward,
    fixed launch configs) with RLA_KERNELS_SPLIT_ASM=1 and =0 (each process imports the switch once) differ by at most
    2^-6 of each tensor's largest magnitude (measured, H100, 2026-12-05: at most 2.2e-3 of it, RDN's dq; 5 of the 22
    equal):
    a split pair swapped, or a hi or lo lost to a wrong shift or mask, moves them by far more. Subtler errors are the
    float64 checks' to find."""
    runs = {}
    for flag in ("0", "1"):
        path = str(tmp_path / f"run{flag}.pt")
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.update(RLA_KERNELS_SPLIT_ASM=flag, RLA_KERNELS_FIXED_CONFIG="1")
        code = _RUN.format(tests=TESTS, path=path)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[flag] = torch.load(path)
    assert len(runs["0"]) == len(runs["1"]) == 22
    for i, (a, b) in enumerate(zip(runs["0"], runs["1"])):
        assert torch.isfinite(b).all(), i
        assert (a.float() - b.float()).abs().max() <= 2.0 ** -6 * a.float().abs().max(), i
