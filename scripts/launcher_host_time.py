"""Host time of the RLA and RDN chunk launchers, every Triton launch stubbed out: what their Python costs a call.

Runs on any machine (CPU tensors under TRITON_INTERPRET=1; nothing is launched), at SmolLM2's layer shape and the
kernel benchmark's. Triton's own launch path comes on top on a GPU; a host-bound prefill pays both every layer.
    TRITON_INTERPRET=1 python scripts/launcher_host_time.py
"""
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kerneltools import make_inputs, stub_launches  # noqa: E402
from rla_kernels.rdn import chunk as rdn_chunk  # noqa: E402
from rla_kernels.rdn import segmented  # noqa: E402
from rla_kernels.rla import chunk as rla_chunk  # noqa: E402


def per_call_ms(fn, n=200):
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def main():
    patch = pytest.MonkeyPatch()
    for module in (rla_chunk, rdn_chunk, segmented):
        stub_launches(patch, module, [n for n in dir(module) if n.endswith("_kernel")])
    for shape in (dict(B=1, T=2048, H=9, K=64, V=64), dict(B=16, T=2048, H=16, K=128, V=128)):
        inputs, S0, R0 = make_inputs(**shape, dtype=torch.bfloat16, gates_in_dtype=False)
        row = []
        for name, fwd, bwd in (("rla", rla_chunk.chunk_rla_fwd, rla_chunk.chunk_rla_bwd),
                               ("rdn", rdn_chunk.chunk_rdn_fwd, rdn_chunk.chunk_rdn_bwd)):
            o, _, _, kept = fwd(*inputs, None, 1.0, "clip", S0, R0, keep_tokens=True)
            do = torch.randn_like(o)
            f = per_call_ms(lambda: fwd(*inputs, None, 1.0, "clip", S0, R0, keep_tokens=True))
            b = per_call_ms(lambda: bwd(*inputs, None, 1.0, "clip", S0, R0, None, do, None, None, walk=kept))
            row.append(f"{name} fwd {f:.3f} bwd {b:.3f}")
        print(f"B={shape['B']} T={shape['T']} H={shape['H']} K={shape['K']}: " + ", ".join(row) + " ms of host time")
    patch.undo()


if __name__ == "__main__":
    main()
