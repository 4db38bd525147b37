"""Do RDN's gradient and chunk-matrix kernels give the same values at every launch config? (GPU probe.)

Why: on 2026-12-04 rdn-grad-anatomy.py's copy of the gradient kernel at (4 warps, 2 stages), the autotuner's pick at
B=16 T=2k H=16 K=128, did not match the real kernel at its first config (8, 1) within 1e-2 elementwise, while the
float64 check at --tune (H=4 shapes, another autotuner key) passed. This relaunches the real kernels (their
JITFunction, past the autotuner) with the arguments of one backward, at each config, from the same buffers, and prints
||x - x_(8,1)|| / ||x_(8,1)||, the worst element and whether it is finite, for every buffer a launch changed; at fp32
inputs a config that is right differs by ~1e-6, at bf16 by rounding (~1e-3).

    . scripts/gpu_env.sh && RLA_KERNELS_FIXED_CONFIG=1 python3 docs/next/rdn-config-equivalence.py 16,2048,16,128

Measured (H200, Triton 3.6, 2026-12-04 05:53): at fp32 every config within 2.4e-8 of (8, 1) (the chunk matrices' and
gradient's row slabs; dq, dk bit-equal); at bf16 the gradient kernel's dk 1.0e-3 and its slabs 6.6e-4 at two stages
((4, 2), (8, 2)), bit-equal at (4, 1); the chunk-matrix kernel bit-equal at every config. No NaN.
Correction (10:01 the same day): the bf16 difference at two stages is not rounding but a race, dk and dg change
between runs there (rdn-grad-determinism.py; BENCHMARKS.md, entry "2026-12-04 09:26-10:01").
"""
import importlib.util
import os
import sys

import torch

from rla_kernels.rdn import chunk as rdn_chunk

# the gradient anatomy beside this file: its one recorded backward (backward_launches)
_spec = importlib.util.spec_from_file_location(
    "rdn_grad_anatomy", os.path.join(os.path.dirname(os.path.abspath(__file__)), "rdn-grad-anatomy.py"))
_anatomy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_anatomy)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = [(8, 1), (4, 2), (4, 1), (8, 2)]
KERNELS = ("_rdn_bwd_mats_kernel", "_rdn_bwd_grad_kernel")


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def main(shape: str, dtype: torch.dtype) -> None:
    launches = _anatomy.backward_launches(shape, DEV, dtype, KERNELS)
    _sync()
    real = {name: getattr(rdn_chunk, name) for name in KERNELS}
    for name in KERNELS:
        (grid, args, kw), = launches[name]
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        pristine = {i: args[i].clone() for i in tensors}
        outs = {}
        for cfg in CONFIGS:
            for i in tensors:
                args[i].copy_(pristine[i])
            real[name].fn[grid](*args, **kw, num_warps=cfg[0], num_stages=cfg[1])
            _sync()
            outs[cfg] = {i: args[i].clone() for i in tensors}
        for i in tensors:
            args[i].copy_(pristine[i])
        ref = outs[CONFIGS[0]]
        changed = [i for i in tensors if not torch.equal(ref[i], pristine[i]) or
                   any(not torch.equal(outs[c][i], ref[i]) for c in CONFIGS[1:])]
        print(f"{dtype} {shape} {name} grid {grid}: args {changed} changed or differ", flush=True)
        for cfg in CONFIGS[1:]:
            for i in changed:
                a, r = outs[cfg][i].double(), ref[i].double()
                fin = bool(torch.isfinite(a).all()) and bool(torch.isfinite(r).all())
                rel = ((a - r).norm() / r.norm().clamp_min(1e-30)).item()
                worst = (a - r).abs().max().item()
                print(f"  {cfg} vs (8, 1) arg {i:2d} {tuple(a.shape)}: rel {rel:.2e} worst {worst:.2e} "
                      f"|ref|max {r.abs().max().item():.2e} finite {fin}", flush=True)


if __name__ == "__main__":
    for given in sys.argv[1:]:
        for dt in (torch.float32, torch.bfloat16):
            main(given, dt)
