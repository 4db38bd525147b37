"""RDN's gradient kernel and its anatomy copy (rdn-grad-anatomy.py, every switch off) compiled side by side for
sm_90 at one launch config: registers, spill stack, shared memory, the SASS census, and both kernels' TTGIR and SASS
written to a folder to diff. Why: on the H200 (Triton 3.6, 2026-12-04) the copy ran 1.347 ms against the real
kernel's 1.455 at (4 warps, 2 stages) and was not bit-equal to it, although the two differ in their code only by
where exp(G) and the mats' offset are computed; this machine's Triton 3.9 compiles them alike (255 registers, 120 vs
112 stack bytes, the same census), so run it where Triton is 3.6: it needs no GPU (the launches are intercepted on
CPU tensors, scripts/kernel_resources.py).

    python3 docs/next/rdn-grad-copy-vs-real.py [B,T,H,K] [WARPS,STAGES] [DIR] [FLAG ...]
        (defaults 16,2048,16,128 4,2 grad-cmp; each FLAG, one of the anatomy's switches, adds the copy with it on)
"""
import importlib.util
import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_here, "..", "..", "scripts"))
import kernel_resources as kr  # noqa: E402

_spec = importlib.util.spec_from_file_location("rdn_grad_anatomy", os.path.join(_here, "rdn-grad-anatomy.py"))
anatomy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(anatomy)


def main(shape="16,2048,16,128", config="4,2", out="grad-cmp", *flags):
    Autotuner.run = kr._autotuner_run
    JITFunction.run = kr._jit_run
    kr.run_ops(["rdn"], [int(x) for x in shape.split(",")], torch.bfloat16, 132)
    fn, args, kwargs, _ = next(launch for launch in kr.launches if launch[0].__name__ == "_rdn_bwd_grad_kernel")
    warps, stages = (int(x) for x in config.split(","))
    cfg = triton.Config({}, num_warps=warps, num_stages=stages)
    target = GPUTarget("cuda", 90, 32)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    os.makedirs(out, exist_ok=True)
    print(f"triton {triton.__version__}, sm_90, shape {shape}, bf16, {warps} warps {stages} stages")
    switches_off = {name: False for name in anatomy.FLAGS}
    variants = [("real", fn, kwargs), ("copy", anatomy.grad_abl, {**kwargs, **switches_off})]
    variants += [(f"copy-{flag}", anatomy.grad_abl, {**kwargs, **switches_off, flag: True}) for flag in flags]
    for name, kernel, kw in variants:
        src, options, _, _ = kr._prepare(kernel, args, kw, cfg, target)
        compiled = triton.compile(src, target=target, options=options.__dict__)
        regs, stack = kr._usage(compiled.asm["cubin"], tool)
        print(f"{name}: {regs} registers, {stack} stack bytes, {compiled.metadata.shared} shared bytes; "
              f"{kr.census(compiled.asm['cubin'], tool)}", flush=True)
        with open(os.path.join(out, f"{name}.ttgir"), "w") as f:
            f.write(compiled.asm["ttgir"])
        with open(os.path.join(out, f"{name}.sass"), "w") as f:
            f.write(kr._cuobjdump(compiled.asm["cubin"], tool, "-sass"))
    print(f"written: {out}/<name>.ttgir and .sass for {', '.join(name for name, _, _ in variants)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
