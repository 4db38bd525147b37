"""Where the RDN chunk kernels spend their time: GPU time per kernel (torch.profiler), forward and backward.

    . scripts/gpu_env.sh && python3 scripts/profile_rdn.py [--shapes B,T,H,K ...] [--tune]

With --tune the kernels autotune (every config compiled and timed) and the configs chosen are printed;
without, each kernel runs its first (fixed) config.

Default shapes: the benchmark's (bf16, 32768 tokens, 16 heads, head dim 128) at T = 2k and 32k, and
SmolLM2-135M's prefill (9 heads, head dim 64, batch 1, 32k). Prints one line per kernel: ms per call.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
from gpu_check_rdn import chunk_rdn_bwd, chunk_rdn_fwd  # noqa: E402  (rla_kernels, installed or from ./kernels)

KERNELS = (("wy", "_rdn_wy_kernel"), ("chunk_fwd", "_rdn_walk_kernel"), ("chunk_fwd", "_rdn_out_kernel"),
           ("chunk_bwd", "_rdn_bwd_walk_kernel"), ("chunk_bwd", "_rdn_bwd_kernel"))


def inputs(B, T, H, K, dtype=torch.bfloat16):
    q = F.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, T, H, K, device="cuda"), dim=-1).to(dtype)
    v = torch.randn(B, T, H, K, device="cuda").to(dtype)
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda") + 4.0)
    beta, gamma = torch.rand(B, T, H, device="cuda"), torch.rand(B, T, H, device="cuda")
    return q, k, v, g, beta, gamma


def profile(fn, iters=3):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    per_kernel = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[e.name[:60]] += e.device_time / 1000 / iters
    return per_kernel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="*", default=["16,2048,16,128", "1,32768,16,128", "1,32768,9,64"])
    parser.add_argument("--tune", action="store_true", help="autotune (read by gpu_check_rdn at import)")
    args = parser.parse_args()
    for shape in args.shapes:
        B, T, H, K = (int(x) for x in shape.split(","))
        x = inputs(B, T, H, K)
        do = torch.randn_like(x[2])
        for name, fn in (("fwd", lambda: chunk_rdn_fwd(*x, None, 1.0, "clip")),
                         ("bwd", lambda: chunk_rdn_bwd(*x, None, 1.0, "clip", None, None, None, do, None, None))):
            times = profile(fn)
            total = sum(times.values())
            print(f"B={B} T={T} H={H} K={K} {name}: {total:.3f} ms GPU", flush=True)
            for kernel, ms in times.most_common(8):
                print(f"    {ms:8.3f} ms  {kernel}", flush=True)
        del x, do
        torch.cuda.empty_cache()
    package = chunk_rdn_fwd.__module__.rsplit(".", 1)[0]  # rla_kernels.rdn
    for module, name in KERNELS:
        for key, config in getattr(getattr(sys.modules[f"{package}.{module}"], name), "cache", {}).items():
            print(f"{name} {key[:8]} -> warps {config.num_warps} stages {config.num_stages}", flush=True)


if __name__ == "__main__":
    main()
