"""Does RDN's backward repeat bit for bit at the fixed (first) launch configs? On the GPU machine:

    bash scripts/gpu_session.sh determinism   (or: . scripts/gpu_env.sh && RLA_KERNELS_FIXED_CONFIG=1 python3 THIS)

For two shapes (B=1 T=8k H=4, B=16 T=1k H=16; K=V=128 bf16) it runs the backward three times on each reverse-walk
path (TRAILED_WALKS 1 and 2) and names the gradients that differ between runs or between the paths, then times the
backward at B=16 T=2k H=16. To test a config, put it first in its kernel's list in kernels/rdn/chunk_bwd.py (a `sed`
before the install). It found the gradient kernel's dk and dg changing from run to run at (4, 2), and not at (4, 1)
or (8, 1) (H200, Triton 3.6, 2026-12-04; chunk_bwd.GRAD_LAUNCHES).
"""
import sys

import torch
import triton

sys.path.insert(0, "tests")
from kerneltools import make_inputs  # noqa: E402
from rla_kernels.rdn.chunk import chunk_rdn_bwd, chunk_rdn_fwd  # noqa: E402

chunk = sys.modules[chunk_rdn_fwd.__module__]
NAMES = ["dq", "dk", "dv", "dg", "dbeta", "dgamma", "dS0", "dR0"]


def backward_of(B, T, H):
    torch.manual_seed(0)
    inputs, S0, R0 = make_inputs(B=B, T=T, H=H, K=128, V=128, dtype=torch.bfloat16, device="cuda")
    *_, wy, tokens = chunk_rdn_fwd(*inputs, None, 1.0, "clip", S0, R0, None, save_wy=True, keep_tokens=True)
    do = torch.randn_like(inputs[2])
    final = [torch.randn_like(S0), torch.randn_like(R0)]
    return lambda: chunk_rdn_bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, *final, wy=wy, walk=tokens)


for B, T, H in ((1, 8192, 4), (16, 1024, 16)):
    run = backward_of(B, T, H)
    chunk.DR_WALK_T = 2  # one orientation for both paths
    by_path = {}
    for trailed in (1, 2):
        chunk.TRAILED_WALKS = trailed
        runs = [run() for _ in range(3)]
        by_path[trailed] = runs[0]
        differ = [n for n, a, b, c in zip(NAMES, *runs)
                  if a is not None and not (torch.equal(a, b) and torch.equal(a, c))]
        print(f"B={B} T={T} H={H} trailed={trailed}: differ between runs {differ}", flush=True)
    for n, a, b in zip(NAMES, by_path[1], by_path[2]):
        if a is not None and not torch.equal(a, b):
            print(f"  paths 1 vs 2 {n}: max abs {(a.float() - b.float()).abs().max().item():.3e}"
                  f" of {a.float().abs().max().item():.3e}", flush=True)

run = backward_of(16, 2048, 16)
print(f"backward B=16 T=2048 H=16: {triton.testing.do_bench(run, warmup=50, rep=300):.3f} ms", flush=True)
