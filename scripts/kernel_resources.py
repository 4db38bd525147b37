"""Registers, spills and shared memory of every RLA/RDN Triton kernel at a given shape, for sm_90a, on a
machine without a GPU: a register spill is the first suspect when a kernel is slow, and this answers it in
minutes of CPU time instead of device time.

    .venv/bin/python scripts/kernel_resources.py [--ops rdn,rla] [--shape B,T,H,K] [--dtype bf16]
        [--kernels wy,dv] [--arch 90]

How: the ops' host code runs on CPU tensors with every launch intercepted (nothing runs); each launch's
arguments give the kernel's signature and constexprs, which are compiled with Triton's own ptxas for the
target, once per autotune config. Prints one line per (kernel, config): warps, stages, registers a
thread, spill stack bytes a thread, shared bytes. Numbers are ptxas's for this machine's Triton, which may
differ from the GPU machine's (3.6): use them to compare versions of a kernel, not as the truth. Some
configs come out at 32 registers with kilobytes of spills (e.g. RLA's 2-warp ones): that is what this
ptxas (the header names it; Triton runs it with --regAllocOptLevel=2) chose, not yet compared with the GPU
machine's.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

os.environ.pop("TRITON_INTERPRET", None)  # real JIT functions, whose launches are intercepted below

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
           torch.int64: "i64", torch.float64: "fp64"}
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
launches: list[tuple] = []  # (JITFunction, {arg: value}, [configs])


def _record(fn: JITFunction, args, kwargs, configs):
    bound = dict(zip(fn.arg_names, args))
    bound.update({k: v for k, v in kwargs.items() if k not in ("grid", "warmup")})
    launches.append((fn, bound, configs))


def _autotuner_run(self, *args, **kwargs):
    _record(self.fn, args, kwargs, self.configs)


def _jit_run(self, *args, **kwargs):
    configs = [triton.Config({}, num_warps=kwargs.pop("num_warps", 4), num_stages=kwargs.pop("num_stages", 3))]
    _record(self, args, kwargs, configs)


def _signature(fn: JITFunction, bound: dict, extra: dict):
    sig, const = {}, {}
    for i, p in enumerate(fn.params):
        value = extra.get(p.name, bound.get(p.name))
        if p.is_constexpr or value is None or isinstance(value, (str, bool)):
            sig[p.name] = "constexpr"
            const[(i,)] = value
        elif isinstance(value, torch.Tensor):
            sig[p.name] = "*" + _DTYPES[value.dtype]
        elif isinstance(value, int):
            sig[p.name] = "i64" if abs(value) >= 2 ** 31 else "i32"
        elif isinstance(value, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name} of type {type(value).__name__}")
    return sig, const


def _usage(cubin: bytes, tool: str) -> tuple[int, int]:
    path = "/tmp/kernel_resources.cubin"
    with open(path, "wb") as f:
        f.write(cubin)
    text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", text).groups()
    return int(regs), int(stack)


def run_ops(ops, shape, dtype):
    B, T, H, K = shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, K, generator=gen).to(dtype) for _ in range(3))
    g = -torch.rand(B, T, H, generator=gen) * 0.1
    beta, gamma = torch.rand(B, T, H, generator=gen), torch.rand(B, T, H, generator=gen)
    do = torch.randn_like(v)
    for op in ops:
        chunk = __import__(f"rla_kernels.{op}.chunk", fromlist=["chunk"])
        fwd, bwd = getattr(chunk, f"chunk_{op}_fwd"), getattr(chunk, f"chunk_{op}_bwd")
        fwd(q, k, v, g, beta, gamma, None, 1.0, "clip", None, None, None)
        bwd(q, k, v, g, beta, gamma, None, 1.0, "clip", None, None, None, do, None, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="rdn,rla")
    parser.add_argument("--shape", default="16,2048,16,128", help="B,T,H,K (V = K); default: the benchmark's")
    parser.add_argument("--dtype", default="bf16", choices=sorted(_HALF))
    parser.add_argument("--kernels", default="", help="comma-separated substrings of kernel names to keep")
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args()
    Autotuner.run = _autotuner_run
    JITFunction.run = _jit_run
    run_ops(args.ops.split(","), [int(x) for x in args.shape.split(",")], _HALF[args.dtype])
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    wanted = [w for w in args.kernels.split(",") if w]
    seen = set()
    ptxas = subprocess.run([os.path.join(os.path.dirname(tool), "ptxas"), "--version"], capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    print(f"triton {triton.__version__} ({ptxas}), sm_{args.arch}a, shape {args.shape}, {args.dtype}")
    print(f"{'kernel':28s} {'warps':>5s} {'stages':>6s} {'regs':>5s} {'spill B':>8s} {'shared B':>9s}  constexprs")
    for fn, bound, configs in launches:
        name = fn.__name__
        if wanted and not any(w in name for w in wanted):
            continue
        for config in configs:
            sig, const = _signature(fn, bound, config.kwargs)
            key = (name, tuple(sorted(sig.items())), tuple(sorted((k, repr(v)) for k, v in const.items())),
                   config.num_warps, config.num_stages)
            if key in seen:
                continue
            seen.add(key)
            compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                      target=GPUTarget("cuda", args.arch, 32),
                                      options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
            regs, stack = _usage(compiled.asm["cubin"], tool)
            shown = {fn.arg_names[i[0]]: v for i, v in const.items() if v is not None and fn.params[i[0]].is_constexpr}
            print(f"{name:28s} {config.num_warps:5d} {config.num_stages:6d} {regs:5d} {stack:8d} "
                  f"{compiled.metadata.shared:9d}  {shown}", flush=True)


if __name__ == "__main__":
    main()
