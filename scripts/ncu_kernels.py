"""One call of each RDN or RLA pass (and of fla's op beside it) for Nsight Compute to read the hardware counters.

    . scripts/gpu_env.sh && ncu --profile-from-start off --kernel-name regex:NAME ... python3 scripts/ncu_kernels.py \
        [--shape B,T,H,K] [--passes fwd,bwd,infer,fla,rla_fwd,rla_bwd,fla_gla] [--tune]

(``bash scripts/gpu_session.sh ncu`` runs it so, with the sections and exports it needs.) Every pass runs once
first, outside the profiled range, so that compiling (and autotuning, with --tune) is not what ncu sees; then once
each between cudaProfilerStart and cudaProfilerStop. The passes are profile_kernels.py's: ``fwd`` the forward as
training runs it (keep_tokens: the precise walk storing X), ``bwd`` the backward it feeds, ``infer`` the forward
without autograd, ``fla`` fla's chunk_gated_delta_rule forward and backward (its Hopper guard lifted for this
measurement only, as the bench lifts it: the results are never read). ``rla_fwd``, ``rla_bwd`` and ``fla_gla`` are
RLA's passes as training runs them (the forward keeping its residuals, the backward rerunning the walks from them) and
fla's chunk_simple_gla forward and backward: with NCU_KERNELS="regex:_rla_|_state_walk|_dstate_walk|_rerun_walk|
chunk_fwd_kernel|chunk_bwd_kernel" and NCU_ARGS="--passes rla_fwd,rla_bwd,fla_gla", ncu_details.csv has each kernel's
DRAM bytes and throughput, which docs/next/README.md's "Where RLA's bytes go" only counted. Why ncu: the walks are
neither bandwidth- nor FLOP-bound (the forward walk at B=16 T=2k moves 1.8 GB in 1.29 ms and issues ~0.13 TFLOP),
and timing variants cannot say what their warps wait on; the warp-state and source counters can.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
from gpu_check_rdn import make_inputs  # noqa: E402  (puts rla_kernels on the path, fixed configs unless --tune)

PASSES = ("fwd", "bwd", "infer", "fla", "rla_fwd", "rla_bwd", "fla_gla")


def fail(message):
    """One line on standard error and exit 2, before any GPU work (as the check scripts do)."""
    print(message, file=sys.stderr)
    sys.exit(2)


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="16,2048,16,128", help="B,T,H,K (V = K), bf16")
    parser.add_argument("--passes", default=",".join(PASSES), help=f"comma-separated, of {', '.join(PASSES)}")
    parser.add_argument("--tune", action="store_true", help="autotune (read by gpu_check_rdn at import)")
    args = parser.parse_args()
    passes = [p for p in args.passes.split(",") if p]
    unknown = [p for p in passes if p not in PASSES]
    if unknown or not passes:
        fail(f"--passes takes a comma-separated list of {', '.join(PASSES)}; got {args.passes!r}")
    try:
        B, T, H, K = (int(x) for x in args.shape.split(","))
    except ValueError:
        fail(f"--shape takes B,T,H,K (four ints); got {args.shape!r}")
    if not torch.cuda.is_available():
        fail("ncu_kernels.py needs a CUDA GPU and torch sees none (run it on the GPU machine: gpu_session.sh ncu)")
    return (B, T, H, K), passes


def rdn_passes(B, T, H, K):
    from rla_kernels.rdn.chunk import chunk_rdn_bwd, chunk_rdn_fwd

    x, _, _ = make_inputs(B, T, H, K, K, B, torch.bfloat16)
    do = torch.randn_like(x[2])
    tokens = chunk_rdn_fwd(*x, None, 1.0, "clip", None, None, None, keep_tokens=True, save_wy=True)
    saved = {"walk": tokens[-1], "wy": tokens[3]}
    return {
        "fwd": lambda: chunk_rdn_fwd(*x, None, 1.0, "clip", None, None, None, keep_tokens=True, save_wy=True),
        "bwd": lambda: chunk_rdn_bwd(*x, None, 1.0, "clip", None, None, None, do, None, None, **saved),
        "infer": lambda: chunk_rdn_fwd(*x, None, 1.0, "clip", None, None, None),
    }


def rla_passes(B, T, H, K):
    from rla_kernels.rla.chunk import chunk_rla_bwd, chunk_rla_fwd

    x, _, _ = make_inputs(B, T, H, K, K, B, torch.bfloat16)
    x[3:] = [t.float() for t in x[3:]]  # the gates in fp32, as the RLA layer and the bench hand them
    do = torch.randn_like(x[2])
    residuals = chunk_rla_fwd(*x, None, 1.0, "clip", None, None, None, keep_tokens=True)[-1]
    return {
        "rla_fwd": lambda: chunk_rla_fwd(*x, None, 1.0, "clip", None, None, None, keep_tokens=True),
        "rla_bwd": lambda: chunk_rla_bwd(*x, None, 1.0, "clip", None, None, None, do, None, None, walk=residuals),
    }


def fla_gla_pass(B, T, H, K):
    from fla.ops.simple_gla import chunk_simple_gla

    from rla_convert.bench.kernels import fla_hopper_guard_lifted

    x, _, _ = make_inputs(B, T, H, K, K, B, torch.bfloat16)
    q, k, v, g = (t.detach().requires_grad_() for t in x[:4])
    do = torch.randn_like(v)

    def run():
        with fla_hopper_guard_lifted():
            chunk_simple_gla(q, k, v, g)[0].backward(do)

    return run


def fla_pass(B, T, H, K):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    from rla_convert.bench.kernels import fla_hopper_guard_lifted

    x, _, _ = make_inputs(B, T, H, K, K, B, torch.bfloat16)
    q, k, v, g, beta = (t.detach().requires_grad_() for t in x[:5])
    do = torch.randn_like(v)

    def run():
        with fla_hopper_guard_lifted():
            o = chunk_gated_delta_rule(q, k, v, g, beta)[0]
            o.backward(do)

    return run


def main():
    (B, T, H, K), names = parse_args()
    runs = rdn_passes(B, T, H, K) if {"fwd", "bwd", "infer"} & set(names) else {}
    if {"rla_fwd", "rla_bwd"} & set(names):
        runs.update(rla_passes(B, T, H, K))
    if "fla" in names:
        runs["fla"] = fla_pass(B, T, H, K)
    if "fla_gla" in names:
        runs["fla_gla"] = fla_gla_pass(B, T, H, K)
    for name in names:  # compile (and autotune) outside the profiled range
        runs[name]()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for name in names:
        print(f"ncu_kernels: {name} B={B} T={T} H={H} K={K}", flush=True)
        runs[name]()
        torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
